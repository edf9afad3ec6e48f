"""The extraction loop: decode (worker processes) -> batch frames of several videos -> backbones -> write.

Three things run at once: the decode workers (a few videos ahead), the backbone forward in the calling
thread, and a writer thread storing finished videos. Each video is claimed in the store before it is
decoded (so concurrent writers never work on one video), discarded and rewritten as a whole, and
marked complete last; a failure at any step is recorded for that video and the run goes on.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fcvc_pipeline.features.decode_pool import DecodePool
from fcvc_pipeline.features.networks import Backbones
from fcvc_pipeline.features.store import Claim, FeatureStore
from fcvc_pipeline.features.video import DecodedVideo, DecodePlan, VideoSource


def source_stat(path: Path) -> dict[str, int] | None:
    """Size and modification time of a video file (what "changed on disk" compares); None if unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"source_size": int(st.st_size), "source_mtime_ns": int(st.st_mtime_ns)}


def video_status(store: FeatureStore, source: VideoSource) -> str | None:
    """None when ``source`` is extracted and unchanged; otherwise why it must be (re)extracted."""
    attrs = store.video_attrs(source.video_id)
    if attrs is None:
        return "new"
    if attrs.get("complete") is not True:
        return "failed before" if "failure" in attrs else "interrupted before"
    stat = source_stat(source.path)
    if stat is None:
        return None  # extracted earlier; the file has gone since, the features stay valid
    if any(attrs.get(k) != v for k, v in stat.items()):
        return "changed on disk"
    return None


@dataclass
class _Job:
    source: VideoSource
    claim: Claim
    stat: dict[str, int]


@dataclass
class LoopStats:
    completed: int = 0
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # video_id -> (path, reason)
    busy: int = 0  # being written by another process
    late_up_to_date: int = 0  # completed by another process before we got to it
    frames: int = 0  # frames pushed through the frame backbone
    compute_seconds: float = 0.0  # time inside backbone forwards (incl. host<->device copies)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


