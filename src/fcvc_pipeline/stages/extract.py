"""``fcvc extract``: videos -> Inception-V3 frame + region features and clip features, in a Zarr store.

Library entry points: :func:`run_extract` (the command) and :func:`extract_like` (extract new videos
with exactly the settings and networks of an existing store, for ``fcvc caption``).

Caching: a store records its settings (every option that changes the features, and the identity of
the weights); a rerun with the same settings skips every video that is complete and unchanged on
disk (size and mtime), extracts new ones, retries failed and interrupted ones, and refuses other
settings unless ``--force``. Scale-out: ``--shard I/N`` (or torchrun's RANK/WORLD_SIZE) takes every
N-th video of the sorted input list; several processes may write one store at once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import file_sha256
from fcvc_pipeline.workdir import DEFAULT_WORKDIR, FEATURES_DIRNAME, check_device_spec, resolve_device
from fcvc_pipeline.errors import EXIT_ITEM_FAILURES, EXIT_OK, ConfigError, MismatchError, require
from fcvc_pipeline.features.backbones import (
    CLIP_MODELS, FRAME_DIM, INCEPTION_MIN_SIZE, WeightsChoice, inception_grid, parse_weights,
)
from fcvc_pipeline.features.video import DECODERS, DecodePlan, VideoSource, list_videos

SAMPLING_RULE = "index_k = floor((k + 0.5) * T / N); clip k = index_k + stride * (j - L // 2), clamped"
DTYPES = ("float16", "float32")
C3D_ENV = "FCVC_C3D_WEIGHTS"
DEFAULT_C3D_PATH = Path("~/.cache/fcvc/c3d.pickle")


@dataclass(frozen=True)
class ExtractConfig:
    """Every option of ``fcvc extract``. Build with keywords; :meth:`check` reports all problems at once."""

    inputs: tuple[Path, ...]
    workdir: Path = DEFAULT_WORKDIR
    store: Path | None = None  # default: <workdir>/features.zarr
    frames: int = 15
    frame_size: int = 299
    inception_weights: str = "imagenet"  # imagenet | random[:SEED] | PATH
    c3d_weights: str = "auto"  # auto | PATH | random[:SEED] | none (| hub for pytorchvideo models)
    clip_model: str = "c3d"  # c3d | x3d_m | slow_r50 | r2plus1d_r50
    device: str = "auto"
    batch_size: int | None = None  # frames per frame-backbone forward (clips: a quarter); None = by device
    workers: int | None = None  # decode processes; None = by CPU count
    shard: str | None = None  # "I/N"; None = torchrun's RANK/WORLD_SIZE or everything
    force: bool = False
    dtype: str = "float16"
    timeout: float = 300.0  # seconds per video in a decode worker
    decoder: str = "auto"  # auto (decord, PyAV fallback) | decord | pyav
    calibration_frames: int = 64  # frames for BatchNorm re-estimation of random weights

    @property
    def store_path(self) -> Path:
        return Path(self.store) if self.store is not None else Path(self.workdir) / FEATURES_DIRNAME

    def check(self) -> "_Resolved":
        """Validate everything; raise one :class:`ConfigError` listing every problem."""
        problems: list[str] = []

        def attempt(fn, *args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ConfigError as e:
                problems.extend(e.problems)
                return None

        if not self.inputs:
            problems.append("no INPUTS given (video files, folders, or a .txt list of paths)")
        if not isinstance(self.frames, int) or self.frames < 1:
            problems.append(f"--frames must be a positive integer (got {self.frames!r})")
        if not isinstance(self.frame_size, int) or self.frame_size < INCEPTION_MIN_SIZE:
            problems.append(f"--frame-size must be at least {INCEPTION_MIN_SIZE} for Inception-V3 (got {self.frame_size!r})")
        inception = attempt(parse_weights, self.inception_weights, named=("imagenet",), option="--inception-weights")
        clip = None
        if self.clip_model not in CLIP_MODELS:
            problems.append(f"--clip-model must be one of {', '.join(CLIP_MODELS)} (got {self.clip_model!r})")
        elif self.c3d_weights != "none":
            clip = attempt(_clip_choice, self.c3d_weights, self.clip_model)
        if (p := check_device_spec(self.device)):
            problems.append(p)
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            problems.append(f"--batch-size must be a positive integer (got {self.batch_size!r})")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            problems.append(f"--workers must be a positive integer (got {self.workers!r})")
        shard = attempt(_parse_shard, self.shard)
        if shard and shard[1] > 1 and self.force:
            problems.append("--force cannot be combined with several shards (each would delete the others' "
                            "work); delete the store once, then run the shards")
        if self.dtype not in DTYPES:
            problems.append(f"--dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})")
        if not self.timeout or self.timeout <= 0:
            problems.append(f"--timeout must be positive seconds (got {self.timeout!r})")
        if self.decoder not in DECODERS:
            problems.append(f"--decoder must be one of {', '.join(DECODERS)} (got {self.decoder!r})")
        if self.calibration_frames < 2:
            problems.append(f"--calibration-frames must be at least 2 (got {self.calibration_frames!r})")
        sources = attempt(list_videos, self.inputs) if self.inputs else None
        require(problems)
        assert inception is not None and sources is not None and shard is not None
        return _Resolved(self, inception, clip, sources, shard)


def _clip_choice(value: str, model: str) -> WeightsChoice:
    if model == "c3d" and value == "auto":
        env = os.environ.get(C3D_ENV)
        candidate = Path(env).expanduser() if env else DEFAULT_C3D_PATH.expanduser()
        if not candidate.is_file():
            raise ConfigError(f"no C3D weights found (looked for {candidate}, set by ${C3D_ENV} or the default "
                              f"{DEFAULT_C3D_PATH}): pass --c3d-weights PATH (DavideA's Sports-1M c3d.pickle), "
                              f"--c3d-weights random (offline test mode) or --c3d-weights none (no clip features)")
        return WeightsChoice("path", path=candidate)
    if value == "auto":
        return WeightsChoice("hub")
    named = ("hub",) if model != "c3d" else ()
    return parse_weights(value, named=named, option="--c3d-weights")


def _parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is not None and world is not None and rank.isdigit() and world.isdigit() and int(world) > 0:
            return int(rank), int(world)
        return 0, 1
    head, sep, tail = text.partition("/")
    if sep and head.strip().isdigit() and tail.strip().isdigit():
        i, n = int(head), int(tail)
        if n >= 1 and 0 <= i < n:
            return i, n
    raise ConfigError(f"--shard must be I/N with 0 <= I < N (got {text!r})")


@dataclass
class _Resolved:
    """A checked config with its parsed parts."""

    cfg: ExtractConfig
    inception: WeightsChoice
    clip: WeightsChoice | None
    sources: list[VideoSource]  # every input video, sorted by id
    shard: tuple[int, int]

    def mine(self) -> list[VideoSource]:
        i, n = self.shard
        return self.sources[i::n]


@dataclass
class ExtractResult:
    store: Path
    completed: int = 0
    up_to_date: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # video_id -> reason
    failed_paths: dict[str, str] = field(default_factory=dict)  # video_id -> path
    seconds: float = 0.0
    in_progress_elsewhere: int = 0  # claimed by another writer during this run
    frames: int = 0  # frames pushed through the frame backbone
    compute_seconds: float = 0.0  # inside backbone forwards (incl. host<->device copies)
    loop_seconds: float = 0.0  # decode + compute + write, after the networks were ready
    device: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_ITEM_FAILURES if self.failed else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {"store": str(self.store), "completed": self.completed, "up_to_date": self.up_to_date,
                "failed": dict(self.failed), "seconds": round(self.seconds, 3),
                "in_progress_elsewhere": self.in_progress_elsewhere}


# --------------------------------------------------------------------------------------------------
# Settings: what changes the features (device, batch size and workers do not)
# --------------------------------------------------------------------------------------------------
def build_settings(r: _Resolved) -> dict[str, Any]:
    cfg = r.cfg
    grid = inception_grid(cfg.frame_size)
    inc: dict[str, Any] = {"model": "inception_v3", "weights": _label(r.inception), "layers": ["avgpool", "Mixed_7c"],
                           "preprocess": "resize to SxS (bilinear), ImageNet mean/std, transform_input"}
    if r.inception.kind == "random":
        inc["calibration_frames"] = cfg.calibration_frames
    if r.inception.kind == "imagenet":
        from torchvision.models import Inception_V3_Weights

        inc["source"] = Inception_V3_Weights.IMAGENET1K_V1.url
    clip = None
    clip_dim = 0
    if r.clip is not None:
        info = CLIP_MODELS[cfg.clip_model]
        spec = info.clip
        clip = {"model": info.name, "weights": _label(r.clip), "frames_per_clip": spec.length,
                "stride": spec.stride, "crop": spec.crop,
                "resize": list(spec.resize) if spec.resize else f"short side {spec.short_side}",
                "feature": "fc6 after ReLU" if info.name == "c3d" else "head pool (classifier removed)",
                "preprocess": ("BGR, 0-255, Sports-1M mean" if info.name == "c3d"
                               else "RGB, [0,1], Kinetics mean/std")}
        if info.hub_url and r.clip.kind == "hub":
            clip["source"] = info.hub_url
        if r.clip.kind == "random":
            clip["calibration_frames"] = cfg.calibration_frames
        clip_dim = info.dim
    return {"frames": cfg.frames, "frame_size": cfg.frame_size, "dtype": cfg.dtype, "sampling": SAMPLING_RULE,
            "inception": inc, "clip": clip, "frame_dim": FRAME_DIM, "region_grid": [grid, grid],
            "num_regions": grid * grid, "clip_dim": clip_dim}


_hash_cache: dict[tuple[str, int, int], str] = {}


def _label(choice: WeightsChoice) -> str:
    if choice.kind != "path":
        return choice.label()
    assert choice.path is not None
    st = choice.path.stat()
    key = (str(choice.path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hash_cache:
        _hash_cache[key] = file_sha256(choice.path)
    return f"sha256:{_hash_cache[key]}"


def decode_plan(settings: dict[str, Any], decoder: str = "auto") -> DecodePlan:
    clip = CLIP_MODELS[settings["clip"]["model"]].clip if settings.get("clip") else None
    return DecodePlan(frames=int(settings["frames"]), frame_size=int(settings["frame_size"]), clip=clip,
                      decoder=decoder)


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------
def _defaults(device, workers: int | None, batch_size: int | None, frames: int = 15) -> tuple[int, int]:
    """Decode workers and frames per forward. The default batch holds whole videos (a multiple of
    ``frames``: about 16 frames on CPU, 128 on CUDA), so every forward has the same shape."""
    cpus = os.cpu_count() or 2
    if device.type == "cuda":
        return workers or max(1, min(16, cpus - 2)), batch_size or frames * max(1, 128 // frames)
    return workers or max(1, min(8, cpus // 2)), batch_size or frames * max(1, round(16 / frames))


def _device_for(spec: str):
    """``auto`` under torchrun picks ``cuda:LOCAL_RANK``."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    if spec == "auto" and local is not None and local.isdigit() and torch.cuda.is_available():
        return resolve_device(f"cuda:{int(local) % max(1, torch.cuda.device_count())}")
    return resolve_device(spec)


