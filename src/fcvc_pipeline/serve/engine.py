"""The captioning engine behind ``fcvc serve``: decode in worker processes, batch, caption, keep figures.

One :class:`CaptionService` per server process. It owns the :class:`~fcvc_pipeline.inference.Captioner`
(loaded from a ``.fcvc`` file) and four threads:

- ``feed``: a long-lived :class:`~fcvc_pipeline.features.decode_pool.DecodePool` (``workers`` decoder
  processes, each video under ``decode_timeout``) fed from a queue. A file that hangs or crashes its
  decoder costs only its own request: the worker is killed and replaced.
- ``batcher``: takes decoded videos as they come; the first one waits at most ``batch_wait_ms`` for
  others, up to ``max_batch`` videos, then the batch's frames go through the backbones
  (:func:`~fcvc_pipeline.features.loop.compute_features`, in forwards of the device's extraction batch:
  whole videos, about 16 frames on a CPU and 128 on CUDA, so memory does not grow with the batch and, on a
  CPU, a video's features do not depend on the others in its batch) and through one beam search per set
  of decoding options (:meth:`Captioner.caption_features`).
- ``figures``: draws the attention figures into a :class:`FigureStore` (bounded in count, bytes and
  age). A caption is answered as soon as it is decoded; its figure URL answers once drawn (the web
  layer waits for it). When drawing falls behind by ``max_pending_figures``, new captions come without
  a figure rather than a growing backlog.
- ``warmup``: builds the feature networks (checked against their recorded hashes) once; the service
  is *ready* after that (``/readyz``).

:meth:`CaptionService.submit` returns a ``concurrent.futures.Future`` of a :class:`VideoOutcome`; the web
layer (``serve/app.py``) awaits it. Memory is bounded by construction: the requests in flight are capped by
the web layer (``max_queue``), decoded videos waiting for the batcher by the pool's prefetch, and figures
by the store. Nothing here knows about HTTP.
"""

from __future__ import annotations

import io
import queue
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fcvc_pipeline import progress
from fcvc_pipeline.features.decode_pool import IDLE, DecodeOutcome, DecodePool
from fcvc_pipeline.features.extraction import default_workers_and_batch
from fcvc_pipeline.features.loop import compute_features
from fcvc_pipeline.features.settings import decode_plan
from fcvc_pipeline.features.video import DecodedVideo
from fcvc_pipeline.inference.captioner import Caption, Captioner
from fcvc_pipeline.inference.options import DecodingOptions


@dataclass(frozen=True)
class ServiceSettings:
    """How the engine batches and what it keeps (``fcvc serve`` options)."""

    max_batch: int = 8  # videos sharing one backbone forward and one beam search
    batch_wait_ms: float = 20.0  # how long the first video of a batch waits for others
    workers: int = 2  # decoder processes
    decode_timeout: float = 60.0  # seconds one video may take to decode
    max_figures: int = 256  # attention figures kept (the oldest go first) ...
    figure_ttl: float = 3600.0  # ... for at most this many seconds ...
    max_figure_bytes: int = 128 * 2**20  # ... and this many bytes of PNG in all
    max_pending_figures: int = 32  # figures waiting to be drawn; past this, new captions come without one
    forward_frames: int | None = None  # frames per backbone forward (default: the device's, as fcvc extract)

    def problems(self) -> list[str]:
        out = []
        if self.max_batch < 1:
            out.append(f"--max-batch must be at least 1 (got {self.max_batch})")
        if self.batch_wait_ms < 0:
            out.append(f"--batch-wait-ms must be >= 0 (got {self.batch_wait_ms:g})")
        if self.workers < 1:
            out.append(f"--workers must be at least 1 (got {self.workers})")
        if self.decode_timeout <= 0:
            out.append(f"--decode-timeout must be > 0 (got {self.decode_timeout:g})")
        if self.max_figures < 0 or self.figure_ttl <= 0:
            out.append("--max-figures must be >= 0 and --figure-ttl > 0")
        return out


@dataclass
class VideoOutcome:
    """One uploaded video's result: its caption and attention, or why there is none."""

    caption: Caption | None
    error: str | None = None  # one line, when caption is None (the decoder's reason, ...)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: waiting, decode, features, decoding, total
    batch_size: int = 0  # videos that shared this one's forward and beam search
    figure_id: str | None = None


