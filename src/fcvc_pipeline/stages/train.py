"""``fcvc train``: config -> is the run up to date, interrupted or new? -> the Trainer -> the run's manifest.

What is trained and how: ``training/trainer.py``. What this stage adds: the run directory's bookkeeping.
A run is identified by its manifest (the fields of :class:`TrainConfig` that change outputs, the model
config, and the fingerprints of vocabulary, caption table and features): the same manifest is ``up to
date``; ``last.pt`` without a manifest is an interrupted run (``--resume`` continues it); a manifest with
other settings is refused unless ``--force``. ``fcvc train --model all`` is the ablation
(``stages/ablation.py``), dispatched by the command.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import Manifest, atomic_write_json, check_manifest, read_manifest, write_manifest
from fcvc_pipeline.captions.vocabulary import Vocabulary, load_captions, load_vocabulary
from fcvc_pipeline.errors import ConfigError, MismatchError, require
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.models import ModelConfig, canonical_model_name
from fcvc_pipeline.training.batches import resolve_training_videos
from fcvc_pipeline.training.config import ALL_MODELS, PRECISIONS, TrainConfig
from fcvc_pipeline.training.distributed import init_distributed
from fcvc_pipeline.training.optim import learning_rate
from fcvc_pipeline.training.state import fmt
from fcvc_pipeline.training.trainer import Trainer, load_train_data
from fcvc_pipeline.workdir import Workdir

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
    exit_code: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"run": str(self.run), "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
                "best_val_cider": self.best_val_cider, "epochs": self.epochs,
                "seconds_per_epoch": self.seconds_per_epoch, "parameters": self.parameters,
                "up_to_date": self.up_to_date}


def run_train(cfg: TrainConfig) -> TrainResult:
    """Train one model (``cfg.model`` is a model name; ``all`` is the ablation stage's job)."""
    require(cfg.validate())
    if cfg.model == ALL_MODELS:
        raise ConfigError("run_train trains one model; --model all is fcvc_pipeline.stages.ablation.run_ablation")
    cfg = dataclasses.replace(cfg, model=canonical_model_name(cfg.model))
    w = Workdir(cfg.workdir)
    run_dir = w.run(cfg.run_name)
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
    model_cfg = model_config(cfg, vocab, store, (read_ids or usable)[0])
    manifest = train_manifest(cfg, w, vocab, store, model_cfg, read_ids)
    status = prepare_run_dir(cfg, run_dir, manifest, main=d.main)
    if status == "up_to_date":
        out = read_manifest(run_dir).outputs
        if d.main:
            progress.log(f"train [{cfg.run_name}]: up to date ({run_dir})")
        return TrainResult(run=run_dir, best_checkpoint=run_dir / "best.pt",
                           best_val_cider=out.get("best_val_cider"), epochs=out["epochs"],
                           seconds_per_epoch=out.get("seconds_per_epoch"), parameters=out["parameters"],
                           up_to_date=True, history=out.get("history", []), decoding=out.get("decoding"))
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", {"train": {**dataclasses.asdict(cfg), "workdir": str(cfg.workdir)},
                                                    "model": model_cfg.to_json(), "inputs": manifest.inputs})
    data = load_train_data(vocab, rows, store, w.features, usable, model_cfg, device, d.main)
    trainer = Trainer(cfg, model_cfg, data, run_dir, dist=d, device=device, manifest_key=manifest.fingerprint())
    state, decoding = trainer.fit(resume=status == "resume")
    seconds_per_epoch = state.seconds_per_epoch
    parameters = trainer.parameters
    decoding_json = decoding.to_json() if decoding is not None else None
    result = TrainResult(run=run_dir, best_checkpoint=run_dir / "best.pt", best_val_cider=state.best_cider,
                         epochs=len(state.history), seconds_per_epoch=seconds_per_epoch, parameters=parameters,
                         history=state.history, decoding=decoding_json)
    if d.main:
        manifest.outputs = {"best_checkpoint": str(result.best_checkpoint), "best_val_cider": state.best_cider,
                            "best_epoch": state.best_epoch, "epochs": len(state.history), "decoding": decoding_json,
                            "seconds_per_epoch": seconds_per_epoch, "parameters": parameters,
                            "sec_per_10M_params": seconds_per_epoch / (parameters / 1e7) if seconds_per_epoch else None,
                            "history": state.history}
        write_manifest(run_dir, manifest)
        progress.log(f"train [{cfg.run_name}]: done, best validation CIDEr "
                     f"{fmt(state.best_cider)} at epoch {state.best_epoch}, decoding with beam "
                     f"{decoding_json['beam_size']}; checkpoints in {run_dir}")
    return result


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
                   video_ids: list[str]) -> Manifest:
    """What the run depends on; the features count only through the videos it reads (``video_ids``)."""
    vocab_manifest = read_manifest(w.vocab)
    return Manifest(stage="train", version=STAGE_VERSION,
                    config={**cfg.output_fields(), "model_config": model_cfg.to_json()},
                    inputs={"vocabulary": vocab.fingerprint(),
                            "captions": vocab_manifest.fingerprint() if vocab_manifest else None,
                            "features": store.content_fingerprint(video_ids)})


def prepare_run_dir(cfg: TrainConfig, run_dir: Path, manifest: Manifest, *, main: bool) -> str:
    """-> 'up_to_date' | 'fresh' | 'resume'."""
    if run_dir.exists() and cfg.force and main:
        shutil.rmtree(run_dir)
    fresh = check_manifest(run_dir, manifest)
    if fresh.up_to_date:
        return "up_to_date"
    has_manifest = read_manifest(run_dir) is not None
    has_last = (run_dir / "last.pt").is_file()
    if has_manifest and not cfg.force:
        raise MismatchError(f"run '{cfg.run_name}' in {run_dir} was trained differently ({fresh.reason})",
                            hint="pick another --run NAME, or --force to retrain it")
    if has_last and not has_manifest:
        if cfg.resume:
            return "resume"
        raise MismatchError(f"run '{cfg.run_name}' in {run_dir} was interrupted",
                            hint="continue it with --resume, or start over with --force")
    if cfg.resume and main:
        progress.log(f"nothing to resume in {run_dir}; starting a new run")
    return "fresh"
