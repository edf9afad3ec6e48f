"""`fcvc train --tensorboard`: each epoch's record of metrics.jsonl as scalars under runs/<run>/tb/, rebuilt
from metrics.jsonl on resume; without the tensorboard package a clear error before any training."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from fcvc_pipeline.cli import main
from fcvc_pipeline.errors import ConfigError
from fcvc_pipeline.stages.train import TrainConfig, run_train
from tests.tiny import make_tiny_workdir

TINY = dict(model="fcvc-cf-ia", d_model=16, layers=2, heads=2, kernel_size=3, batch_size=6, lr=3e-3, warmup_steps=2,
            select_beams=(), device="cpu")


def _scalars(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_mirrors_metrics_jsonl(tmp_path, one_thread):
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra (in [test]) is not installed")
    w = make_tiny_workdir(tmp_path)
    cfg = TrainConfig(workdir=w, epochs=2, tensorboard=True, **TINY)
    res = run_train(cfg)
    records = [json.loads(x) for x in (res.run / "metrics.jsonl").read_text().splitlines()]
    scalars = _scalars(res.run / "tb")
    assert set(scalars) == {"train/loss", "train/nll", "train/frame_penalty", "train/region_penalty", "val/loss",
                            "val/nll", "val/cider", "val/bleu4", "val/unk", "lr", "time/seconds_per_epoch"}
    assert all([step for step, _ in events] == [1, 2] for events in scalars.values())
    for tag, key in (("val/cider", "val_cider"), ("train/region_penalty", "train_region_penalty"), ("lr", "lr"),
                     ("time/seconds_per_epoch", "seconds")):
        assert [v for _, v in scalars[tag]] == [np.float32(r[key]) for r in records]  # float32 in the events
    # extended: the events are rebuilt from metrics.jsonl, then appended; no epoch twice
    run_train(dataclasses.replace(cfg, epochs=3, resume=True))
    again = _scalars(res.run / "tb")
    assert [step for step, _ in again["val/cider"]] == [1, 2, 3]
    assert again["val/cider"][:2] == scalars["val/cider"]


def test_without_the_package_tensorboard_is_an_error_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    w = make_tiny_workdir(tmp_path)
    with pytest.raises(ConfigError, match="--tensorboard needs the tensorboard package") as e:
        run_train(TrainConfig(workdir=w, epochs=1, tensorboard=True, **TINY))
    assert "pip install 'fcvc-pipeline[tensorboard]'" in e.value.hint
    assert not (w / "runs").exists()
    out = CliRunner().invoke(main, ["train", "--workdir", str(w), "--tensorboard", "--device", "cpu"])
    assert out.exit_code == 2 and "pip install" in out.output
