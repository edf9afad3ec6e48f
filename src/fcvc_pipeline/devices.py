"""Shared configuration helpers: the work directory and device selection."""

from __future__ import annotations

import re
from pathlib import Path

from fcvc_pipeline.errors import ConfigError

DEFAULT_WORKDIR = Path("fcvc-work")

# Fixed locations inside a work directory; every stage reads and writes only these.
FEATURES_DIRNAME = "features.zarr"
VOCAB_DIRNAME = "vocab"
RUNS_DIRNAME = "runs"


def workdir_paths(workdir: str | Path) -> dict[str, Path]:
    w = Path(workdir)
    return {"features": w / FEATURES_DIRNAME, "vocab": w / VOCAB_DIRNAME, "runs": w / RUNS_DIRNAME}


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_spec(spec: str) -> str | None:
    """Return a problem description for a bad ``--device`` value, or None."""
    if not _DEVICE.match(spec):
        return f"--device must be auto, cpu, cuda or cuda:N (got {spec!r})"
    return None


def resolve_device(spec: str = "auto"):
    """``auto`` -> first CUDA device when available, else CPU; ``cuda`` without a GPU is a clear error."""
    import torch

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
