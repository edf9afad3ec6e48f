"""The features a model trains on or captions: in memory (one bank), or streamed from the store.

- :class:`FeatureBank` / :func:`load_feature_bank`: every video read once into preallocated arrays; a batch
  of rows becomes the :class:`~fcvc_pipeline.models.VideoBatch` the captioners take (cast to float32 per
  batch, so the bank keeps the store's float16).
- :func:`shared_feature_bank`: the same bank in memory-mapped files, built once per machine and mapped by
  every process (torchrun ranks): one copy per node.
- :class:`StoreBank`: the same interface with nothing held; each batch reads its videos from the store
  (the trainer prefetches them in DataLoader workers).

:func:`choose_feature_mode` picks between the first and the last for ``--features auto`` against a memory
budget (:func:`parse_budget`). docs/scale.md has the measurements.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import atomic_write_json, fingerprint
from fcvc_pipeline.errors import ConfigError, FcvcError, MismatchError, MissingArtifactError
from fcvc_pipeline.features.store import DamagedVideoError, FeatureStore
from fcvc_pipeline.models.state import VideoBatch
from fcvc_pipeline.naming import safe_name, short_id


class DamagedFeaturesError(FcvcError):
    """Some of the videos to load have damaged features; lists them (video, file, reason)."""

    kind = "damaged"

    def __init__(self, store_path, damaged: list[DamagedVideoError], total: int, *, shown: int = 10):
        self.damaged = damaged
        lines = [f"  {short_id(e.video_id)}: {e.path}: {e.reason}" for e in damaged[:shown]]
        if len(damaged) > shown:
            lines.append(f"  ... and {len(damaged) - shown} more")
        super().__init__(f"{len(damaged)} of {total} videos in {store_path} have damaged features; nothing was "
                         f"trained or captioned:\n" + "\n".join(lines),
                         hint="`fcvc extract --verify VIDEOS...` re-extracts them; `fcvc train --skip-damaged` "
                              "trains without them")


ARRAYS = (("frames", "frame_features"), ("clips", "clip_features"), ("regions", "region_features"))


@dataclass
class FeatureBank:
    """Features of a set of videos, stacked (kept in the store's dtype; cast per batch)."""

    video_ids: list[str]
    frames: torch.Tensor  # [V, N, frame_dim]
    clips: torch.Tensor | None  # [V, N, clip_dim]
    regions: torch.Tensor | None  # [V, N, M, region_dim]

    @classmethod
    def from_arrays(cls, video_ids: Sequence[str], arrays: dict[str, np.ndarray]) -> "FeatureBank":
        """A bank over ``arrays`` (bank field -> array with a row per video), sharing their memory."""
        tensor = lambda name: torch.from_numpy(arrays[name]) if name in arrays else None  # noqa: E731
        return cls(video_ids=list(video_ids), frames=tensor("frames"), clips=tensor("clips"),
                   regions=tensor("regions"))

    def index(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.video_ids)}

    def to(self, device: torch.device) -> "FeatureBank":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return FeatureBank(self.video_ids, move(self.frames), move(self.clips), move(self.regions))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.frames, self.clips, self.regions) if t is not None)

    def video_shapes(self) -> dict[str, tuple[int, ...] | None]:
        """Stored array name -> the shape one video contributes (None: not held)."""
        return {key: None if getattr(self, field) is None else tuple(getattr(self, field).shape[1:])
                for field, key in ARRAYS}

    def batch(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32):
        """The :class:`VideoBatch` of the videos at ``rows`` (indices into this bank)."""
        pick = lambda t: None if t is None else t.index_select(0, rows.to(t.device)).to(dtype)  # noqa: E731
        return VideoBatch(frames=pick(self.frames), clips=pick(self.clips), regions=pick(self.regions))


FEATURE_MODES = ("auto", "memory", "stream")
DEFAULT_BUDGET = "50%"  # of the memory available when training starts (MemAvailable on Linux)


@dataclass(frozen=True)
class BankLayout:
    """The per-video shapes and dtypes of the arrays a bank holds (from one probe video)."""

    shapes: dict[str, tuple[tuple[int, ...], np.dtype]]  # bank field -> (per-video shape, dtype)

    def video_nbytes(self) -> int:
        return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in self.shapes.values())


def bank_layout(store: FeatureStore, probe_id: str, *, regions: bool) -> BankLayout:
    """What each video contributes to a bank, read from ``probe_id`` (clips only when it has them)."""
    f = store.read_video(probe_id)
    shapes = {}
    for field, key in ARRAYS:
        a = getattr(f, key)
        if field == "regions" and not regions:
            continue
        if a is None:
            if field == "regions":
                raise MismatchError(f"video {probe_id!r} in {store.path} has no region features, which this model needs")
            continue
        shapes[field] = (tuple(a.shape), a.dtype)
    return BankLayout(shapes)