def run_extract(cfg: ExtractConfig) -> ExtractResult:
    """Extract features for ``cfg.inputs`` into ``cfg.store_path`` (see the module docstring)."""
    return _execute(cfg.check(), reference=None)


def extract_like(reference_store: Path, inputs: list[Path], out_store: Path, *, device: str = "auto",
                 workers: int | None = None, batch_size: int | None = None,
                 weights_paths: dict[str, Path] | None = None, force: bool = False) -> ExtractResult:
    """Extract ``inputs`` into ``out_store`` with the settings and the very same networks of ``reference_store``.

    Random (calibrated) networks are rebuilt from the reference's records and saved BatchNorm
    statistics (no corpus needed: works for a single video); ``imagenet``/``hub`` weights come from
    torch's cache; a weights file must still hash to what was recorded (else :class:`MismatchError`);
    ``weights_paths`` ({"inception"|"clip": path}) points at a moved weights file.
    """
    from fcvc_pipeline.features.store import FeatureStore

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
    cfg = ExtractConfig(inputs=tuple(Path(p) for p in inputs), store=Path(out_store), frames=int(s["frames"]),
                        frame_size=int(s["frame_size"]), dtype=s["dtype"], device=device, workers=workers,
                        batch_size=batch_size, force=force, shard="0/1",
                        inception_weights=_placeholder(records["inception"]),
                        clip_model=clip["model"] if clip else "c3d",
                        c3d_weights=_placeholder(records["clip"]) if clip else "none",
                        calibration_frames=int(s["inception"].get("calibration_frames", 64)))
    resolved = cfg.check()
    # the settings must be the reference's, byte for byte (a weights file is checked by hash below)
    settings = dict(s)
    return _execute(resolved, reference=ref, settings=settings,
                    path_overrides={k: Path(v) for k, v in (weights_paths or {}).items()})


