"""The feature backbones: Inception-V3 (frames and regions), C3D and pytorchvideo models (clips).

- Inception-V3 (torchvision): one forward gives the pooled 2048-d vector and the ``Mixed_7c`` map
  (8x8x2048 at 299x299; smaller frames give a smaller grid, see :func:`inception_grid`).
- C3D, the Sports-1M network in the key layout of DavideA's ``c3d.pickle`` (conv1 .. conv5b,
  fc6 .. fc8), with the Caffe preprocessing (BGR, 0-255, Sports-1M mean); the feature is fc6 after
  its ReLU (4096-d), as in the original Caffe feature extractor where relu6 runs in place.
- pytorchvideo hub backbones (``x3d_m``, ``slow_r50``, ``r2plus1d_r50``): model builders only, the
  classifier projection removed so the head returns its pooled 2048-d feature.

Weights: ``imagenet`` (torchvision's enum) / ``hub`` (pytorchvideo's checkpoint URL) are downloaded
into torch's hub cache; a PATH is a state dict loaded strictly; ``random[:SEED]`` is a seeded
initialisation whose BatchNorm statistics are re-estimated on real frames
(:func:`calibrate_batchnorm`), because raw random Inception-V3 overflows float16.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn
from torchvision.models import Inception_V3_Weights, inception_v3
from torchvision.models.feature_extraction import create_feature_extractor

from fcvc_pipeline.artifacts import torch_load_failure
from fcvc_pipeline.errors import ConfigError, InputError
from fcvc_pipeline.features.video import ClipSpec

FRAME_DIM = 2048
INCEPTION_MIN_SIZE = 75
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------
# Weight choices
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsChoice:
    """A parsed ``--*-weights`` value."""

    kind: str  # "imagenet" | "hub" | "random" | "path" | "none"
    seed: int = 0
    path: Path | None = None

    def label(self) -> str:
        if self.kind == "random":
            return f"random:{self.seed}"
        if self.kind == "path":
            return str(self.path)
        return self.kind


def parse_weights(text: str, *, named: tuple[str, ...], option: str) -> WeightsChoice:
    """``named`` (e.g. ``imagenet``), ``random``, ``random:SEED`` or a path to an existing file."""
    value = text.strip()
    if value in named:
        return WeightsChoice(value)
    if value == "random" or value.startswith("random:"):
        seed_text = value.partition(":")[2] or "0"
        try:
            seed = int(seed_text)
        except ValueError:
            raise ConfigError(f"{option} {text!r}: the seed after 'random:' must be an integer") from None
        return WeightsChoice("random", seed=seed)
    path = Path(value).expanduser()
    if not path.is_file():
        options = "|".join(named + ("random[:SEED]", "PATH"))
        raise ConfigError(f"{option} {text!r}: no such weights file (expected {options})")
    return WeightsChoice("path", path=path)


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file (``weights_only``: a weights file is untrusted input).

    Accepts a bare state dict or one wrapped as ``{"state_dict": ...}`` / ``{"model_state": ...}``.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason, hint = torch_load_failure(e)
        raise InputError(path, f"cannot load as a PyTorch state dict: {reason}", hint=hint) from None
    for key in ("state_dict", "model_state"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(path, "does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path, layout: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and the first mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
                parts.append(f"{label} keys: {', '.join(keys[:4])}{more}")
        raise InputError(source, f"not a state dict in the {layout} layout: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of a state dict's names, dtypes, shapes and values (equal networks, equal hashes)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _download_error(what: str, url: str, err: Exception, alternatives: str) -> ConfigError:
    return ConfigError(f"cannot download the {what} weights ({url}): {type(err).__name__}: {str(err)[:160]}",
                       hint=f"offline? use {alternatives}")


# --------------------------------------------------------------------------------------------------
# BatchNorm re-estimation (for random weights)
# --------------------------------------------------------------------------------------------------
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, _BN) for m in module.modules())


@torch.no_grad()
def calibrate_batchnorm(module: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running mean/var as the average over ``batches``.

    Each BatchNorm normalises with its batch statistics during the pass (so the layers after it see
    sane inputs) and accumulates them with equal weight (``momentum=None``). Returns the number of
    batches seen. The module is left in eval mode.
    """
    bns = [m for m in module.modules() if isinstance(m, _BN)]
    module.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    n = 0
    try:
        for x in batches:
            module(x)
            n += 1
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
            m.eval()
    if bns and n == 0:
        raise ValueError("no calibration batch was given")
    return n


