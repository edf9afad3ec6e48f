"""Checkpoints: model config + vocabulary/feature identities + weights + optimizer/RNG/position.

A checkpoint is untrusted input: it is read with ``torch.load(..., weights_only=True)``, so it holds only
tensors, numbers, strings, lists and dicts. Writes are atomic (temp file + ``os.replace``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fcvc_pipeline.artifacts import atomic_torch_save
from fcvc_pipeline.errors import InputError, MissingArtifactError

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **payload}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(f"no checkpoint at {path}", hint="train a model first: `fcvc train`")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated files, forbidden globals
        raise InputError(path, f"not a loadable fcvc checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model_config" not in ckpt:
        raise InputError(path, "not an fcvc checkpoint (missing format/model_config)")
    return ckpt


def load_model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, checkpoint dict) for captioning and scoring."""
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt, path, device), ckpt


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path, device: str | torch.device = "cpu"):
    """The model of an already loaded checkpoint, in eval mode (``path`` names it in errors)."""
    from fcvc_pipeline.models import ModelConfig, build_model

    model = build_model(ModelConfig.from_json(ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise InputError(path, f"weights do not fit the model config: {str(e).splitlines()[0]}") from None
    return model.to(device).eval()
