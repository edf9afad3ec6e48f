"""The extraction loop: decode (worker processes) -> batch frames of several videos -> backbones -> write.

Three things run at once: the decode workers (a few videos ahead), the backbone forward in the calling
thread, and a writer thread storing finished videos. Each video is claimed in the store before it is
decoded (so concurrent writers never work on one video) and written as a whole, replacing any older
version in one step (``FeatureStore.write_video``); a failure at any step is recorded for that video
and the run goes on.

Other writers: a video whose claim another process holds is skipped on the first pass and waited for
afterwards. The loop polls it until it is complete (the other process finished it) or its claim is free
while it is still unfinished (the other process died or gave it up: claims are ``flock`` locks, which
the operating system releases with the process); such a video is then extracted here. A live holder is
waited for as long as it lives, so a loop that returns normally leaves every video of its list
complete or failed.

Stopping: while :meth:`ExtractionLoop.run` runs in the main thread, SIGTERM and SIGINT stop it early
(:func:`stop_signals`): no new video is claimed, decoding is abandoned, the forward in progress finishes
and the writer stores what was computed; decoded videos not yet computed are dropped with nothing
written (their claims released). :attr:`LoopStats.stopped_by` says which signal stopped it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fcvc_pipeline import progress
from fcvc_pipeline.features.decode_pool import DecodePool
from fcvc_pipeline.features.networks import Backbones
from fcvc_pipeline.features.store import Claim, FeatureStore
from fcvc_pipeline.features.video import DecodedVideo, DecodePlan, VideoSource

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
WAIT_LOG_EVERY = 60.0  # seconds between "still waiting" lines while another process holds videos


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
    if store.check_video(source.video_id) is not None:  # a chunk file missing or cut short
        return "damaged"
    return None


class Interrupted(BaseException):
    """A stop signal arrived during work that has no safe point to stop at (see :func:`stop_signals`).

    A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` swallows it.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stop_signals(*, interrupt: bool = False) -> Iterator[list[int]]:
    """While the block runs, SIGTERM and SIGINT are recorded in the yielded list (the work polls it).

    With ``interrupt``, the first one also raises :class:`Interrupted` where the main thread is, for
    stretches with nothing to poll (building networks, downloads). Only the main thread can receive
    signals: elsewhere nothing is installed and the list stays empty. The previous handlers come back
    afterwards (so an inner block that only records nests inside an outer one that interrupts).
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        if interrupt and len(received) == 1:
            raise Interrupted(signum)

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


@dataclass
class _Job:
    source: VideoSource
    claim: Claim
    stat: dict[str, int]


@dataclass
class LoopStats:
    completed: int = 0
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # video_id -> (path, reason)
    busy: int = 0  # videos another process was writing when this run came to them (then waited for)
    late_up_to_date: int = 0  # completed by another process (before this run came to them, or while it waited)
    taken_over: int = 0  # busy videos whose claim was released unfinished, then extracted (or failed) here
    left: list[str] = field(default_factory=list)  # neither complete nor failed at the end (a stop signal)
    stopped_by: int | None = None  # the signal that stopped the loop early
    frames: int = 0  # frames pushed through the frame backbone
    compute_seconds: float = 0.0  # time inside backbone forwards (incl. host<->device copies)
    written: set[str] = field(default_factory=set, repr=False)  # ids this run completed
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def mark_written(self, video_id: str) -> None:
        with self._lock:
            self.completed += 1
            self.written.add(video_id)


class _Writer:
    """A thread writing finished videos, so compression and disk I/O overlap the next forward.

    It owns the claim of every job submitted to it and releases each one when that job is done.
    """

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
                if self.error is None:  # write_video replaces an older version in one swap
                    vid = job.source.video_id
                    self.store.write_video(vid, arrays, attrs)
                    self.stats.mark_written(vid)
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
    """Extract ``todo`` into ``store`` with ``backbones`` (see the module docstring).

    ``poll``: seconds between looks at videos another process holds.
    """

    def __init__(self, store: FeatureStore, backbones: Backbones, plan: DecodePlan, *, workers: int,
                 timeout: float, batch_size: int, clip_batch: int, dtype: str, bar: Any,
                 run_attrs: dict[str, Any], poll: float = 0.5):
        self.store, self.backbones, self.plan = store, backbones, plan
        self.workers, self.timeout = workers, timeout
        self.batch_size, self.clip_batch = batch_size, clip_batch
        self.dtype = np.dtype(dtype)
        self.bar = bar
        self.run_attrs = run_attrs
        self.poll = poll
        self.stats = LoopStats()
        self._held: dict[str, Claim] = {}  # claimed, not yet handed to the writer or released
        self._signals: list[int] = []
        self._busy_ids: set[str] = set()

    def _stopping(self) -> bool:
        return bool(self._signals)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, todo: list[VideoSource]) -> LoopStats:
        with stop_signals() as received:
            self._signals = received
            writer = _Writer(self.store, self.stats, self.bar)
            try:
                busy = self._pass(todo, writer)
                self._wait_and_take_over(busy, writer)
            finally:
                try:
                    writer.close()
                finally:
                    self._release_held()
        s = self.stats
        s.stopped_by = received[0] if received else None
        s.busy = len(self._busy_ids)
        s.taken_over = len(self._busy_ids & (s.written | set(s.failed)))
        # the verdict comes from the store itself, not from counters
        s.left = [src.video_id for src in todo
                  if src.video_id not in s.failed and not self.store.is_complete(src.video_id)]
        return s

    def _release_held(self) -> None:
        for claim in list(self._held.values()):
            claim.release()
        self._held.clear()

    def _pass(self, todo: list[VideoSource], writer: _Writer) -> list[VideoSource]:
        """Claim, decode, compute and hand to the writer every video of ``todo`` that is free; returns
        those another process holds."""
        busy: list[VideoSource] = []
        feeding = [True]
        per_video = self.plan.frames
        prefetch = max(2 * self.workers, -(-self.batch_size // per_video) + self.workers)
        pool = DecodePool(self.plan, workers=self.workers, timeout=self.timeout, prefetch=prefetch)
        outcomes = pool.imap(self._jobs(todo, busy, feeding), path_of=lambda job: job.source.path,
                             stop=self._stopping)
        buffer: list[tuple[_Job, DecodedVideo]] = []
        try:
            for outcome in outcomes:
                if self._stopping():
                    break  # decoded, not computed: dropped (the claim is released below)
                job = outcome.item
                if outcome.video is None:
                    self._fail(job, "decode", outcome.error or "unknown error")
                    continue
                buffer.append((job, outcome.video))
                if batch_is_full(len(buffer), per_video, self.batch_size):
                    self._compute(buffer, writer)
                    buffer = []
            if buffer and not self._stopping():
                self._compute(buffer, writer)
        finally:
            feeding[0] = False
            outcomes.close()  # stops the scheduler thread and the workers before the claims are released
            self._release_held()
        return busy

    # -- feeding the decoders (runs in the decode pool's scheduler thread) ----------------------
    def _jobs(self, todo: list[VideoSource], busy: list[VideoSource], feeding: list[bool]) -> Iterator[_Job]:
        for source in todo:
            if self._stopping() or not feeding[0]:
                return
            claim = self.store.claim(source.video_id)
            if claim is None:
                busy.append(source)
                self._busy_ids.add(source.video_id)
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

    # -- videos another process holds -----------------------------------------------------------
    def _wait_and_take_over(self, waiting: list[VideoSource], writer: _Writer) -> None:
        """Wait for the videos another process held on the first pass: each ends complete there, or is
        extracted here once its claim is free and it is still unfinished (module docstring)."""
        if not waiting or self._stopping():
            return
        progress.log(f"waiting for {_count(waiting)} that another running extraction is writing "
                     f"({_names(waiting)}); any it leaves unfinished will be extracted here")
        next_note = time.monotonic() + WAIT_LOG_EVERY
        while waiting and not self._stopping() and writer.error is None:
            free, held = [], []
            for source in waiting:
                if video_status(self.store, source) is None:  # finished by the other process
                    self.stats.add("late_up_to_date")
                    self.bar.update(1)
                    continue
                claim = self.store.claim(source.video_id)
                if claim is None:
                    held.append(source)
                else:
                    claim.release()  # _jobs claims it again (and rechecks it) in the pass below
                    free.append(source)
            if free:
                progress.log(f"taking over {_count(free)} that another extraction left unfinished "
                             f"({_names(free)})")
                held += self._pass(free, writer)
            elif held:
                if time.monotonic() >= next_note:
                    progress.log(f"still waiting for {_count(held)} held by another running extraction "
                                 f"({_names(held)})")
                    next_note = time.monotonic() + WAIT_LOG_EVERY
                time.sleep(self.poll)
            waiting = held

    # -- the forward ---------------------------------------------------------------------------
    def _compute(self, buffer: list[tuple[_Job, DecodedVideo]], writer: _Writer) -> None:
        t0 = time.perf_counter()
        outputs = compute_features(self.backbones, [v for _, v in buffer], batch_size=self.batch_size,
                                   clip_batch=self.clip_batch, dtype=self.dtype)
        self.stats.compute_seconds += time.perf_counter() - t0
        self.stats.frames += sum(len(v.frames) for _, v in buffer)
        for (job, video), (arrays, problem) in zip(buffer, outputs):
            if problem is not None:
                self._fail(job, "features", problem)
                continue
            attrs = {"source": str(job.source.path), **job.stat, "num_frames": video.num_frames, "fps": video.fps,
                     "width": video.width, "height": video.height, "decoder": video.decoder,
                     **({"decoder_note": video.fallback_reason} if video.fallback_reason else {}),
                     **self.run_attrs}
            self._held.pop(job.source.video_id, None)  # the writer owns the claim from here (submit included)
            writer.submit(job, arrays, attrs)


def batch_is_full(videos: int, frames_per_video: int, batch_size: int) -> bool:
    """Whether ``videos`` decoded videos fill a forward batch (the loop computes them together then)."""
    return videos * frames_per_video >= batch_size


def compute_features(backbones: Backbones, videos: list[DecodedVideo], *, batch_size: int, clip_batch: int,
                     dtype: np.dtype | str) -> list[tuple[dict[str, np.ndarray], str | None]]:
    """The stored arrays of each decoded video, computed together: (arrays, None), or ({}, why not).

    The frames of all ``videos`` go through the frame network ``batch_size`` at a time (their clips
    ``clip_batch`` at a time); every array is cast to ``dtype``, the store's, exactly as the store keeps
    it. A video whose features hold NaN or infinity in that dtype gets a reason instead of arrays.
    Shared by the store's loop and :func:`fcvc_pipeline.features.extraction.extract_in_memory`, so
    features computed in memory are the stored ones, bit for bit, for the same batches.
    """
    dtype = np.dtype(dtype)
    frames = np.concatenate([v.frames for v in videos])  # uint8 [V*N, S, S, 3]
    pooled_parts, region_parts = [], []
    for s in range(0, len(frames), batch_size):
        p, r = backbones.frames(frames[s:s + batch_size])
        pooled_parts.append(p)
        region_parts.append(r)
    pooled = np.concatenate(pooled_parts)  # [V*N, 2048]
    regions = np.concatenate(region_parts)  # [V*N, G*G, 2048]
    clip_feats = None
    if backbones.clip is not None:
        clips = np.concatenate([v.clip_frames[v.clip_index] for v in videos])  # uint8 [V*N, L, c, c, 3]
        clip_feats = np.concatenate([backbones.clips(clips[s:s + clip_batch])
                                     for s in range(0, len(clips), clip_batch)])  # [V*N, C]
    out: list[tuple[dict[str, np.ndarray], str | None]] = []
    start = 0
    for video in videos:
        rows = slice(start, start + len(video.frames))
        start = rows.stop
        arrays = {
            "frame_indices": video.frame_indices.astype(np.int32),
            "frame_features": pooled[rows].astype(dtype),
            "region_features": regions[rows].astype(dtype),
        }
        if clip_feats is not None:
            arrays["clip_features"] = clip_feats[rows].astype(dtype)
        bad = [name for name, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
        if bad:
            out.append(({}, f"non-finite values (NaN/inf) in {', '.join(bad)} as {dtype.name}; nothing was "
                            "written (try --dtype float32 or other weights)"))
        else:
            out.append((arrays, None))
    return out


def _count(sources: list[VideoSource]) -> str:
    return f"{len(sources)} video{'s' if len(sources) != 1 else ''}"


def _names(sources: list[VideoSource], shown: int = 5) -> str:
    names = ", ".join(s.video_id for s in sources[:shown])
    return names + (f" and {len(sources) - shown} more" if len(sources) > shown else "")
