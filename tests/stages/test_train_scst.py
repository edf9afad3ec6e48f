"""`fcvc train --scst --init RUN`: a self-critical run starts from another run's best.pt, logs its rewards, keeps
every guarantee of the trainer (best.pt by validation CIDEr, up to date, bit-exact resume after a kill) and
refuses a starting point that does not belong to its data."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fcvc_pipeline.artifacts import read_manifest
from fcvc_pipeline.captions.vocabulary import CaptionRow, load_captions, load_vocabulary, save_vocab_dir
from fcvc_pipeline.errors import ConfigError, MismatchError, MissingArtifactError
from fcvc_pipeline.inference.checkpoint import load_checkpoint
from fcvc_pipeline.stages.train import TrainConfig, init_fingerprint, run_train
from fcvc_pipeline.training import scst as scst_module
from tests.tiny import make_tiny_workdir

XE = dict(model="fcvc-cf-ia", d_model=32, layers=2, heads=2, kernel_size=3, dropout=0.1, batch_size=6, lr=3e-3,
          warmup_steps=2, select_beams=(), device="cpu")
SCST = dict(scst=True, init="base", scst_samples=3, scst_lr=3e-4, batch_size=6, warmup_steps=2, select_beams=(),
            device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny work directory with a cross-entropy run 'base' (copied by each test that writes runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("scst")
    w = make_tiny_workdir(root / "w")
    run_train(TrainConfig(workdir=w, run="base", epochs=6, **XE))
    yield w
    torch.set_num_threads(threads)


def _copy(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "w")


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_an_scst_run_starts_from_its_init_and_logs_rewards(trained, tmp_path, one_thread):
    w = _copy(trained, tmp_path)
    res = run_train(TrainConfig(workdir=w, epochs=2, **SCST))
    assert res.run.name == "base-scst" and res.epochs == 2
    records = _metrics(res.run)
    for r in records:
        for key in ("train_reward", "train_baseline", "train_positive_advantage", "train_sample_length",
                    "train_pg_loss", "seconds", "val_cider", "val_loss", "lr"):
            assert r[key] is not None, key
        assert 0.0 <= r["train_positive_advantage"] <= 1.0
        assert r["train_reward"] > 0  # the cross-entropy run already captions the tiny set
        assert abs(r["train_baseline"] - r["train_reward"]) < 1e-9  # the mean of the others averages to the mean
    assert max(r["lr"] for r in records) <= SCST["scst_lr"]
    # what the run depends on: the starting point's content, the SCST settings (not the cross-entropy rate)
    manifest = read_manifest(res.run)
    assert manifest.inputs["init"] == init_fingerprint(load_checkpoint(w / "runs" / "base" / "best.pt"))
    assert manifest.config["scst"] is True and manifest.config["scst_samples"] == 3 and "lr" not in manifest.config
    assert "scst" not in read_manifest(w / "runs" / "base").config  # cross-entropy runs' manifests unchanged
    assert json.loads((res.run / "config.json").read_text())["train"]["init"] == "base"
    assert run_train(TrainConfig(workdir=w, epochs=2, **SCST)).up_to_date
    # a new best.pt of the starting run makes the SCST run out of date (refused without --force)
    ckpt = load_checkpoint(w / "runs" / "base" / "best.pt")
    ckpt["state_dict"] = {k: v + 0.01 for k, v in ckpt["state_dict"].items()}
    from fcvc_pipeline.inference.checkpoint import save_checkpoint

    save_checkpoint(w / "runs" / "base" / "best.pt", {k: v for k, v in ckpt.items() if k != "digest"})
    with pytest.raises(MismatchError, match="input 'init' changed"):
        run_train(TrainConfig(workdir=w, epochs=2, **SCST))


def test_the_first_step_starts_from_the_init_weights(trained, tmp_path, one_thread):
    w = _copy(trained, tmp_path)
    res = run_train(TrainConfig(workdir=w, max_steps=1, ema_decay=0.0, **{**SCST, "scst_lr": 1e-12}))
    start = load_checkpoint(w / "runs" / "base" / "best.pt")["state_dict"]
    after = load_checkpoint(res.run / "best.pt")["state_dict"]
    assert all(torch.allclose(start[k], after[k], atol=1e-6) for k in start)
    fresh = load_checkpoint(w / "runs" / "base" / "last.pt")["state_dict"]  # the raw (not averaged) weights differ
    assert not all(torch.allclose(start[k], fresh[k], atol=1e-6) for k in start)


def test_greedy_baseline_and_cross_entropy_term(trained, tmp_path, one_thread):
    w = _copy(trained, tmp_path)
    res = run_train(TrainConfig(workdir=w, run="g", epochs=1, scst_baseline="greedy", scst_xe_weight=0.5,
                                **{**SCST, "scst_samples": 1}))
    r = _metrics(res.run)[0]
    assert r["train_nll"] is not None and r["train_nll"] > 0  # the cross-entropy term was computed
    assert r["train_baseline"] != r["train_reward"]
    assert abs(r["train_loss"] - r["train_pg_loss"]) > 1e-6  # and added


def test_resume_after_kill_equals_the_uninterrupted_scst_run(trained, tmp_path):
    w = _copy(trained, tmp_path)
    base = ["--workdir", str(w), "--scst", "--init", "base", "--epochs", "3", "--checkpoint-every", "2",
            "--scst-samples", "3", "--batch-size", "6", "--scst-lr", "0.0003", "--select-beams", "", "--device", "cpu"]
    cmd = [sys.executable, "-m", "fcvc_pipeline", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(cmd + base + ["--run", "a"], env={**env, "FCVC_FAULT_KILL_AT_STEP": "9"},
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert load_checkpoint(w / "runs" / "a" / "last.pt")["position"]["batch"] > 0, "the kill should land mid-epoch"
    resumed = subprocess.run(cmd + base + ["--run", "a", "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run(cmd + base + ["--run", "b"], env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    # the model came from the init run without --model (its best.pt says fcvc-cf-ia with d_model 32)
    assert load_checkpoint(w / "runs" / "b" / "best.pt")["model_config"]["d_model"] == 32

    def drop_time(records):
        return [{k: v for k, v in r.items() if "seconds" not in k and "sec_per" not in k} for r in records]

    assert drop_time(_metrics(w / "runs" / "a")) == drop_time(_metrics(w / "runs" / "b"))
    a, b = load_checkpoint(w / "runs" / "a" / "last.pt"), load_checkpoint(w / "runs" / "b" / "last.pt")
    for key in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert torch.equal(a["rng"]["sample"], b["rng"]["sample"])


def test_bad_starting_points_are_refused(trained, tmp_path, one_thread):
    w = _copy(trained, tmp_path)
    with pytest.raises(ConfigError, match="--scst needs --init"):
        run_train(TrainConfig(workdir=w, **{**SCST, "init": None}))
    with pytest.raises(ConfigError, match="--init is only used with --scst"):
        run_train(TrainConfig(workdir=w, init="base", **XE))
    with pytest.raises(ConfigError, match="--scst-samples must be at least 2"):
        run_train(TrainConfig(workdir=w, **{**SCST, "scst_samples": 1}))
    with pytest.raises(MissingArtifactError, match="no best.pt") as missing:
        run_train(TrainConfig(workdir=w, **{**SCST, "init": "nosuch"}))
    assert "base" in missing.value.hint  # it lists the runs that could be used
    with pytest.raises(ConfigError, match="is the run being trained"):
        run_train(TrainConfig(workdir=w, run="base", **SCST))
    with pytest.raises(MismatchError, match="--model fcvc-ta"):
        run_train(TrainConfig(workdir=w, model="fcvc-ta", **SCST))
    with pytest.raises(MismatchError, match="--d-model 64"):
        run_train(TrainConfig(workdir=w, d_model=64, **SCST))
    # a run of another work directory (another vocabulary): named, with the reason
    other = make_tiny_workdir(tmp_path / "other", seed=1)
    rows = load_captions(other / "vocab")
    vocab = load_vocabulary(other / "vocab")
    save_vocab_dir(other / "vocab", dataclasses.replace(vocab, tokens=vocab.tokens + ("extra",)), rows)
    with pytest.raises(MismatchError, match="another vocabulary"):
        run_train(TrainConfig(workdir=other, **{**SCST, "init": str(w / "runs" / "base" / "best.pt")}))
    assert not (other / "runs").exists()


def test_videos_without_words_in_their_references_are_skipped_and_named(trained, tmp_path, one_thread, capsys):
    w = _copy(trained, tmp_path)
    rows = load_captions(w / "vocab")
    train_ids = sorted({r.video_id for r in rows if r.split == "train"})
    silent = train_ids[0]
    rows = [CaptionRow(r.video_id, r.split, "?!", ()) if r.video_id == silent else r for r in rows]
    save_vocab_dir(w / "vocab", load_vocabulary(w / "vocab"), rows)
    run_train(TrainConfig(workdir=w, run="base2", epochs=1, **XE))
    capsys.readouterr()
    res = run_train(TrainConfig(workdir=w, epochs=1, **{**SCST, "init": "base2"}))
    err = capsys.readouterr().err
    assert "skips 1 training video(s)" in err and silent in err
    assert res.epochs == 1


def test_a_non_finite_reward_stops_training_with_the_video_named(trained, tmp_path, one_thread, monkeypatch):
    w = _copy(trained, tmp_path)

    def broken(self, video_ids, hypotheses):
        return np.full(len(hypotheses), np.nan)

    monkeypatch.setattr(scst_module.CiderD, "score", broken)  # a reward bug, simulated
    with pytest.raises(scst_module.NonFiniteRewardError, match="video 'v0"):
        run_train(TrainConfig(workdir=w, epochs=1, **SCST))


@pytest.mark.slow
def test_two_process_torchrun_scst_on_cpu(trained, tmp_path):
    w = _copy(trained, tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           "-m", "fcvc_pipeline", "train", "--workdir", str(w), "--scst", "--init", "base", "--epochs", "2",
           "--scst-samples", "2", "--batch-size", "4", "--select-beams", "", "--device", "cpu", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # one JSON document: rank 0 alone prints
    assert doc["epochs"] == 2 and doc["run"].endswith("base-scst")
    records = _metrics(w / "runs" / "base-scst")
    assert len(records) == 2 and all(r["train_reward"] > 0 for r in records)


def test_the_starting_weights_stay_best_until_an_epoch_beats_them(trained, tmp_path, one_thread, capsys):
    """Epoch 0 is the --init weights: a self-critical run that only makes things worse (a learning rate far
    too high) ends with best.pt = those weights, says so, and the decoding is chosen for them."""
    w = _copy(trained, tmp_path)
    start_cider = _metrics(w / "runs" / "base")
    res = run_train(TrainConfig(workdir=w, epochs=1, ema_decay=0.0, **{**SCST, "scst_lr": 0.01, "warmup_steps": 0}))
    err = capsys.readouterr().err
    assert "epoch 0 (the --init weights): val CIDEr" in err
    assert "no self-critical epoch beat the --init weights" in err
    assert read_manifest(res.run).outputs["best_epoch"] == 0
    assert res.best_val_cider == pytest.approx(max(r["val_cider"] for r in start_cider), abs=1e-9)
    assert all(r["val_cider"] < res.best_val_cider for r in _metrics(res.run))
    start = load_checkpoint(w / "runs" / "base" / "best.pt")["state_dict"]
    best = load_checkpoint(res.run / "best.pt")
    assert all(torch.equal(start[k], best["state_dict"][k]) for k in start)
    assert best["decoding"] is not None