def _placeholder(record: dict[str, Any]) -> str:
    """A weights option value that passes validation; the network itself comes from the record."""
    kind = record.get("kind")
    if kind == "random":
        return f"random:{int(record.get('seed', 0))}"
    if kind in ("imagenet", "hub"):
        return kind
    return "random:0"  # a PATH: the file is located and hash-checked when the network is rebuilt


def _execute(r: _Resolved, *, reference=None, settings: dict[str, Any] | None = None,
             path_overrides: dict[str, Path] | None = None) -> ExtractResult:
    from fcvc_pipeline.features.store import FeatureStore
    from fcvc_pipeline.features.networks import prepare_backbones
    from fcvc_pipeline.features.loop import ExtractionLoop, video_status

    t0 = time.perf_counter()
    cfg = r.cfg
    device = _device_for(cfg.device)
    settings = settings if settings is not None else build_settings(r)
    store_path = cfg.store_path
    grid = settings["region_grid"]
    if settings["frame_size"] != 299:
        progress.debug(f"frame size {settings['frame_size']} gives a {grid[0]}x{grid[1]} region grid "
                       f"(the paper's 8x8 needs 299)")
    if reference is None and (cfg.force or not FeatureStore.exists(store_path)):
        _preflight(r)  # a missing download fails before a store is created with these settings
    store = FeatureStore.create(store_path, settings, force=cfg.force)
    result = ExtractResult(store=store_path, device=str(device))

    mine = r.mine()
    todo: list[VideoSource] = []
    reasons: dict[str, int] = {}
    for source in mine:
        why = video_status(store, source)
        if why is None:
            result.up_to_date += 1
        else:
            todo.append(source)
            reasons[why] = reasons.get(why, 0) + 1
            if why != "new":
                progress.debug(f"  {source.path}: {why}")
    shard_note = f" (shard {r.shard[0]}/{r.shard[1]}: {len(mine)} of {len(r.sources)} videos)" if r.shard[1] > 1 else ""
    if not todo:
        progress.log(f"{store_path}: up to date ({result.up_to_date} videos){shard_note}")
        result.seconds = time.perf_counter() - t0
        return result
    why_text = ", ".join(f"{n} {k}" for k, n in sorted(reasons.items()))
    progress.log(f"{store_path}: extracting {len(todo)} videos ({why_text}); {result.up_to_date} up to date{shard_note}")

    workers, batch_size = _defaults(device, cfg.workers, cfg.batch_size, int(settings["frames"]))
    plan = decode_plan(settings, cfg.decoder)

    def calibration():
        return _calibration_data(r.sources, plan, cfg.calibration_frames, workers=workers, timeout=cfg.timeout)

    choices = {"inception": r.inception, "clip": r.clip}
    backbones = prepare_backbones(store, settings, choices, device, calibration, reference=reference,
                                  path_overrides=path_overrides)
    run_attrs = {"device": str(device), "precision": backbones.precision}
    with progress.bar(total=len(todo), desc="extract", unit="video") as bar:
        loop = ExtractionLoop(store, backbones, plan, workers=workers, timeout=cfg.timeout, batch_size=batch_size,
                              clip_batch=max(1, batch_size // 4), dtype=settings["dtype"], bar=bar,
                              run_attrs=run_attrs)
        t_loop = time.perf_counter()
        stats = loop.run(todo)
        result.loop_seconds = time.perf_counter() - t_loop
    result.completed = stats.completed
    result.up_to_date += stats.late_up_to_date
    result.in_progress_elsewhere = stats.busy
    result.failed = {vid: reason for vid, (_, reason) in sorted(stats.failed.items())}
    result.failed_paths = {vid: path for vid, (path, _) in sorted(stats.failed.items())}
    result.frames = stats.frames
    result.compute_seconds = stats.compute_seconds
    result.seconds = time.perf_counter() - t0
    _summary(result)
    return result


def _preflight(r: _Resolved) -> None:
    """Fetch downloadable weights now (into torch's cache), so an offline machine fails early and cleanly."""
    from fcvc_pipeline.features.backbones import hub_state, imagenet_inception_state

    if r.inception.kind == "imagenet":
        imagenet_inception_state()
    if r.clip is not None and r.clip.kind == "hub":
        hub_state(r.cfg.clip_model)


def _summary(result: ExtractResult) -> None:
    rate = result.completed / result.seconds if result.seconds > 0 else 0.0
    parts = [f"extracted {result.completed} videos in {result.seconds:.1f} s ({rate:.2f} videos/s)",
             f"{result.up_to_date} up to date"]
    if result.in_progress_elsewhere:
        parts.append(f"{result.in_progress_elsewhere} left to another running extraction")
    if result.failed:
        parts.append(f"{len(result.failed)} failed")
    progress.log("; ".join(parts))
    for vid, reason in result.failed.items():
        progress.log(f"  failed: {result.failed_paths.get(vid, vid)}: {reason}")


def _calibration_data(sources: list[VideoSource], plan: DecodePlan, frames_wanted: int, *, workers: int,
                      timeout: float):
    """Sampled frames (and clips) of the first videos of the whole input list, in list order."""
    import numpy as np

    from fcvc_pipeline.features.decode_pool import DecodePool
    from fcvc_pipeline.features.networks import CalibrationData

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


__all__ = ["ExtractConfig", "ExtractResult", "run_extract", "extract_like", "build_settings", "decode_plan"]
