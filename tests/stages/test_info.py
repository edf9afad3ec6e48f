"""`fcvc info` on a store: counts, damage found quickly (missing/truncated chunk) or with --verify
(altered bytes), exit 1 on damage, and a video whose claim a live process holds shown as being written.
On a run directory: its summary, config, decoding and checked checkpoint digests (exit 1 naming a damaged
one); on a checkpoint: model, vocabulary, position, feature settings and the digest check (exit 2 if damaged)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fcvc_pipeline.errors import MissingArtifactError
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.stages.info import checkpoint_info, run_info
from fcvc_pipeline.stages.train import TrainConfig, run_train
from tests.stages.test_train_store import damage
from tests.tiny import make_tiny_workdir

CLI = [sys.executable, "-m", "fcvc_pipeline", "info"]


def info(*args):
    out = subprocess.run(CLI + list(args), capture_output=True, text=True)
    return out.returncode, (json.loads(out.stdout) if "--json" in args and out.stdout else None), out.stderr


def test_info_counts_videos_and_finds_damage_quickly_or_with_verify(tmp_path):
    w = make_tiny_workdir(tmp_path)
    store = FeatureStore.open(w / "features.zarr", mode="a")
    store.record_failure("broken", path="/videos/broken.mp4", stage="decode", error="moov atom not found")
    rc, doc, err = info("--workdir", str(w), "--json")
    assert rc == 0, err
    assert doc["complete"] == 18 and doc["damaged"] == {} and doc["unverifiable"] == 0 and not doc["verified"]
    assert doc["failed"]["broken"]["error"] == "moov atom not found" and doc["size_bytes"] > 0
    assert "no damage found" in err and "18 complete, 1 failed" in err

    flipped = damage(w / "features.zarr", "v003", "bit flip")
    gone = damage(w / "features.zarr", "v005", "delete")
    rc, doc, err = info(str(w / "features.zarr"), "--json")
    assert rc == 1 and set(doc["damaged"]) == {"v005"}  # same-size damage needs --verify
    assert doc["damaged"]["v005"] == {"file": str(gone), "reason": "the chunk file is missing"}
    assert "--verify reads every byte" in err and str(gone) in err
    rc, doc, err = info(str(w / "features.zarr"), "--verify", "--json")
    assert rc == 1 and set(doc["damaged"]) == {"v003", "v005"} and doc["verified"]
    assert doc["damaged"]["v003"]["file"] == str(flipped) and "checksum" in doc["damaged"]["v003"]["reason"]


HOLDER = textwrap.dedent("""
    import sys, time
    from fcvc_pipeline.features.store import FeatureStore
    store = FeatureStore.open(sys.argv[1], mode="a")
    claim = store.claim("writing")
    store._videos().require_group("writing").attrs.update({"video_id": "writing", "complete": False})
    print("held", flush=True)
    sys.stdin.readline()
""")


def test_info_tells_a_video_being_written_from_an_interrupted_one(tmp_path):
    w = make_tiny_workdir(tmp_path)
    store = FeatureStore.open(w / "features.zarr", mode="a")
    store._videos().require_group("dead").attrs.update({"video_id": "dead", "complete": False})
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, doc, err = info("--workdir", str(w), "--json")
    finally:
        holder.communicate("\n", timeout=30)
    assert rc == 0, err
    assert doc["being_written"] == ["writing"] and doc["interrupted"] == ["dead"]
    rc, doc, _ = info("--workdir", str(w), "--json")  # the holder is gone: its video is interrupted now
    assert doc["being_written"] == [] and doc["interrupted"] == ["dead", "writing"]


def test_info_on_something_else_is_a_clear_error(tmp_path):
    rc, doc, err = info(str(tmp_path), "--json")
    assert rc == 2 and "is not a feature store" in err and str(tmp_path) in err
    assert doc["error"]["kind"] == "missing" and "nor a run directory" in doc["error"]["message"]
    with pytest.raises(MissingArtifactError, match="nothing: no such file or folder"):
        run_info(tmp_path / "nothing", tmp_path)


# -- runs and checkpoints ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run whose decoding was chosen on validation (beam 1 or 2)."""
    w = make_tiny_workdir(tmp_path_factory.mktemp("info"))
    run_train(TrainConfig(workdir=w, model="fcvc", epochs=2, d_model=16, layers=2, batch_size=6, select_beams=(1, 2),
                          device="cpu"))
    return w


def _stored_digest(path):
    return torch.load(path, map_location="cpu", weights_only=True)["digest"]


