"""``fcvc train``: config -> is the run up to date, interrupted, to be extended or new? -> the Trainer -> the run's
manifest.

What is trained and how: ``training/trainer.py``. What this stage adds: the run directory's bookkeeping.
A run is identified by its manifest (the fields of :class:`TrainConfig` that change outputs, the model
config, and the fingerprints of vocabulary, caption table and features): the same manifest is ``up to
date``; ``last.pt`` without a manifest is an interrupted run (``--resume`` continues it); a manifest with
other settings is refused unless ``--force``. ``--resume`` with a larger ``--epochs``/``--max-steps`` and
nothing else changed *extends* a run, finished or interrupted: it continues from ``last.pt`` (which records
the settings it was written with), the extension is recorded in the state, ``config.json`` and the
manifest's outputs, and the manifest is removed until the longer run is done. ``fcvc train --model all`` is
the ablation (``stages/ablation.py``), dispatched by the command.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import (
    MANIFEST_NAME,
    Manifest,
    atomic_write_json,
    canonical_json,
    check_manifest,
    read_manifest,
    write_manifest,
)
from fcvc_pipeline.captions.vocabulary import Vocabulary, load_captions, load_vocabulary
from fcvc_pipeline.errors import ConfigError, FcvcError, MismatchError, MissingArtifactError, StoppedBySignal, require
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.inference.checkpoint import content_digest, load_checkpoint, model_from_checkpoint
from fcvc_pipeline.models import ModelConfig, canonical_model_name
from fcvc_pipeline.naming import safe_name
from fcvc_pipeline.training.batches import resolve_training_videos
from fcvc_pipeline.training.config import ALL_MODELS, PRECISIONS, SCHEDULE_FIELDS, TrainConfig, option_name
from fcvc_pipeline.training.distributed import init_distributed
from fcvc_pipeline.training.optim import learning_rate
from fcvc_pipeline.training.state import fmt
from fcvc_pipeline.training.tensorboard import INSTALL as TENSORBOARD_INSTALL
from fcvc_pipeline.training.tensorboard import missing_tensorboard
from fcvc_pipeline.training.trainer import RESUME_HINT, Trainer, load_train_data
from fcvc_pipeline.workdir import Workdir

BANK_CACHE_ENV = "FCVC_BANK_CACHE"
STAGE_VERSION = 2  # 2: best.pt carries the validation-chosen decoding
MODEL_OVERRIDES = ("d_model", "layers", "heads", "kernel_size", "conv_mask", "dropout", "attn_lambda", "attn_mu")

__all__ = ["ALL_MODELS", "PRECISIONS", "STAGE_VERSION", "TrainConfig", "TrainResult", "learning_rate", "run_train"]


@dataclass
class TrainResult:
    run: Path
    best_checkpoint: Path | None
    best_val_cider: float | None
    epochs: int
    seconds_per_epoch: float | None
    parameters: int
    up_to_date: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    decoding: dict[str, Any] | None = None  # the beam size chosen on validation (also in best.pt)
    extensions: list[dict[str, Any]] = field(default_factory=list)  # the run's schedule extensions
    exit_code: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"run": str(self.run), "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
                "best_val_cider": self.best_val_cider, "epochs": self.epochs,
                "seconds_per_epoch": self.seconds_per_epoch, "parameters": self.parameters,
                "up_to_date": self.up_to_date, "extensions": self.extensions}


@dataclass
class RunPlan:
    """What to do with the run directory: 'up_to_date' | 'fresh' | 'resume' | 'extend'."""

    status: str
    checkpoint: dict[str, Any] | None = None  # last.pt, to resume or extend from
    extension: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # setting -> (old, new)


def run_train(cfg: TrainConfig) -> TrainResult:
    """Train one model (``cfg.model`` is a model name; ``all`` is the ablation stage's job)."""
    require(cfg.validate())
    if cfg.model == ALL_MODELS:
        raise ConfigError("run_train trains one model; --model all is fcvc_pipeline.stages.ablation.run_ablation")
    if cfg.tensorboard and (problem := missing_tensorboard()) is not None:
        raise ConfigError(problem, hint=TENSORBOARD_INSTALL)
    cfg = dataclasses.replace(cfg, model=canonical_model_name(cfg.model))
    w = Workdir(cfg.workdir)
    run_dir = w.run(cfg.run_name)
    try:
        return _train(cfg, w, run_dir)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (which stops at its next step by itself)
        raise interrupted(cfg, run_dir) from None


def _train(cfg: TrainConfig, w: Workdir, run_dir: Path) -> TrainResult:
    d, device = init_distributed(cfg.device)
    vocab = load_vocabulary(w.vocab)
    rows = load_captions(w.vocab)
    store = FeatureStore.open(w.features)
    usable, missing = resolve_training_videos(store, rows, w.features)
    if missing and d.main:
        progress.warn(f"{len(missing)} annotated video(s) have no features and are left out "
                      f"(e.g. {', '.join(missing[:3])}); run `fcvc extract` on them to include them")
    if cfg.skip_damaged:
        usable = leave_out_damaged(store, usable, main=d.main)
    read_ids = sorted({r.video_id for r in rows if r.split in ("train", "val")} & set(usable))
    init = None
    if cfg.scst:
        init = load_init(cfg, w, run_dir, vocab, store, main=d.main)
        model_cfg = scst_model_config(cfg, init, vocab, store, (read_ids or usable)[0])
    else:
        model_cfg = model_config(cfg, vocab, store, (read_ids or usable)[0])
    require(model_cfg.validate())  # the model overrides together (heads vs d_model, layers per variant)
    manifest = train_manifest(cfg, w, vocab, store, model_cfg, read_ids,
                              init_digest=init_fingerprint(init.checkpoint) if init else None)
    plan = plan_run(cfg, run_dir, manifest, main=d.main)
    if plan.status == "up_to_date":
        out = read_manifest(run_dir).outputs
        if d.main:
            progress.log(f"train [{cfg.run_name}]: up to date ({run_dir})")
        return TrainResult(run=run_dir, best_checkpoint=run_dir / "best.pt",
                           best_val_cider=out.get("best_val_cider"), epochs=out["epochs"],
                           seconds_per_epoch=out.get("seconds_per_epoch"), parameters=out["parameters"],
                           up_to_date=True, history=out.get("history", []), decoding=out.get("decoding"),
                           extensions=out.get("extensions", []))
    data = load_train_data(vocab, rows, store, w.features, usable, model_cfg, device, d.main, features=cfg.features,
                           memory_budget=cfg.memory_budget, dist=d, cache_dir=bank_cache_dir(w),
                           features_fingerprint=manifest.inputs["features"])
    trainer = Trainer(cfg, model_cfg, data, run_dir, dist=d, device=device, manifest_key=manifest.fingerprint(),
                      settings=manifest.key(), init=init.checkpoint if init and plan.checkpoint is None else None)
    if plan.checkpoint is not None:
        trainer.restore(plan.checkpoint)
    if plan.extension:
        check_extension_trains(cfg, trainer, plan.extension)
        trainer.extend(plan.extension)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if plan.extension:  # the run is in progress again: no manifest until the longer run is done
            (run_dir / MANIFEST_NAME).unlink(missing_ok=True)
        atomic_write_json(run_dir / "config.json", {"train": cfg.settings_json(), "model": model_cfg.to_json(),
                                                    "inputs": manifest.inputs,
                                                    "extensions": trainer.state.extensions})
    state, decoding = trainer.fit()
    seconds_per_epoch = state.seconds_per_epoch
    parameters = trainer.parameters
    decoding_json = decoding.to_json() if decoding is not None else None
    result = TrainResult(run=run_dir, best_checkpoint=run_dir / "best.pt", best_val_cider=state.best_cider,
                         epochs=len(state.history), seconds_per_epoch=seconds_per_epoch, parameters=parameters,
                         history=state.history, decoding=decoding_json, extensions=state.extensions)
    if d.main:
        manifest.outputs = {"best_checkpoint": str(result.best_checkpoint), "best_val_cider": state.best_cider,
                            "best_epoch": state.best_epoch, "epochs": len(state.history), "decoding": decoding_json,
                            "seconds_per_epoch": seconds_per_epoch, "parameters": parameters,
                            "sec_per_10M_params": seconds_per_epoch / (parameters / 1e7) if seconds_per_epoch else None,
                            "history": state.history, "extensions": state.extensions}
        write_manifest(run_dir, manifest)
        if cfg.scst and state.best_epoch == 0:
            progress.warn(f"no self-critical epoch beat the --init weights' validation CIDEr ({fmt(state.best_cider)}): "
                          f"best.pt keeps those weights")
        progress.log(f"train [{cfg.run_name}]: done, best validation CIDEr "
                     f"{fmt(state.best_cider)} at epoch {state.best_epoch}, decoding with beam "
                     f"{decoding_json['beam_size']}; checkpoints in {run_dir}")
    return result


def bank_cache_dir(w: Workdir) -> Path:
    """Where torchrun ranks share their in-memory features (``--features memory`` with several processes per
    machine): ``FCVC_BANK_CACHE`` (e.g. node-local disk or /dev/shm on a cluster), else the work directory's
    ``cache/banks/``."""
    return Path(os.environ.get(BANK_CACHE_ENV) or w.root / "cache" / "banks")


def interrupted(cfg: TrainConfig, run_dir: Path) -> StoppedBySignal:
    """Ctrl-C before or after the training loop: what is on disk and the command that continues."""
    resumable = (run_dir / "last.pt").is_file() and read_manifest(run_dir) is None
    if resumable:
        return StoppedBySignal(signal.SIGINT, f"interrupted: training of '{cfg.run_name}' stopped; "
                                              f"{run_dir / 'last.pt'} keeps where it was", hint=RESUME_HINT)
    return StoppedBySignal(signal.SIGINT, f"interrupted before training '{cfg.run_name}' began",
                           hint="rerun the same command")


def model_config(cfg: TrainConfig, vocab: Vocabulary, store: FeatureStore, probe_id: str) -> ModelConfig:
    """The model's config: the variant and overrides of ``cfg``, dimensions from the store and vocabulary."""
    probe = store.read_video(probe_id)
    overrides = {k: getattr(cfg, k) for k in MODEL_OVERRIDES if getattr(cfg, k) is not None}
    regions = probe.region_features
    return ModelConfig(
        model=cfg.model, vocab_size=len(vocab),
        frame_dim=int(probe.frame_features.shape[-1]),
        clip_dim=int(probe.clip_features.shape[-1]) if probe.clip_features is not None else 0,
        region_dim=int(regions.shape[-1]) if regions is not None else 2048,
        num_regions=int(regions.shape[1]) if regions is not None else 64,
        num_frames=int(probe.frame_features.shape[0]),
        max_len=vocab.max_len, pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id,
        **overrides)


def leave_out_damaged(store: FeatureStore, video_ids: list[str], *, main: bool) -> list[str]:
    """``--skip-damaged``: read every video in full first and return those whose features are intact."""
    damaged = {}
    for vid in progress.bar(video_ids, desc="checking features", unit="video"):
        if (err := store.check_video(vid, full=True)) is not None:
            damaged[vid] = err
    if damaged and main:
        progress.warn(f"--skip-damaged: {len(damaged)} of {len(video_ids)} videos have damaged features and are "
                      f"left out (`fcvc extract --verify` re-extracts them):")
        for err in damaged.values():
            progress.warn(f"  {err.message}")
    kept = [v for v in video_ids if v not in damaged]
    if not kept:
        raise MismatchError(f"every video in {store.path} with captions has damaged features",
                            hint="re-extract them: `fcvc extract --verify VIDEOS...`")
    return kept


def train_manifest(cfg: TrainConfig, w: Workdir, vocab: Vocabulary, store: FeatureStore, model_cfg: ModelConfig,
                   video_ids: list[str], *, init_digest: str | None = None) -> Manifest:
    """What the run depends on; the features count only through the videos it reads (``video_ids``); a
    self-critical run also on the content of the best.pt it starts from (``init_digest``)."""
    vocab_manifest = read_manifest(w.vocab)
    inputs = {"vocabulary": vocab.fingerprint(), "captions": vocab_manifest.fingerprint() if vocab_manifest else None,
              "features": store.content_fingerprint(video_ids)}
    if cfg.scst:
        inputs["init"] = init_digest
    return Manifest(stage="train", version=STAGE_VERSION,
                    config={**cfg.output_fields(), "model_config": model_cfg.to_json()}, inputs=inputs)


# -- self-critical training's starting point ---------------------------------------------------------------
@dataclass
class InitRun:
    """The best.pt a self-critical run starts from (``--init``)."""

    path: Path
    checkpoint: dict[str, Any]


def init_checkpoint_path(init: str, w: Workdir) -> Path:
    """``--init``: a run name under <workdir>/runs, a run directory, or a checkpoint file."""
    p = Path(init)
    if p.suffix == ".pt":
        return p
    if safe_name(init) == init and w.run(init).is_dir():
        return w.run(init) / "best.pt"
    return p / "best.pt" if p.is_dir() else w.run(init) / "best.pt"


def load_init(cfg: TrainConfig, w: Workdir, run_dir: Path, vocab: Vocabulary, store: FeatureStore, *,
              main: bool) -> InitRun:
    """Read and check ``--init``'s best.pt: it must exist, be intact, and come from this work directory's
    vocabulary and feature settings."""
    assert cfg.init is not None
    path = init_checkpoint_path(cfg.init, w)
    if path.resolve().parent == run_dir.resolve():
        raise ConfigError(f"--init {cfg.init} is the run being trained ({run_dir}): name the cross-entropy run "
                          f"to start from, or pick another --run NAME")
    if not path.is_file():
        known = [p.name for p in w.run_dirs() if (p / "best.pt").is_file()]
        raise MissingArtifactError(f"--init {cfg.init}: there is no best.pt at {path}",
                                   hint=("train that run first (fcvc train --run NAME); runs with a best.pt here: "
                                         + (", ".join(known) if known else "none")))
    ckpt = load_checkpoint(path)
    problems = []
    if ckpt.get("vocab_fingerprint") != vocab.fingerprint():
        problems.append(f"it was trained with another vocabulary than {w.vocab}")
    if ckpt.get("store_settings_fingerprint") != store.settings_fingerprint:
        problems.append(f"its features came from a store with other settings than {w.features}")
    if problems:
        raise MismatchError(f"--init {path} does not belong to this work directory: " + "; ".join(problems),
                            hint="self-critical training continues a run on the same vocabulary and features; "
                                 "train a cross-entropy run here first")
    model_from_checkpoint(ckpt, path)  # the weights fit their model config (an error naming the file if not)
    if main:
        if read_manifest(path.parent) is None:
            progress.warn(f"--init {path}: that run has not finished; starting from its best weights so far")
        progress.log(f"self-critical training starts from {path} (validation CIDEr "
                     f"{fmt((ckpt.get('best') or {}).get('cider'))})")
    return InitRun(path, ckpt)


def init_fingerprint(ckpt: dict[str, Any]) -> str:
    """What a self-critical run depends on in its starting point: the model and its weights (not the decoding
    that run chose, nor its history)."""
    return content_digest({"model_config": ckpt["model_config"], "state_dict": ckpt["state_dict"]})


def scst_model_config(cfg: TrainConfig, init: InitRun, vocab: Vocabulary, store: FeatureStore,
                      probe_id: str) -> ModelConfig:
    """The model a self-critical run trains: the ``--init`` run's, whose dimensions must fit this store and
    vocabulary; a --model or model option that contradicts it is an error, not an override."""
    init_cfg = ModelConfig.from_json(init.checkpoint["model_config"])
    problems = []
    if canonical_model_name(cfg.model) != init_cfg.model:
        problems.append(f"--model {cfg.model} (the --init run is {init_cfg.model})")
    problems += [f"{option_name(k)} {getattr(cfg, k)} (the --init run has {getattr(init_cfg, k)})"
                 for k in MODEL_OVERRIDES if getattr(cfg, k) is not None and getattr(cfg, k) != getattr(init_cfg, k)]
    if problems:
        raise MismatchError(f"self-critical training continues the model of {init.path}, but this command asks for "
                            + ", ".join(problems), hint="leave these options out: the model comes from --init")
    expected = model_config(dataclasses.replace(cfg, model=init_cfg.model,
                                                **{k: getattr(init_cfg, k) for k in MODEL_OVERRIDES}),
                            vocab, store, probe_id).to_json()
    differ = [k for k in sorted(expected) if canonical_json(expected[k]) != canonical_json(init_cfg.to_json().get(k))]
    if differ:
        raise MismatchError(f"{init.path} was built for other data: "
                            + ", ".join(f"{k} {init_cfg.to_json().get(k)!r} vs {expected[k]!r} here" for k in differ))
    return init_cfg


def scst_init_model(workdir: Path, init: str) -> str | None:
    """The model of ``--init``'s best.pt (the default --model of a self-critical run), None if unreadable
    (the stage then says why)."""
    path = init_checkpoint_path(init, Workdir(workdir))
    try:
        return ModelConfig.from_json(load_checkpoint(path)["model_config"]).model
    except (FcvcError, KeyError, TypeError):
        return None


def plan_run(cfg: TrainConfig, run_dir: Path, manifest: Manifest, *, main: bool) -> RunPlan:
    """Up to date, fresh, resume (an interrupted run, same settings) or extend (``--resume`` with a larger
    ``--epochs``/``--max-steps``, nothing else changed); anything else is refused, naming what differs."""
    if cfg.force:
        if run_dir.exists() and main:
            shutil.rmtree(run_dir)
        return RunPlan("fresh")
    last = run_dir / "last.pt"
    old = read_manifest(run_dir)
    if old is not None:  # a finished run
        fresh = check_manifest(run_dir, manifest)
        if fresh.up_to_date:
            return RunPlan("up_to_date")
        others, schedule = compare_settings(old.key(), manifest.key())
        extendable = not others and all(grows(a, b) for a, b in schedule.values())
        if not cfg.resume or others:
            hint = ("add --resume to train it longer from where it ended; or pick another --run NAME, or --force "
                    "to retrain it" if extendable else "pick another --run NAME, or --force to retrain it")
            raise MismatchError(f"run '{cfg.run_name}' in {run_dir} was trained differently ("
                                + ", ".join(others + [f"{option_name(k)} {a} -> {b}" for k, (a, b) in schedule.items()])
                                + ")", hint=hint)
        check_growth(cfg, run_dir, schedule)
        if not last.is_file():
            raise MissingArtifactError(f"run '{cfg.run_name}' in {run_dir} has no last.pt to continue from",
                                       hint="--force to retrain it with the new settings")
        return RunPlan("extend", load_checkpoint(last), schedule)
    if last.is_file():  # an interrupted run
        if not cfg.resume:
            raise MismatchError(f"run '{cfg.run_name}' in {run_dir} was interrupted",
                                hint="continue it with --resume, or start over with --force")
        ckpt = load_checkpoint(last)
        recorded = ckpt.get("settings")
        if recorded is None:  # a last.pt written before it recorded its settings: exactly the same, or nothing
            if ckpt.get("manifest_key") != manifest.fingerprint():
                raise MismatchError(f"{last} was written with other settings or data",
                                    hint="resume with the original options, or --force to start over")
            return RunPlan("resume", ckpt)
        others, schedule = compare_settings(recorded, manifest.key())
        if others:
            raise MismatchError(f"{last} was written with other settings or data: {', '.join(others)}",
                                hint="resume with the original options (only --epochs and --max-steps may grow), "
                                     "or --force to start over")
        check_growth(cfg, run_dir, schedule)
        return RunPlan("extend" if schedule else "resume", ckpt, schedule)
    if cfg.resume and main:
        progress.log(f"nothing to resume in {run_dir}; starting a new run")
    return RunPlan("fresh")


def compare_settings(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], dict[str, tuple[Any, Any]]]:
    """Two manifest keys -> (what differs besides the schedule, named for people; the schedule settings that
    differ: field -> (old, new))."""
    others: list[str] = []
    if (old.get("stage"), old.get("version")) != (new.get("stage"), new.get("version")):
        others.append(f"stage version {old.get('version')} -> {new.get('version')}")
    old_cfg, new_cfg = old.get("config", {}), new.get("config", {})
    schedule = {k: (old_cfg.get(k), new_cfg.get(k)) for k in SCHEDULE_FIELDS if old_cfg.get(k) != new_cfg.get(k)}
    for k in sorted(set(old_cfg) | set(new_cfg)):
        a, b = old_cfg.get(k), new_cfg.get(k)
        if k in SCHEDULE_FIELDS or canonical_json(a) == canonical_json(b):
            continue
        if k == "model_config" and isinstance(a, dict) and isinstance(b, dict):
            others += [f"model config '{m}' {a.get(m)!r} -> {b.get(m)!r}" for m in sorted(set(a) | set(b))
                       if canonical_json(a.get(m)) != canonical_json(b.get(m))]
        else:
            others.append(f"{option_name(k)} {a!r} -> {b!r}")
    old_in, new_in = old.get("inputs", {}), new.get("inputs", {})
    others += [f"input '{k}' changed" for k in sorted(set(old_in) | set(new_in))
               if canonical_json(old_in.get(k)) != canonical_json(new_in.get(k))]
    return others, schedule


