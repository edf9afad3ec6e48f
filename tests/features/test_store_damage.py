"""Fault injection on the feature store: damaged chunk files are errors naming the video and the file,
and a reader racing a rewrite sees the old complete video or the new one, never a mix.

Each damage is made the way it happens: a chunk file deleted, truncated, or one bit flipped in place.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr

from fcvc_pipeline.features.store import DamagedVideoError, FeatureStore, features_digest
from tests.features.test_store import SETTINGS, tiny_arrays, write_like_the_loop


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    s = FeatureStore.create(tmp_path / "features.zarr", SETTINGS)
    write_like_the_loop(s, "good", tiny_arrays(0))
    write_like_the_loop(s, "hurt", tiny_arrays(1))
    return s


def chunk_file(store: FeatureStore, video_id: str, array: str = "region_features"):
    attrs = store.video_attrs(video_id)
    rel = next(k for k in attrs["chunks"] if k.startswith(array + "/"))
    return store.path / "videos" / video_id / attrs["version"] / rel


def flip_one_bit(path, offset_from_end: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))


def assert_damage_named(err: DamagedVideoError, video_id: str, path) -> None:
    text = str(err)
    assert err.video_id == video_id and repr(video_id) in text
    assert str(path) in text, text
    assert "--verify" in text  # says what to do


def test_every_chunk_is_written_with_a_checksum_and_the_video_with_a_digest(store):
    attrs = store.video_attrs("good")
    assert attrs["digest"] == features_digest({k: (v.astype(np.float32) if v.dtype.kind == "f" else v)
                                               for k, v in tiny_arrays(0).items()})
    assert set(attrs["arrays"]) == {"frame_indices", "frame_features", "region_features"}
    version = store.path / "videos" / "good" / attrs["version"]
    for name in attrs["arrays"]:
        codecs = zarr.open_array(str(version / name), mode="r").metadata.to_dict()["codecs"]
        zstd = [c for c in codecs if c["name"] == "zstd"]
        assert zstd and zstd[0]["configuration"]["checksum"] is True, name
    for rel, size in attrs["chunks"].items():
        assert (version / rel).stat().st_size == size


@pytest.mark.parametrize("damage", ["delete", "truncate", "bit flip"])
def test_a_damaged_chunk_is_an_error_naming_the_video_and_the_file(store, damage):
    f = chunk_file(store, "hurt")
    if damage == "delete":
        f.unlink()
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-7])
    else:
        flip_one_bit(f)
    reader = FeatureStore.open(store.path)
    with pytest.raises(DamagedVideoError) as e:
        reader.read_video("hurt")
    assert_damage_named(e.value, "hurt", f)
    np.testing.assert_array_equal(reader.read_video("good").frame_features, tiny_arrays(0)["frame_features"])

    quick = reader.check_video("hurt")
    full = reader.check_video("hurt", full=True)
    assert full is not None and full.video_id == "hurt"
    if damage == "bit flip":
        assert quick is None  # same size: only reading every byte notices
    else:
        assert quick is not None and str(f) in str(quick)
    assert reader.check_video("good", full=True) is None


def test_the_chunk_checksum_alone_catches_a_bit_flip(store):
    """Without the digest comparison (verify=False) the Zstd checksum of the chunk still refuses it."""
    f = chunk_file(store, "hurt", "frame_features")
    for offset in (2, 9):  # inside the checksum trailer and inside the compressed data
        original = f.read_bytes()
        flip_one_bit(f, offset)
        with pytest.raises(DamagedVideoError) as e:
            FeatureStore.open(store.path).read_video("hurt", verify=False)
        assert "frame_features" in str(e.value) and "decoded" in str(e.value)
        f.write_bytes(original)
    FeatureStore.open(store.path).read_video("hurt")  # restored: reads again


def test_swapped_chunks_of_the_same_size_fail_the_digest(tmp_path):
    """Each chunk decodes fine and has the recorded size, but it belongs to another video: only the
    digest notices."""
    store = FeatureStore.create(tmp_path / "features.zarr", SETTINGS)
    for vid, value in (("one", 1.0), ("two", 2.0)):
        arrays = tiny_arrays(0)
        arrays["region_features"] = np.full_like(arrays["region_features"], value)
        write_like_the_loop(store, vid, arrays)
    a, b = chunk_file(store, "one"), chunk_file(store, "two")
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()
    b.write_bytes(a.read_bytes())
    assert store.check_video("two") is None  # the quick check cannot tell
    with pytest.raises(DamagedVideoError) as e:
        FeatureStore.open(store.path).read_video("two")
    assert "do not match the checksum" in str(e.value)
    assert FeatureStore.open(store.path).read_video("two", verify=False).region_features.max() == 1.0


def legacy_video(store: FeatureStore, video_id: str, arrays: dict[str, np.ndarray]) -> None:
    """A video as fcvc wrote them before checksums: arrays directly in the video's group, no digest."""
    group = zarr.open_group(str(store.path / "videos"), mode="a").require_group(video_id)
    for name, value in arrays.items():
        group.create_array(name, data=value, chunks=value.shape, overwrite=True)
    group.attrs.put({"video_id": video_id, "written": time.time(), "complete": True})