@dataclass
class VideoJob:
    path: Path  # the upload, in the request's private folder
    name: str  # what the client called it (display only, never a path)
    options: DecodingOptions
    figure: bool = True
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # the client went away: skip the work still to do
    timings: dict[str, float] = field(default_factory=dict)

    def finish(self, outcome: VideoOutcome) -> None:
        if not self.future.done():
            self.future.set_result(outcome)


class FigureStore:
    """Attention figures by random id: at most ``capacity`` of them and ``max_bytes`` of PNG, each kept for at
    most ``ttl`` seconds (the oldest go first).

    An entry is reserved when its caption is answered and filled when the figure thread has drawn it, so a
    caption never waits for its figure: :meth:`get` hands out a future of the PNG bytes (``None`` when the
    drawing failed), done or not.
    """

    def __init__(self, capacity: int, ttl: float, max_bytes: int = 128 * 2**20):
        self.capacity = capacity
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[float, Future]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def reserve(self) -> tuple[str, Future] | None:
        """A new id and the future to fill with its PNG bytes; None when figures are not kept."""
        if self.capacity == 0:
            return None
        fid = secrets.token_urlsafe(12)
        future: Future = Future()
        with self._lock:
            self._expire()
            self._items[fid] = (time.monotonic() + self.ttl, future)
            self._trim()
        future.add_done_callback(self._filled)
        return fid, future

    def put(self, png: bytes) -> str | None:
        """Keep a figure that is already drawn; returns its id."""
        reserved = self.reserve()
        if reserved is None:
            return None
        reserved[1].set_result(png)
        return reserved[0]

    def get(self, fid: str) -> Future | None:
        with self._lock:
            self._expire()
            item = self._items.get(fid)
        return None if item is None else item[1]

    def pending(self) -> int:
        with self._lock:
            return sum(1 for _, f in self._items.values() if not f.done())

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def _filled(self, future: Future) -> None:
        with self._lock:
            if any(f is future for _, f in self._items.values()):
                self._bytes += _size(future)
                self._trim()

    def _drop(self, fid: str) -> None:
        _, future = self._items.pop(fid)
        self._bytes -= _size(future)

    def _trim(self) -> None:
        while self._items and (len(self._items) > self.capacity or self._bytes > self.max_bytes):
            self._drop(next(iter(self._items)))

    def _expire(self) -> None:
        now = time.monotonic()
        while self._items:
            fid, (deadline, _) = next(iter(self._items.items()))
            if deadline > now:
                break
            self._drop(fid)


def _size(future: Future) -> int:
    """Bytes of a filled figure (0 while it is drawn or when drawing failed)."""
    if not future.done() or future.cancelled() or future.exception() is not None:
        return 0
    png = future.result()
    return len(png) if png else 0