def _check_like(layout: BankLayout, f, store_path) -> dict[str, np.ndarray]:
    """The arrays of one read video, checked against the bank's layout (a video of another shape is named)."""
    out = {}
    for field, key in ARRAYS:
        if field not in layout.shapes:
            continue
        a = getattr(f, key)
        shape, dtype = layout.shapes[field]
        if a is None or tuple(a.shape) != shape:
            got = "none" if a is None else tuple(a.shape)
            raise MismatchError(f"video {f.video_id!r} in {store_path} has {key} of shape {got}, the other videos "
                                f"{shape}: a store's videos must share their shapes")
        out[field] = a
    return out


def load_feature_bank(store: FeatureStore, video_ids: Sequence[str], *, regions: bool,
                      out: dict[str, np.ndarray] | None = None, layout: BankLayout | None = None) -> FeatureBank:
    """Read the given (complete) videos from the store into one bank, once.

    The bank's arrays are allocated first and each video is copied into its row, so the peak is the bank
    itself plus one video (not a list of arrays and then their stacked copy). ``out`` (bank field -> array
    of the full bank's shape, e.g. a memory-mapped file) is filled instead of new arrays. Every video is
    checked as it is read (``FeatureStore.read_video``); damaged ones are all read and reported together,
    in one :class:`DamagedFeaturesError`. ``layout``: the videos' shapes when already known (else read
    from the first video).
    """
    if not video_ids:
        raise MismatchError(f"no video to load from {store.path}")
    layout = layout or bank_layout(store, video_ids[0], regions=regions)
    arrays = out if out is not None else {
        field: np.empty((len(video_ids), *shape), dtype=dtype) for field, (shape, dtype) in layout.shapes.items()}
    damaged: list[DamagedVideoError] = []
    for i, vid in enumerate(progress.bar(video_ids, desc="loading features", unit="video")):
        try:
            f = store.read_video(vid)
        except DamagedVideoError as e:
            damaged.append(e)
            continue
        if damaged:
            continue  # keep checking, copy nothing more
        for field, a in _check_like(layout, f, store.path).items():
            arrays[field][i] = a
    if damaged:
        raise DamagedFeaturesError(store.path, damaged, len(video_ids))
    return FeatureBank.from_arrays(video_ids, arrays)


class StoreBank:
    """The :class:`FeatureBank` interface without the bank: ``batch(rows)`` reads those videos from the store
    (checked, as every read is). Memory stays at one batch whatever the number of videos; pickles as the
    store's path, so DataLoader worker processes open their own store."""

    def __init__(self, store_path: Path, video_ids: Sequence[str], *, regions: bool,
                 layout: BankLayout | None = None):
        self.store_path, self.video_ids, self.regions = Path(store_path), list(video_ids), regions
        self._store: FeatureStore | None = None
        self._layout = layout

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}

    @property
    def store(self) -> FeatureStore:
        if self._store is None:
            self._store = FeatureStore.open(self.store_path)
        return self._store

    @property
    def layout(self) -> BankLayout:
        if self._layout is None:
            self._layout = bank_layout(self.store, self.video_ids[0], regions=self.regions)
        return self._layout

    def index(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.video_ids)}

    def to(self, device: torch.device) -> "StoreBank":  # batches are moved by the caller
        return self

    def nbytes(self) -> int:
        """What the whole bank would take in memory (nothing is held)."""
        return self.layout.video_nbytes() * len(self.video_ids) if self.video_ids else 0

    def video_shapes(self) -> dict[str, tuple[int, ...] | None]:
        shapes = self.layout.shapes
        return {key: shapes[field][0] if field in shapes else None for field, key in ARRAYS}

    def arrays(self, rows: Sequence[int], dtype: np.dtype | None = None) -> dict[str, np.ndarray]:
        """The stored arrays of the videos at ``rows``, stacked, in ``dtype`` (default: the store's); each video
        is converted as it is copied in, so a batch never exists in both dtypes."""
        layout = self.layout
        out = {field: np.empty((len(rows), *shape), dtype=dtype or stored)
               for field, (shape, stored) in layout.shapes.items()}
        for i, r in enumerate(rows):
            try:
                f = self.store.read_video(self.video_ids[r])
            except DamagedVideoError as e:
                raise DamagedFeaturesError(self.store_path, [e], len(rows)) from None
            for field, a in _check_like(layout, f, self.store_path).items():
                out[field][i] = a
        return out

    def batch(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> VideoBatch:
        arrays = self.arrays(rows.tolist(), dtype=torch.empty((), dtype=dtype).numpy().dtype)
        pick = lambda name: torch.from_numpy(arrays[name]) if name in arrays else None  # noqa: E731
        return VideoBatch(frames=pick("frames"), clips=pick("clips"), regions=pick("regions"))


# -- how to hold the features: memory or stream -------------------------------------------------------------
def parse_budget(text: str | None, *, available: int | None = None) -> int:
    """``--memory-budget``: bytes ("8GiB", "500MB", "123456") or a share of the available memory ("50%")."""
    raw = (text or DEFAULT_BUDGET).strip()
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    try:
        if raw.endswith("%"):
            share = float(raw[:-1])
            if not 0 < share <= 100:
                raise ValueError
            return int((available if available is not None else available_memory()) * share / 100)
        number = raw.rstrip("kKmMgGtTiIbB ")
        unit = raw[len(number):].strip().lower()
        value = float(number) * units[unit]
        if value < 0:
            raise ValueError
        return int(value)
    except (ValueError, KeyError):
        raise ConfigError(f"--memory-budget must be a size (e.g. 8GiB, 500MB) or a share of the available "
                          f"memory (e.g. 50%), got {text!r}") from None


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux: MemAvailable; elsewhere: total physical)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def plan_features(store: FeatureStore, video_ids: Sequence[str], *, regions: bool, mode: str = "auto",
                  budget: str | None = None) -> tuple[str, str, BankLayout]:
    """(memory | stream, why, the videos' layout) for holding these videos' features: the bank's size from
    the first video's shapes (read once; pass the layout on to the bank) against ``--memory-budget``."""
    layout = bank_layout(store, video_ids[0], regions=regions)
    chosen, why = choose_feature_mode(mode, layout.video_nbytes() * len(video_ids), parse_budget(budget))
    return chosen, why, layout


