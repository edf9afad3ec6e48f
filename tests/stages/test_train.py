import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fcvc_pipeline.captions.vocabulary import SPECIALS, CaptionRow, Vocabulary, save_vocab_dir
from fcvc_pipeline.errors import MismatchError
from fcvc_pipeline.inference.checkpoint import load_checkpoint
from fcvc_pipeline.stages.train import TrainConfig, learning_rate, run_train
from tests.tiny import make_tiny_workdir

TINY = dict(d_model=32, layers=2, heads=2, kernel_size=3, dropout=0.1, batch_size=6, lr=3e-3, warmup_steps=2,
            device="cpu")


def _comparable(history):
    return [{k: v for k, v in h.items() if "seconds" not in k and "sec_per" not in k} for h in history]


def test_short_run_lowers_loss_and_writes_checkpoints(tmp_path):
    w = make_tiny_workdir(tmp_path)
    res = run_train(TrainConfig(workdir=w, model="fcvc-cf-ia", epochs=6, **TINY))
    assert res.epochs == 6
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.7 * losses[0]
    assert (res.run / "best.pt").is_file() and (res.run / "last.pt").is_file()
    lines = (res.run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, 7))
    first = json.loads(lines[0])
    for key in ("train_nll", "train_frame_penalty", "train_region_penalty", "val_loss", "val_cider", "val_bleu4",
                "val_unk", "sec_per_10M_params"):
        assert key in first
    ckpt = load_checkpoint(res.run / "best.pt")
    assert ckpt["model_config"]["model"] == "fcvc-cf-ia"
    from fcvc_pipeline.models import ModelConfig, build_model

    rebuilt = build_model(ModelConfig.from_json(ckpt["model_config"]))
    assert res.parameters == sum(p.numel() for p in rebuilt.parameters()) > 0
    # the decoding chosen on validation: the beam size with the best validation CIDEr, ties to the smaller
    decoding = ckpt["decoding"]
    ciders = decoding["val_cider_by_beam"]
    assert set(ciders) == {"1", "3", "5"} and decoding["chosen_on"] == "val"
    assert decoding["beam_size"] == min(int(b) for b in ciders if ciders[b] == max(ciders.values()))
    # which the split captioner uses unless told otherwise
    from fcvc_pipeline.inference.captioner import caption_split

    assert caption_split(w, None, "val", device="cpu").name == f"val-beam{decoding['beam_size']}.json"
    assert caption_split(w, None, "val", beam_size=2, device="cpu").name == "val-beam2.json"
    # a rerun with the same settings and inputs does nothing
    again = run_train(TrainConfig(workdir=w, model="fcvc-final", epochs=6, **TINY))
    assert again.up_to_date and again.best_checkpoint == res.best_checkpoint
    # other settings into the same run: refused, not mixed
    with pytest.raises(MismatchError):
        run_train(TrainConfig(workdir=w, model="fcvc-cf-ia", epochs=7, **TINY))


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    base = ["--workdir", str(tmp_path), "--model", "fcvc-all", "--epochs", "3", "--checkpoint-every", "2",
            "--d-model", "32", "--layers", "2", "--batch-size", "6", "--device", "cpu", "--lr", "0.003",
            "--ema", "0.9", "--label-smoothing", "0.1"]
    make_tiny_workdir(tmp_path)
    cmd = [sys.executable, "-m", "fcvc_pipeline", "train"]
    env = {**os.environ, "FCVC_FAULT_KILL_AT_STEP": "5"}
    killed = subprocess.run(cmd + base + ["--run", "a"], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    ckpt = load_checkpoint(tmp_path / "runs" / "a" / "last.pt")
    assert ckpt["position"]["batch"] > 0, "the kill should land mid-epoch"
    refused = subprocess.run(cmd + base + ["--run", "a"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run(cmd + base + ["--run", "a", "--resume", "--json"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run(cmd + base + ["--run", "b", "--json"], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    read = lambda r: [json.loads(x) for x in (tmp_path / "runs" / r / "metrics.jsonl").read_text().splitlines()]  # noqa
    assert _comparable(read("a")) == _comparable(read("b"))
    for key in ("state_dict", "ema_state_dict"):  # the weights and their moving average
        a = load_checkpoint(tmp_path / "runs" / "a" / "last.pt")[key]
        b = load_checkpoint(tmp_path / "runs" / "b" / "last.pt")[key]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_ema_run_keeps_the_average_as_best(tmp_path):
    """With --ema, best.pt holds the averaged weights; last.pt keeps both (no validation split here, so
    the best epoch is the last one and best.pt must equal last.pt's average)."""
    w = make_tiny_workdir(tmp_path)
    table = w / "vocab" / "captions.jsonl"
    table.write_text(table.read_text().replace('"split": "val"', '"split": "train"'))
    res = run_train(TrainConfig(workdir=w, model="fcvc-ta", epochs=3, ema_decay=0.9, **TINY))
    best, last = load_checkpoint(res.run / "best.pt"), load_checkpoint(res.run / "last.pt")
    assert last["ema_state_dict"] is not None and best["ema_state_dict"] is None
    same = lambda x, y: all(torch.equal(x[k], y[k]) for k in x)  # noqa: E731
    assert same(best["state_dict"], last["ema_state_dict"])
    assert not same(best["state_dict"], last["state_dict"])


def test_bf16_on_cpu_trains_and_is_part_of_the_run_settings(tmp_path):
    w = make_tiny_workdir(tmp_path)
    res = run_train(TrainConfig(workdir=w, model="fcvc-cf-ia", epochs=6, precision="bf16", **TINY))
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.8 * losses[0]
    assert all(v.dtype == torch.float32 for v in load_checkpoint(res.run / "best.pt")["state_dict"].values()
               if v.is_floating_point())  # autocast: the weights stay float32
    with pytest.raises(MismatchError):  # same run name, other precision: refused, not mixed
        run_train(TrainConfig(workdir=w, model="fcvc-cf-ia", epochs=6, precision="fp32", **TINY))
    assert "--precision" in " ".join(TrainConfig(workdir=w, precision="fp16").validate())


def test_mismatched_store_and_vocabulary_refused(tmp_path):
    w = make_tiny_workdir(tmp_path)
    rows = [CaptionRow("someone_else", "train", "a cat", ("a", "cat"))]
    save_vocab_dir(w / "vocab", Vocabulary(SPECIALS + ("a", "cat")), rows)
    with pytest.raises(MismatchError, match="share no video"):
        run_train(TrainConfig(workdir=w, epochs=1, **TINY))


def test_schedule_warms_up_then_decays():
    lrs = [learning_rate(s, base=1.0, warmup=4, total=20) for s in range(20)]
    assert lrs[0] == 0.25 and lrs[3] == 1.0
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] >= 0.1


@pytest.mark.slow
def test_two_process_torchrun_on_cpu(tmp_path):
    make_tiny_workdir(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "fcvc_pipeline", "train", "--workdir", str(tmp_path), "--model", "fcvc-ta", "--epochs", "2",
           "--d-model", "32", "--layers", "2", "--batch-size", "4", "--device", "cpu", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # exactly one JSON document: rank 0 alone prints
    assert doc["epochs"] == 2
    assert (tmp_path / "runs" / "fcvc-ta" / "best.pt").is_file()
    assert len((tmp_path / "runs" / "fcvc-ta" / "metrics.jsonl").read_text().splitlines()) == 2


def test_without_validation_split_best_follows_last_epoch(tmp_path):
    from fcvc_pipeline.artifacts import read_manifest

    w = make_tiny_workdir(tmp_path)
    table = w / "vocab" / "captions.jsonl"
    table.write_text(table.read_text().replace('"split": "val"', '"split": "train"'))
    res = run_train(TrainConfig(workdir=w, model="fcvc", epochs=3, patience=1, **TINY))
    assert res.epochs == 3 and res.best_val_cider is None
    assert read_manifest(res.run).outputs["best_epoch"] == 3


def test_resume_after_the_last_epoch_only_finishes_the_run(tmp_path):
    """Killed after training but before the manifest (e.g. while choosing the beam size): --resume trains
    no further epoch, it chooses the decoding and writes the manifest."""
    from fcvc_pipeline.artifacts import read_manifest

    w = make_tiny_workdir(tmp_path)
    cfg = TrainConfig(workdir=w, model="fcvc", epochs=2, **TINY)
    first = run_train(cfg)
    (first.run / "manifest.json").unlink()
    history = (first.run / "metrics.jsonl").read_text()
    again = run_train(dataclasses.replace(cfg, resume=True))
    assert not again.up_to_date and again.epochs == 2
    assert (first.run / "metrics.jsonl").read_text() == history
    assert read_manifest(first.run).outputs["decoding"]["chosen_on"] == "val"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_keeps_the_step_and_resume_ends_like_an_uninterrupted_run(tmp_path, sig):
    """What a cluster scheduler does before it kills: the epoch in progress is kept, exit 128 + signal."""
    base = ["--workdir", str(tmp_path), "--model", "fcvc-ta", "--epochs", "6", "--d-model", "32", "--layers", "2",
            "--batch-size", "6", "--device", "cpu", "--lr", "0.003", "--select-beams", ""]
    make_tiny_workdir(tmp_path)
    cmd = [sys.executable, "-m", "fcvc_pipeline", "train"]
    metrics = tmp_path / "runs" / "a" / "metrics.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in all three runs: same numerics
    proc = subprocess.Popen(cmd + base + ["--run", "a"], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    assert "--resume" in stderr and "last.pt" in stderr and signal.Signals(sig).name in stderr
    position = load_checkpoint(tmp_path / "runs" / "a" / "last.pt")["position"]
    assert position["step"] > 0 and position["epoch"] < 6
    resumed = subprocess.run(cmd + base + ["--run", "a", "--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run(cmd + base + ["--run", "b"], capture_output=True, text=True, env=env)
    assert whole.returncode == 0, whole.stderr
    read = lambda r: [json.loads(x) for x in (tmp_path / "runs" / r / "metrics.jsonl").read_text().splitlines()]  # noqa
    assert _comparable(read("a")) == _comparable(read("b"))
    a = load_checkpoint(tmp_path / "runs" / "a" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "runs" / "b" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
