"""Which networks a feature store's features come from: resolve, build, calibrate, record, reload.

The store's ``settings`` name the weights (``imagenet``, ``hub``, ``random:<seed>``,
``sha256:<file hash>``); its ``backbones`` group holds one record per network with everything needed
to rebuild exactly that network later (a resumed run, an extended run, ``fcvc caption`` of a new
video through :func:`fcvc_pipeline.features.extraction.extract_like`):

- ``imagenet`` / ``hub``: the download URL; the weights come from torch's hub cache.
- a PATH: the path and the file's sha256 (a changed file is refused).
- ``random:<seed>``: the seed, plus the BatchNorm statistics re-estimated on the corpus's first
  frames, saved as a blob in the store (a few hundred KB; the seeded weights are regenerated).

Every record also carries ``state_sha256``, the hash of the final network's state dict, checked on
every reload: a network that differs in any value is never used to extend a store.

:func:`load_from_record` rebuilds a store's network; :func:`network_from_record` does it from a record and
the BatchNorm statistics (and optionally the source weights) handed over directly, with no store: what a
``.fcvc`` captioner file carries (``inference/package.py:build_backbones``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import file_sha256
from fcvc_pipeline.devices import resolve_precision
from fcvc_pipeline.errors import ConfigError, MismatchError, MissingArtifactError
from fcvc_pipeline.features.backbones import (
    CLIP_MODELS,
    ClipModelInfo,
    InceptionFeatures,
    WeightsChoice,
    batchnorm_state,
    build_clip_model,
    build_inception_v3,
    calibrate_batchnorm,
    has_batchnorm,
    hub_state,
    imagenet_inception_state,
    load_batchnorm_state,
    load_state_file,
    preprocess_clips,
    preprocess_frames,
    state_sha256,
)
from fcvc_pipeline.features.store import FeatureStore

CALIBRATION_CHUNK = 16  # frames per BatchNorm calibration pass (fixed: the result must not depend on --batch-size)
CLIP_CALIBRATION_CHUNK = 4
# Clip networks in channels_last_3d (True) or contiguous (False). Measured on the 2-core CPU, random weights, fp32
# forward of 2 clips at each model's own clip size, median of 3: C3D 1.2-1.75x end to end (bench/extract.py), x3d_m
# 1.92x, slow_r50 1.36x, r2plus1d_r50 1.49x, every output within 2.6e-7 of the contiguous one (bf16 on top: 3.4-4.5x).
CLIP_CHANNELS_LAST = {"c3d": True, "x3d_m": True, "slow_r50": True, "r2plus1d_r50": True}


@dataclass
class CalibrationData:
    """Frames (and clips) of the corpus's first videos, in input order."""

    frames: np.ndarray  # uint8 [n, S, S, 3]
    clips: np.ndarray | None  # uint8 [m, L, c, c, 3]
    video_ids: list[str]
    failures: dict[str, str] = field(default_factory=dict)  # videos that could not be decoded: id -> reason

    def shortage(self, what: str) -> str:
        text = f"random {what} weights need at least 2 {'frames' if 'Inception' in what else 'clips'} to " \
               f"re-estimate BatchNorm statistics, and the inputs gave fewer"
        if self.failures:
            shown = "; ".join(f"{k}: {v}" for k, v in list(self.failures.items())[:3])
            text += f" ({len(self.failures)} video(s) could not be decoded: {shown})"
        return text


