"""Training against a store that is damaged or that grows: damage stops it before the first step (or is
left out with --skip-damaged); new videos in the store do not block --resume or mark a run as changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fcvc_pipeline.errors import MismatchError
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.stages.train import TrainConfig, run_train
from tests.tiny import make_tiny_workdir

TINY = ["--d-model", "32", "--layers", "2", "--batch-size", "6", "--device", "cpu", "--lr", "0.003",
        "--select-beams", ""]
CLI = [sys.executable, "-m", "fcvc_pipeline", "train"]


def damage(store_path, video_id: str, how: str):
    store = FeatureStore.open(store_path)
    attrs = store.video_attrs(video_id)
    rel = next(k for k in attrs["chunks"] if k.startswith("region_features/"))
    f = store_path / "videos" / video_id / attrs["version"] / rel
    if how == "delete":
        f.unlink()
    elif how == "truncate":
        f.write_bytes(f.read_bytes()[:-3])
    else:
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
    return f


@pytest.mark.parametrize("how", ["delete", "truncate", "bit flip"])
def test_a_damaged_video_stops_training_before_the_first_step(tmp_path, how):
    w = make_tiny_workdir(tmp_path)
    f = damage(w / "features.zarr", "v001", how)
    out = subprocess.run(CLI + ["--workdir", str(w), "--epochs", "1", *TINY], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "'v001'" in out.stderr and str(f) in out.stderr and "1 of " in out.stderr
    assert "--skip-damaged" in out.stderr and "--verify" in out.stderr
    run = w / "runs" / "fcvc-cf-ia"
    assert not (run / "last.pt").exists() and not (run / "metrics.jsonl").exists()


def test_skip_damaged_trains_without_the_damaged_videos_and_lists_them(tmp_path):
    w = make_tiny_workdir(tmp_path)
    f = damage(w / "features.zarr", "v002", "bit flip")
    out = subprocess.run(CLI + ["--workdir", str(w), "--epochs", "1", "--skip-damaged", "--json", *TINY],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "1 of " in out.stderr and "'v002'" in out.stderr and str(f) in out.stderr
    assert json.loads(out.stdout)["epochs"] == 1
    # the run depends on the videos it read: re-extracting the damaged one changes its inputs
    manifest = json.loads((w / "runs" / "fcvc-cf-ia" / "manifest.json").read_text())
    store = FeatureStore.open(w / "features.zarr")
    assert manifest["inputs"]["features"] != store.content_fingerprint()


def test_a_growing_store_neither_blocks_resume_nor_changes_a_finished_run(tmp_path):
    w = make_tiny_workdir(tmp_path)
    store = FeatureStore.open(w / "features.zarr", mode="a")
    base = ["--workdir", str(w), "--model", "fcvc", "--epochs", "2", "--checkpoint-every", "2", *TINY]
    killed = subprocess.run(CLI + base + ["--run", "a"], capture_output=True, text=True,
                            env={**os.environ, "FCVC_FAULT_KILL_AT_STEP": "3"})
    assert killed.returncode == -9, killed.stderr

    def add(video_id: str, seed: int):
        rng = np.random.default_rng(seed)
        store.write_video(video_id, {"frame_indices": np.arange(4, dtype=np.int32),
                                     "frame_features": rng.normal(size=(4, 16)).astype(np.float32),
                                     "region_features": rng.normal(size=(4, 4, 16)).astype(np.float32),
                                     "clip_features": rng.normal(size=(4, 8)).astype(np.float32)}, {})

    add("new-without-captions", 1)  # extraction goes on while the run is down
    add("v014", 2)  # a test-split video: training does not read it
    resumed = subprocess.run(CLI + base + ["--run", "a", "--resume", "--json"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["epochs"] == 2

    add("another-new-one", 3)
    cfg = TrainConfig(workdir=w, model="fcvc", run="a", epochs=2, checkpoint_every=2, d_model=32, layers=2,
                      batch_size=6, device="cpu", lr=0.003, select_beams=())
    assert run_train(cfg).up_to_date
    add("v000", 4)  # one of the run's training videos now holds other features
    with pytest.raises(MismatchError) as e:
        run_train(cfg)
    assert "trained differently" in str(e.value) and "features" in str(e.value)


def test_cached_split_captions_stay_valid_while_the_store_grows(tmp_path):
    from fcvc_pipeline.inference.captioner import caption_split

    w = make_tiny_workdir(tmp_path)
    run_train(TrainConfig(workdir=w, model="fcvc", epochs=1, d_model=32, layers=2, batch_size=6, device="cpu",
                          select_beams=()))
    out = caption_split(w, None, "val", device="cpu")
    first = out.stat().st_mtime_ns
    store = FeatureStore.open(w / "features.zarr", mode="a")
    arrays = {k: v for k, v in (("frame_indices", np.arange(4, dtype=np.int32)),
                                ("frame_features", np.ones((4, 16), np.float32)),
                                ("region_features", np.ones((4, 4, 16), np.float32)),
                                ("clip_features", np.ones((4, 8), np.float32)))}
    store.write_video("unrelated", arrays, {})
    assert caption_split(w, None, "val", device="cpu").stat().st_mtime_ns == first  # still up to date
    store.write_video("v012", arrays, {})  # a val video changed: captioned again
    assert caption_split(w, None, "val", device="cpu").stat().st_mtime_ns != first
