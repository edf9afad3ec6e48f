"""The feature store: one Zarr v3 group per video, so many processes can write one store safely.

Layout (README: "The feature store")::

    features.zarr/                     attrs: format_version, settings, settings_fingerprint
      videos/<safe_name(video_id)>/    attrs: video_id, source, num_frames, fps, complete (written last)
        frame_indices   int32  [N]            indices of the sampled frames in the decoded video
        frame_features  float  [N, 2048]      Inception-V3 pooled
        region_features float  [N, 64, 2048]  Inception-V3 Mixed_7c, 8x8 grid in row-major order
        clip_features   float  [N, C]         clip backbone (C3D fc6: 4096), absent with --c3d-weights none

A video whose group lacks ``complete: true`` does not exist for readers. A failed video keeps a group
with ``complete: false`` and ``failure: {path, stage, error}``; writers only ever touch their own
video's group, so two writers never share a chunk (zarr-python #3682).

Writers coordinate per video with :meth:`FeatureStore.claim` (a non-blocking ``flock`` on
``.claims/<video>.lock`` inside the store, released by the OS even on kill -9). The ``backbones``
group records the exact networks the features came from (attrs) and small binary blobs
(e.g. re-estimated BatchNorm statistics) as uint8 arrays, so the store is self-describing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr

from fcvc_pipeline.artifacts import canonical_json, fingerprint
from fcvc_pipeline.errors import MismatchError, MissingArtifactError
from fcvc_pipeline.naming import safe_name

FORMAT_VERSION = 1
FLOAT_ARRAYS = ("frame_features", "region_features", "clip_features")


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


class Claim:
    """A per-video writer lock (see :meth:`FeatureStore.claim`); release it when done."""

    def __init__(self, video_id: str, fd: int):
        self.video_id = video_id
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


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
                return store
            # one metadata write: a reader (which takes no lock) never sees a root without its attributes
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

    def failures(self) -> dict[str, dict[str, Any]]:
        return {a["video_id"]: a["failure"] for _, a in self._video_attrs()
                if a.get("complete") is not True and "failure" in a and "video_id" in a}

    def content_fingerprint(self) -> str:
        """Changes whenever the settings or the set of complete videos (and their write times) change."""
        done = sorted((a["video_id"], a.get("written")) for _, a in self._video_attrs() if a.get("complete") is True)
        return fingerprint({"settings": self.settings_fingerprint, "videos": done})

    # -- writing -------------------------------------------------------------------------------
    def write_video(self, video_id: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        """Write one video's arrays, then mark it complete (last). Refuses non-finite values."""
        for name in FLOAT_ARRAYS:
            if name in arrays and not np.isfinite(arrays[name]).all():
                raise ValueError(f"{name} has non-finite values (NaN/inf); nothing was written for {video_id!r}")
        dtype = self.settings.get("dtype", "float16")
        group = self._videos().require_group(safe_name(video_id))
        group.attrs.update({"video_id": video_id, "complete": False})
        for name, value in arrays.items():
            value = np.asarray(value)
            if name in FLOAT_ARRAYS:
                value = value.astype(dtype)
            group.create_array(name, data=value, chunks=value.shape, overwrite=True)
        extra = {k: v for k, v in attrs.items() if k not in ("complete", "failure")}
        group.attrs.put({**extra, "video_id": video_id, "written": time.time(), "complete": True})

    def record_failure(self, video_id: str, *, path: str, stage: str, error: str) -> None:
        group = self._videos().require_group(safe_name(video_id))
        group.attrs.put({"video_id": video_id, "complete": False,
                         "failure": {"path": path, "stage": stage, "error": error}})

    # -- coordination between writers and self-description (used by ``fcvc extract``) --------------
    def lock(self):
        """The store-wide lock (the one :meth:`create` takes), for short setup steps."""
        return file_lock(self.path.with_name(self.path.name + ".lock"))

    def claim(self, video_id: str) -> Claim | None:
        """Try to become the only writer of ``video_id``; None when another process holds it."""
        d = self.path / ".claims"
        d.mkdir(exist_ok=True)
        fd = os.open(d / f"{safe_name(video_id)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return Claim(video_id, fd)

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
        group = self._root.require_group("backbones")
        for key, data in (blobs or {}).items():
            group.create_array(key, data=np.frombuffer(data, dtype=np.uint8), overwrite=True)
        group.attrs.update({name: record})

    def get_blob(self, key: str) -> bytes:
        try:
            arr = zarr.open_array(str(self.path / "backbones" / key), mode="r", zarr_format=3)
        except Exception as e:
            raise MissingArtifactError(f"{self.path}: backbones/{key} is missing or unreadable ({e})") from None
        return np.asarray(arr[:], dtype=np.uint8).tobytes()

    # -- reading -------------------------------------------------------------------------------
    def read_video(self, video_id: str) -> VideoFeatures:
        if not self.is_complete(video_id):
            raise KeyError(f"video {video_id!r} is not (completely) in {self.path}")
        g = self._root["videos"][safe_name(video_id)]
        keys = set(g.array_keys())
        return VideoFeatures(
            video_id=video_id,
            frame_indices=g["frame_indices"][:],
            frame_features=g["frame_features"][:],
            region_features=g["region_features"][:] if "region_features" in keys else None,
            clip_features=g["clip_features"][:] if "clip_features" in keys else None,
            attrs=dict(g.attrs),
        )
