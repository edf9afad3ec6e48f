"""What an extraction job is and what it records: :class:`ExtractionJob` (a checked request) and the store
settings derived from it (every option that changes the features, and the identity of the weights).

``fcvc extract`` builds a job from its options (``stages/extract.py``); ``fcvc caption`` builds one from a
reference store's records (:func:`fcvc_pipeline.features.extraction.extract_like`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchvision.models import Inception_V3_Weights

from fcvc_pipeline.artifacts import file_sha256
from fcvc_pipeline.errors import ConfigError
from fcvc_pipeline.features.backbones import CLIP_MODELS, FRAME_DIM, WeightsChoice, inception_grid, parse_weights
from fcvc_pipeline.features.video import DecodePlan, VideoSource

SAMPLING_RULE = "index_k = floor((k + 0.5) * T / N); clip k = index_k + stride * (j - L // 2), clamped"
DTYPES = ("float16", "float32")
C3D_ENV = "FCVC_C3D_WEIGHTS"
DEFAULT_C3D_PATH = Path("~/.cache/fcvc/c3d.pickle")
C3D_PROJECT = "https://github.com/DavideA/c3d-pytorch"  # whose README links the converted Sports-1M c3d.pickle


@dataclass
class ExtractionJob:
    """A checked extraction request: which videos, into which store, with which networks and settings."""

    sources: list[VideoSource]  # every input video, sorted by id
    shard: tuple[int, int]  # (I, N): this process takes every N-th video from the I-th
    store_path: Path
    inception: WeightsChoice
    clip: WeightsChoice | None  # None: no clip features
    clip_model: str = "c3d"
    frames: int = 15
    frame_size: int = 299
    dtype: str = "float16"
    calibration_frames: int = 64  # frames for BatchNorm re-estimation of random weights
    device: str = "auto"
    batch_size: int | None = None  # frames per frame-backbone forward; None = by device
    workers: int | None = None  # decode processes; None = by CPU count
    timeout: float = 300.0  # seconds per video in a decode worker
    decoder: str = "auto"
    force: bool = False
    verify: bool = False  # read every complete video in full first; damaged ones are extracted again
    precision: str = "auto"  # auto | fp32 | bf16 (devices.resolve_precision); recorded per video, not a setting
    channels_last: bool = True  # the networks' layout; False: the old contiguous CPU path (benchmarks only)

    def mine(self) -> list[VideoSource]:
        i, n = self.shard
        return self.sources[i::n]


def clip_choice(value: str, model: str) -> WeightsChoice:
    """The clip network's weights for ``--c3d-weights VALUE`` (``auto``: the C3D file at $FCVC_C3D_WEIGHTS or the default path)."""
    if model == "c3d" and value == "auto":
        env = os.environ.get(C3D_ENV)
        candidate = Path(env).expanduser() if env else DEFAULT_C3D_PATH.expanduser()
        if not candidate.is_file():
            raise ConfigError(missing_c3d_weights(candidate, from_env=bool(env)))
        return WeightsChoice("path", path=candidate)
    if value == "auto":
        return WeightsChoice("hub")
    named = ("hub",) if model != "c3d" else ()
    return parse_weights(value, named=named, option="--c3d-weights")


def missing_c3d_weights(looked_at: Path, *, from_env: bool) -> str:
    """Why ``--c3d-weights auto`` found no C3D weights, where they come from, and what runs without them."""
    where = f"${C3D_ENV} names {looked_at}, which does not exist" if from_env else f"there is no {DEFAULT_C3D_PATH}"
    return (f"no C3D weights: --c3d-weights auto (the default) reads ${C3D_ENV} or {DEFAULT_C3D_PATH}, and {where}.\n"
            f"    They are the Sports-1M C3D weights converted for PyTorch: the c3d.pickle of the DavideA/c3d-pytorch "
            f"project ({C3D_PROJECT}, download link in its README). fcvc does not download them: download the file "
            f"yourself, then put it at {DEFAULT_C3D_PATH}, set ${C3D_ENV}, or pass --c3d-weights PATH.\n"
            f"    Without it: --c3d-weights none (frame and region features only, no clip features), "
            f"--c3d-weights random (seeded random C3D, for offline tests: its clip features mean nothing), or "
            f"--clip-model x3d_m (a Kinetics clip network that pytorchvideo downloads)")


def build_settings(job: ExtractionJob) -> dict[str, Any]:
    """The store's settings for ``job``: what changes the features (device, batch size and workers do not)."""
    grid = inception_grid(job.frame_size)
    inc: dict[str, Any] = {"model": "inception_v3", "weights": weights_label(job.inception), "layers": ["avgpool", "Mixed_7c"],
                           "preprocess": "resize to SxS (bilinear), ImageNet mean/std, transform_input"}
    if job.inception.kind == "random":
        inc["calibration_frames"] = job.calibration_frames
    if job.inception.kind == "imagenet":
        inc["source"] = Inception_V3_Weights.IMAGENET1K_V1.url
    clip = None
    clip_dim = 0
    if job.clip is not None:
        info = CLIP_MODELS[job.clip_model]
        spec = info.clip
        clip = {"model": info.name, "weights": weights_label(job.clip), "frames_per_clip": spec.length,
                "stride": spec.stride, "crop": spec.crop,
                "resize": list(spec.resize) if spec.resize else f"short side {spec.short_side}",
                "feature": "fc6 after ReLU" if info.name == "c3d" else "head pool (classifier removed)",
                "preprocess": ("BGR, 0-255, Sports-1M mean" if info.name == "c3d"
                               else "RGB, [0,1], Kinetics mean/std")}
        if info.hub_url and job.clip.kind == "hub":
            clip["source"] = info.hub_url
        if job.clip.kind == "random":
            clip["calibration_frames"] = job.calibration_frames
        clip_dim = info.dim
    return {"frames": job.frames, "frame_size": job.frame_size, "dtype": job.dtype, "sampling": SAMPLING_RULE,
            "inception": inc, "clip": clip, "frame_dim": FRAME_DIM, "region_grid": [grid, grid],
            "num_regions": grid * grid, "clip_dim": clip_dim}


_HASHES: dict[tuple[str, int, int], str] = {}


def weights_label(choice: WeightsChoice) -> str:
    """The recorded identity of a weights choice; a file is identified by its sha256 (cached per size+mtime)."""
    if choice.kind != "path":
        return choice.label()
    assert choice.path is not None
    st = choice.path.stat()
    key = (str(choice.path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_sha256(choice.path)
    return f"sha256:{_HASHES[key]}"


def weights_identity(settings: dict[str, Any]) -> dict[str, str | None]:
    """Which weights a store's features come from: ``{"inception": "imagenet" | "random:<seed>" |
    "sha256:<file hash>", "clip": ... | None}`` (None: no clip features). Carried into checkpoints and
    score reports, so a result computed on random-backbone features always says so."""
    clip = settings.get("clip") or {}
    return {"inception": (settings.get("inception") or {}).get("weights"), "clip": clip.get("weights")}


def decode_plan(settings: dict[str, Any], decoder: str = "auto") -> DecodePlan:
    clip = CLIP_MODELS[settings["clip"]["model"]].clip if settings.get("clip") else None
    return DecodePlan(frames=int(settings["frames"]), frame_size=int(settings["frame_size"]), clip=clip,
                      decoder=decoder)
