"""Everything ``fcvc train`` can be told: one frozen :class:`TrainConfig`, checked all at once.

The fields that change what a run produces (:meth:`TrainConfig.output_fields`) go into the run's
manifest and its ``config.json``; device, resume/force and the ablation's scoring beam do not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fcvc_pipeline.devices import check_device_spec
from fcvc_pipeline.models import DEFAULT_MODEL, MODEL_ALIASES, MODEL_NAMES, VARIANTS, canonical_model_name
from fcvc_pipeline.models.config import CONV_MASKS
from fcvc_pipeline.models.variants import resolve_alias
from fcvc_pipeline.naming import safe_name
from fcvc_pipeline.workdir import DEFAULT_WORKDIR

ALL_MODELS = "all"  # `fcvc train --model all`: the ablation (stages/ablation.py)
PRECISIONS = ("auto", "fp32", "bf16")
# The settings `--resume` may raise on a run that exists (an extension); every other output field is fixed.
SCHEDULE_FIELDS = ("epochs", "max_steps")
# What one command does, not a setting of the run: not written to config.json, ignored in a config file.
ACTION_FIELDS = ("resume", "force")
# A flag's name where it differs from its field (both spellings are accepted as keys of a config file).
FLAG_ALIASES = {"ema": "ema_decay"}


@dataclass(frozen=True)
class TrainConfig:
    workdir: Path = DEFAULT_WORKDIR
    model: str = DEFAULT_MODEL
    run: str | None = None  # run directory name under <workdir>/runs (default: the model name)
    epochs: int = 30
    max_steps: int | None = None  # stop after this many optimizer steps in all
    batch_size: int = 64  # captions per batch (whole videos are packed)
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    patience: int = 10  # epochs without a better validation CIDEr before stopping
    checkpoint_every: int = 0  # also write last.pt every N steps (0: at the end of each epoch only)
    val_beam_size: int = 1
    # Two regularisers the paper does not use, on by default because together they raised the sample
    # set's validation CIDEr at each of three seeds (README, measured results). ema_decay: validation,
    # best.pt and so every caption use an exponential moving average of the weights (decay per optimizer
    # step; 0 = off). label_smoothing: see losses.caption_loss (0 = the paper's loss).
    ema_decay: float = 0.99
    label_smoothing: float = 0.1
    # After training, best.pt captions the validation split with each of these beam sizes and keeps the one
    # with the highest CIDEr as the run's decoding (what `fcvc score`/`fcvc caption` use unless told
    # otherwise). Empty: no choice, beam DEFAULT_BEAM_SIZE.
    select_beams: tuple[int, ...] = (1, 3, 5)
    # Matrix products under bf16 autocast ("auto": on CUDA only). "bf16" on a CPU pays off where it has
    # bf16 units (AVX512-BF16/AMX): `fcvc bench train --bf16` measured training steps 1.4-2x faster there.
    precision: str = "auto"
    # model overrides (None: the model family's defaults)
    d_model: int | None = None
    layers: int | None = None
    heads: int | None = None
    kernel_size: int | None = None
    conv_mask: str | None = None  # "paper" | "causal" (models/config.py)
    dropout: float | None = None
    attn_lambda: float | None = None
    attn_mu: float | None = None
    # not part of what the run produces
    device: str = "auto"
    resume: bool = False
    force: bool = False
    skip_damaged: bool = False  # leave out (and list) videos whose stored features are damaged
    # ablation runner (model == "all"): how to score each model on the test split
    score_beam_size: int | None = None  # None: each run's validation-chosen beam

    @property
    def run_name(self) -> str:
        return self.run or canonical_model_name(self.model)

    def validate(self) -> list[str]:
        problems = []
        if self.model != ALL_MODELS and resolve_alias(self.model) not in VARIANTS:
            problems.append(f"--model must be one of {', '.join(MODEL_NAMES + tuple(MODEL_ALIASES))} or all "
                            f"(got {self.model!r})")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1")
        # library-only options (no command-line flag): named by their field
        if self.val_beam_size < 1:
            problems.append(f"TrainConfig.val_beam_size must be at least 1 (got {self.val_beam_size})")
        if self.score_beam_size is not None and self.score_beam_size < 1:
            problems.append(f"TrainConfig.score_beam_size must be at least 1 (got {self.score_beam_size})")
        if any(not isinstance(b, int) or b < 1 for b in self.select_beams):
            problems.append(f"--select-beams must list beam sizes >= 1 (got {list(self.select_beams)})")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append("--max-steps must be at least 1")
        if not self.lr > 0:
            problems.append("--lr must be positive")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"--ema must be in [0, 1) (0 = off; got {self.ema_decay})")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if self.patience < 1:
            problems.append("--patience must be at least 1")
        if self.run is not None and safe_name(self.run) != self.run:
            problems.append(f"--run must be a plain name (letters, digits, . _ -), got {self.run!r}")
        if self.conv_mask is not None and self.conv_mask not in CONV_MASKS:
            problems.append(f"--conv-mask must be one of {', '.join(CONV_MASKS)} (got {self.conv_mask!r})")
        if (p := check_device_spec(self.device)) is not None:
            problems.append(p)
        return problems

    def output_fields(self) -> dict[str, Any]:
        """The fields that change what a run produces (for the manifest)."""
        skip = {"workdir", "device", "resume", "force", "run", "score_beam_size", "skip_damaged"}
        # fields added later are left out while unset, so the manifests of older runs stay up to date
        unset_is_absent = {"conv_mask"}
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in skip and not (k in unset_is_absent and v is None)}

    def settings_json(self) -> dict[str, Any]:
        """The ``train`` table of ``config.json``: every setting, JSON-ready (a config file again)."""
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k not in ACTION_FIELDS},
                "workdir": str(self.workdir), "select_beams": list(self.select_beams)}


# The fields with a flag of `fcvc train` (the others are set in a config file or from Python).
FLAG_FIELDS = ("model", "run", "epochs", "max_steps", "batch_size", "lr", "seed", "patience", "checkpoint_every",
               "d_model", "layers", "dropout", "conv_mask", "ema_decay", "label_smoothing", "select_beams",
               "precision", "device", "resume", "skip_damaged", "force", "workdir")


def option_name(field_name: str) -> str:
    """How messages name a setting: its flag (``--max-steps``, ``--ema``), else its field (``warmup_steps``)."""
    if field_name not in FLAG_FIELDS:
        return field_name
    flag = {v: k for k, v in FLAG_ALIASES.items()}.get(field_name, field_name)
    return "--" + flag.replace("_", "-")