# --------------------------------------------------------------------------------------------------
# Running the networks
# --------------------------------------------------------------------------------------------------
class Backbones:
    """The frame network and the optional clip network on one device, at one precision.

    ``precision``: ``fp32``, ``bf16`` (``torch.autocast(device type, bfloat16)``, on CPU and CUDA) or ``auto``
    (:func:`fcvc_pipeline.devices.resolve_precision`: bf16 on CUDA and on CPUs with bf16 units). The networks
    run in channels_last layout on every device (2-D for Inception-V3, 3-D for the clip networks:
    :data:`CLIP_CHANNELS_LAST` says which); ``channels_last=False`` keeps the contiguous layout (the old CPU
    path, for benchmarks). On CUDA, inputs travel as uint8 through pinned memory with non-blocking
    copies. Outputs come back as float32 numpy arrays whatever the precision.

    The networks are built, calibrated and hashed before they get here (``prepare_backbones``,
    ``network_from_record``), always in fp32 and contiguous: neither the BatchNorm statistics nor the
    recorded state hash depend on the precision or the layout (the layout changes no value of the state).
    """

    def __init__(self, inception: InceptionFeatures, clip: nn.Module | None, clip_info: ClipModelInfo | None,
                 device: torch.device, *, precision: str = "auto", channels_last: bool = True):
        self.device = device
        self.cuda = device.type == "cuda"
        self.bf16 = resolve_precision(precision, device) == "bf16"
        self.inception = inception.to(device).eval()
        self.clip = clip.to(device).eval() if clip is not None else None
        self.clip_info = clip_info
        self.frames_channels_last = channels_last
        self.clips_channels_last = channels_last and clip_info is not None and CLIP_CHANNELS_LAST.get(clip_info.name, False)
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # batch shapes repeat (whole videos per batch)
        if self.frames_channels_last:
            self.inception = self.inception.to(memory_format=torch.channels_last)
        if self.clip is not None and self.clips_channels_last:
            self.clip = self.clip.to(memory_format=torch.channels_last_3d)

    @property
    def precision(self) -> str:
        """What each video records: ``bf16-autocast`` or ``fp32`` (the same strings on every device)."""
        return "bf16-autocast" if self.bf16 else "fp32"

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array))
        if self.cuda:
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def frame_inputs(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [B, S, S, 3] -> the network input on the device (float [B, 3, S, S])."""
        x = preprocess_frames(self._to_device(frames))
        return x.contiguous(memory_format=torch.channels_last) if self.frames_channels_last else x  # as before: permuted

    def clip_inputs(self, clips: np.ndarray) -> torch.Tensor:
        """uint8 [B, L, c, c, 3] -> the clip network input on the device (float [B, 3, L, c, c])."""
        assert self.clip_info is not None
        x = preprocess_clips(self._to_device(clips), self.clip_info)
        return x.contiguous(memory_format=torch.channels_last_3d) if self.clips_channels_last else x.contiguous()

    @torch.inference_mode()
    def frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [B, S, S, 3] -> (pooled float32 [B, 2048], regions float32 [B, G*G, 2048])."""
        x = self.frame_inputs(frames)
        with self._autocast():
            pooled, regions = self.inception(x)
        return pooled.float().cpu().numpy(), regions.float().cpu().numpy()

    @torch.inference_mode()
    def clips(self, clips: np.ndarray) -> np.ndarray:
        """uint8 [B, L, c, c, 3] -> float32 [B, C]."""
        assert self.clip is not None
        x = self.clip_inputs(clips)
        with self._autocast():
            out = self.clip(x)
        return out.float().cpu().numpy()


# --------------------------------------------------------------------------------------------------
# Building a network from a choice or from a record
# --------------------------------------------------------------------------------------------------
def _bn_blob(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(batchnorm_state(module), buf)
    return buf.getvalue()


def _build(role: str, kind: str, *, seed: int = 0, path: Path | None = None, clip_model: str | None = None,
           state: Mapping[str, torch.Tensor] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the ``role`` ("inception" | "clip") network; returns it and the record fields known so far.

    ``state``: the weights themselves (carried in a captioner file), instead of downloading or reading them.
    """
    record: dict[str, Any] = {"kind": kind}
    given = state is not None
    if kind == "imagenet":
        if not given:
            state, record["url"] = imagenet_inception_state()
    elif kind == "hub":
        assert clip_model is not None
        if not given:
            state, record["url"] = hub_state(clip_model)
    elif kind == "path":
        if not given:
            assert path is not None
            state = load_state_file(path)
            record.update(path=str(Path(path).resolve()), file_sha256=file_sha256(path))
    elif kind == "random":
        record["seed"] = seed
    else:
        raise ValueError(kind)
    source = path or record.get("url") or (f"embedded {kind} weights" if given else f"random:{seed}")
    if role == "inception":
        module: nn.Module = InceptionFeatures(build_inception_v3(state, seed=seed, source=source))
    else:
        assert clip_model is not None
        module = build_clip_model(clip_model, state, seed=seed, source=source)
        record["model"] = clip_model
    return module, record


def _calibrate(role: str, module: nn.Module, data: CalibrationData, device: torch.device,
               clip_info: ClipModelInfo | None) -> dict[str, Any]:
    """Re-estimate BatchNorm statistics of a random network on the calibration frames (or clips)."""
    module.to(device)
    if role == "inception":
        if len(data.frames) < 2:
            raise ConfigError(data.shortage("Inception"), hint="add videos or use --frames >= 2")
        chunks = np.array_split(np.arange(len(data.frames)), -(-len(data.frames) // CALIBRATION_CHUNK))
        batches = (preprocess_frames(torch.from_numpy(data.frames[c]).to(device)) for c in chunks)
        used, unit = len(data.frames), "frame"
    else:
        assert clip_info is not None
        if data.clips is None or len(data.clips) < 2:
            raise ConfigError(data.shortage(clip_info.name))
        chunks = np.array_split(np.arange(len(data.clips)), -(-len(data.clips) // CLIP_CALIBRATION_CHUNK))
        batches = (preprocess_clips(torch.from_numpy(data.clips[c]).to(device), clip_info) for c in chunks)
        used, unit = len(data.clips), "clip"
    with progress.bar(total=used, desc=f"{role} BatchNorm", unit=unit) as bar:
        def counted() -> Iterator[torch.Tensor]:
            for c, x in zip(chunks, batches):
                yield x
                bar.update(len(c))  # after the forward of this batch

        calibrate_batchnorm(module, counted())
    module.to("cpu")
    return {"frames" if role == "inception" else "clips": used, "videos": list(data.video_ids)}


def _record_matches(old: dict[str, Any], new_label: str) -> bool:
    return old.get("weights") == new_label


def weights_file(role: str, record: Mapping[str, Any], *, path_override: Path | None = None, where: str,
                 missing_hint: str | None = None) -> Path:
    """The weights file a ``path`` network was built from: ``path_override`` or the recorded path, which
    must exist (else :class:`MissingArtifactError` with ``missing_hint``: how to point at it) and hash to the
    recorded ``file_sha256`` (else :class:`MismatchError`: never a network from other weights)."""
    path = Path(path_override or record["path"])
    if not path.is_file():
        raise MissingArtifactError(f"{where}: the {role} weights file {path} is gone",
                                   hint=missing_hint or f"put the file (same content) back at {path}; `fcvc caption` "
                                                        f"can point at a copy with --backbone-weights {role}=PATH")
    digest = file_sha256(path)
    if digest != record.get("file_sha256"):
        raise MismatchError(f"{path}: not the {role} weights file {where} was made with: it changed since "
                            f"(sha256 {digest[:12]}... != recorded {str(record.get('file_sha256'))[:12]}...)",
                            hint="use the original file, or re-extract everything with --force")
    return path


def network_from_record(role: str, record: Mapping[str, Any], *, where: str,
                        batchnorm: Mapping[str, torch.Tensor] | None = None,
                        weights: Mapping[str, torch.Tensor] | None = None, path_override: Path | None = None,
                        missing_hint: str | None = None) -> nn.Module:
    """Rebuild a recorded network without a store, verifying it is the very same (``state_sha256``).

    ``batchnorm``: the re-estimated statistics of a random network (a store keeps them as a blob, a
    captioner file as tensors). ``weights``: the state a file/imagenet/hub network was built from, when the
    caller carries it (``--embed-backbones``); otherwise a file is found at ``path_override`` or its
    recorded path (:func:`weights_file`) and downloads come from torch's cache. ``where`` names the
    record in messages.
    """
    kind = str(record.get("kind"))
    path = None
    if kind == "path" and weights is None:
        path = weights_file(role, record, path_override=path_override, where=where, missing_hint=missing_hint)
    module, _ = _build(role, kind, seed=int(record.get("seed", 0)), path=path, clip_model=record.get("model"),
                       state=weights)
    if batchnorm is not None:
        load_batchnorm_state(module, batchnorm, where)
    digest = state_sha256(module.state_dict())
    if digest != record.get("state_sha256"):
        raise MismatchError(f"{where}: the rebuilt {role} network differs from the one recorded "
                            f"(state sha256 {digest[:12]}... != {str(record.get('state_sha256'))[:12]}...)",
                            hint="a different torch/torchvision version may initialise or ship weights "
                                 "differently; re-extract with --force")
    return module


def load_from_record(store: FeatureStore, role: str, record: dict[str, Any], *, path_override: Path | None = None
                     ) -> nn.Module:
    """Rebuild the network a store recorded (its BatchNorm blob read with ``weights_only=True``)."""
    where = f"{store.path} (backbones/{role})"
    bn = None
    if record.get("bn_blob"):
        bn = torch.load(io.BytesIO(store.get_blob(record["bn_blob"])), map_location="cpu", weights_only=True)
    return network_from_record(role, record, where=where, batchnorm=bn, path_override=path_override)


def prepare_backbones(store: FeatureStore, settings: dict[str, Any], choices: dict[str, WeightsChoice | None],
                      device: torch.device, calibration: Callable[[], CalibrationData], *,
                      reference: FeatureStore | None = None, path_overrides: dict[str, Path] | None = None,
                      precision: str = "auto", channels_last: bool = True) -> Backbones:
    """The networks for ``store``: reloaded from its records, else built, calibrated and recorded.

    ``choices`` maps "inception"/"clip" to the parsed weights (clip None: no clip features).
    With ``reference``, the records (and blobs) are copied from that store instead of being made.
    Runs under the store lock, so concurrent writers agree on one network (the first one records it).
    Building, calibrating and hashing are fp32 whatever ``precision`` (the forward's: see :class:`Backbones`).
    """
    path_overrides = path_overrides or {}
    clip_info = CLIP_MODELS[settings["clip"]["model"]] if settings.get("clip") else None
    modules: dict[str, nn.Module | None] = {"inception": None, "clip": None}
    with store.lock():
        records = store.backbone_records()
        ref_records = reference.backbone_records() if reference is not None else {}
        data: CalibrationData | None = None
        for role in ("inception", "clip"):
            entry = settings.get(role)
            if entry is None:
                continue
            label = entry["weights"]
            record = records.get(role)
            if record is None and role in ref_records:
                record = dict(ref_records[role])
                blobs = {record["bn_blob"]: reference.get_blob(record["bn_blob"])} if record.get("bn_blob") else {}
                modules[role] = load_from_record(reference, role, record, path_override=path_overrides.get(role))
                store.put_backbone(role, record, blobs)
                continue
            if record is not None:
                ref_record = ref_records.get(role)
                if ref_record is not None and ref_record.get("state_sha256") != record.get("state_sha256"):
                    raise MismatchError(f"{store.path} was extracted with another {role} network than "
                                        f"{reference.path} (same settings, different weights or calibration)",
                                        hint="use a new output store")
                if not _record_matches(record, label):
                    raise MismatchError(f"{store.path}: backbones/{role} records weights {record.get('weights')!r} "
                                        f"but the settings say {label!r}", hint="rebuild with --force")
                modules[role] = load_from_record(store, role, record, path_override=path_overrides.get(role))
                continue
            if reference is not None:
                raise MissingArtifactError(f"{reference.path}: no record of its {role} network",
                                           hint="re-extract the reference store with this version of fcvc")
            choice = choices[role]
            assert choice is not None
            module, record = _build(role, choice.kind, seed=choice.seed, path=choice.path,
                                    clip_model=settings["clip"]["model"] if role == "clip" else None)
            record["weights"] = label
            blobs = {}
            if choice.kind == "random" and has_batchnorm(module):
                if data is None:
                    data = calibration()
                progress.log(f"re-estimating {role} BatchNorm statistics on the first "
                             f"{len(data.video_ids)} video(s) (random weights)")
                record["calibration"] = _calibrate(role, module, data, device, clip_info)
                record["bn_blob"] = f"{role}_bn"
                blobs[record["bn_blob"]] = _bn_blob(module)
            record["state_sha256"] = state_sha256(module.state_dict())
            store.put_backbone(role, record, blobs)
            modules[role] = module
    assert modules["inception"] is not None
    return Backbones(modules["inception"], modules["clip"], clip_info, device, precision=precision,
                     channels_last=channels_last)
