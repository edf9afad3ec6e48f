"""Everything ``fcvc train`` can be told: one frozen :class:`TrainConfig`, checked all at once, and the
config files (``fcvc train --config FILE``) that hold it.

The fields that change what a run produces (:meth:`TrainConfig.output_fields`) go into the run's
manifest; device, resume/force, TensorBoard and the ablation's scoring beam do not. ``config.json`` holds
every setting (not the actions resume/force) and is itself a config file (:func:`read_config_file`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fcvc_pipeline import progress
from fcvc_pipeline.devices import check_device_spec
from fcvc_pipeline.errors import ConfigError, InputError
from fcvc_pipeline.features.bank import FEATURE_MODES, parse_budget
from fcvc_pipeline.models import DEFAULT_MODEL, MODEL_ALIASES, MODEL_NAMES, VARIANTS, canonical_model_name
from fcvc_pipeline.models.config import CONV_MASKS
from fcvc_pipeline.models.variants import resolve_alias
from fcvc_pipeline.naming import did_you_mean, safe_name
from fcvc_pipeline.workdir import DEFAULT_WORKDIR

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: a .json config still works
    tomllib = None  # type: ignore[assignment]

ALL_MODELS = "all"  # `fcvc train --model all`: the ablation (stages/ablation.py)
PRECISIONS = ("auto", "fp32", "bf16")
# `--precision auto` on a CPU with bf16 units (AMX/AVX512-BF16, devices.cpu_has_bf16): bf16 autocast when True,
# fp32 when False (on CUDA auto is always bf16). Measured earlier: 1.7x per epoch on such a CPU, same quality
# within seed noise; flip to False if the quality guard (the demo's CIDEr over three seeds) says otherwise.
CPU_BF16_BY_DEFAULT = True
# The settings `--resume` may raise on a run that exists (an extension); every other output field is fixed.
SCHEDULE_FIELDS = ("epochs", "max_steps")
# What one command does, not a setting of the run: not written to config.json, ignored in a config file.
ACTION_FIELDS = ("resume", "force")
SCST_BASELINES = ("mean", "greedy")
SCST_FIELDS = ("scst", "init", "scst_samples", "scst_baseline", "scst_lr", "scst_xe_weight")
# A flag's name where it differs from its field (both spellings are accepted as keys of a config file).
FLAG_ALIASES = {"ema": "ema_decay"}
# config.json's tables beside "train" (what the run was trained from; not options).
CONFIG_JSON_SECTIONS = ("model", "inputs", "extensions")


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
    # Matrix products under bf16 autocast ("auto": on CUDA, and on CPUs with bf16 units (AVX512-BF16/AMX)
    # while CPU_BF16_BY_DEFAULT). `fcvc bench train --bf16` measured training steps 1.4-2x faster there.
    precision: str = "auto"
    # Self-critical training (training/scst.py): a new run that starts from the best.pt of run ``init`` and
    # trains on the CIDEr-D reward of ``scst_samples`` sampled captions per video, against the ``scst_baseline``
    # ("mean" of the video's other samples, or its "greedy" caption's reward), at learning rate ``scst_lr``
    # (``lr`` is the cross-entropy rate), plus ``scst_xe_weight`` times the cross-entropy loss.
    scst: bool = False
    init: str | None = None  # a run name under <workdir>/runs, or the path of a run directory or its best.pt
    scst_samples: int = 5
    scst_baseline: str = "mean"
    scst_lr: float = 2e-5  # chosen on validation: docs/scst.md
    scst_xe_weight: float = 0.0
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
    # How the features are held (features/bank.py): "memory" (one bank; under torchrun one memory-mapped copy
    # per node), "stream" (each batch read from the store by `loader_workers` DataLoader processes, prefetched),
    # "auto" (memory when the bank fits `memory_budget`: a size such as "8GiB" or a share of the available
    # memory, default "50%"). Both give the same numbers.
    features: str = "auto"
    memory_budget: str | None = None
    loader_workers: int = 2
    device: str = "auto"
    resume: bool = False  # continue last.pt; with a larger epochs/max_steps: extend the run
    force: bool = False
    skip_damaged: bool = False  # leave out (and list) videos whose stored features are damaged
    tensorboard: bool = False  # also write each epoch's scalars under runs/<run>/tb/ (the [tensorboard] extra)
    # ablation runner (model == "all"): how to score each model on the test split
    score_beam_size: int | None = None  # None: each run's validation-chosen beam

    @property
    def run_name(self) -> str:
        if self.run:
            return self.run
        if self.scst and self.init:  # "<init run>-scst"
            init = Path(self.init)
            return f"{safe_name(init.parent.name if init.suffix == '.pt' else init.name)}-scst"
        return canonical_model_name(self.model)

    def validate(self) -> list[str]:
        problems = []
        if self.model != ALL_MODELS and resolve_alias(self.model) not in VARIANTS:
            choices = (*MODEL_NAMES, *MODEL_ALIASES, ALL_MODELS)
            problems.append(f"--model must be one of {', '.join(choices)} "
                            f"(got {self.model!r}){did_you_mean(self.model, choices)}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"--max-steps must be at least 1 (got {self.max_steps})")
        if self.checkpoint_every < 0:
            problems.append(f"--checkpoint-every must be 0 (each epoch) or more (got {self.checkpoint_every})")
        if any(not isinstance(b, int) or b < 1 for b in self.select_beams):
            problems.append(f"--select-beams must list beam sizes >= 1 (got {list(self.select_beams)})")
        if not self.lr > 0:
            problems.append(f"--lr must be positive (got {self.lr})")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"--ema must be in [0, 1) (0 = off; got {self.ema_decay})")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})"
                            f"{did_you_mean(self.precision, PRECISIONS)}")
        if self.scst and not self.init and self.model != ALL_MODELS:
            problems.append("--scst needs --init RUN: the trained run (its best.pt) that self-critical training starts from")
        if self.init and self.model == ALL_MODELS:
            problems.append("--init does not go with --model all: each model's self-critical run starts from its own "
                            "cross-entropy run")
        if self.init and not self.scst:
            problems.append("--init is only used with --scst (add --scst, or drop --init)")
        if self.scst_baseline not in SCST_BASELINES:
            problems.append(f"--scst-baseline must be one of {', '.join(SCST_BASELINES)} (got {self.scst_baseline!r})"
                            f"{did_you_mean(self.scst_baseline, SCST_BASELINES)}")
        minimum = 2 if self.scst_baseline == "mean" else 1
        if self.scst_samples < minimum:
            problems.append(f"--scst-samples must be at least {minimum} with --scst-baseline {self.scst_baseline} "
                            f"(got {self.scst_samples})")
        if not self.scst_lr > 0:
            problems.append(f"--scst-lr must be positive (got {self.scst_lr})")
        if not (self.scst_xe_weight >= 0 and math.isfinite(self.scst_xe_weight)):
            problems.append(f"--scst-xe-weight must be a finite number >= 0 (got {self.scst_xe_weight})")
        if self.run is not None and safe_name(self.run) != self.run:
            problems.append(f"--run must be a plain name (letters, digits, . _ -), got {self.run!r}")
        if self.conv_mask is not None and self.conv_mask not in CONV_MASKS:
            problems.append(f"--conv-mask must be one of {', '.join(CONV_MASKS)} (got {self.conv_mask!r})"
                            f"{did_you_mean(self.conv_mask, CONV_MASKS)}")
        for name in ("d_model", "layers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            problems.append(f"--dropout must be in [0, 1) (got {self.dropout})")
        if self.features not in FEATURE_MODES:
            problems.append(f"--features must be one of {', '.join(FEATURE_MODES)} (got {self.features!r})"
                            f"{did_you_mean(self.features, FEATURE_MODES)}")
        if self.loader_workers < 0:
            problems.append(f"--loader-workers must be 0 (read in the training process) or more (got {self.loader_workers})")
        try:
            parse_budget(self.memory_budget, available=2**30)
        except ConfigError as e:
            problems.append(e.message)
        if (p := check_device_spec(self.device)) is not None:
            problems.append(p)
        # library-only options (no command-line flag; a config file may set them): named by their field
        for name in ("heads", "kernel_size", "val_beam_size", "score_beam_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"TrainConfig.{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "attn_lambda", "attn_mu"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                problems.append(f"TrainConfig.{name} must be >= 0 (got {getattr(self, name)})")
        return problems

    def output_fields(self) -> dict[str, Any]:
        """The fields that change what a run produces (for the manifest)."""
        skip = {"workdir", "device", "resume", "force", "run", "score_beam_size", "skip_damaged", "tensorboard",
                "features", "memory_budget", "loader_workers"}
        # fields added later are left out while unset, so the manifests of older runs stay up to date
        unset_is_absent = {"conv_mask"}
        if self.scst:  # the starting point counts through its best.pt's digest (an input), not its name
            skip |= {"init", "lr"}
        else:
            skip |= set(SCST_FIELDS)
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in skip and not (k in unset_is_absent and v is None)}

    def settings_json(self) -> dict[str, Any]:
        """The ``train`` table of ``config.json``: every setting, JSON-ready (a config file again)."""
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k not in ACTION_FIELDS},
                "workdir": str(self.workdir), "select_beams": list(self.select_beams)}


# The fields with a flag of `fcvc train` (the others are set in a config file or from Python).
FLAG_FIELDS = ("model", "run", "epochs", "max_steps", "batch_size", "lr", "seed", "patience", "checkpoint_every",
               "d_model", "layers", "dropout", "conv_mask", "ema_decay", "label_smoothing", "select_beams",
               "precision", "device", "resume", "skip_damaged", "force", "tensorboard", "workdir", *SCST_FIELDS,
               "features", "memory_budget", "loader_workers")


def option_name(field_name: str) -> str:
    """How messages name a setting: its flag (``--max-steps``, ``--ema``), else its field (``warmup_steps``)."""
    if field_name not in FLAG_FIELDS:
        return field_name
    flag = {v: k for k, v in FLAG_ALIASES.items()}.get(field_name, field_name)
    return "--" + flag.replace("_", "-")


# -- config files -----------------------------------------------------------------------------------------
def read_config_file(path: Path) -> dict[str, Any]:
    """``fcvc train --config FILE``: the TrainConfig fields a .toml or .json file sets, checked.

    Keys are the options of ``fcvc train`` (``max-steps`` or ``max_steps``; ``ema`` or ``ema_decay``) and
    the library-only fields of :class:`TrainConfig` (``warmup_steps``, ``heads``, ...). A file whose top
    level has a ``train`` table (a run's ``config.json``, or ``[train]`` in TOML) is read from that table,
    beside which only config.json's own tables may stand. ``resume`` and ``force`` are actions of one
    command, not settings: a file's values for them are ignored. Unknown keys (with a "did you mean") and
    values of the wrong type are errors naming the file and the key; ranges are checked by
    :meth:`TrainConfig.validate` with the rest.
    """
    path = Path(path)
    raw = _parse(path)
    if isinstance(raw.get("train"), dict):
        table = raw["train"]
        problems = [_unknown(path, k, ("train", *CONFIG_JSON_SECTIONS)) for k in raw
                    if k not in ("train", *CONFIG_JSON_SECTIONS)]
    else:
        table, problems = raw, []
    hints = typing.get_type_hints(TrainConfig)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        name = FLAG_ALIASES.get(name, name)
        if name not in fields:
            spellings = sorted(fields | set(FLAG_ALIASES))
            if "-" in key:
                spellings = [n.replace("_", "-") for n in spellings]
            problems.append(_unknown(path, key, spellings))
        elif name in ACTION_FIELDS:
            if value:
                progress.warn(f"{path}: ignoring {key} = {value!r}: --{name} applies only when given on the command line")
        else:
            ok, converted = _coerce(value, hints[name])
            if ok:
                values[name] = converted
            else:
                problems.append(f"{path}: '{key}' must be {_describe(hints[name])} (got {value!r})")
    if problems:
        raise ConfigError(problems)
    return values


def _parse(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise InputError(path, "a config file must be .toml or .json (e.g. a run's config.json)")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(path, f"cannot read it: {e.strerror or e}") from None
    if suffix == ".json":
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise InputError(path, f"not valid JSON: {e}") from None
    else:
        if tomllib is None:
            raise InputError(path, "reading TOML needs Python 3.11 or newer",
                             hint="write the options as a .json file, or use Python 3.11+")
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(path, f"not valid TOML: {e}") from None
    if not isinstance(raw, dict):
        raise InputError(path, f"a config file must hold a table of options (got {type(raw).__name__})")
    return raw


def _unknown(path: Path, key: str, known: typing.Iterable[str]) -> str:
    return f"{path}: unknown key '{key}'{did_you_mean(key, known)}"


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(ok, the value as the field's type). Integers are not floats' stand-ins the other way round: 2.5 is
    not an int; true/false are not numbers."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return True, None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return is_int, value
    if hint is float:
        return is_int or isinstance(value, float), float(value) if is_int or isinstance(value, float) else value
    if hint is str:
        return isinstance(value, str), value
    if hint is Path:
        return isinstance(value, str), Path(value) if isinstance(value, str) else value
    if typing.get_origin(hint) is tuple:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return ok, tuple(value) if ok else value
    raise TypeError(f"no config-file reader for {hint!r}")  # a new field type: teach _coerce


def _describe(hint: Any) -> str:
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path (string)"}
    text = words.get(base, "a list of integers")
    return f"{text} or null (JSON; in TOML leave the key out)" if optional else text
