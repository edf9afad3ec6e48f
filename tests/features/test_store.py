"""Unit tests of the feature store (``features/store.py``) on tiny arrays: 3 frames, 4 regions, 8-dim features.

Videos are written the way the extraction loop's writer does it (``features/loop.py``): claim the video,
``discard_video`` whatever its group held, ``write_video`` (arrays, then ``complete`` last), release the claim.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings

import numpy as np
import pytest
import zarr

from fcvc_pipeline.artifacts import fingerprint
from fcvc_pipeline.errors import MismatchError, MissingArtifactError
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.naming import safe_name

N, M, D, C = 3, 4, 8, 5
SETTINGS = {"frames": N, "frame_size": 75, "dtype": "float32", "frame_dim": D, "num_regions": M,
            "inception": {"weights": "random:0"}, "clip": None}


def tiny_arrays(seed: int = 0, *, clips: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {
        "frame_indices": np.array([1, 4, 7], dtype=np.int32),
        "frame_features": rng.standard_normal((N, D)).astype(np.float32),
        "region_features": rng.standard_normal((N, M, D)).astype(np.float32),
    }
    if clips:
        out["clip_features"] = rng.standard_normal((N, C)).astype(np.float32)
    return out


def write_like_the_loop(store: FeatureStore, video_id: str, arrays: dict[str, np.ndarray], **attrs) -> None:
    claim = store.claim(video_id)
    assert claim is not None
    with claim:
        store.discard_video(video_id)
        store.write_video(video_id, arrays, {"source": f"/videos/{video_id}.mp4", "num_frames": 9, "fps": 25.0,
                                             **attrs})


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    return FeatureStore.create(tmp_path / "features.zarr", SETTINGS)


# -- creating and opening --------------------------------------------------------------------------
def test_create_records_settings_and_reopening_with_them_keeps_the_videos(tmp_path, store):
    assert FeatureStore.exists(store.path)
    assert store.settings == SETTINGS
    write_like_the_loop(store, "v1", tiny_arrays())

    # the same settings in another key order are the same settings
    again = FeatureStore.create(store.path, dict(reversed(list(SETTINGS.items()))))
    assert again.settings == SETTINGS and again.completed_ids() == ["v1"]
    assert FeatureStore.open(store.path).completed_ids() == ["v1"]


def test_other_settings_are_refused_naming_each_differing_field(store):
    write_like_the_loop(store, "v1", tiny_arrays())
    other = {**SETTINGS, "frames": 2, "region_grid": [8, 8]}
    with pytest.raises(MismatchError) as e:
        FeatureStore.create(store.path, other)
    text = str(e.value)
    assert "frames: 3 (store) vs 2 (now)" in text
    assert "region_grid: None (store) vs [8, 8] (now)" in text
    for same in ("frame_size", "dtype", "inception", "num_regions"):
        assert f"{same}:" not in text, same  # only the differing fields are named
    assert "--force" in text
    # refused means untouched
    assert FeatureStore.open(store.path).settings == SETTINGS
    assert FeatureStore.open(store.path).completed_ids() == ["v1"]


def test_force_rebuilds_the_store_with_the_new_settings(store):
    write_like_the_loop(store, "v1", tiny_arrays())
    other = {**SETTINGS, "frames": 2}
    rebuilt = FeatureStore.create(store.path, other, force=True)
    assert rebuilt.settings == other
    assert rebuilt.completed_ids() == [] and not rebuilt.is_complete("v1")
    assert rebuilt.settings_fingerprint == fingerprint(other)


def test_open_refuses_a_missing_store_and_another_format(tmp_path, store):
    with pytest.raises(MissingArtifactError) as e:
        FeatureStore.open(tmp_path / "nowhere.zarr")
    assert "nowhere.zarr" in str(e.value)
    root = zarr.open_group(str(store.path), mode="a", zarr_format=3)
    root.attrs["format_version"] = 99
    with pytest.raises(MismatchError) as e:
        FeatureStore.open(store.path)
    assert "99" in str(e.value)


def test_settings_fingerprint_is_stable(tmp_path, store):
    fp = store.settings_fingerprint
    assert fp == fingerprint(SETTINGS) and len(fp) == 64
    write_like_the_loop(store, "v1", tiny_arrays())
    assert FeatureStore.open(store.path).settings_fingerprint == fp  # videos do not change it
    twin = FeatureStore.create(tmp_path / "twin.zarr", dict(reversed(list(SETTINGS.items()))))
    assert twin.settings_fingerprint == fp  # nor does the key order or the location
    assert FeatureStore.create(tmp_path / "other.zarr", {**SETTINGS, "frames": 4}).settings_fingerprint != fp


# -- writing and reading ---------------------------------------------------------------------------
def test_a_written_video_reads_back_equal(store):
    arrays = tiny_arrays(1, clips=True)
    write_like_the_loop(store, "v1", arrays, source_size=1234, source_mtime_ns=5)
    assert store.completed_ids() == ["v1"] and store.is_complete("v1")

    v = FeatureStore.open(store.path).read_video("v1")
    assert v.video_id == "v1"
    assert v.frame_indices.dtype == np.int32 and v.frame_indices.tolist() == [1, 4, 7]
    for name in ("frame_features", "region_features", "clip_features"):
        got = getattr(v, name)
        assert got.dtype == np.float32 and got.shape == arrays[name].shape, name
        np.testing.assert_array_equal(got, arrays[name], err_msg=name)
    assert v.attrs["complete"] is True and v.attrs["video_id"] == "v1"
    assert v.attrs["source"] == "/videos/v1.mp4" and v.attrs["source_size"] == 1234 and v.attrs["num_frames"] == 9
    assert isinstance(v.attrs["written"], float)


def test_float_arrays_take_the_store_dtype_and_optional_arrays_may_be_absent(tmp_path):
    store = FeatureStore.create(tmp_path / "f16.zarr", {k: v for k, v in SETTINGS.items() if k != "dtype"})
    arrays = tiny_arrays(2)
    del arrays["region_features"]
    write_like_the_loop(store, "v1", arrays)
    v = store.read_video("v1")
    assert v.frame_features.dtype == np.float16  # the default dtype
    assert v.frame_indices.dtype == np.int32  # not a feature array: kept as is
    np.testing.assert_array_equal(v.frame_features, arrays["frame_features"].astype(np.float16))
    assert v.region_features is None and v.clip_features is None


def test_a_rewrite_replaces_the_whole_video(store):
    write_like_the_loop(store, "v1", tiny_arrays(1, clips=True))
    fresh = tiny_arrays(2)
    write_like_the_loop(store, "v1", fresh)
    v = store.read_video("v1")
    np.testing.assert_array_equal(v.frame_features, fresh["frame_features"])
    assert v.clip_features is None  # discard_video removed the old clip features


def test_non_finite_features_are_refused_and_nothing_is_written(store):
    for bad in (np.nan, np.inf, -np.inf):
        arrays = tiny_arrays()
        arrays["region_features"][1, 2, 3] = bad
        with pytest.raises(ValueError) as e:
            store.write_video("v1", arrays, {})
        assert "region_features" in str(e.value) and "non-finite" in str(e.value)
    assert store.video_attrs("v1") is None and store.completed_ids() == []


def test_a_video_without_complete_true_does_not_exist_for_readers(store):
    write_like_the_loop(store, "done", tiny_arrays())
    write_like_the_loop(store, "interrupted", tiny_arrays())
    # a writer killed after the arrays, before the final ``complete: true``
    meta = store.path / "videos" / "interrupted" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["complete"] = False
    meta.write_text(json.dumps(doc))
    # and one killed while writing the group's metadata
    write_like_the_loop(store, "torn", tiny_arrays())
    torn = store.path / "videos" / "torn" / "zarr.json"
    torn.write_text(torn.read_text()[:20])

    reader = FeatureStore.open(store.path)
    assert reader.completed_ids() == ["done"]
    for vid in ("interrupted", "torn", "never-written"):
        assert not reader.is_complete(vid)
        with pytest.raises(KeyError) as e:
            reader.read_video(vid)
        assert vid in str(e.value)
    assert reader.failures() == {}  # interrupted is not failed
    assert reader.video_attrs("interrupted")["complete"] is False
    assert reader.video_attrs("torn") is None and reader.video_attrs("never-written") is None


def test_attrs_cannot_mark_a_video_complete_or_failed(store):
    write_like_the_loop(store, "v1", tiny_arrays(), complete=False, failure={"stage": "decode"})
    attrs = store.video_attrs("v1")
    assert attrs["complete"] is True and "failure" not in attrs
    assert store.failures() == {}


# -- failures --------------------------------------------------------------------------------------
def test_failures_are_recorded_listed_and_cleared_by_a_later_success(store):
    write_like_the_loop(store, "good", tiny_arrays())
    store.record_failure("bad", path="/videos/bad.mp4", stage="decode", error="empty file (0 bytes)")
    store.record_failure("worse", path="/videos/worse.mp4", stage="features", error="non-finite values")

    reader = FeatureStore.open(store.path)
    assert reader.completed_ids() == ["good"]
    assert reader.failures() == {
        "bad": {"path": "/videos/bad.mp4", "stage": "decode", "error": "empty file (0 bytes)"},
        "worse": {"path": "/videos/worse.mp4", "stage": "features", "error": "non-finite values"},
    }
    assert not reader.is_complete("bad")
    with pytest.raises(KeyError):
        reader.read_video("bad")

    write_like_the_loop(store, "bad", tiny_arrays())  # fixed and extracted again
    assert store.completed_ids() == ["bad", "good"] and set(store.failures()) == {"worse"}
    assert "failure" not in store.video_attrs("bad")


# -- unsafe video ids ------------------------------------------------------------------------------
UNSAFE_IDS = ["a/b", "../escape", "..", ".", ".hidden", "sub\\dir", "vidéo ñ 日本", "with space",
              "percent%2Fb", "x" * 300, "y" * 299 + "/"]


def test_unsafe_video_ids_map_to_safe_group_names_and_keep_the_original_id(tmp_path, store):
    for k, vid in enumerate(UNSAFE_IDS):
        write_like_the_loop(store, vid, tiny_arrays(k))
    store.record_failure("fail/ed", path="/x/fail/ed.mp4", stage="decode", error="boom")

    names = sorted(os.listdir(store.path / "videos"))
    groups = [n for n in names if n != "zarr.json"]
    assert len(groups) == len(UNSAFE_IDS) + 1  # no two ids share a group
    for name in groups:
        assert name not in (".", "..") and not name.startswith(".") and "/" not in name and "\\" not in name
        assert name.isascii() and name.isprintable() and len(name) <= 120
        assert (store.path / "videos" / name / "zarr.json").is_file()
    assert sorted(groups) == sorted(safe_name(v) for v in [*UNSAFE_IDS, "fail/ed"])
    # nothing was written outside the store but its lock and its writers' claims, one safe name per video
    assert sorted(os.listdir(tmp_path)) == ["features.zarr", "features.zarr.claims", "features.zarr.lock"]
    assert sorted(os.listdir(store.claims_dir)) == sorted(f"{safe_name(v)}.lock" for v in UNSAFE_IDS)

    reader = FeatureStore.open(store.path)
    assert reader.completed_ids() == sorted(UNSAFE_IDS)
    assert reader.failures() == {"fail/ed": {"path": "/x/fail/ed.mp4", "stage": "decode", "error": "boom"}}
    for k, vid in enumerate(UNSAFE_IDS):
        v = reader.read_video(vid)
        assert v.video_id == vid and v.attrs["video_id"] == vid
        np.testing.assert_array_equal(v.frame_features, tiny_arrays(k)["frame_features"], err_msg=vid)


def test_a_video_whose_id_is_a_zarr_metadata_name_is_stored(store):
    write_like_the_loop(store, "zarr.json", tiny_arrays())
    assert store.completed_ids() == ["zarr.json"]


# -- fingerprints, claims, blobs ----------------------------------------------------------------------
def test_content_fingerprint_changes_when_a_video_is_added_or_rewritten(store):
    empty = store.content_fingerprint()
    assert FeatureStore.open(store.path).content_fingerprint() == empty  # a pure function of what is on disk
    write_like_the_loop(store, "v1", tiny_arrays())
    one = store.content_fingerprint()
    assert one != empty
    assert FeatureStore.open(store.path).content_fingerprint() == one
    store.record_failure("bad", path="/bad.mp4", stage="decode", error="x")
    assert store.content_fingerprint() == one  # failures are not content
    write_like_the_loop(store, "v2", tiny_arrays(1))
    two = store.content_fingerprint()
    assert two not in (empty, one)
    write_like_the_loop(store, "v2", tiny_arrays(1))  # extracted again into the same numbers
    assert store.content_fingerprint() == two
    write_like_the_loop(store, "v2", tiny_arrays(2))  # into other numbers
    assert store.content_fingerprint() not in (empty, one, two)


def test_the_fingerprint_of_some_videos_ignores_the_others(store):
    write_like_the_loop(store, "v1", tiny_arrays(1))
    write_like_the_loop(store, "v2", tiny_arrays(2))
    mine = store.content_fingerprint(["v1", "v2"])
    write_like_the_loop(store, "v3", tiny_arrays(3))  # the store grows
    store.record_failure("v4", path="/v4.mp4", stage="decode", error="x")
    assert store.content_fingerprint(["v2", "v1"]) == mine
    assert store.content_fingerprint() != mine
    write_like_the_loop(store, "v2", tiny_arrays(5))  # one of mine changes
    assert store.content_fingerprint(["v1", "v2"]) != mine
    assert store.content_fingerprint(["v1"]) == FeatureStore.open(store.path).content_fingerprint(["v1"])


def test_a_claim_is_exclusive_until_released(store):
    first = store.claim("a/b")
    assert first is not None
    assert store.claim("a/b") is None  # another writer (flock is per open file, so this holds in-process too)
    other = store.claim("c")
    assert other is not None
    other.release()
    first.release()
    first.release()  # idempotent
    with store.claim("a/b") as again:
        assert again is not None and again.video_id == "a/b"
        assert store.claim("a/b") is None
    assert store.claim("a/b") is not None


def test_zarr_opens_and_lists_a_store_with_live_claims_without_a_warning(store):
    write_like_the_loop(store, "v1", tiny_arrays())
    store.put_backbone("inception", {"kind": "random"}, {"inception_bn": b"123"})
    with store.claim("v1"), store.claim("being/written"):
        assert store.claims_dir.is_dir() and not (store.path / ".claims").exists()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # zarr's "Object at .claims is not recognized ..." would raise
            root = zarr.open_group(str(store.path), mode="r")
            assert sorted(root.group_keys()) == ["backbones", "videos"]
            assert sorted(name for name, _ in root.members(max_depth=None))  # the whole tree, recursively
            root.tree()
            assert FeatureStore.open(store.path).read_video("v1").frame_features.shape == (N, D)


def test_claims_of_an_older_fcvc_inside_the_store_are_respected_then_retired(store):
    old = store.path / ".claims"  # where claims lived before they moved beside the store
    old.mkdir()
    for name in ("held", "free"):
        (old / f"{name}.lock").touch()
    fd = os.open(old / "held.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an older fcvc writing "held" now
    try:
        assert store.claim_held("held") and not store.claim_held("free")
        assert store.claim("held") is None  # its claim in the old place is respected
        with store.claim("free") as mine:
            assert mine is not None and store.claim_held("free")
        FeatureStore.create(store.path, SETTINGS)  # opening for writing retires what no one holds
        assert sorted(os.listdir(old)) == ["held.lock"]
    finally:
        os.close(fd)  # the older writer is done
    assert not store.claim_held("held")
    with store.claim("held") as mine:
        assert mine is not None
    FeatureStore.create(store.path, SETTINGS)
    assert not old.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sorted(zarr.open_group(str(store.path), mode="r").group_keys()) == ["videos"]


def test_blobs_and_backbone_records_round_trip(store):
    blob = bytes(range(256)) * 3 + b"\x00\x00"
    store.put_backbone("inception", {"kind": "random", "seed": 0, "bn_blob": "inception_bn"}, {"inception_bn": blob})
    store.put_backbone("clip", {"kind": "hub"}, {"empty": b""})
    reader = FeatureStore.open(store.path)
    assert reader.get_blob("inception_bn") == blob
    assert reader.get_blob("empty") == b""
    assert reader.backbone_records() == {"inception": {"kind": "random", "seed": 0, "bn_blob": "inception_bn"},
                                         "clip": {"kind": "hub"}}
    store.put_backbone("inception", {"kind": "random", "seed": 1}, {"inception_bn": b"new"})
    assert reader.get_blob("inception_bn") == b"new"
    assert reader.backbone_records()["inception"]["seed"] == 1
    with pytest.raises(MissingArtifactError) as e:
        reader.get_blob("nope")
    assert "backbones/nope" in str(e.value)