def test_videos_written_before_checksums_still_read_and_a_missing_chunk_is_still_an_error(store):
    legacy_video(store, "old", tiny_arrays(7))
    reader = FeatureStore.open(store.path)
    np.testing.assert_array_equal(reader.read_video("old").region_features, tiny_arrays(7)["region_features"])
    assert reader.check_video("old", full=True) is None
    f = store.path / "videos" / "old" / "region_features" / "c" / "0" / "0" / "0"
    f.unlink()
    with pytest.raises(DamagedVideoError) as e:
        reader.read_video("old")
    assert "chunk files are missing" in str(e.value) and "region_features" in str(e.value)

    # re-extracting a legacy video gives it the checksummed layout and removes the old arrays
    write_like_the_loop(store, "old", tiny_arrays(8))
    assert reader.check_video("old", full=True) is None
    assert not (store.path / "videos" / "old" / "region_features").exists()


def test_a_rewrite_keeps_one_version_on_disk(store):
    for seed in (2, 3, 4):
        write_like_the_loop(store, "good", tiny_arrays(seed))
    versions = [p for p in (store.path / "videos" / "good").iterdir() if p.is_dir()]
    assert [p.name for p in versions] == [store.video_attrs("good")["version"]]
    np.testing.assert_array_equal(store.read_video("good").frame_features, tiny_arrays(4)["frame_features"])


REWRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from fcvc_pipeline.features.store import FeatureStore
    store = FeatureStore.open(sys.argv[1], mode="a")
    deadline = time.monotonic() + float(sys.argv[2])
    k = 0
    while time.monotonic() < deadline:
        k += 1
        value = float(k % 1000)
        arrays = {"frame_indices": np.full(3, k % 1000, dtype=np.int32),
                  "frame_features": np.full((3, 8), value, dtype=np.float32),
                  "region_features": np.full((3, 4, 8), value, dtype=np.float32)}
        if k % 2:
            arrays["clip_features"] = np.full((3, 5), value, dtype=np.float32)
        with store.claim("race") as claim:
            store.write_video("race", arrays, {"k": k})
    print(k)
""")


def test_a_reader_racing_rewrites_sees_whole_versions_only(tmp_path):
    """A real writer process rewrites one video as fast as it can while this process reads it."""
    store = FeatureStore.create(tmp_path / "features.zarr", SETTINGS)
    write_like_the_loop(store, "race", tiny_arrays(0))
    seconds = 6.0
    writer = subprocess.Popen([sys.executable, "-c", REWRITER, str(store.path), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    reader = FeatureStore.open(store.path)
    reads, seen = 0, set()
    try:
        while writer.poll() is None:
            v = reader.read_video("race")
            k = v.attrs.get("k")
            if k is not None:  # one of the writer's versions: every array holds its number
                value = k % 1000
                assert (v.frame_indices == value).all() and (v.frame_features == value).all()
                assert (v.region_features == value).all()
                assert (v.clip_features is not None) == bool(k % 2)
                seen.add(k)
            reads += 1
    finally:
        writer.wait(timeout=60)
    rewrites = int(writer.stdout.read())
    assert writer.returncode == 0
    print(f"{reads} reads, {rewrites} rewrites, {len(seen)} versions seen")
    assert reads > 200 and rewrites > 50 and len(seen) > 20, (reads, rewrites, len(seen))
