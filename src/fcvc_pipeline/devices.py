"""Device selection: ``--device auto|cpu|cuda|cuda:N`` checked and resolved the same way by every stage;
``--precision auto|fp32|bf16`` resolved per device (``auto``: bf16 on CUDA and on CPUs with bf16 units)."""

from __future__ import annotations

import os
import re
import sys

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


# --------------------------------------------------------------------------------------------------
# Precision: ``--precision auto|fp32|bf16`` for the feature networks (and ``auto`` in training)
# --------------------------------------------------------------------------------------------------
COMPUTED_PRECISIONS = ("fp32", "bf16")  # what a network computes in (and a store or a model records)
PRECISIONS = ("auto",) + COMPUTED_PRECISIONS
CPU_BF16_ENV = "FCVC_CPU_BF16"  # 1/0: override the detection of bf16 units (tests, odd machines)
_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# ``--precision auto`` of ``fcvc extract`` on CPUs with bf16 units: on. Measured on the demo's sample set (450
# videos, random Inception-V3 at 171 px, 2-core CPU with AMX/AVX512-BF16): extraction 95 s in fp32 and 67 s in
# bf16 (189 s in the old fp32 contiguous path), and FCVC-CF&IA trained with the demo's settings at seeds 0/1/2
# scored test CIDEr 215.3 / 195.4 / 211.6 on fp32 features against 213.4 / 202.6 / 204.2 on bf16 ones (means
# 207.4 and 206.7): the same within seed noise, although the random network moves its bf16 features well
# beyond rounding (per-vector cosine 0.994 pooled, 0.965 regions). What makes it safe is that a precision
# never changes under a model: a store's videos keep their precision under auto (features.extraction), and a
# .fcvc file records its training features' precision, which captioning uses (resolve_feature_precision).
EXTRACT_CPU_BF16_BY_DEFAULT = True
# What ``auto`` meant on CPUs before that: the rule for models and stores that do not record a precision.
LEGACY_CPU_BF16_BY_DEFAULT = False


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 units (AMX-BF16 or AVX512-BF16), where bf16 autocast pays.

    ``$FCVC_CPU_BF16`` (1/0) overrides the detection. Linux: the ``amx_bf16``/``avx512_bf16`` flags of
    ``/proc/cpuinfo``, or torch's CPU capability naming AMX; elsewhere False.
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    return _detected_bf16()


_DETECTED: list[bool] = []


def _detected_bf16() -> bool:
    if not _DETECTED:
        found = False
        if sys.platform.startswith("linux"):
            try:
                with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                    for line in f:
                        if line.startswith("flags"):
                            flags = set(line.split(":", 1)[-1].split())
                            found = any(flag in flags for flag in _BF16_FLAGS)
                            break
            except OSError:
                found = False
            if not found:
                try:
                    found = "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper()
                except Exception:  # an old torch without the query
                    found = False
        _DETECTED.append(found)
    return _DETECTED[0]


def check_precision_spec(spec: str, choices: tuple[str, ...] = PRECISIONS) -> str | None:
    """Return a problem description for a ``--precision`` value not among ``choices``, or None."""
    if spec not in choices:
        return f"--precision must be one of {', '.join(choices)} (got {spec!r})"
    return None


def require_precision_spec(spec: str, choices: tuple[str, ...] = PRECISIONS) -> None:
    """:func:`check_precision_spec`, raising its problem as a :class:`ConfigError`."""
    if (problem := check_precision_spec(spec, choices)) is not None:
        raise ConfigError(problem)


def resolve_precision(spec: str, device: torch.device | str, *, cpu_bf16_by_default: bool | None = None) -> str:
    """``auto|fp32|bf16`` -> ``fp32`` or ``bf16`` on ``device``: ``auto`` is bf16 on CUDA and on CPUs with
    bf16 units (:func:`cpu_has_bf16`, while ``cpu_bf16_by_default``, by default
    :data:`EXTRACT_CPU_BF16_BY_DEFAULT`, allows it), fp32 elsewhere. ``bf16`` is honoured on any device."""
    require_precision_spec(spec)
    if spec != "auto":
        return spec
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16"
    allow = EXTRACT_CPU_BF16_BY_DEFAULT if cpu_bf16_by_default is None else cpu_bf16_by_default
    return "bf16" if kind == "cpu" and allow and cpu_has_bf16() else "fp32"


# ``fcvc caption --precision`` (and Captioner): ``recorded``, the default, computes new videos' features in
# the precision the model's training features were computed in, so a model never meets features of another
# precision than it learnt from; the explicit values override it.
CAPTION_PRECISIONS = ("recorded",) + PRECISIONS


def dominant_precision(counts: dict[str, int]) -> str | None:
    """The precision most of a store's videos were computed in (``fp32`` on a tie), from
    ``FeatureStore.precision_counts``; None when no video recorded one (a store older than the records)."""
    known = {p: n for p, n in counts.items() if p in COMPUTED_PRECISIONS and n > 0}
    if not known:
        return None
    return max(COMPUTED_PRECISIONS, key=lambda p: (known.get(p, 0), p == "fp32"))


def resolve_feature_precision(spec: str, recorded: str | None, device: torch.device | str) -> str:
    """``recorded|auto|fp32|bf16`` -> ``fp32`` or ``bf16`` for the feature networks of a trained model:
    ``recorded`` is the training features' precision (``recorded``); for a model that does not record one
    (a file exported before the record) it is what ``auto`` meant when such files were made: fp32 on CPUs,
    bf16 on CUDA."""
    require_precision_spec(spec, CAPTION_PRECISIONS)
    if spec == "recorded":
        if recorded in COMPUTED_PRECISIONS:
            return recorded
        # not recorded: the rule these features were computed under (fp32 on CPUs, bf16 on CUDA)
        return resolve_precision("auto", device, cpu_bf16_by_default=LEGACY_CPU_BF16_BY_DEFAULT)
    return resolve_precision(spec, device)