def grows(old: int | None, new: int | None) -> bool:
    """A schedule setting may only grow; None (no --max-steps) is the largest."""
    return new is None or (old is not None and new >= old)


def check_growth(cfg: TrainConfig, run_dir: Path, schedule: dict[str, tuple[Any, Any]]) -> None:
    problems = []
    for k, (a, b) in schedule.items():
        if not grows(a, b):
            was = "no step limit" if a is None else f"{option_name(k)} {a}"
            problems.append(f"run '{cfg.run_name}' in {run_dir} was trained with {was}: {option_name(k)} {b} is "
                            f"smaller, and a run can only be extended")
    require(problems, hint="pass the run's value or a larger one, or --force to retrain it (or pick another --run NAME)")


def check_extension_trains(cfg: TrainConfig, trainer: Trainer, extension: dict[str, tuple[Any, Any]]) -> None:
    """An extension that would train nothing (the other bound is already reached) is an error, not a no-op."""
    s = trainer.state
    if s.epoch >= cfg.epochs:
        raise ConfigError(f"run '{cfg.run_name}' has already trained {s.epoch} epochs: raise --epochs too "
                          f"(extending {', '.join(option_name(k) for k in extension)} alone trains nothing)")
    if cfg.max_steps is not None and s.step >= cfg.max_steps:
        raise ConfigError(f"run '{cfg.run_name}' has already taken {s.step} steps: raise --max-steps too "
                          f"(extending {', '.join(option_name(k) for k in extension)} alone trains nothing)")
