"""Extending a run: `fcvc train --resume` with a larger --epochs/--max-steps continues from last.pt (step count,
optimizer, weight average, RNG, best epoch), records the extension and refuses anything else; Ctrl-C says
to add --resume; on CPU an extension is deterministic, and one made before the decay began equals a fresh run.
"""

from __future__ import annotations

import dataclasses
import json
import signal

import pytest
import torch

from fcvc_pipeline.artifacts import read_manifest
from fcvc_pipeline.errors import ConfigError, MismatchError, StoppedBySignal
from fcvc_pipeline.inference.checkpoint import load_checkpoint
from fcvc_pipeline.stages import train as train_stage
from fcvc_pipeline.stages.train import TrainConfig, run_train
from fcvc_pipeline.training import trainer as trainer_module
from tests.tiny import make_tiny_workdir

TINY = dict(model="fcvc-ta", d_model=16, layers=2, heads=2, kernel_size=3, batch_size=6, lr=3e-3, warmup_steps=2,
            ema_decay=0.9, select_beams=(), device="cpu")


def _comparable(history):
    return [{k: v for k, v in h.items() if "seconds" not in k and "sec_per" not in k} for h in history]


def _same_weights(run_a, run_b):
    for key in ("state_dict", "ema_state_dict"):
        a, b = load_checkpoint(run_a / "last.pt")[key], load_checkpoint(run_b / "last.pt")[key]
        assert all(torch.equal(a[k], b[k]) for k in a), key


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_finished_run_is_extended_from_its_saved_state(tmp_path, one_thread):
    w = make_tiny_workdir(tmp_path)
    cfg = TrainConfig(workdir=w, run="tiny", epochs=2, **TINY)
    first = run_train(cfg)
    before = load_checkpoint(first.run / "last.pt")
    steps = before["position"]["step"]
    # without --resume: refused, and the hint says how to extend
    with pytest.raises(MismatchError, match="--epochs 2 -> 4") as refused:
        run_train(dataclasses.replace(cfg, epochs=4))
    assert "--resume" in refused.value.hint
    # a smaller value is an error; so is any other changed setting, named
    with pytest.raises(ConfigError, match="smaller"):
        run_train(dataclasses.replace(cfg, epochs=1, resume=True))
    with pytest.raises(MismatchError, match="--lr 0.003 -> 0.002"):
        run_train(dataclasses.replace(cfg, epochs=4, lr=2e-3, resume=True))

    longer = run_train(dataclasses.replace(cfg, epochs=4, resume=True))
    assert not longer.up_to_date and longer.epochs == 4
    assert _comparable(longer.history[:2]) == _comparable(first.history)  # the first two epochs are kept
    after = load_checkpoint(longer.run / "last.pt")
    assert after["position"]["step"] == 2 * steps  # the step count went on
    # the optimizer went on too: AdamW's own step count covers both parts of the run
    assert all(int(s["step"]) == 2 * steps for s in after["optimizer"]["state"].values())
    record = {"epoch": 2, "batch": 0, "step": steps, "changed": {"epochs": {"old": 2, "new": 4}},
              "total_steps": {"old": 2 * steps // 2, "new": 2 * steps}}
    assert json.loads((longer.run / "config.json").read_text())["extensions"] == [record]
    assert read_manifest(longer.run).outputs["extensions"] == [record]
    assert read_manifest(longer.run).config["epochs"] == 4
    # the learning rate went on from where it was (the end of the decay: its floor), no restart
    lrs = [h["lr"] for h in longer.history]
    assert lrs[2] == lrs[3] == pytest.approx(0.1 * cfg.lr)
    # the extended run is now the run: the same command is up to date, a smaller one still refused
    assert run_train(dataclasses.replace(cfg, epochs=4, resume=True)).up_to_date
    with pytest.raises(ConfigError, match="--epochs 4: --epochs 3 is smaller"):
        run_train(dataclasses.replace(cfg, epochs=3, resume=True))


def test_an_extension_interrupted_by_ctrl_c_resumes_to_the_same_numbers(tmp_path, one_thread, monkeypatch):
    """2 epochs, then extended to 4 mid-decay: once straight through, once stopped by SIGINT inside the
    extension and resumed. Bit for bit the same weights and metrics on CPU; the message says --resume."""
    w = make_tiny_workdir(tmp_path)
    a = TrainConfig(workdir=w, run="a", epochs=2, max_steps=20, **TINY)  # stops mid-epoch, mid-decay
    b = dataclasses.replace(a, run="b")
    run_train(a)
    run_train(b)
    whole = run_train(dataclasses.replace(a, epochs=4, max_steps=None, resume=True))

    real = trainer_module.fault_injection
    monkeypatch.setattr(trainer_module, "fault_injection",
                        lambda step: signal.raise_signal(signal.SIGINT) if step == 16 else real(step))
    with pytest.raises(StoppedBySignal) as stopped:
        run_train(dataclasses.replace(b, epochs=4, max_steps=None, resume=True))
    assert stopped.value.exit_code == 130 and "--resume" in stopped.value.hint
    monkeypatch.setattr(trainer_module, "fault_injection", real)
    assert read_manifest(w / "runs" / "b") is None  # an extension in progress is not a finished run
    with pytest.raises(MismatchError, match="interrupted"):  # --resume is needed, as the message said
        run_train(dataclasses.replace(b, epochs=4, max_steps=None))
    resumed = run_train(dataclasses.replace(b, epochs=4, max_steps=None, resume=True))
    assert _comparable(resumed.history) == _comparable(whole.history)
    assert resumed.extensions == whole.extensions and len(whole.extensions) == 1
    _same_weights(whole.run, resumed.run)
    # the stretched decay: the learning rate went on from its value at step 20, then down to the floor at the end
    lrs = [h["lr"] for h in whole.history]
    assert lrs[1] > lrs[2] > lrs[3] >= 0.1 * a.lr


def test_an_extension_made_during_the_warm_up_equals_a_fresh_run(tmp_path, one_thread):
    """Before the decay begins the schedule does not depend on the total, so a 2-epoch run extended to 4
    equals a fresh 4-epoch run exactly (on CPU): same metrics, weights and weight average."""
    w = make_tiny_workdir(tmp_path)
    cfg = TrainConfig(workdir=w, epochs=2, **{**TINY, "warmup_steps": 100})
    run_train(dataclasses.replace(cfg, run="short"))
    extended = run_train(dataclasses.replace(cfg, run="short", epochs=4, resume=True))
    fresh = run_train(dataclasses.replace(cfg, run="fresh", epochs=4))
    assert _comparable(extended.history) == _comparable(fresh.history) == _comparable(_metrics(fresh.run))
    _same_weights(extended.run, fresh.run)


def test_ctrl_c_before_training_says_to_add_resume(tmp_path, one_thread, monkeypatch):
    """A KeyboardInterrupt outside the training loop (here: while the features load to resume an
    interrupted run) ends as StoppedBySignal, exit 130, whose hint names --resume: the run needs it."""
    w = make_tiny_workdir(tmp_path)
    cfg = TrainConfig(workdir=w, epochs=2, max_steps=3, **TINY)
    first = run_train(cfg)
    (first.run / "manifest.json").unlink()  # killed before its manifest: an interrupted run

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_stage, "load_train_data", interrupt)
    with pytest.raises(StoppedBySignal) as stopped:
        run_train(dataclasses.replace(cfg, resume=True))
    assert stopped.value.exit_code == 130 and "--resume" in stopped.value.hint
    # a fresh run interrupted before it began has nothing to resume
    with pytest.raises(StoppedBySignal) as fresh:
        run_train(dataclasses.replace(cfg, run="other"))
    assert fresh.value.hint == "rerun the same command"