def batchnorm_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The BatchNorm buffers of ``module`` (what calibration changes), detached on CPU."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, _BN):
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                t = getattr(m, buf, None)
                if t is not None:
                    out[f"{name}.{buf}"] = t.detach().to("cpu").clone()
    return out


def load_batchnorm_state(module: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    expected = batchnorm_state(module)
    if set(expected) != set(state) or any(tuple(expected[k].shape) != tuple(state[k].shape) for k in expected):
        raise InputError(source, "BatchNorm statistics do not fit this network")
    targets = dict(module.named_buffers())
    with torch.no_grad():
        for k, v in state.items():
            targets[k].copy_(v)


# --------------------------------------------------------------------------------------------------
# Inception-V3
# --------------------------------------------------------------------------------------------------
def inception_grid(frame_size: int) -> int:
    """Side of the ``Mixed_7c`` grid for square frames of ``frame_size`` (299 -> 8, 75 -> 1)."""
    if frame_size < INCEPTION_MIN_SIZE:
        raise ValueError(f"Inception-V3 needs frames of at least {INCEPTION_MIN_SIZE}x{INCEPTION_MIN_SIZE}")
    x = (frame_size - 3) // 2 + 1  # Conv2d_1a_3x3, stride 2
    x = x - 2  # Conv2d_2a_3x3 (Conv2d_2b keeps the size)
    x = (x - 3) // 2 + 1  # maxpool1
    x = x - 2  # Conv2d_4a_3x3 (Conv2d_3b is 1x1)
    x = (x - 3) // 2 + 1  # maxpool2
    x = (x - 3) // 2 + 1  # Mixed_6a, stride 2
    return (x - 3) // 2 + 1  # Mixed_7a, stride 2


def imagenet_inception_state() -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's ImageNet Inception-V3 state dict (from its cache, else downloaded) and its URL."""
    weights = Inception_V3_Weights.IMAGENET1K_V1
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise _download_error("Inception-V3 ImageNet", weights.url, e,
                              "--inception-weights random (offline test mode) or --inception-weights PATH "
                              "(a state dict in torchvision's layout)") from None
    return state, weights.url


def build_inception_v3(state: Mapping[str, torch.Tensor] | None = None, *, seed: int = 0,
                       source: str | Path = "<state dict>") -> nn.Module:
    """torchvision's Inception3 with ``transform_input=True`` (inputs are ImageNet-normalised).

    ``state`` (torchvision layout, with or without ``AuxLogits.*``) is loaded strictly; without it the
    network is initialised from ``seed`` with PyTorch's default layer initialisation (torchvision's
    truncated-normal init costs seconds and is rescaled by BatchNorm re-estimation anyway). The
    auxiliary classifier and ``fc`` are dropped afterwards.
    """
    aux = state is None or any(k.startswith("AuxLogits.") for k in state)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = inception_v3(weights=None, aux_logits=aux, transform_input=True, init_weights=False)
    if state is not None:
        load_strict(net, state, source, "torchvision Inception-V3")
    net.AuxLogits = None
    net.aux_logits = False
    net.fc = nn.Identity()
    return net.eval()


class InceptionFeatures(nn.Module):
    """Frames -> (pooled [B, 2048], regions [B, G*G, 2048]) in one forward pass.

    Input: float [B, 3, S, S], ImageNet-normalised (see :func:`preprocess_frames`); the network's
    ``transform_input`` maps that to the range the Google weights expect. Regions are the ``Mixed_7c``
    map flattened row-major; pooled is its spatial mean (the network's ``avgpool``).
    """

    def __init__(self, net: nn.Module):
        super().__init__()

        nodes = {"Mixed_7c": "regions", "avgpool": "pooled"}
        self.body = create_feature_extractor(net, train_return_nodes=nodes, eval_return_nodes=nodes)
        self.body.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.body(x)
        regions = out["regions"]  # [B, 2048, G, G]
        pooled = out["pooled"].flatten(1)  # [B, 2048]
        return pooled, regions.flatten(2).transpose(1, 2)  # [B, G*G, 2048]


def preprocess_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, S, 3] RGB -> float [B, 3, S, S] normalised with the ImageNet mean/std (once)."""
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


# --------------------------------------------------------------------------------------------------
# C3D (Sports-1M), DavideA's key layout
# --------------------------------------------------------------------------------------------------
C3D_MEAN_BGR = (90.25, 97.66, 101.41)  # Sports-1M channel means, BGR order, 0-255 scale
C3D_CLASSES = 487


class C3D(nn.Module):
    """C3D as trained on Sports-1M: 8 3x3x3 convolutions, 5 poolings, fc6/fc7/fc8.

    Input: float [B, 3, 16, 112, 112] (BGR, 0-255, mean subtracted; :func:`preprocess_c3d`).
    ``forward`` returns fc6 after its ReLU, [B, 4096]; fc7/fc8 exist so a full ``c3d.pickle`` loads
    strictly and can be dropped with :meth:`trim`.
    """

    def __init__(self, num_classes: int = C3D_CLASSES):
        super().__init__()
        conv = lambda cin, cout: nn.Conv3d(cin, cout, kernel_size=3, padding=1)  # noqa: E731
        self.conv1 = conv(3, 64)
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.conv2 = conv(64, 128)
        self.pool2 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv3a, self.conv3b = conv(128, 256), conv(256, 256)
        self.pool3 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv4a, self.conv4b = conv(256, 512), conv(512, 512)
        self.pool4 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv5a, self.conv5b = conv(512, 512), conv(512, 512)
        self.pool5 = nn.MaxPool3d(kernel_size=2, stride=2, padding=(0, 1, 1))
        self.fc6 = nn.Linear(8192, 4096)
        self.fc7: nn.Linear | None = nn.Linear(4096, 4096)
        self.fc8: nn.Linear | None = nn.Linear(4096, num_classes)
        self.relu = nn.ReLU()

    def trim(self) -> "C3D":
        """Drop fc7/fc8 (not needed for fc6 features)."""
        self.fc7 = None
        self.fc8 = None
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.relu
        h = self.pool1(r(self.conv1(x)))  # [B, 64, 16, 56, 56]
        h = self.pool2(r(self.conv2(h)))  # [B, 128, 8, 28, 28]
        h = self.pool3(r(self.conv3b(r(self.conv3a(h)))))  # [B, 256, 4, 14, 14]
        h = self.pool4(r(self.conv4b(r(self.conv4a(h)))))  # [B, 512, 2, 7, 7]
        h = self.pool5(r(self.conv5b(r(self.conv5a(h)))))  # [B, 512, 1, 4, 4]
        return r(self.fc6(h.flatten(1)))  # [B, 4096]


def build_c3d(state: Mapping[str, torch.Tensor] | None = None, *, seed: int = 0,
              source: str | Path = "<state dict>") -> C3D:
    """C3D from a DavideA-layout state dict (strict), or seeded He-normal weights (biases zero)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = C3D()
        if state is None:
            for m in net.modules():
                if isinstance(m, (nn.Conv3d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)
    if state is not None:
        load_strict(net, state, source, "C3D (DavideA c3d.pickle: conv1..conv5b, fc6..fc8)")
    return net.trim().eval()


def preprocess_c3d(clips: torch.Tensor) -> torch.Tensor:
    """uint8 [B, L, 112, 112, 3] RGB -> float [B, 3, L, 112, 112]: BGR, 0-255, Sports-1M mean removed."""
    x = clips.flip(-1).float()  # RGB -> BGR
    x = x - torch.tensor(C3D_MEAN_BGR, device=x.device)
    return x.permute(0, 4, 1, 2, 3)


# --------------------------------------------------------------------------------------------------
# Clip models: C3D and the pytorchvideo hub backbones
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipModelInfo:
    name: str
    dim: int  # feature size
    clip: ClipSpec  # how clip frames are cut (length, stride, resize, crop)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hub_url: str | None = None  # pytorchvideo checkpoint


_PTV = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
_KINETICS_MEAN, _KINETICS_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
CLIP_MODELS: dict[str, ClipModelInfo] = {
    "c3d": ClipModelInfo("c3d", 4096, ClipSpec(16, 1, (128, 171), None, 112), C3D_MEAN_BGR, (1.0, 1.0, 1.0)),
    # pytorchvideo's Kinetics-400 models at their evaluation settings (frames x stride, short side, crop)
    "x3d_m": ClipModelInfo("x3d_m", 2048, ClipSpec(16, 5, None, 256, 256), _KINETICS_MEAN, _KINETICS_STD,
                           f"{_PTV}/X3D_M.pyth"),
    "slow_r50": ClipModelInfo("slow_r50", 2048, ClipSpec(8, 8, None, 256, 224), _KINETICS_MEAN, _KINETICS_STD,
                              f"{_PTV}/SLOW_8x8_R50.pyth"),
    "r2plus1d_r50": ClipModelInfo("r2plus1d_r50", 2048, ClipSpec(16, 4, None, 256, 224), _KINETICS_MEAN,
                                  _KINETICS_STD, f"{_PTV}/R2PLUS1D_16x4_R50.pyth"),
}


class HubClipFeatures(nn.Module):
    """A pytorchvideo hub network without its classifier: float [B, 3, L, H, W] -> [B, 2048]."""

    def __init__(self, net: nn.Module):
        super().__init__()
        head = net.blocks[-1]
        head.proj = None  # the Kinetics classifier
        head.activation = None
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


def build_hub_model(name: str, state: Mapping[str, torch.Tensor] | None = None, *, seed: int = 0,
                    source: str | Path = "<state dict>") -> HubClipFeatures:
    """A pytorchvideo model builder (never its transforms) with ``state`` loaded strictly, else seeded."""
    # deferred: only --clip-model x3d_m|slow_r50|r2plus1d_r50 needs pytorchvideo (builders only:
    # pytorchvideo.transforms breaks with new torchvision)
    import pytorchvideo.models.hub as hub  # noqa: PLC0415

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = getattr(hub, name)(pretrained=False)
    if state is not None:
        load_strict(net, state, source, f"pytorchvideo {name}")
    return HubClipFeatures(net).eval()


def hub_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """pytorchvideo's Kinetics checkpoint for ``name`` (torch hub cache, else downloaded) and its URL."""
    url = CLIP_MODELS[name].hub_url
    assert url is not None
    try:
        ckpt = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
    except (OSError, RuntimeError) as e:
        raise _download_error(f"pytorchvideo {name}", url, e,
                              "--c3d-weights random (offline test mode) or --c3d-weights PATH") from None
    return dict(ckpt.get("model_state", ckpt)), url


def preprocess_clips(clips: torch.Tensor, info: ClipModelInfo) -> torch.Tensor:
    """uint8 [B, L, c, c, 3] RGB -> float [B, 3, L, c, c] for the clip model ``info``."""
    if info.name == "c3d":
        return preprocess_c3d(clips)
    x = clips.float().div_(255.0)
    x = (x - torch.tensor(info.mean, device=x.device)) / torch.tensor(info.std, device=x.device)
    return x.permute(0, 4, 1, 2, 3)


def build_clip_model(name: str, state: Mapping[str, torch.Tensor] | None = None, *, seed: int = 0,
                     source: str | Path = "<state dict>") -> nn.Module:
    if name == "c3d":
        return build_c3d(state, seed=seed, source=source)
    if name in CLIP_MODELS:
        return build_hub_model(name, state, seed=seed, source=source)
    raise ConfigError(f"unknown clip model {name!r} (choose from {', '.join(CLIP_MODELS)})")


def describe_state(state: Mapping[str, Any]) -> str:  # for messages
    n = sum(int(v.numel()) for v in state.values() if isinstance(v, torch.Tensor))
    return f"{len(state)} tensors, {n / 1e6:.1f}M values"
