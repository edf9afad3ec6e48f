"""The feature store: one Zarr v3 group per video, so many processes can write one store safely.

Layout (README: "The feature store")::

    features.zarr/                     attrs: format_version, settings, settings_fingerprint
      videos/<safe_name(video_id)>/    attrs: video_id, source, num_frames, fps, complete (written last)
        frame_indices   int32  [N]            indices of the sampled frames in the decoded video
        frame_features  float  [N, 2048]      Inception-V3 pooled
        region_features float  [N, 64, 2048]  Inception-V3 Mixed_7c, 8x8 grid in row-major order
        clip_features   float  [N, C]         clip backbone (C3D fc6: 4096), absent with --c3d-weights none

Since checksummed videos (attr ``layout: 2``) the arrays live one level down, in a version group::

      videos/<name>/                   attrs: ..., version, arrays, chunks {file: bytes}, digest, complete
        <version>/frame_indices ...    the arrays above; one chunk per array, Zstd with its content checksum

A rewrite puts the new version beside the old one and then swaps the group's attributes (one atomic
file replace), so a reader sees the old complete video or the new one, never a mix; the old version
is deleted afterwards, and a reader that was inside it retries with the new one. Every chunk carries
Zstd's checksum (verified by the codec on every read), the attributes hold the byte size of every
chunk file (a missing or truncated file is noticed with a ``stat``) and ``digest``, a SHA-256 of the
decoded arrays, verified on every read: a damaged video raises :class:`DamagedVideoError` naming the
video and the file, never returns fill values or other numbers. Videos written before (``layout``
absent, arrays directly in the video group) still read; only the missing-chunk check applies to them.

A video whose group lacks ``complete: true`` does not exist for readers. A failed video keeps a group
with ``complete: false`` and ``failure: {path, stage, error}``; writers only ever touch their own
video's group, so two writers never share a chunk (zarr-python #3682).

Writers coordinate per video with :meth:`FeatureStore.claim` (a non-blocking ``flock`` on
``<store>.claims/<video>.lock`` beside the store, released by the OS even on kill -9). The claims stay
outside the Zarr hierarchy, where zarr would warn about an object it does not know. Stores written
before kept them inside, in ``.claims/``: a claim also takes that old file when it exists (so an older
fcvc writing the same store is still respected), :meth:`FeatureStore.claim_held` reads both places, and
opening a store for writing removes the old folder once no lock in it is held. The ``backbones``
group records the exact networks the features came from (attrs) and small binary blobs
(e.g. re-estimated BatchNorm statistics) as uint8 arrays, so the store is self-describing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from fcvc_pipeline.artifacts import canonical_json, fingerprint
from fcvc_pipeline.errors import FcvcError, MismatchError, MissingArtifactError
from fcvc_pipeline.naming import safe_name, short_id

FORMAT_VERSION = 1  # the store's layout; videos carry their own ``layout`` (see the module docstring)
VIDEO_LAYOUT = 2  # versioned, checksummed videos
FLOAT_ARRAYS = ("frame_features", "region_features", "clip_features")
CHECKSUMMED = ZstdCodec(level=0, checksum=True)  # level 0 = zstd's default (3); checksum: xxhash of each chunk
READ_ATTEMPTS = 10  # a read that loses a race with a rewrite is retried on the new version
OLD_CLAIMS = ".claims"  # inside the store: where claims lived before they moved beside it (<store>.claims/)


class DamagedVideoError(FcvcError):
    """A complete video whose stored data does not match what was written (names the video and the file)."""

    kind = "damaged"

    def __init__(self, video_id: str, path: str | Path, reason: str):
        self.video_id, self.path, self.reason = video_id, str(path), reason
        super().__init__(f"video {short_id(video_id)} is damaged: {path}: {reason}",
                         hint="`fcvc extract --verify` lists every damaged video and re-extracts them "
                              "(or `fcvc train --skip-damaged` leaves them out)")


def features_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over each array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}\n".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return "sha256:" + h.hexdigest()


@dataclass
class VideoFeatures:
    video_id: str
    frame_indices: np.ndarray  # int32 [N]
    frame_features: np.ndarray  # [N, 2048]
    region_features: np.ndarray | None  # [N, 64, 2048]
    clip_features: np.ndarray | None  # [N, C]
    attrs: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) held for the ``with`` block; released even on kill -9."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give an OSError that names no file (zarr's writes do not) the path being written."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, os.strerror(e.errno), str(path)) from e
        raise


class Claim:
    """A per-video writer lock (see :meth:`FeatureStore.claim`); release it when done."""

    def __init__(self, video_id: str, fd: int, *more: int):
        self.video_id = video_id
        self._fds: list[int] = [fd, *more]  # the claim file, and the old in-store one where it exists

    def release(self) -> None:
        while self._fds:
            fd = self._fds.pop()
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _try_lock(path: Path, *, create: bool) -> int | None:
    """A non-blocking exclusive ``flock`` on ``path``: its descriptor, or None when another process holds
    it. Without ``create`` a missing file raises :class:`FileNotFoundError`."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _held(path: Path) -> bool:
    """Whether a live process holds an exclusive lock on ``path`` (opened read-only)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a shared lock we took
    return False


def _settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} (store) vs {new.get(k)!r} (now)" for k in keys
            if canonical_json(old.get(k)) != canonical_json(new.get(k))]


class FeatureStore:
    """Read/write access to ``features.zarr``. Use :meth:`open` to read, :meth:`create` to write."""

    def __init__(self, path: Path, root: Any):
        self.path = Path(path)
        self._root = root

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def exists(cls, path: str | Path) -> bool:
        return (Path(path) / "zarr.json").is_file()

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "FeatureStore":
        path = Path(path)
        if not cls.exists(path):
            raise MissingArtifactError(f"no feature store at {path}", hint="run `fcvc extract VIDEOS...` first")
        root = zarr.open_group(str(path), mode=mode, zarr_format=3)
        if root.attrs.get("format_version") != FORMAT_VERSION:
            raise MismatchError(f"{path}: feature store format {root.attrs.get('format_version')!r}, "
                                f"this fcvc reads format {FORMAT_VERSION}", hint="re-extract with --force")
        return cls(path, root)

    @classmethod
    def create(cls, path: str | Path, settings: dict[str, Any], *, force: bool = False) -> "FeatureStore":
        """Open the store for writing with ``settings``, creating it if needed.

        An existing store made with other settings is refused (a :class:`MismatchError` naming each
        differing field) unless ``force``, which deletes it first. Safe with concurrent callers.
        """
        path = Path(path)
        if not force and cls.exists(path):
            # an existing store with these settings needs no lock (and works in a read-only directory)
            store = cls.open(path, mode="a")
            if canonical_json(store.settings) == canonical_json(settings):
                store._retire_old_claims()
                return store
        with file_lock(path.with_name(path.name + ".lock")):
            if cls.exists(path) and force:
                shutil.rmtree(path)
            if cls.exists(path):
                store = cls.open(path, mode="a")
                old = store.settings
                if canonical_json(old) != canonical_json(settings):
                    diffs = "; ".join(_settings_diff(old, settings))
                    raise MismatchError(f"{path} was extracted with other settings ({diffs})",
                                        hint="use another --workdir, or --force to rebuild the store")
                store._retire_old_claims()
                return store
            # one metadata write: a reader (which takes no lock) never sees a root without its attributes
            with naming(path):
                root = zarr.create_group(str(path), zarr_format=3, attributes={
                    "format_version": FORMAT_VERSION, "settings": settings,
                    "settings_fingerprint": fingerprint(settings), "created": time.time()})
                root.require_group("videos")
            return cls(path, root)

    # -- metadata ------------------------------------------------------------------------------
    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._root.attrs.get("settings", {}))

    @property
    def settings_fingerprint(self) -> str:
        return str(self._root.attrs.get("settings_fingerprint", ""))

    def _videos(self):
        return self._root.require_group("videos")  # writers only

    def _video_attrs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(group name, attrs) per video group, read from disk (tolerates half-written metadata)."""
        vdir = self.path / "videos"
        if not vdir.is_dir():
            return
        for child in sorted(vdir.iterdir()):
            meta = child / "zarr.json"
            try:
                attrs = json.loads(meta.read_text(encoding="utf-8")).get("attributes", {})
            except (OSError, ValueError):
                continue  # killed mid-write: not complete
            yield child.name, attrs

    def completed_ids(self) -> list[str]:
        return sorted(a["video_id"] for _, a in self._video_attrs() if a.get("complete") is True and "video_id" in a)

    def is_complete(self, video_id: str) -> bool:
        meta = self.path / "videos" / safe_name(video_id) / "zarr.json"
        try:
            return json.loads(meta.read_text(encoding="utf-8")).get("attributes", {}).get("complete") is True
        except (OSError, ValueError):
            return False

    def precision_counts(self) -> dict[str, int]:
        """Complete videos per precision their features were computed in (``fp32``/``bf16``; a video
        written before precisions were recorded counts as ``unrecorded``). The videos' attributes say
        ``bf16-autocast`` for bf16 (``Backbones.precision``); it counts as ``bf16``."""
        counts: dict[str, int] = {}
        for _, a in self._video_attrs():
            if a.get("complete") is True:
                key = str(a.get("precision") or "unrecorded").removesuffix("-autocast")
                counts[key] = counts.get(key, 0) + 1
        return counts

    def failures(self) -> dict[str, dict[str, Any]]:
        return {a["video_id"]: a["failure"] for _, a in self._video_attrs()
                if a.get("complete") is not True and "failure" in a and "video_id" in a}

    def content_fingerprint(self, video_ids: Iterable[str] | None = None) -> str:
        """Identifies the features of ``video_ids`` (default: every complete video) and the settings.

        Each video counts by its content digest (by its write time when written before digests), so
        adding other videos, or re-extracting one into the same numbers, changes nothing.
        """
        if video_ids is None:
            attrs = {a["video_id"]: a for _, a in self._video_attrs() if a.get("complete") is True and "video_id" in a}
        else:
            attrs = {vid: self.video_attrs(vid) or {} for vid in video_ids}
        done = sorted((vid, a.get("digest") or a.get("written")) for vid, a in attrs.items()
                      if a.get("complete") is True)
        return fingerprint({"settings": self.settings_fingerprint, "videos": done})

    # -- writing -------------------------------------------------------------------------------
    def write_video(self, video_id: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        """Write one video's arrays beside any older version, then swap them in (marked complete).

        Refuses non-finite values. Readers see the older complete version until the swap, the new
        one after it. The caller holds the video's claim.
        """
        for name in FLOAT_ARRAYS:
            if name in arrays and not np.isfinite(arrays[name]).all():
                raise ValueError(f"{name} has non-finite values (NaN/inf); nothing was written for {video_id!r}")
        dtype = self.settings.get("dtype", "float16")
        stored = {name: np.asarray(value).astype(dtype) if name in FLOAT_ARRAYS else np.asarray(value)
                  for name, value in arrays.items()}
        with naming(self.path / "videos" / safe_name(video_id)):
            self._write_video(video_id, stored, attrs)

    def _write_video(self, video_id: str, stored: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        name = safe_name(video_id)
        try:
            group = self._videos().require_group(name)
        except Exception:  # unreadable metadata of an interrupted write: start this video over
            self.discard_video(video_id)
            group = self._videos().require_group(name)
        if "video_id" not in group.attrs:
            group.attrs.update({"video_id": video_id, "complete": False})
        version = f"v{time.time_ns()}-{os.getpid()}"
        target = group.create_group(version)
        for key, value in stored.items():
            target.create_array(key, data=value, chunks=value.shape, compressors=CHECKSUMMED)
        vdir = self.path / "videos" / name / version
        chunks = {str(f.relative_to(vdir)): f.stat().st_size
                  for key in stored for f in sorted((vdir / key / "c").rglob("*")) if f.is_file()}
        extra = {k: v for k, v in attrs.items() if k not in ("complete", "failure")}
        group.attrs.put({**extra, "video_id": video_id, "layout": VIDEO_LAYOUT, "version": version,
                         "arrays": sorted(stored), "chunks": chunks, "digest": features_digest(stored),
                         "written": time.time(), "complete": True})
        for old in (self.path / "videos" / name).iterdir():  # older versions (and pre-layout-2 arrays)
            if old.is_dir() and old.name != version:
                shutil.rmtree(old, ignore_errors=True)

    def record_failure(self, video_id: str, *, path: str, stage: str, error: str) -> None:
        with naming(self.path / "videos" / safe_name(video_id)):
            group = self._videos().require_group(safe_name(video_id))
            group.attrs.put({"video_id": video_id, "complete": False,
                         "failure": {"path": path, "stage": stage, "error": error}})

    # -- coordination between writers and self-description (used by ``fcvc extract``) --------------
    def lock(self):
        """The store-wide lock (the one :meth:`create` takes), for short setup steps."""
        return file_lock(self.path.with_name(self.path.name + ".lock"))

    @property
    def claims_dir(self) -> Path:
        """Where writers' per-video claim files live: beside the store, outside its Zarr hierarchy."""
        return self.path.with_name(self.path.name + ".claims")

    def _old_claims_dir(self) -> Path:
        return self.path / OLD_CLAIMS  # inside the store, where stores written before kept them

    def claim(self, video_id: str) -> Claim | None:
        """Try to become the only writer of ``video_id``; None when another process holds it."""
        name = f"{safe_name(video_id)}.lock"
        d = self.claims_dir
        with naming(d):
            d.mkdir(exist_ok=True)
        fd = _try_lock(d / name, create=True)
        if fd is None:
            return None
        try:  # an older fcvc writing this store claims in the old place: respect its claims too
            old = _try_lock(self._old_claims_dir() / name, create=False)
        except OSError:  # none there (the usual case), or not ours to open: nothing to respect
            return Claim(video_id, fd)
        except BaseException:
            _unlock(fd)
            raise
        if old is None:
            _unlock(fd)
            return None
        return Claim(video_id, fd, old)

    def claim_held(self, video_id: str) -> bool:
        """Whether a live process holds ``video_id``'s claim now (reads only: works on a read-only store)."""
        name = f"{safe_name(video_id)}.lock"
        return _held(self.claims_dir / name) or _held(self._old_claims_dir() / name)

    def _retire_old_claims(self) -> None:
        """Remove the old in-store claims folder (zarr warns about it) once none of its locks is held.

        Best effort: a lock still held (an older fcvc writing now) keeps its file and the folder; a
        read-only store keeps everything. (An older fcvc that opened a lock file just before it is removed
        may still lock the removed file: claims are transient, and this window closes with the old folder.)
        """
        d = self._old_claims_dir()
        if not d.is_dir():
            return
        try:
            for f in d.iterdir():
                try:
                    fd = os.open(f, os.O_RDWR)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    f.unlink()
                finally:
                    _unlock(fd)
            d.rmdir()
        except OSError:
            pass

    def incomplete_ids(self) -> list[str]:
        """Videos with a group but neither complete nor failed: being written now, or interrupted."""
        return sorted(a["video_id"] for _, a in self._video_attrs()
                      if a.get("complete") is not True and "failure" not in a and "video_id" in a)

    def video_attrs(self, video_id: str) -> dict[str, Any] | None:
        """A video group's attrs as on disk (complete or not); None if absent or unreadable."""
        meta = self.path / "videos" / safe_name(video_id) / "zarr.json"
        try:
            return dict(json.loads(meta.read_text(encoding="utf-8")).get("attributes", {}))
        except (OSError, ValueError):
            return None

    def discard_video(self, video_id: str) -> None:
        """Remove whatever a video's group holds (a partial write, an old failure); hold its claim."""
        shutil.rmtree(self.path / "videos" / safe_name(video_id), ignore_errors=True)

    def backbone_records(self) -> dict[str, Any]:
        """The ``backbones`` group's attrs: what each feature network is, exactly."""
        meta = self.path / "backbones" / "zarr.json"
        try:
            return dict(json.loads(meta.read_text(encoding="utf-8")).get("attributes", {}))
        except (OSError, ValueError):
            return {}

    def put_backbone(self, name: str, record: dict[str, Any], blobs: dict[str, bytes] | None = None) -> None:
        """Save blobs (uint8 arrays ``backbones/<key>``) and then ``record`` under ``name`` (last)."""
        with naming(self.path / "backbones"):
            group = self._root.require_group("backbones")
            for key, data in (blobs or {}).items():
                group.create_array(key, data=np.frombuffer(data, dtype=np.uint8), overwrite=True,
                                   compressors=CHECKSUMMED)
            group.attrs.update({name: record})

    def get_blob(self, key: str) -> bytes:
        try:
            arr = zarr.open_array(str(self.path / "backbones" / key), mode="r", zarr_format=3)
        except Exception as e:
            raise MissingArtifactError(f"{self.path}: backbones/{key} is missing or unreadable ({e})") from None
        return np.asarray(arr[:], dtype=np.uint8).tobytes()

    # -- reading -------------------------------------------------------------------------------
    def read_video(self, video_id: str, *, verify: bool = True) -> VideoFeatures:
        """A complete video's arrays (KeyError if it is not complete).

        Raises :class:`DamagedVideoError` when a chunk file is missing or has another size, a chunk
        fails to decode (Zstd checksum) or, with ``verify``, the arrays do not match their digest.
        A read that overlaps a rewrite of the video returns the new version.
        """
        for attempt in range(READ_ATTEMPTS):
            attrs = self.video_attrs(video_id)
            if attrs is None or attrs.get("complete") is not True:
                raise KeyError(f"video {video_id!r} is not (completely) in {self.path}")
            try:
                arrays = self._read_arrays(video_id, attrs, verify=verify)
                break
            except DamagedVideoError:
                now = self.video_attrs(video_id) or {}
                if attempt + 1 < READ_ATTEMPTS and (now.get("version"), now.get("written")) != (
                        attrs.get("version"), attrs.get("written")):
                    continue  # rewritten while we read: read the new version
                raise
        return VideoFeatures(
            video_id=video_id,
            frame_indices=arrays["frame_indices"],
            frame_features=arrays["frame_features"],
            region_features=arrays.get("region_features"),
            clip_features=arrays.get("clip_features"),
            attrs=attrs,
        )

    def check_video(self, video_id: str, *, full: bool = False) -> DamagedVideoError | None:
        """The damage of a complete video, or None. Quick: the chunk files' presence and sizes;
        ``full``: every byte decoded and compared with the digest (what every read does)."""
        attrs = self.video_attrs(video_id)
        if attrs is None or attrs.get("complete") is not True:
            return None
        try:
            if full:
                self.read_video(video_id)
            else:
                self._check_chunk_files(video_id, attrs)
        except DamagedVideoError as e:
            return e
        except KeyError:  # rewritten as incomplete meanwhile
            return None
        return None

    def _array_dir(self, video_id: str, attrs: dict[str, Any]) -> Path:
        base = self.path / "videos" / safe_name(video_id)
        return base / attrs["version"] if attrs.get("version") else base

    def _check_chunk_files(self, video_id: str, attrs: dict[str, Any]) -> None:
        adir = self._array_dir(video_id, attrs)
        for rel, size in (attrs.get("chunks") or {}).items():
            f = adir / rel
            try:
                have = f.stat().st_size
            except FileNotFoundError:
                raise DamagedVideoError(video_id, f, "the chunk file is missing") from None
            except OSError as e:
                raise DamagedVideoError(video_id, f, f"the chunk file cannot be read ({e.strerror})") from None
            if have != size:
                raise DamagedVideoError(video_id, f, f"the chunk file has {have} bytes, {size} were written")

    def _read_arrays(self, video_id: str, attrs: dict[str, Any], *, verify: bool) -> dict[str, np.ndarray]:
        self._check_chunk_files(video_id, attrs)
        adir = self._array_dir(video_id, attrs)
        key = adir.relative_to(self.path).as_posix()
        try:
            group = self._root[key]
            names = list(attrs["arrays"]) if "arrays" in attrs else sorted(group.array_keys())
        except Exception as e:
            raise DamagedVideoError(video_id, adir, f"the arrays cannot be opened ({type(e).__name__}: {e})") from None
        arrays: dict[str, np.ndarray] = {}
        for name in names:
            try:
                arr = group[name]
                if "chunks" not in attrs and arr.nchunks_initialized < arr.nchunks:
                    raise DamagedVideoError(video_id, adir / name, f"{arr.nchunks - arr.nchunks_initialized} of "
                                                                   f"{arr.nchunks} chunk files are missing")
                arrays[name] = arr[:]
            except DamagedVideoError:
                raise
            except Exception as e:  # a truncated or bit-flipped chunk: Zstd's error or its checksum's
                files = [rel for rel in (attrs.get("chunks") or {}) if rel.startswith(name + "/")]
                where = adir / files[0] if len(files) == 1 else adir / name
                raise DamagedVideoError(video_id, where, f"cannot be decoded ({type(e).__name__}: {e})") from None
        for need in ("frame_indices", "frame_features"):
            if need not in arrays:
                raise DamagedVideoError(video_id, adir / need, "the array is missing")
        if verify and attrs.get("digest") and features_digest(arrays) != attrs["digest"]:
            raise DamagedVideoError(video_id, adir, "the arrays do not match the checksum written with them")
        return arrays