class _Writer:
    """A thread writing finished videos, so compression and disk I/O overlap the next forward."""

    def __init__(self, store: FeatureStore, stats: LoopStats, bar: Any, max_pending: int = 4):
        self.store, self.stats, self.bar = store, stats, bar
        self.error: BaseException | None = None
        self._q: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="fcvc-writer", daemon=True)
        self._thread.start()

    def submit(self, job: _Job, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        if self.error is not None:
            job.claim.release()  # the job is not queued, so nothing else would release its claim
            raise self.error
        self._q.put((job, arrays, attrs))

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            job, arrays, attrs = item
            try:
                if self.error is None:
                    vid = job.source.video_id
                    self.store.discard_video(vid)
                    self.store.write_video(vid, arrays, attrs)
                    self.stats.add("completed")
            except BaseException as e:  # disk full, permissions: the run cannot go on
                self.error = e
            finally:
                job.claim.release()
                self.bar.update(1)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error


class ExtractionLoop:
    """Extract ``todo`` into ``store`` with ``backbones`` (see the module docstring)."""

    def __init__(self, store: FeatureStore, backbones: Backbones, plan: DecodePlan, *, workers: int,
                 timeout: float, batch_size: int, clip_batch: int, dtype: str, bar: Any,
                 run_attrs: dict[str, Any]):
        self.store, self.backbones, self.plan = store, backbones, plan
        self.workers, self.timeout = workers, timeout
        self.batch_size, self.clip_batch = batch_size, clip_batch
        self.dtype = np.dtype(dtype)
        self.bar = bar
        self.run_attrs = run_attrs
        self.stats = LoopStats()
        self._held: dict[str, Claim] = {}

    # -- feeding the decoders (runs in the decode pool's scheduler thread) ----------------------
    def _jobs(self, todo: list[VideoSource]) -> Iterator[_Job]:
        for source in todo:
            claim = self.store.claim(source.video_id)
            if claim is None:
                self.stats.add("busy")
                self.bar.update(1)
                continue
            if video_status(self.store, source) is None:  # another writer finished it meanwhile
                claim.release()
                self.stats.add("late_up_to_date")
                self.bar.update(1)
                continue
            self._held[source.video_id] = claim
            yield _Job(source, claim, source_stat(source.path) or {})

    def _fail(self, job: _Job, stage: str, reason: str) -> None:
        vid = job.source.video_id
        try:
            self.store.discard_video(vid)
            self.store.record_failure(vid, path=str(job.source.path), stage=stage, error=reason)
        finally:
            job.claim.release()
            self._held.pop(vid, None)
        self.stats.failed[vid] = (str(job.source.path), f"{stage}: {reason}")
        self.bar.update(1)
        self.bar.set_postfix(failed=len(self.stats.failed), refresh=False)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, todo: list[VideoSource]) -> LoopStats:
        per_video = self.plan.frames
        prefetch = max(2 * self.workers, -(-self.batch_size // per_video) + self.workers)
        pool = DecodePool(self.plan, workers=self.workers, timeout=self.timeout, prefetch=prefetch)
        writer = _Writer(self.store, self.stats, self.bar)
        buffer: list[tuple[_Job, DecodedVideo]] = []
        try:
            for outcome in pool.imap(self._jobs(todo), path_of=lambda job: job.source.path):
                job = outcome.item
                if outcome.video is None:
                    self._fail(job, "decode", outcome.error or "unknown error")
                    continue
                buffer.append((job, outcome.video))
                if len(buffer) * per_video >= self.batch_size:
                    self._compute(buffer, writer)
                    buffer = []
            if buffer:
                self._compute(buffer, writer)
                buffer = []
        finally:
            try:
                writer.close()
            finally:
                for claim in list(self._held.values()):
                    claim.release()  # a no-op for claims the writer already released
                self._held.clear()
        return self.stats

    def _compute(self, buffer: list[tuple[_Job, DecodedVideo]], writer: _Writer) -> None:
        n = self.plan.frames
        frames = np.concatenate([v.frames for _, v in buffer])  # uint8 [V*N, S, S, 3]
        t0 = time.perf_counter()
        pooled_parts, region_parts = [], []
        for s in range(0, len(frames), self.batch_size):
            p, r = self.backbones.frames(frames[s:s + self.batch_size])
            pooled_parts.append(p)
            region_parts.append(r)
        pooled = np.concatenate(pooled_parts)  # [V*N, 2048]
        regions = np.concatenate(region_parts)  # [V*N, G*G, 2048]
        clip_feats = None
        if self.backbones.clip is not None:
            clips = np.concatenate([v.clip_frames[v.clip_index] for _, v in buffer])  # uint8 [V*N, L, c, c, 3]
            clip_feats = np.concatenate([self.backbones.clips(clips[s:s + self.clip_batch])
                                         for s in range(0, len(clips), self.clip_batch)])  # [V*N, C]
        self.stats.compute_seconds += time.perf_counter() - t0
        self.stats.frames += len(frames)
        for k, (job, video) in enumerate(buffer):
            rows = slice(k * n, (k + 1) * n)
            arrays = {
                "frame_indices": video.frame_indices.astype(np.int32),
                "frame_features": pooled[rows].astype(self.dtype),
                "region_features": regions[rows].astype(self.dtype),
            }
            if clip_feats is not None:
                arrays["clip_features"] = clip_feats[rows].astype(self.dtype)
            bad = [name for name, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
            if bad:
                self._fail(job, "features", f"non-finite values (NaN/inf) in {', '.join(bad)} as {self.dtype.name}; "
                                            "nothing was written (try --dtype float32 or other weights)")
                continue
            attrs = {"source": str(job.source.path), **job.stat, "num_frames": video.num_frames, "fps": video.fps,
                     "width": video.width, "height": video.height, "decoder": video.decoder,
                     **({"decoder_note": video.fallback_reason} if video.fallback_reason else {}),
                     **self.run_attrs}
            self._held.pop(job.source.video_id, None)
            writer.submit(job, arrays, attrs)
