"""Device selection: ``--device auto|cpu|cuda|cuda:N`` checked and resolved the same way by every stage."""

from __future__ import annotations

import os
import re

import torch

from fcvc_pipeline.errors import ConfigError

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_spec(spec: str) -> str | None:
    """Return a problem description for a bad ``--device`` value, or None."""
    if not _DEVICE.match(spec):
        return f"--device must be auto, cpu, cuda or cuda:N (got {spec!r})"
    return None


def resolve_device(spec: str = "auto"):
    """``auto`` -> first CUDA device when available, else CPU; ``cuda`` without a GPU is a clear error."""
    problem = check_device_spec(spec)
    if problem:
        raise ConfigError(problem)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec} was asked for but no CUDA GPU is available",
                              hint="use --device cpu or --device auto")
        idx = int(spec.split(":")[1]) if ":" in spec else 0
        if idx >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device(spec)


def device_for_rank(spec: str) -> torch.device:
    """As :func:`resolve_device`, except that ``auto`` under torchrun picks ``cuda:LOCAL_RANK``."""
    local = os.environ.get("LOCAL_RANK")
    if spec == "auto" and local is not None and local.isdigit() and torch.cuda.is_available():
        return resolve_device(f"cuda:{int(local) % max(1, torch.cuda.device_count())}")
    return resolve_device(spec)
