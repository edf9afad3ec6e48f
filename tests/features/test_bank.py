"""Holding features for training: the preallocated bank (no second copy while loading), the streamed bank
(same batches, nothing held), the node-shared memory-mapped bank, and the choice between them."""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest
import torch

from fcvc_pipeline.errors import ConfigError, MismatchError
from fcvc_pipeline.features.bank import (
    StoreBank,
    bank_layout,
    choose_feature_mode,
    load_feature_bank,
    parse_budget,
    shared_feature_bank,
)
from fcvc_pipeline.features.store import FeatureStore


def _store(path, n=8, frames=3, regions=4, dim=32, seed=0, odd=None):
    rng = np.random.default_rng(seed)
    store = FeatureStore.create(path, {"frames": frames, "dtype": "float16", "test": True})
    for i in range(n):
        r = regions if odd != i else regions + 1
        store.write_video(f"v{i:02d}", {
            "frame_indices": np.arange(frames, dtype=np.int32),
            "frame_features": rng.normal(size=(frames, dim)).astype(np.float16),
            "region_features": rng.normal(size=(frames, r, dim)).astype(np.float16),
            "clip_features": rng.normal(size=(frames, 8)).astype(np.float16),
        }, {"source": f"v{i}.mp4"})
    return FeatureStore.open(path)


def test_the_bank_is_filled_in_place_not_stacked_from_copies(tmp_path):
    store = _store(tmp_path / "f.zarr", n=60, regions=16, dim=512)
    ids = store.completed_ids()
    bank_bytes = bank_layout(store, ids[0], regions=True).video_nbytes() * len(ids)
    tracemalloc.start()
    bank = load_feature_bank(store, ids, regions=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert bank.nbytes() == bank_bytes
    # the bank plus what reading one video takes, far from the 2x of stacking a list of copies
    assert peak < 1.2 * bank_bytes, (peak, bank_bytes)
    for i, vid in enumerate(ids):
        f = store.read_video(vid)
        assert np.array_equal(bank.regions[i].numpy(), f.region_features)
        assert np.array_equal(bank.clips[i].numpy(), f.clip_features)


def test_a_video_of_another_shape_is_named(tmp_path):
    store = _store(tmp_path / "f.zarr", odd=3)
    with pytest.raises(MismatchError, match="'v03'.*region_features of shape"):
        load_feature_bank(store, store.completed_ids(), regions=True)
    assert load_feature_bank(store, store.completed_ids(), regions=False).regions is None  # not read: no error


def test_the_streamed_bank_gives_the_same_batches_and_pickles_as_its_path(tmp_path):
    store = _store(tmp_path / "f.zarr")
    ids = store.completed_ids()
    memory = load_feature_bank(store, ids, regions=True)
    stream = StoreBank(tmp_path / "f.zarr", ids, regions=True)
    assert stream.nbytes() == memory.nbytes() and stream.index() == memory.index()
    rows = torch.tensor([5, 0, 7])
    a, b = memory.batch(rows), pickle.loads(pickle.dumps(stream)).batch(rows)
    for name in ("frames", "clips", "regions"):
        assert torch.equal(getattr(a, name), getattr(b, name)) and getattr(b, name).dtype == torch.float32
    assert len(pickle.dumps(stream)) < 2000  # the path and ids, no arrays, no open store


def test_the_shared_bank_is_built_once_and_mapped(tmp_path):
    store = _store(tmp_path / "f.zarr")
    ids = store.completed_ids()
    calls = []
    built = shared_feature_bank(store, ids, regions=True, cache_dir=tmp_path / "cache", builder=True,
                                wait=lambda: calls.append("wait"))
    mapped = shared_feature_bank(store, ids, regions=True, cache_dir=tmp_path / "cache", builder=False,
                                 wait=lambda: calls.append("wait"))
    assert calls == ["wait", "wait"]
    memory = load_feature_bank(store, ids, regions=True)
    rows = torch.arange(len(ids))
    for bank in (built, mapped):
        got = bank.batch(rows)
        assert all(torch.equal(getattr(got, n), getattr(memory.batch(rows), n)) for n in ("frames", "clips", "regions"))
    folders = list((tmp_path / "cache").iterdir())
    assert len(folders) == 1 and (folders[0] / "done.json").is_file()
    # a builder that finds the cache complete maps it without writing (the files keep their times)
    before = {p.name: p.stat().st_mtime_ns for p in folders[0].iterdir()}
    shared_feature_bank(store, ids, regions=True, cache_dir=tmp_path / "cache", builder=True, wait=lambda: None)
    assert {p.name: p.stat().st_mtime_ns for p in folders[0].iterdir()} == before
    # another set of videos gets its own cache
    shared_feature_bank(store, ids[:3], regions=True, cache_dir=tmp_path / "cache", builder=True, wait=lambda: None)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_budgets_and_the_auto_choice():
    assert parse_budget("8GiB") == 8 * 2**30 and parse_budget("500MB") == 500 * 10**6
    assert parse_budget("1234") == 1234 and parse_budget("1.5 kib") == 1536
    assert parse_budget("25%", available=4000) == 1000 and parse_budget(None, available=4000) == 2000
    for bad in ("lots", "-1GB", "0%", "150%", "8XB"):
        with pytest.raises(ConfigError, match="--memory-budget"):
            parse_budget(bad, available=4000)
    assert choose_feature_mode("auto", 100, 100)[0] == "memory"
    assert choose_feature_mode("auto", 101, 100)[0] == "stream"
    assert choose_feature_mode("memory", 10**12, 1)[0] == "memory"
    assert choose_feature_mode("stream", 1, 10**12)[0] == "stream"
