"""`fcvc extract` notices damaged videos: a missing or cut chunk file on every run, altered bytes with
--verify; either way the video is reported by id and file and extracted again, to the same numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from fcvc_pipeline.features.store import FeatureStore
from tests.stages.test_extract import TINY_CLI, make_corpus
from tests.stages.test_train_store import damage

EXTRACT = [sys.executable, "-m", "fcvc_pipeline", "extract", *TINY_CLI]


def extract(*args):
    out = subprocess.run(EXTRACT + ["--json", *map(str, args)], capture_output=True, text=True)
    return out.returncode, json.loads(out.stdout) if out.stdout else None, out.stderr


def test_damaged_videos_are_reported_and_extracted_again(tmp_path):
    videos, work = tmp_path / "videos", tmp_path / "w"
    make_corpus(videos, 4)
    rc, doc, err = extract("--workdir", work, videos)
    assert rc == 0 and doc["completed"] == 4, err
    path = work / "features.zarr"
    before = {v: FeatureStore.open(path).read_video(v).region_features for v in ("clip01", "clip02")}

    cut = damage(path, "clip01", "truncate")
    flipped = damage(path, "clip02", "bit flip")
    rc, doc, err = extract("--workdir", work, videos)  # every run notices missing or cut chunk files
    assert rc == 0, err
    assert doc["completed"] == 1 and doc["up_to_date"] == 3 and list(doc["damaged"]) == ["clip01"]
    assert str(cut) in doc["damaged"]["clip01"] and "'clip01'" in err and str(cut) in err

    rc, doc, err = extract("--workdir", work, "--verify", videos)  # altered bytes need every byte read
    assert rc == 0, err
    assert doc["completed"] == 1 and list(doc["damaged"]) == ["clip02"]
    assert str(flipped) in doc["damaged"]["clip02"] and "verified 4 videos, 1 damaged" in err

    store = FeatureStore.open(path)
    assert store.completed_ids() == ["clip00", "clip01", "clip02", "clip03"] and store.failures() == {}
    for vid, old in before.items():
        assert store.check_video(vid, full=True) is None
        np.testing.assert_array_equal(store.read_video(vid).region_features, old)  # the same numbers again
    rc, doc, err = extract("--workdir", work, "--verify", videos)
    assert rc == 0 and doc["up_to_date"] == 4 and doc["damaged"] == {}, err