def choose_feature_mode(mode: str, bank_bytes: int, budget_bytes: int) -> tuple[str, str]:
    """(memory | stream, why) for ``--features mode``."""
    size = f"{bank_bytes / 2**30:.2f} GiB"
    if mode == "memory":
        return "memory", f"--features memory ({size})"
    if mode == "stream":
        return "stream", f"--features stream (the bank would be {size})"
    if bank_bytes <= budget_bytes:
        return "memory", f"the {size} bank fits the memory budget of {budget_bytes / 2**30:.2f} GiB"
    return "stream", f"the {size} bank exceeds the memory budget of {budget_bytes / 2**30:.2f} GiB"


def shared_feature_bank(store: FeatureStore, video_ids: Sequence[str], *, regions: bool, cache_dir: Path,
                        builder: bool, wait: Callable[[], None], layout: BankLayout | None = None,
                        content: str | None = None) -> FeatureBank:
    """One bank per machine for several processes (torchrun ranks on one node): the ``builder`` (local rank
    0) fills memory-mapped files under ``cache_dir`` once, ``wait()`` (a barrier all of them call) lets the
    others map the same files, so the features sit in memory once, in the page cache every process maps.

    The files are keyed by the features' content fingerprint and kept, so a later run on the same videos
    maps them without reading the store; a half-written cache (a killed builder) has no ``done.json`` and
    is rebuilt. ``content``: ``store.content_fingerprint(video_ids)`` when the caller has it already (it
    reads every video's attributes); ``layout`` as for :func:`load_feature_bank`.
    """
    key = fingerprint({"features": content or store.content_fingerprint(video_ids), "videos": list(video_ids),
                       "regions": regions})
    # one folder per machine: on a shared filesystem two nodes never write each other's files
    folder = Path(cache_dir) / f"{key[:16]}-{safe_name(socket.gethostname())}"
    done = folder / "done.json"
    if builder and not done.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.npy"):
            stale.unlink()
        layout = layout or bank_layout(store, video_ids[0], regions=regions)
        out = {field: np.lib.format.open_memmap(folder / f"{field}.npy", mode="w+", dtype=dtype,
                                                shape=(len(video_ids), *shape))
               for field, (shape, dtype) in layout.shapes.items()}
        load_feature_bank(store, video_ids, regions=regions, out=out, layout=layout)
        for a in out.values():
            a.flush()
        atomic_write_json(done, {"key": key, "videos": len(video_ids), "fields": sorted(out)})
        del out
    wait()
    if not done.is_file():
        raise MissingArtifactError(f"the shared feature cache {folder} was not built",
                                   hint="see the first process's error above")
    fields = json.loads(done.read_text(encoding="utf-8"))["fields"]
    # copy-on-write mappings: writable tensors for torch, pages shared until someone writes (nobody does)
    arrays = {field: np.load(folder / f"{field}.npy", mmap_mode="c") for field in fields}
    return FeatureBank.from_arrays(video_ids, arrays)