class CaptionService:
    """See the module docstring. ``start()`` launches the threads; ``close()`` stops them and the decoders."""

    def __init__(self, captioner: Captioner, settings: ServiceSettings, *,
                 decode_fn: str = "fcvc_pipeline.features.video:decode_video"):
        self.captioner = captioner
        self.settings = settings
        self.decode_fn = decode_fn  # "module:function" run in the decoder processes (tests substitute one)
        recipe = captioner.extraction
        assert recipe is not None, "a served captioner comes from a .fcvc file"
        self.plan = decode_plan(recipe.settings)
        self.dtype = recipe.settings.get("dtype", "float16")
        self.figures = FigureStore(settings.max_figures, settings.figure_ttl, settings.max_figure_bytes)
        self.figures_skipped = 0
        self.forward_frames = settings.forward_frames or default_workers_and_batch(
            captioner.device, None, None, int(recipe.settings["frames"]))[1]
        self.error: str | None = None  # why the service could not start (the networks failed to build)
        self.ready = threading.Event()
        self.served = 0  # videos finished (captioned or failed)
        self.batches = 0
        self._feed: queue.Queue[VideoJob | None] = queue.Queue()
        self._decoded: queue.Queue[tuple[VideoJob, DecodeOutcome] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._backbones = None
        self._drawer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fcvc-serve-figures")
        self._count_lock = threading.Lock()

    # -- life -----------------------------------------------------------------------------------------
    def start(self) -> None:
        for name, target in (("warmup", self._warmup), ("feed", self._feed_loop), ("batcher", self._batch_loop)):
            t = threading.Thread(target=target, name=f"fcvc-serve-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self._stop.set()
        self._feed.put(None)
        self._decoded.put(None)
        for t in self._threads:
            t.join(timeout=10)
        self._drawer.shutdown(wait=True)
        self._fail_waiting("the server is shutting down")

    def _warmup(self) -> None:
        try:
            t0 = time.monotonic()
            self._backbones = self.captioner.backbones()
            progress.log(f"serve: feature networks built in {time.monotonic() - t0:.1f} s; ready")
            self.ready.set()
        except Exception as e:  # reported by /readyz and every request; the server stays up to say so
            self.error = f"the feature networks could not be built: {e}"
            progress.log(f"serve: {self.error}")

    # -- requests -------------------------------------------------------------------------------------
    def submit(self, path: Path, name: str, options: DecodingOptions, *, figure: bool = True) -> VideoJob:
        job = VideoJob(path=path, name=name, options=options, figure=figure)
        if self._stop.is_set():
            job.finish(VideoOutcome(None, "the server is shutting down"))
        else:
            self._feed.put(job)
        return job

    def describe(self) -> dict[str, Any]:
        """What is loaded (``GET /v1/model``)."""
        c = self.captioner
        cfg = c.model.config
        recipe = c.extraction
        prov = c.provenance or {}
        networks = {role: b.summary() for role, b in (recipe.backbones.items() if recipe else ())}
        return {
            "model": str(c.path.name), "variant": cfg.model, "vocabulary_size": cfg.vocab_size,
            "num_frames": cfg.num_frames, "max_len": cfg.max_len, "decoding": c.options.search_key(),
            "extraction": {k: v for k, v in (recipe.settings.items() if recipe else ())
                           if isinstance(v, (str, int, float, bool, type(None)))},
            "backbones": networks, "test_scores": prov.get("test_scores"), "run": prov.get("run"),
            "fcvc_version": prov.get("fcvc_version"), "device": str(c.device), "ready": self.ready.is_set(),
            "limits": {"max_batch": self.settings.max_batch, "batch_wait_ms": self.settings.batch_wait_ms,
                       "workers": self.settings.workers},
        }

    # -- the decoder processes ------------------------------------------------------------------------
    def _jobs(self) -> Iterator[VideoJob | object]:
        while not self._stop.is_set():
            try:
                job = self._feed.get(timeout=0.02)
            except queue.Empty:
                yield IDLE
                continue
            if job is None:
                return
            if job.cancelled:
                continue
            job.timings["wait_for_decoder"] = time.monotonic() - job.submitted
            yield job

    def _feed_loop(self) -> None:
        pool = DecodePool(self.plan, workers=self.settings.workers, timeout=self.settings.decode_timeout,
                          prefetch=max(2 * self.settings.workers, self.settings.max_batch), decode_fn=self.decode_fn)
        try:
            for outcome in pool.imap(self._jobs(), path_of=lambda job: job.path, stop=self._stop.is_set):
                self._decoded.put((outcome.item, outcome))
        except Exception as e:  # the decoder processes could not start: every request says so
            self.error = f"the decoder processes failed: {e}"
            progress.log(f"serve: {self.error}")
            self._fail_waiting(self.error)

    def _fail_waiting(self, reason: str) -> None:
        for q in (self._feed, self._decoded):
            while True:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                job = item[0] if isinstance(item, tuple) else item
                if job is not None:
                    job.finish(VideoOutcome(None, reason))

    # -- batching -------------------------------------------------------------------------------------
    def _next_batch(self) -> list[tuple[VideoJob, DecodeOutcome]] | None:
        first = self._decoded.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.settings.batch_wait_ms / 1000.0
        while len(batch) < self.settings.max_batch:
            left = deadline - time.monotonic()
            try:
                item = self._decoded.get(timeout=left) if left > 0 else self._decoded.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._decoded.put(None)  # seen again by the next call, which ends the loop
                break
            batch.append(item)
        return batch

    def _batch_loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            except Exception as e:  # a bug or an out-of-memory: these videos fail, the service goes on
                progress.log(f"serve: a batch of {len(batch)} failed: {type(e).__name__}: {e}")
                for job, _ in batch:
                    job.finish(VideoOutcome(None, f"captioning failed: {type(e).__name__}: {e}"))

    def _run_batch(self, batch: list[tuple[VideoJob, DecodeOutcome]]) -> None:
        while not self.ready.wait(timeout=0.25):  # the first videos may arrive while the networks are built
            if self.error is not None:
                raise RuntimeError(self.error)
        videos: list[tuple[VideoJob, DecodedVideo]] = []
        for job, outcome in batch:
            job.timings["decode"] = outcome.seconds
            if job.cancelled:
                job.finish(VideoOutcome(None, "cancelled: the client went away"))
            elif outcome.video is None:
                self._done(job, VideoOutcome(None, outcome.error or "it could not be decoded", job.timings))
            else:
                videos.append((job, outcome.video))
        if not videos:
            return
        self.batches += 1
        n = len(videos)
        t0 = time.monotonic()
        computed = compute_features(self._backbones, [v for _, v in videos], batch_size=self.forward_frames,
                                    clip_batch=max(1, self.forward_frames // 4), dtype=self.dtype)
        features_s = time.monotonic() - t0
        good: list[tuple[VideoJob, DecodedVideo, dict[str, np.ndarray]]] = []
        for (job, video), (arrays, problem) in zip(videos, computed):
            job.timings["features"] = features_s
            if problem:
                self._done(job, VideoOutcome(None, f"features: {problem}", job.timings, n))
            else:
                good.append((job, video, arrays))
        # one beam search per set of search settings (the options' provenance, a dict, is not part of the key)
        by_options: dict[tuple, list[tuple[VideoJob, DecodedVideo, dict[str, np.ndarray]]]] = {}
        for item in good:
            by_options.setdefault(tuple(sorted(item[0].options.search_key().items())), []).append(item)
        for items in by_options.values():
            options = items[0][0].options
            t1 = time.monotonic()
            keys = {f"{k}": arrays for k, (_, _, arrays) in enumerate(items)}
            captions = self.captioner.caption_features(keys, beam_size=options.beam_size, max_len=options.max_len,
                                                       length_penalty=options.length_penalty)
            decoding_s = time.monotonic() - t1
            for (job, video, _), caption in zip(items, captions):
                caption.video = job.name
                job.timings["decoding"] = decoding_s
                outcome = VideoOutcome(caption, caption.error, job.timings, n)
                if job.figure and caption.ok and not job.cancelled:
                    outcome.figure_id = self._order_figure(caption, video)
                self._done(job, outcome)

    def _order_figure(self, caption: Caption, video: DecodedVideo) -> str | None:
        """Reserve a figure and have the figure thread draw it: the caption is answered without waiting.
        None when figures are not kept, or when ``max_pending_figures`` are already waiting to be drawn
        (drawing is slower than captioning then, and the backlog must not grow without bound)."""
        if self.figures.pending() >= self.settings.max_pending_figures:
            self.figures_skipped += 1
            return None
        reserved = self.figures.reserve()
        if reserved is None:
            return None
        fid, future = reserved
        self._drawer.submit(self._draw, caption, video.frames, future)
        return fid

    def _draw(self, caption: Caption, frames: np.ndarray, future: Future) -> None:
        try:
            image = self.captioner.attention_figure(caption, frames=frames)
            buf = io.BytesIO()
            image.save(buf, format="PNG", compress_level=3)
            future.set_result(buf.getvalue())
        except Exception as e:  # the caption stands without its figure
            progress.log(f"serve: no attention figure for {caption.video!r}: {type(e).__name__}: {e}")
            future.set_result(None)

    def _done(self, job: VideoJob, outcome: VideoOutcome) -> None:
        job.timings["total"] = time.monotonic() - job.submitted
        with self._count_lock:
            self.served += 1
        job.finish(outcome)

