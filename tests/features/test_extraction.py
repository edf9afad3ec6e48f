"""``extract_in_memory``: the store's features, bit for bit, with no store and nothing written."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fcvc_pipeline.errors import MismatchError, MissingArtifactError
from fcvc_pipeline.features.backbones import batchnorm_state
from fcvc_pipeline.features.extraction import extract_in_memory, extract_like
from fcvc_pipeline.features.networks import Backbones, load_from_record, network_from_record
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.features.video import VideoSource, list_videos
from fcvc_pipeline.stages.extract import run_extract
from tests.stages.test_extract import cfg, make_corpus


def test_features_in_memory_are_the_stored_ones_in_the_order_given(tmp_path, one_thread):
    folder = tmp_path / "v"
    make_corpus(folder, 5)
    (folder / "clip02b.mp4").write_bytes(b"not a video")  # fails between good ones, in both
    store_path = tmp_path / "features.zarr"
    run_extract(cfg([folder], store_path, dtype="float16"))
    store = FeatureStore.open(store_path)
    record = store.backbone_records()["inception"]
    backbones = Backbones(load_from_record(store, "inception", record), None, None, torch.device("cpu"))
    sources = list_videos([folder])  # the order fcvc extract computed them in (batches of 2 videos)
    before = sorted(os.listdir(tmp_path))

    results = list(extract_in_memory(store.settings, backbones, sources, workers=1, batch_size=6))

    assert [r.source for r in results] == sources
    assert sorted(os.listdir(tmp_path)) == before  # nothing written
    failed = {r.source.video_id: r.error for r in results if r.arrays is None}
    assert list(failed) == ["clip02b"] and failed["clip02b"].startswith("decode: ")
    for r in results:
        if r.arrays is None:
            continue
        kept = store.read_video(r.source.video_id)
        for name in ("frame_features", "region_features"):
            assert r.arrays[name].dtype == np.float16
            assert np.array_equal(r.arrays[name], getattr(kept, name)), (r.source.video_id, name)
        assert np.array_equal(r.arrays["frame_indices"], kept.frame_indices)

    # reversed order: the results follow it
    backwards = list(reversed(sources))
    assert [r.source for r in extract_in_memory(store.settings, backbones, backwards, workers=2)] == backwards
    assert list(extract_in_memory(store.settings, backbones, [], workers=1)) == []


def test_a_network_from_a_record_is_checked_without_a_store(tmp_path):
    store_path = tmp_path / "features.zarr"
    make_corpus(tmp_path / "v", 2)
    run_extract(cfg([tmp_path / "v"], store_path))
    store = FeatureStore.open(store_path)
    record = store.backbone_records()["inception"]
    stored = load_from_record(store, "inception", record)
    bn = {k: v.clone() for k, v in batchnorm_state(stored).items()}
    rebuilt = network_from_record("inception", record, where="test", batchnorm=bn)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), stored.state_dict().values()))
    bn[next(k for k in bn if k.endswith("running_mean"))] += 1e-3
    with pytest.raises(MismatchError, match="differs from the one recorded"):
        network_from_record("inception", record, where="test", batchnorm=bn)

    # a file network: missing is a MissingArtifactError with the caller's hint, another file a MismatchError
    file_record = {**record, "kind": "path", "path": str(tmp_path / "gone.pth"), "file_sha256": "0" * 64}
    with pytest.raises(MissingArtifactError, match="gone.pth is gone") as e:
        network_from_record("inception", file_record, where="test", missing_hint="use --backbone-weights")
    assert e.value.hint == "use --backbone-weights"
    other = tmp_path / "other.pth"
    other.write_bytes(b"other bytes")
    with pytest.raises(MismatchError, match="not the inception weights file"):
        network_from_record("inception", file_record, where="test", path_override=other)


def test_sources_keep_the_ids_they_are_given(tmp_path):
    """extract_like stores VideoSource values under their own ids (what fcvc caption's cache relies on)."""
    paths = make_corpus(tmp_path / "v", 2)
    ref = tmp_path / "ref.zarr"
    run_extract(cfg([tmp_path / "v"], ref))
    out = extract_like(ref, [VideoSource("first~x", paths[0]), VideoSource("a/b", paths[1])], tmp_path / "o.zarr",
                       device="cpu", workers=1)
    assert out.completed == 2
    assert sorted(FeatureStore.open(tmp_path / "o.zarr").completed_ids()) == ["a/b", "first~x"]
