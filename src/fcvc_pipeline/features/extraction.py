"""The extraction engine: a checked :class:`~fcvc_pipeline.features.settings.ExtractionJob` -> features
in a store.

:func:`run_extraction` opens (or creates) the store with the job's settings, skips every video that is
complete and unchanged on disk, prepares the networks (``features/networks.py``: built, calibrated or
reloaded exactly), and runs the decode -> forward -> write loop (``features/loop.py``) over the rest.
:func:`extract_like` extracts new videos with exactly the settings and networks of an existing store
(``fcvc caption``).

- A new store is created only after everything that can fail in preparing the networks before it has
  (downloads, loading each weights file into its network): a bad ``--inception-weights FILE`` is an
  error that leaves no store behind, so the corrected rerun is not refused as "other settings".
- :func:`extract_in_memory` computes the features of video files with given networks and settings and
  hands them back, one video at a time in the order given, with no store and no file written (a
  captioner file's ``Captioner.caption``): the same decoding, batching and forward as the store's loop
  (``features/loop.py:compute_features``), the arrays cast to the settings' dtype as the store keeps them.
- SIGTERM and SIGINT stop a run with :class:`~fcvc_pipeline.errors.StoppedBySignal` (exit 143 / 130),
  after the loop has written what it had computed; the message counts what the store keeps.
- The result is judged by the store: exit 0 only when every video of this run (shard) is complete,
  1 when some failed or (only possible when the loop was cut short) are neither complete nor failed.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from fcvc_pipeline import progress
from fcvc_pipeline.devices import device_for_rank, dominant_precision
from fcvc_pipeline.errors import EXIT_ITEM_FAILURES, EXIT_OK, FcvcError, MismatchError, StoppedBySignal
from fcvc_pipeline.features.backbones import (
    build_clip_model,
    build_inception_v3,
    hub_state,
    imagenet_inception_state,
    load_state_file,
    parse_weights,
)
from fcvc_pipeline.features.decode_pool import DecodePool
from fcvc_pipeline.features.loop import (
    ExtractionLoop,
    Interrupted,
    batch_is_full,
    compute_features,
    stop_signals,
    video_status,
)
from fcvc_pipeline.features.networks import Backbones, CalibrationData, prepare_backbones
from fcvc_pipeline.features.settings import ExtractionJob, build_settings, clip_choice, decode_plan
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.features.video import DecodedVideo, DecodePlan, VideoSource, list_videos


@dataclass
class ExtractResult:
    store: Path
    completed: int = 0
    up_to_date: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # video_id -> reason
    failed_paths: dict[str, str] = field(default_factory=dict)  # video_id -> path
    seconds: float = 0.0
    waited_for: int = 0  # videos another running extraction was writing when this one came to them
    taken_over: int = 0  # ... of which that extraction left unfinished (it died): extracted by this one
    damaged: dict[str, str] = field(default_factory=dict)  # video_id -> file and reason (extracted again)
    left: list[str] = field(default_factory=list)  # neither complete nor failed at the end (see exit_code)
    frames: int = 0  # frames pushed through the frame backbone
    compute_seconds: float = 0.0  # inside backbone forwards (incl. host<->device copies)
    loop_seconds: float = 0.0  # decode + compute + write, after the networks were ready
    device: str = ""

    @property
    def in_progress_elsewhere(self) -> int:
        return len(self.left)

    @property
    def exit_code(self) -> int:
        """0 only when every video of this run is complete in the store; 1 with failures or videos left."""
        return EXIT_ITEM_FAILURES if self.failed or self.left else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {"store": str(self.store), "completed": self.completed, "up_to_date": self.up_to_date,
                "failed": dict(self.failed), "seconds": round(self.seconds, 3),
                "in_progress_elsewhere": self.in_progress_elsewhere, "left": list(self.left),
                "waited_for": self.waited_for, "taken_over": self.taken_over, "damaged": dict(self.damaged)}


def default_workers_and_batch(device: torch.device, workers: int | None, batch_size: int | None, frames: int = 15) -> tuple[int, int]:
    """Decode workers and frames per forward. The default batch holds whole videos (a multiple of
    ``frames``: about 16 frames on CPU, 128 on CUDA), so every forward has the same shape."""
    cpus = os.cpu_count() or 2
    if device.type == "cuda":
        return workers or max(1, min(16, cpus - 2)), batch_size or frames * max(1, 128 // frames)
    return workers or max(1, min(8, cpus // 2)), batch_size or frames * max(1, round(16 / frames))


def run_extraction(job: ExtractionJob, *, reference: FeatureStore | None = None,
                   settings: dict[str, Any] | None = None,
                   path_overrides: dict[str, Path] | None = None,
                   command: str | None = "fcvc extract") -> ExtractResult:
    """Extract the job's videos (this shard's) into its store; with ``reference``, rebuild that store's
    networks and use its ``settings`` instead of deriving them from the job.

    SIGTERM and SIGINT stop the run: the videos already computed are written, nothing half-done is left
    in the store, and :class:`StoppedBySignal` (exit 143 / 130) says what was kept and that rerunning
    ``command`` continues. Before the loop starts (building the networks) a signal stops at once.
    """
    t0 = time.perf_counter()
    extracted = [0]  # by this run, for the stop message
    with stop_signals(interrupt=True):
        try:
            return _run_extraction(job, t0, extracted, reference=reference, settings=settings,
                                   path_overrides=path_overrides, command=command)
        except Interrupted as e:
            raise _stopped(e.signum, job, extracted[0], command) from None


def _run_extraction(job: ExtractionJob, t0: float, extracted: list[int], *, reference: FeatureStore | None,
                    settings: dict[str, Any] | None, path_overrides: dict[str, Path] | None,
                    command: str | None) -> ExtractResult:
    device = device_for_rank(job.device)
    settings = settings if settings is not None else build_settings(job)
    store_path = job.store_path
    grid = settings["region_grid"]
    if settings["frame_size"] != 299:
        progress.debug(f"frame size {settings['frame_size']} gives a {grid[0]}x{grid[1]} region grid "
                       f"(the paper's 8x8 needs 299)")
    if reference is None and (job.force or not FeatureStore.exists(store_path)):
        # what can fail in preparing the networks fails before a store records these settings
        _preflight(job, settings)
    store = FeatureStore.create(store_path, settings, force=job.force)
    result = ExtractResult(store=store_path, device=str(device))

    mine = job.mine()
    if job.verify:
        result.damaged = _verify(store, mine)
    todo: list[VideoSource] = []
    reasons: dict[str, int] = {}
    for source in mine:
        why = video_status(store, source)
        if why is None:
            result.up_to_date += 1
        else:
            todo.append(source)
            reasons[why] = reasons.get(why, 0) + 1
            if why == "damaged":
                err = store.check_video(source.video_id)
                result.damaged[source.video_id] = f"{err.path}: {err.reason}" if err else "damaged"
                progress.log(f"  damaged, extracting again: {source.video_id!r}: {result.damaged[source.video_id]}")
            elif why != "new":
                progress.debug(f"  {source.path}: {why}")
    shard_note = f" (shard {job.shard[0]}/{job.shard[1]}: {len(mine)} of {len(job.sources)} videos)" if job.shard[1] > 1 else ""
    if not todo:
        progress.log(f"{store_path}: up to date ({result.up_to_date} videos){shard_note}")
        result.seconds = time.perf_counter() - t0
        return result
    why_text = ", ".join(f"{n} {k}" for k, n in sorted(reasons.items()))
    progress.log(f"{store_path}: extracting {len(todo)} videos ({why_text}); {result.up_to_date} up to date{shard_note}")

    workers, batch_size = default_workers_and_batch(device, job.workers, job.batch_size, int(settings["frames"]))
    plan = decode_plan(settings, job.decoder)

    def calibration():
        return calibration_data(job.sources, plan, job.calibration_frames, workers=workers, timeout=job.timeout)

    choices = {"inception": job.inception, "clip": job.clip}
    precision = job.precision
    if precision == "auto":  # a store keeps the precision it has: auto adds videos in its videos' precision
        precision = dominant_precision(store.precision_counts()) or "auto"
        if precision != "auto":
            progress.debug(f"{store_path}: --precision auto follows the store's videos ({precision})")
    backbones = prepare_backbones(store, settings, choices, device, calibration, reference=reference,
                                  path_overrides=path_overrides, precision=precision,
                                  channels_last=job.channels_last)
    run_attrs = {"device": str(device), "precision": backbones.precision}
    with progress.bar(total=len(todo), desc="extract", unit="video") as bar:
        loop = ExtractionLoop(store, backbones, plan, workers=workers, timeout=job.timeout, batch_size=batch_size,
                              clip_batch=max(1, batch_size // 4), dtype=settings["dtype"], bar=bar,
                              run_attrs=run_attrs)
        t_loop = time.perf_counter()
        stats = loop.run(todo)
        result.loop_seconds = time.perf_counter() - t_loop
    extracted[0] = stats.completed
    if stats.stopped_by is not None:
        raise _stopped(stats.stopped_by, job, stats.completed, command)
    result.completed = stats.completed
    result.up_to_date += stats.late_up_to_date
    result.waited_for, result.taken_over, result.left = stats.busy, stats.taken_over, list(stats.left)
    result.failed = {vid: reason for vid, (_, reason) in sorted(stats.failed.items())}
    result.failed_paths = {vid: path for vid, (path, _) in sorted(stats.failed.items())}
    result.frames = stats.frames
    result.compute_seconds = stats.compute_seconds
    result.seconds = time.perf_counter() - t0
    _summary(result)
    return result


def _stopped(signum: int, job: ExtractionJob, extracted: int, command: str | None) -> StoppedBySignal:
    """What a stop signal kept: counted in the store itself, for this run's (shard's) videos."""
    mine = job.mine()
    done = failed = 0
    if FeatureStore.exists(job.store_path):
        try:
            store = FeatureStore.open(job.store_path)
            complete = set(store.completed_ids())
            failures = set(store.failures())
        except FcvcError:
            complete, failures = set(), set()
        done = sum(s.video_id in complete for s in mine)
        failed = sum(s.video_id in failures for s in mine)
    left = len(mine) - done
    what = "this shard's" if job.shard[1] > 1 else "the"
    failed_note = f", {failed} of them failed before" if failed else ""
    message = (f"{signal.Signals(signum).name}: extraction stopped; this run extracted {extracted} "
               f"video{'s' if extracted != 1 else ''}, {done} of {what} {len(mine)} videos are complete in "
               f"{job.store_path}, {left} left{failed_note}")
    again = f"the same `{command}` command" if command else "the same command"
    return StoppedBySignal(signum, message, hint=f"rerun {again} to continue: complete videos are kept, "
                                                 "the others are extracted then")


def _verify(store: FeatureStore, sources: list[VideoSource]) -> dict[str, str]:
    """``--verify``: read every complete video of ``sources`` in full; each damaged one is recorded as a
    failure (stage ``verify``), which the run then extracts again. Returns {video: file and reason}."""
    damaged: dict[str, str] = {}
    for source in progress.bar(sources, desc="verifying", unit="video"):
        err = store.check_video(source.video_id, full=True)
        if err is None:
            continue
        claim = store.claim(source.video_id)
        if claim is None:  # another writer is replacing it right now
            continue
        with claim:
            damaged[source.video_id] = f"{err.path}: {err.reason}"
            store.discard_video(source.video_id)
            store.record_failure(source.video_id, path=str(source.path), stage="verify",
                                 error=f"damaged features: {err.path}: {err.reason}")
        progress.log(f"  damaged, extracting again: {source.video_id!r}: {damaged[source.video_id]}")
    progress.log(f"{store.path}: verified {len(sources)} videos, {len(damaged)} damaged")
    return damaged


def _preflight(job: ExtractionJob, settings: dict[str, Any]) -> None:
    """Fetch downloadable weights now (into torch's cache), so an offline machine fails early and cleanly,
    and load every weights file into its network (a file that is not a state dict of that network is an
    error now, not after a store has recorded its hash as a setting)."""
    if job.inception.kind == "imagenet":
        imagenet_inception_state()
    if job.clip is not None and job.clip.kind == "hub":
        hub_state(job.clip_model)
    if job.inception.kind == "path":
        assert job.inception.path is not None
        build_inception_v3(load_state_file(job.inception.path), source=job.inception.path)
    if job.clip is not None and job.clip.kind == "path" and settings.get("clip"):
        assert job.clip.path is not None
        build_clip_model(settings["clip"]["model"], load_state_file(job.clip.path), source=job.clip.path)


def _summary(result: ExtractResult) -> None:
    rate = result.completed / result.seconds if result.seconds > 0 else 0.0
    parts = [f"extracted {result.completed} videos in {result.seconds:.1f} s ({rate:.2f} videos/s)",
             f"{result.up_to_date} up to date"]
    if result.waited_for:
        parts.append(f"{result.waited_for} were being written by another extraction "
                     f"({result.taken_over} of them left unfinished there and extracted here)")
    if result.failed:
        parts.append(f"{len(result.failed)} failed")
    if result.left:
        parts.append(f"{len(result.left)} neither complete nor failed")
    progress.log("; ".join(parts))
    for vid, reason in result.failed.items():
        progress.log(f"  failed: {result.failed_paths.get(vid, vid)}: {reason}")
    for vid in result.left:
        progress.log(f"  not extracted: {vid}")


@dataclass
class VideoResult:
    """One video's features computed in memory (:func:`extract_in_memory`), or why there are none."""

    source: VideoSource
    arrays: dict[str, np.ndarray] | None  # as the store keeps them: frame_indices, frame_features, ...
    error: str | None = None  # "decode: ..." or "features: ..." when arrays is None


def extract_in_memory(settings: dict[str, Any], backbones: Backbones, sources: list[VideoSource], *,
                      workers: int | None = None, batch_size: int | None = None, timeout: float = 300.0,
                      decoder: str = "auto") -> Iterator[VideoResult]:
    """The features of ``sources`` with ``backbones`` and the store ``settings`` (frames, frame size,
    clips, dtype), one :class:`VideoResult` per video in the order given, as soon as it and every video
    before it are done. Nothing is written anywhere.

    Decoding (worker processes, per-video ``timeout``), batching (videos are computed together once they
    fill ``batch_size`` frames, by default the device's as in ``fcvc extract``) and the forward are those
    of the store's extraction loop, and the arrays are cast to ``settings["dtype"]``, so a video's arrays
    equal what ``extract_like`` into a store would keep. A video that cannot be decoded, or whose
    features are not finite, gets ``error``; the others go on. Memory: the decoded videos of one batch
    plus those finished out of order (a few per decode worker).
    """
    plan = decode_plan(settings, decoder)
    workers_n, batch_n = default_workers_and_batch(backbones.device, workers, batch_size, int(settings["frames"]))
    clip_batch = max(1, batch_n // 4)
    done: dict[int, VideoResult] = {}  # by position in sources, until every video before it is handed out
    next_out = 0
    buffer: list[tuple[int, VideoSource, DecodedVideo]] = []

    def compute() -> None:
        outputs = compute_features(backbones, [v for _, _, v in buffer], batch_size=batch_n,
                                   clip_batch=clip_batch, dtype=settings["dtype"])
        for (k, source, _), (arrays, problem) in zip(buffer, outputs):
            done[k] = VideoResult(source, None if problem else arrays, f"features: {problem}" if problem else None)
        buffer.clear()

    def ready() -> Iterator[VideoResult]:
        nonlocal next_out
        while next_out in done:
            yield done.pop(next_out)
            next_out += 1

    if not sources:
        return
    prefetch = max(2 * workers_n, -(-batch_n // plan.frames) + workers_n)
    pool = DecodePool(plan, workers=min(workers_n, len(sources)), timeout=timeout, prefetch=prefetch)
    outcomes = pool.imap(list(enumerate(sources)), path_of=lambda item: item[1].path)
    try:
        for outcome in outcomes:
            k, source = outcome.item
            if outcome.video is None:
                done[k] = VideoResult(source, None, f"decode: {outcome.error or 'unknown error'}")
            else:
                buffer.append((k, source, outcome.video))
                if batch_is_full(len(buffer), plan.frames, batch_n):
                    compute()
            yield from ready()
        if buffer:
            compute()
        yield from ready()
    finally:
        outcomes.close()


def extract_like(reference_store: Path, inputs: list[Path | VideoSource], out_store: Path, *, device: str = "auto",
                 workers: int | None = None, batch_size: int | None = None,
                 weights_paths: dict[str, Path] | None = None, force: bool = False,
                 precision: str = "auto") -> ExtractResult:
    """Extract ``inputs`` into ``out_store`` with the settings and the very same networks of ``reference_store``.

    ``inputs``: paths (files, folders, list files: the videos' ids are their file stems) or
    :class:`VideoSource` values, stored under the id each one carries.

    Random (calibrated) networks are rebuilt from the reference's records and saved BatchNorm
    statistics (no corpus needed: works for a single video); ``imagenet``/``hub`` weights come from
    torch's cache; a weights file must still hash to what was recorded (else :class:`MismatchError`);
    ``weights_paths`` ({"inception"|"clip": path}) points at a moved weights file. ``precision``: as
    ``fcvc extract --precision`` (``auto``: bf16 on CUDA and on CPUs with bf16 units).
    """
    ref = FeatureStore.open(reference_store)
    s = ref.settings
    records = ref.backbone_records()
    missing = [role for role in ("inception", "clip") if s.get(role) and role not in records]
    if not s or missing:
        raise MismatchError(f"{reference_store}: the store does not record its networks ({', '.join(missing) or 'settings'})",
                            hint="re-extract the reference store with this version of fcvc")

    def choice_of(role: str) -> str:
        rec = records[role]
        if rec.get("kind") == "path":
            return str((weights_paths or {}).get(role) or rec["path"])
        return rec["weights"]

    clip = s.get("clip")
    clip_model = clip["model"] if clip else "c3d"
    given = [p for p in inputs if isinstance(p, VideoSource)]
    sources = given + (list_videos([Path(p) for p in inputs if not isinstance(p, VideoSource)])
                       if len(given) < len(inputs) else [])
    job = ExtractionJob(sources=sources, shard=(0, 1), store_path=Path(out_store),
                        inception=parse_weights(_placeholder(records["inception"]), named=("imagenet",),
                                                option="--inception-weights"),
                        clip=clip_choice(_placeholder(records["clip"]), clip_model) if clip else None,
                        clip_model=clip_model, frames=int(s["frames"]), frame_size=int(s["frame_size"]),
                        dtype=s["dtype"], calibration_frames=int(s["inception"].get("calibration_frames", 64)),
                        device=device, workers=workers, batch_size=batch_size, force=force, precision=precision)
    # the settings must be the reference's, byte for byte (a weights file is checked by hash below)
    return run_extraction(job, reference=ref, settings=dict(s),
                          path_overrides={k: Path(v) for k, v in (weights_paths or {}).items()}, command=None)


def _placeholder(record: dict[str, Any]) -> str:
    """A weights option value that passes validation; the network itself comes from the record."""
    kind = record.get("kind")
    if kind == "random":
        return f"random:{int(record.get('seed', 0))}"
    if kind in ("imagenet", "hub"):
        return kind
    return "random:0"  # a PATH: the file is located and hash-checked when the network is rebuilt


def calibration_data(sources: list[VideoSource], plan: DecodePlan, frames_wanted: int, *, workers: int,
                      timeout: float):
    """Sampled frames (and clips) of the first videos of the whole input list, in list order."""
    clips_wanted = max(2, frames_wanted // 8)
    frames, clips, ids = [], [], []
    failures: dict[str, str] = {}
    pos = 0
    while len(frames) < frames_wanted and pos < len(sources):
        k = max(1, -(-(frames_wanted - len(frames)) // plan.frames)) + 1
        chunk = sources[pos:pos + k]
        pos += k
        pool = DecodePool(plan, workers=min(workers, len(chunk)), timeout=timeout)
        outcomes = {o.item.video_id: o for o in pool.imap(chunk)}
        for source in chunk:
            video = outcomes[source.video_id].video
            if video is None:
                failures[source.video_id] = outcomes[source.video_id].error or "?"
                continue
            if len(frames) >= frames_wanted:
                continue
            frames.extend(video.frames)
            if video.clip_frames is not None and len(clips) < clips_wanted:
                clips.extend(video.clip_frames[video.clip_index])
            ids.append(source.video_id)
    frames = frames[:frames_wanted]
    clips = clips[:clips_wanted]
    return CalibrationData(frames=np.stack(frames) if frames else np.zeros((0,), np.uint8),
                           clips=np.stack(clips) if clips else None, video_ids=ids, failures=failures)
