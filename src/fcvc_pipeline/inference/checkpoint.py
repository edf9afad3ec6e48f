"""Checkpoint files: model config + vocabulary/feature identities + weights (+ the resume state in last.pt).

A checkpoint is untrusted input: it is read with ``torch.load(..., weights_only=True)``, so it holds only
tensors, numbers, strings, lists and dicts. Writes are atomic (temp file + ``os.replace``). Every checkpoint
carries ``digest``, a sha256 over its whole content (each tensor's dtype, shape and bytes, every other value
as JSON, in a canonical order), checked on every load: a file changed after it was written -- a flipped bit
in a weight, a few overwritten bytes -- is an error naming it, never a model that captions garbage.
Checkpoints from before the digest existed load unchecked.

Keys of every checkpoint (format 1): ``format``, ``model_config``, ``vocab``, ``vocab_fingerprint``,
``store_settings_fingerprint``, ``store_path``, ``manifest_key``, ``state_dict``. ``best.pt`` adds the
run's ``decoding`` (:class:`~fcvc_pipeline.inference.options.DecodingOptions` as JSON) once training has
chosen it; ``last.pt`` adds the resume state (:class:`fcvc_pipeline.training.state.TrainState`).
This file sits in ``inference/`` because captioning reads it and training uses the captioner.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fcvc_pipeline.artifacts import atomic_torch_save, torch_load_failure
from fcvc_pipeline.captions.vocabulary import Vocabulary
from fcvc_pipeline.errors import ConfigError, InputError, MissingArtifactError
from fcvc_pipeline.inference.options import DecodingOptions
from fcvc_pipeline.models import CaptionModel, ModelConfig, build_model

CHECKPOINT_FORMAT = 1
DIGEST_KEY = "digest"


def content_digest(obj: Any) -> str:
    """sha256 (hex) of a checkpoint's content, independent of how the file serialised it."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            h.update(f"K{type(key).__name__}:{key}".encode())
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    else:
        h.update(("V" + json.dumps(obj, sort_keys=True, default=repr)).encode())


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    body = {"format": CHECKPOINT_FORMAT, **{k: v for k, v in payload.items() if k != DIGEST_KEY}}
    atomic_torch_save({**body, DIGEST_KEY: content_digest(body)}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(f"no checkpoint at {path}", hint="train a model first: `fcvc train`")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated or empty files, forbidden globals
        reason, hint = torch_load_failure(e)
        raise InputError(path, f"not a loadable fcvc checkpoint: {reason}", hint=hint) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model_config" not in ckpt:
        raise InputError(path, "not an fcvc checkpoint (missing format/model_config)")
    if DIGEST_KEY in ckpt:
        stored = ckpt.pop(DIGEST_KEY)
        if content_digest(ckpt) != stored:
            raise InputError(path, "damaged checkpoint: its content does not match the digest written with it "
                                   "(the file was changed or corrupted after it was saved)",
                             hint="restore it from a copy, or retrain (`fcvc train --force`)")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path, device: str | torch.device = "cpu") -> CaptionModel:
    """The model of an already loaded checkpoint, in eval mode (``path`` names it in errors)."""
    model = build_model(ModelConfig.from_json(ckpt["model_config"]))
    weights = ckpt.get("state_dict")
    if not isinstance(weights, Mapping):
        raise InputError(path, f"no model weights in the checkpoint (state_dict is {type(weights).__name__})")
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError) as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[:3])
        raise InputError(path, f"weights do not fit the model config: {detail[:400]}") from None
    return model.to(device).eval()


def vocabulary_of(ckpt: dict[str, Any]) -> Vocabulary:
    return Vocabulary.from_json(ckpt["vocab"])


def decoding_of(ckpt: dict[str, Any], path: str | Path) -> DecodingOptions:
    """The decoding a run chose (stored in best.pt), read back whole; defaults for older checkpoints."""
    try:
        return DecodingOptions.from_json(ckpt.get("decoding"))
    except (ConfigError, TypeError) as e:  # a damaged or foreign entry names the file
        raise InputError(path, f"unreadable decoding options ({e})") from None
