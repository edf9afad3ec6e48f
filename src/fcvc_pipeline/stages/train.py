"""``fcvc train``: train a captioner on the feature store and the caption table.

The loop in one paragraph: features are read from the store once (onto the GPU when they fit); each epoch
shuffles the training *videos* with a generator seeded by (seed, epoch) and packs all captions of a video
into the same batch, so the video is encoded once; AdamW with linear warm-up and cosine decay (a pure
function of the global step, so resuming needs no scheduler object), gradient clipping, the Eq. 7 loss with
its three terms logged (label smoothing on the NLL term by default), bf16 autocast on CUDA, and an
exponential moving average of the weights. After each epoch the averaged weights are validated: validation
loss, greedy validation captions scored with BLEU-4 and CIDEr, their ``<unk>`` count; ``best.pt`` follows
validation CIDEr, ``last.pt`` is written after it (and every ``checkpoint_every`` steps), then
``metrics.jsonl``. When training ends, ``best.pt`` captions the validation split at each beam size of
``select_beams`` and keeps the best as the run's decoding. ``--resume`` restores model, average, optimizer,
RNG, position and the running epoch sums, so an interrupted run ends with the same numbers as an
uninterrupted one (bit for bit on CPU).

Under ``torchrun`` each rank trains on its slice of the batches through DistributedDataParallel; rank 0
alone validates and writes files.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import Manifest, atomic_write_json, atomic_write_text, check_manifest, read_manifest, write_manifest
from fcvc_pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from fcvc_pipeline.workdir import DEFAULT_WORKDIR, check_device_spec, workdir_paths
from fcvc_pipeline.training.batches import (FeatureBank, build_caption_set, count_batches, load_feature_bank,
                                        make_batches, resolve_training_videos)
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.captions.vocabulary import load_captions, load_vocabulary, references_by_video
from fcvc_pipeline.inference.decoding import DEFAULT_BEAM_SIZE
from fcvc_pipeline.errors import MismatchError, require
from fcvc_pipeline.naming import safe_name
from fcvc_pipeline.training.optim import (NullContext, WeightAverage, accumulate, broadcast_flag, epoch_line,
                                              fault_injection, fmt, init_distributed, jsonl, learning_rate, means,
                                              zero_sums)

STAGE_VERSION = 2  # 2: best.pt carries the validation-chosen decoding
ALL_MODELS = "all"
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    workdir: Path = DEFAULT_WORKDIR
    model: str = "fcvc-cf-ia"
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
    dropout: float | None = None
    attn_lambda: float | None = None
    attn_mu: float | None = None
    # not part of what the run produces
    device: str = "auto"
    resume: bool = False
    force: bool = False
    # ablation runner (model == "all"): how to score each model on the test split
    score_beam_size: int | None = None  # None: each run's validation-chosen beam

    @property
    def run_name(self) -> str:
        from fcvc_pipeline.models import canonical_model_name

        return self.run or canonical_model_name(self.model)

    def validate(self) -> list[str]:
        from fcvc_pipeline.models import MODEL_ALIASES, MODEL_NAMES

        problems = []
        if self.model != ALL_MODELS and self.model not in MODEL_NAMES and self.model not in MODEL_ALIASES:
            problems.append(f"--model must be one of {', '.join(MODEL_NAMES + tuple(MODEL_ALIASES))} or all "
                            f"(got {self.model!r})")
        for name in ("epochs", "batch_size", "val_beam_size"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1")
        if self.score_beam_size is not None and self.score_beam_size < 1:
            problems.append("--score-beam-size must be at least 1")
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
        if (p := check_device_spec(self.device)) is not None:
            problems.append(p)
        return problems

    def out_of_patience(self, completed_epochs: int, best_epoch: int | None) -> bool:
        """Early stopping: ``patience`` epochs have passed without a better validation CIDEr."""
        return best_epoch is not None and completed_epochs - best_epoch >= self.patience

    def reached_max_steps(self, step: int) -> bool:
        return self.max_steps is not None and step >= self.max_steps

    def output_fields(self) -> dict[str, Any]:
        """The fields that change what a run produces (for the manifest)."""
        skip = {"workdir", "device", "resume", "force", "run", "score_beam_size"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


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


# -- the stage -------------------------------------------------------------------------------------------
def run_train(cfg: TrainConfig) -> TrainResult:
    require(cfg.validate())
    if cfg.model == ALL_MODELS:
        from fcvc_pipeline.stages.ablation import run_ablation

        return run_ablation(cfg)
    return Trainer(cfg).run()


class Trainer:
    def __init__(self, cfg: TrainConfig):
        from fcvc_pipeline.models import canonical_model_name

        self.cfg = dataclasses.replace(cfg, model=canonical_model_name(cfg.model))
        self.paths = workdir_paths(cfg.workdir)
        self.run_dir = self.paths["runs"] / self.cfg.run_name
        self.dist, self.device = init_distributed(cfg.device)

    # .. setup ..........................................................................................
    def _load_data(self):
        vocab = load_vocabulary(self.paths["vocab"])
        rows = load_captions(self.paths["vocab"])
        store = FeatureStore.open(self.paths["features"])
        usable, missing = resolve_training_videos(store, rows, self.paths["features"])
        if missing and self.dist.main:
            progress.warn(f"{len(missing)} annotated video(s) have no features and are left out "
                          f"(e.g. {', '.join(missing[:3])}); run `fcvc extract` on them to include them")
        return vocab, rows, store, usable

    def _model_config(self, vocab, store: FeatureStore, probe_id: str):
        from fcvc_pipeline.models import ModelConfig

        probe = store.read_video(probe_id)
        overrides = {k: getattr(self.cfg, k) for k in ("d_model", "layers", "heads", "kernel_size", "dropout",
                                                       "attn_lambda", "attn_mu") if getattr(self.cfg, k) is not None}
        regions = probe.region_features
        return ModelConfig(
            model=self.cfg.model, vocab_size=len(vocab),
            frame_dim=int(probe.frame_features.shape[-1]),
            clip_dim=int(probe.clip_features.shape[-1]) if probe.clip_features is not None else 0,
            region_dim=int(regions.shape[-1]) if regions is not None else 2048,
            num_regions=int(regions.shape[1]) if regions is not None else 64,
            num_frames=int(probe.frame_features.shape[0]),
            max_len=vocab.max_len, pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id,
            **overrides)

    def _manifest(self, vocab, store: FeatureStore, model_cfg) -> Manifest:
        vocab_manifest = read_manifest(self.paths["vocab"])
        return Manifest(stage="train", version=STAGE_VERSION,
                        config={**self.cfg.output_fields(), "model_config": model_cfg.to_json()},
                        inputs={"vocabulary": vocab.fingerprint(),
                                "captions": vocab_manifest.fingerprint() if vocab_manifest else None,
                                "features": store.content_fingerprint()})

    def _prepare_run_dir(self, manifest: Manifest) -> str:
        """-> 'up_to_date' | 'fresh' | 'resume'."""
        if self.run_dir.exists() and self.cfg.force and self.dist.main:
            shutil.rmtree(self.run_dir)
        fresh = check_manifest(self.run_dir, manifest)
        if fresh.up_to_date:
            return "up_to_date"
        has_manifest = read_manifest(self.run_dir) is not None
        has_last = (self.run_dir / "last.pt").is_file()
        if has_manifest and not self.cfg.force:
            raise MismatchError(f"run '{self.cfg.run_name}' in {self.run_dir} was trained differently ({fresh.reason})",
                                hint="pick another --run NAME, or --force to retrain it")
        if has_last and not has_manifest:
            if self.cfg.resume:
                return "resume"
            raise MismatchError(f"run '{self.cfg.run_name}' in {self.run_dir} was interrupted",
                                hint="continue it with --resume, or start over with --force")
        if self.cfg.resume and self.dist.main:
            progress.log(f"nothing to resume in {self.run_dir}; starting a new run")
        return "fresh"

    # .. the run ........................................................................................
    def run(self) -> TrainResult:
        from fcvc_pipeline.training.losses import caption_loss
        from fcvc_pipeline.models import build_model

        cfg, d = self.cfg, self.dist
        vocab, rows, store, usable = self._load_data()
        model_cfg = self._model_config(vocab, store, usable[0])
        manifest = self._manifest(vocab, store, model_cfg)
        state = self._prepare_run_dir(manifest)
        if state == "up_to_date":
            out = read_manifest(self.run_dir).outputs
            if d.main:
                progress.log(f"train [{cfg.run_name}]: up to date ({self.run_dir})")
            return TrainResult(run=self.run_dir, best_checkpoint=Path(out["best_checkpoint"]),
                               best_val_cider=out.get("best_val_cider"), epochs=out["epochs"],
                               seconds_per_epoch=out.get("seconds_per_epoch"), parameters=out["parameters"],
                               up_to_date=True, history=out.get("history", []), decoding=out.get("decoding"))
        if d.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run_dir / "config.json", {"train": {**dataclasses.asdict(cfg), "workdir": str(cfg.workdir)},
                                                             "model": model_cfg.to_json(), "inputs": manifest.inputs})

        # data: everything in memory, on the GPU when it fits comfortably
        train_ids = sorted({r.video_id for r in rows if r.split == "train"} & set(usable))
        val_ids = sorted({r.video_id for r in rows if r.split == "val"} & set(usable))
        if not val_ids and d.main:
            progress.warn("no validation video has captions and features: best.pt will follow the last epoch, "
                          "and early stopping is off")
        if not train_ids:
            raise MismatchError("no training video has both captions and features",
                                hint="check the split column of the annotations and run `fcvc extract` on the training videos")
        bank = load_feature_bank(store, train_ids + val_ids, regions=model_cfg.uses_regions)
        if self.device.type == "cuda" and bank.nbytes() < 0.5 * torch.cuda.mem_get_info(self.device)[0]:
            bank = bank.to(self.device)
        index = bank.index()
        train_set = build_caption_set([r for r in rows if r.split == "train"], vocab, index)
        val_set = build_caption_set([r for r in rows if r.split == "val"], vocab, index)
        val_refs = references_by_video(r for r in rows if r.split == "val" and r.video_id in index)

        torch.manual_seed(cfg.seed)
        model = build_model(model_cfg).to(self.device)
        parameters = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        batches_per_epoch = count_batches(train_set, cfg.batch_size) // d.world
        total_steps = cfg.max_steps or cfg.epochs * max(1, batches_per_epoch)

        pos = {"epoch": 0, "batch": 0, "step": 0, "sums": zero_sums()}
        history: list[dict[str, Any]] = []
        best = {"cider": None, "epoch": None}
        if state == "resume":
            ckpt = load_checkpoint(self.run_dir / "last.pt")
            if ckpt.get("manifest_key") != manifest.fingerprint():
                raise MismatchError(f"{self.run_dir / 'last.pt'} was written with other settings or data",
                                    hint="resume with the original options, or --force to start over")
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if ema is not None:
                ema.model.load_state_dict(ckpt["ema_state_dict"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            if torch.cuda.is_available() and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
            pos, history, best = ckpt["position"], ckpt["history"], ckpt["best"]
            if d.main:
                progress.log(f"resuming '{cfg.run_name}' at epoch {pos['epoch'] + 1}, batch {pos['batch']}, "
                             f"step {pos['step']}")
        else:
            torch.manual_seed(cfg.seed + 1)  # dropout stream, independent of the initialisation

        net = model
        if d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if use_bf16 else NullContext()
        manifest_key = manifest.fingerprint()
        if d.main:
            progress.log(f"train [{cfg.run_name}]: {cfg.model}, {parameters / 1e6:.2f}M parameters, "
                         f"{len(train_ids)} train / {len(val_ids)} val videos, {len(train_set)} captions, "
                         f"{batches_per_epoch} batches per epoch on {self.device}")

        def snapshot(extra_pos: dict[str, Any]) -> dict[str, Any]:
            return {"model_config": model_cfg.to_json(), "vocab": vocab.to_json(), "vocab_fingerprint": vocab.fingerprint(),
                    "store_settings_fingerprint": store.settings_fingerprint, "store_path": str(self.paths["features"]),
                    "manifest_key": manifest_key, "state_dict": model.state_dict(),
                    "ema_state_dict": ema.model.state_dict() if ema is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "rng": {"torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                    "position": extra_pos, "history": history, "best": best,
                    "train_seconds": sum(h["seconds"] for h in history)}

        epoch = pos["epoch"]
        # a run resumed after it had already stopped (early stop or --max-steps) goes straight to the end
        stop = (pos["batch"] == 0 and cfg.out_of_patience(epoch, best["epoch"])) or cfg.reached_max_steps(pos["step"])
        while epoch < cfg.epochs and not stop:
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            batches = make_batches(train_set, cfg.batch_size, generator=gen, vocab=vocab)
            if d.enabled:
                batches = batches[: len(batches) - len(batches) % d.world][d.rank::d.world]
            sums = pos["sums"] if pos["batch"] else zero_sums()
            start_batch = pos["batch"]
            model.train()
            t0 = time.perf_counter()
            bar = progress.bar(total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch") if d.main else None
            if bar is not None:
                bar.update(start_batch)
            for i in range(start_batch, len(batches)):
                b = batches[i]
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(pos["step"], base=cfg.lr, warmup=cfg.warmup_steps, total=total_steps)
                videos = bank.batch(b.video_rows).to(self.device)
                with autocast:
                    out = net(videos, b.inputs.to(self.device), b.video_index.to(self.device))
                terms = caption_loss(out, b.targets.to(self.device), model_cfg, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                terms.total.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                if ema is not None:
                    ema.update(model, pos["step"])
                pos["step"] += 1
                accumulate(sums, terms)
                if bar is not None:
                    bar.set_postfix(loss=f"{terms.total.item():.3f}")
                    bar.update(1)
                last_of_run = cfg.reached_max_steps(pos["step"])
                if cfg.checkpoint_every and pos["step"] % cfg.checkpoint_every == 0 and i + 1 < len(batches) \
                        and not last_of_run and d.main:
                    elapsed = sums.get("seconds_before", 0.0) + time.perf_counter() - t0
                    save_checkpoint(self.run_dir / "last.pt", snapshot(
                        {"epoch": epoch, "batch": i + 1, "step": pos["step"], "sums": {**sums, "seconds_before": elapsed}}))
                fault_injection(pos["step"])
                if last_of_run:
                    stop = True
                    break
            if bar is not None:
                bar.close()
            seconds = time.perf_counter() - t0 + sums.get("seconds_before", 0.0)
            record = {"epoch": epoch + 1, "step": pos["step"], "lr": optimizer.param_groups[0]["lr"],
                      **means(sums), "seconds": seconds, "sec_per_10M_params": seconds / (parameters / 1e7)}
            if d.main:
                evaluated = ema.model if ema is not None else model
                record.update(self._validate(evaluated, model_cfg, bank, val_set, val_refs, vocab, autocast))
                improved = record.get("val_cider") is not None and (best["cider"] is None or record["val_cider"] > best["cider"])
                history.append(record)
                if improved or record.get("val_cider") is None:  # no validation split: the latest is best
                    best = {"cider": record.get("val_cider"), "epoch": epoch + 1}
                    save_checkpoint(self.run_dir / "best.pt", {**snapshot({}), "state_dict": evaluated.state_dict(),
                                                               "ema_state_dict": None, "optimizer": {}, "history": []})
                if cfg.out_of_patience(epoch + 1, best["epoch"]):
                    progress.log(f"no better validation CIDEr for {cfg.patience} epochs: stopping")
                    stop = True
                save_checkpoint(self.run_dir / "last.pt",
                                snapshot({"epoch": epoch + 1, "batch": 0, "step": pos["step"], "sums": zero_sums()}))
                atomic_write_text(self.run_dir / "metrics.jsonl", "".join(jsonl(h) for h in history))
                progress.log(epoch_line(record))
            stop = broadcast_flag(stop, d, self.device)
            pos = {"epoch": epoch + 1, "batch": 0, "step": pos["step"], "sums": zero_sums()}
            epoch += 1

        decoding = None
        if d.main:
            decoding = self._choose_decoding(model_cfg, bank, val_refs, vocab)
        seconds_per_epoch = sum(h["seconds"] for h in history) / len(history) if history else None
        result = TrainResult(run=self.run_dir, best_checkpoint=self.run_dir / "best.pt", best_val_cider=best["cider"],
                             epochs=len(history), seconds_per_epoch=seconds_per_epoch, parameters=parameters,
                             history=history, decoding=decoding)
        if d.main:
            manifest.outputs = {"best_checkpoint": str(result.best_checkpoint), "best_val_cider": best["cider"],
                                "best_epoch": best["epoch"], "epochs": len(history), "decoding": decoding,
                                "seconds_per_epoch": seconds_per_epoch, "parameters": parameters,
                                "sec_per_10M_params": seconds_per_epoch / (parameters / 1e7) if seconds_per_epoch else None,
                                "history": history}
            write_manifest(self.run_dir, manifest)
            progress.log(f"train [{cfg.run_name}]: done, best validation CIDEr "
                         f"{fmt(best['cider'])} at epoch {best['epoch']}, decoding with beam "
                         f"{decoding['beam_size']}; checkpoints in {self.run_dir}")
        if d.enabled:
            import torch.distributed as dist

            dist.barrier()
        return result

    @torch.no_grad()
    def _choose_decoding(self, model_cfg, bank: FeatureBank, val_refs, vocab) -> dict[str, Any]:
        """Caption the validation split with best.pt at each of ``select_beams``; keep the beam size with
        the highest CIDEr (the smaller on a tie) and write it into best.pt as its ``decoding``."""
        from fcvc_pipeline.training.checkpoint import model_from_checkpoint
        from fcvc_pipeline.inference.captioner import caption_bank
        from fcvc_pipeline.evaluation.metrics import score_captions

        best_path = self.run_dir / "best.pt"
        ckpt = load_checkpoint(best_path)
        if not self.cfg.select_beams or not val_refs:
            decoding = {"beam_size": DEFAULT_BEAM_SIZE, "length_penalty": 1.0, "chosen_on": None}
        else:
            model = model_from_checkpoint(ckpt, best_path, self.device)
            index = bank.index()
            ciders: dict[str, float] = {}
            for beam in sorted(set(self.cfg.select_beams)):
                hyps = caption_bank(model, bank, vocab, rows=[index[v] for v in sorted(val_refs)], beam_size=beam,
                                    max_len=vocab.max_len, device=self.device)
                captions = {v: vocab.decode(h.tokens) for v, h in hyps.items()}
                ciders[str(beam)] = score_captions(captions, val_refs, metrics=("cider",))["CIDEr"]
            chosen = max(ciders, key=lambda b: (ciders[b], -int(b)))
            decoding = {"beam_size": int(chosen), "length_penalty": 1.0, "chosen_on": "val",
                        "val_cider_by_beam": ciders}
            progress.log("validation CIDEr by beam size: " + ", ".join(f"{b}: {c:.3f}" for b, c in ciders.items())
                         + f" -> beam {chosen}")
        save_checkpoint(best_path, {**ckpt, "decoding": decoding})
        return decoding

    @torch.no_grad()
    def _validate(self, model, model_cfg, bank: FeatureBank, val_set, val_refs, vocab, autocast) -> dict[str, Any]:
        from fcvc_pipeline.inference.captioner import caption_bank
        from fcvc_pipeline.training.losses import caption_loss
        from fcvc_pipeline.evaluation.metrics import count_unk, score_captions

        if len(val_set) == 0:
            return {}
        model.eval()
        sums = zero_sums()
        for b in make_batches(val_set, self.cfg.batch_size, generator=None, vocab=vocab):
            with autocast:
                out = model(bank.batch(b.video_rows).to(self.device), b.inputs.to(self.device), b.video_index.to(self.device))
            accumulate(sums, caption_loss(out, b.targets.to(self.device), model_cfg))
        index = bank.index()
        hyps = caption_bank(model, bank, vocab, rows=[index[v] for v in sorted(val_refs)],
                            beam_size=self.cfg.val_beam_size, max_len=vocab.max_len, device=self.device)
        captions = {v: vocab.decode(h.tokens) for v, h in hyps.items()}
        scores = score_captions(captions, val_refs, metrics=("bleu", "cider"))
        model.train()
        averages = means(sums)
        return {"val_loss": averages["train_loss"], "val_nll": averages["train_nll"], "val_cider": scores["CIDEr"],
                "val_bleu4": scores["Bleu_4"], "val_unk": count_unk(captions.values())}