def test_info_on_a_run_shows_its_summary_config_decoding_and_checked_digests(trained):
    rc, doc, err = info(str(trained / "runs" / "fcvc"), "--json")
    assert rc == 0, err
    assert doc["kind"] == "run" and doc["name"] == "fcvc" and doc["status"] == "done" and doc["model"] == "fcvc"
    assert (doc["epochs_done"], doc["epochs_planned"]) == (2, 2)
    assert doc["decoding"]["chosen_on"] == "val" and set(doc["decoding"]["val_cider_by_beam"]) == {"1", "2"}
    assert doc["config"]["train"]["select_beams"] == [1, 2] and doc["config"]["model"]["d_model"] == 16
    files = doc["checkpoint_files"]
    for name in ("best.pt", "last.pt"):
        assert files[name]["digest_check"] == "ok"
        assert files[name]["digest"] == _stored_digest(trained / "runs" / "fcvc" / name)
    assert files["last.pt"]["epoch"] == 2 and files["last.pt"]["step"] > 0
    assert "digest ok" in err and "decoding: beam" in err and "chosen on validation" in err
    # a run's name alone, when no such path exists here
    assert run_info(Path("fcvc"), trained).summary.name == "fcvc"


def test_info_on_checkpoints(trained):
    best, last = (trained / "runs" / "fcvc" / n for n in ("best.pt", "last.pt"))
    vocab = json.loads((trained / "vocab" / "vocab.json").read_text())
    store = FeatureStore.open(trained / "features.zarr")
    b = checkpoint_info(best).to_json()
    assert b["kind"] == "checkpoint" and b["role"] == "best" and b["digest_check"] == "ok"
    assert b["digest"] == _stored_digest(best) and b["model"]["name"] == "fcvc" and b["model"]["parameters"] > 0
    assert b["vocabulary_size"] == len(vocab["tokens"]) and b["model"]["config"]["d_model"] == 16
    assert b["store_settings_fingerprint"] == store.settings_fingerprint
    assert b["decoding"]["chosen_on"] == "val" and b["epoch"] in (1, 2)
    rc, doc, err = info(str(last), "--json")
    assert rc == 0, err
    assert doc["role"] == "last" and doc["epoch"] == 2 and doc["step"] > 0 and doc["resumable"] is True
    assert doc["model"]["parameters"] == b["model"]["parameters"] and "digest checked: ok" in err


def test_damaged_checkpoints_are_named_older_ones_are_described_unchecked(trained, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained / "runs" / "fcvc", run)
    raw = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    name = next(iter(raw["state_dict"]))
    raw["state_dict"][name] = raw["state_dict"][name] + 1  # changed after it was written: the digest no longer fits
    torch.save(raw, run / "last.pt")
    rc, doc, err = info(str(run), "--json")
    assert rc == 1, err
    assert "damaged checkpoint" in doc["checkpoint_files"]["last.pt"]["damaged"]
    assert doc["checkpoint_files"]["best.pt"]["digest_check"] == "ok" and "last.pt: DAMAGED" in err
    rc, doc, err = info(str(run / "last.pt"), "--json")
    assert rc == 2 and doc["error"]["kind"] == "input" and doc["error"]["path"] == str(run / "last.pt")
    assert "damaged checkpoint" in doc["error"]["message"]

    old = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    del old["digest"]  # written before checkpoints carried one
    torch.save(old, run / "best.pt")
    contents = checkpoint_info(run / "best.pt").contents
    assert contents["digest"] is None and contents["digest_check"].startswith("absent")


def test_info_shows_how_the_videos_were_computed_and_a_mix(tmp_path):
    w = make_tiny_workdir(tmp_path)
    store = FeatureStore.open(w / "features.zarr", mode="a")
    arrays = store.read_video("v000")
    arrays = {"frame_indices": arrays.frame_indices, "frame_features": arrays.frame_features,
              "region_features": arrays.region_features, "clip_features": arrays.clip_features}
    store.write_video("bf16-one", arrays, {"device": "cpu", "precision": "bf16"})
    store.write_video("fp32-one", arrays, {"device": "cpu", "precision": "fp32"})
    rc, doc, err = info(str(w / "features.zarr"), "--json")
    assert rc == 0, err
    assert doc["computed_with"] == {"bf16 on cpu": 1, "fp32 on cpu": 1,
                                    "unrecorded precision on an unrecorded device": 18}
    assert "computed with: bf16 on cpu (1), fp32 on cpu (1)" in err and "a MIX" in err
