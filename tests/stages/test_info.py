"""`fcvc info` on a store: counts, damage found quickly (missing/truncated chunk) or with --verify
(altered bytes), exit 1 on damage, and a video whose claim a live process holds shown as being written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from fcvc_pipeline.features.store import FeatureStore
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
