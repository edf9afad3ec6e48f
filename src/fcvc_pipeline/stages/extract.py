"""``fcvc extract``: videos -> Inception-V3 frame + region features and clip features, in a Zarr store.

Config -> checked job -> engine: :class:`ExtractConfig` holds every option and :meth:`ExtractConfig.check`
turns it into an :class:`~fcvc_pipeline.features.settings.ExtractionJob` (all problems reported at
once; INPUTS that name no video are one of them, so nothing, no store and no work directory, is made);
:func:`fcvc_pipeline.features.extraction.run_extraction` does the work.

Caching: a store records its settings (every option that changes the features, and the identity of
the weights); a rerun with the same settings skips every video that is complete and unchanged on
disk (size and mtime), extracts new ones, retries failed and interrupted ones, and refuses other
settings unless ``--force``. Scale-out: ``--shard I/N`` (or torchrun's RANK/WORLD_SIZE) takes every
N-th video of the sorted input list; several processes may write one store at once (each waits for the
videos another one is writing, and takes over those it leaves unfinished). SIGTERM / SIGINT: finished
videos are kept and the run exits 143 / 130 saying so (docs/extract.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fcvc_pipeline.devices import check_device_spec, check_precision_spec
from fcvc_pipeline.errors import ConfigError, require
from fcvc_pipeline.features.backbones import CLIP_MODELS, INCEPTION_MIN_SIZE, parse_weights
from fcvc_pipeline.features.extraction import ExtractResult, extract_like, run_extraction
from fcvc_pipeline.features.settings import DTYPES, ExtractionJob, build_settings, clip_choice, decode_plan
from fcvc_pipeline.features.video import DECODERS, LIST_EXTENSIONS, VIDEO_EXTENSIONS, list_videos
from fcvc_pipeline.workdir import DEFAULT_WORKDIR, Workdir

__all__ = ["ExtractConfig", "ExtractResult", "run_extract", "extract_like", "build_settings", "decode_plan"]


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
    verify: bool = False  # read every complete video in full first; damaged ones are extracted again
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with bf16 units, else fp32) | fp32 | bf16

    @property
    def store_path(self) -> Path:
        return Path(self.store) if self.store is not None else Workdir(self.workdir).features

    def check(self) -> ExtractionJob:
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
            clip = attempt(clip_choice, self.c3d_weights, self.clip_model)
        if (p := check_device_spec(self.device)):
            problems.append(p)
        if (p := check_precision_spec(self.precision)):
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
        if sources == []:  # nothing to extract: an error, before anything (a store fixing settings) is made
            problems.append(no_videos_found(self.inputs))
        require(problems)
        assert inception is not None and sources is not None and shard is not None
        return ExtractionJob(sources=sources, shard=shard, store_path=self.store_path, inception=inception, clip=clip,
                             clip_model=self.clip_model, frames=self.frames, frame_size=self.frame_size,
                             dtype=self.dtype, calibration_frames=self.calibration_frames, device=self.device,
                             batch_size=self.batch_size, workers=self.workers, timeout=self.timeout,
                             decoder=self.decoder, force=self.force, verify=self.verify, precision=self.precision)


def no_videos_found(inputs: tuple[Path, ...]) -> str:
    """What to say when ``inputs`` name no video: the paths, and the file names that were looked for."""
    names = ", ".join(str(p) for p in inputs)
    lists = ", ".join(sorted(LIST_EXTENSIONS))
    return (f"{names}: no videos found (folders are searched recursively, hidden entries skipped, for files "
            f"ending in {', '.join(sorted(VIDEO_EXTENSIONS))}; a {lists} file lists one path per line); "
            f"check the path, or name the video files themselves")


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


def run_extract(cfg: ExtractConfig) -> ExtractResult:
    """Extract features for ``cfg.inputs`` into ``cfg.store_path`` (see the module docstring)."""
    return run_extraction(cfg.check())
