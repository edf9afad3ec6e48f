"""The training engine: a :class:`Trainer` over a :class:`~fcvc_pipeline.training.state.TrainState`.

The loop in one paragraph: features are read from the store once into a bank (onto the GPU when they fit;
under torchrun one memory-mapped copy per machine) or, with ``--features stream``, each batch's videos are
read ahead by DataLoader workers (``features/bank.py``: the same numbers either way); each epoch
shuffles the training *videos* with a generator seeded by (seed, epoch) and packs all captions of a video
into the same batch, so the video is encoded once; AdamW with linear warm-up and cosine decay (a pure
function of the global step, so resuming needs no scheduler object), gradient clipping, the Eq. 7 loss with
its three terms logged (label smoothing on the NLL term by default), bf16 autocast where asked, and an
exponential moving average of the weights. After each epoch the averaged weights are validated
(:meth:`Trainer.evaluate`): validation loss, greedy validation captions scored with BLEU-4 and CIDEr, their
``<unk>`` count; ``best.pt`` follows validation CIDEr, ``last.pt`` is written after it (and every
``checkpoint_every`` steps), then ``metrics.jsonl``. When training ends, ``best.pt`` captions the
validation split at each beam size of ``select_beams`` and keeps the best as the run's decoding.
:meth:`Trainer.restore` puts back model, average, optimizer, RNG and the whole state, so an interrupted run
ends with the same numbers as an uninterrupted one (bit for bit on CPU). :meth:`Trainer.extend` then lets a
restored run train longer (a larger ``epochs``/``max_steps``): the extension is recorded in the state, the
cosine decay is stretched from the current step to the new end (``optim.learning_rate``) and the patience
counter restarts there. With ``tensorboard`` the epoch records also go to ``tb/`` (``training/tensorboard.py``).
With ``scst`` the run starts from another run's ``best.pt`` (validated as epoch 0) and each step is the
self-critical policy gradient of ``training/scst.py`` instead of Eq. 7 (:meth:`Trainer.scst_loss`).

The stage (``stages/train.py``) decides whether a run is fresh, resumed, extended or up to date; this module
trains.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import atomic_write_text
from fcvc_pipeline.captions.vocabulary import CaptionRow, Vocabulary, references_by_video
from fcvc_pipeline.devices import resolve_precision
from fcvc_pipeline.errors import MismatchError, StoppedBySignal
from fcvc_pipeline.evaluation.cider import CiderD
from fcvc_pipeline.evaluation.metrics import count_unk
from fcvc_pipeline.features.bank import (
    FeatureBank,
    StoreBank,
    load_feature_bank,
    plan_features,
    shared_feature_bank,
)
from fcvc_pipeline.features.settings import weights_identity
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.inference.captioner import caption_and_score
from fcvc_pipeline.inference.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fcvc_pipeline.inference.decoding import sample
from fcvc_pipeline.inference.options import DecodingOptions
from fcvc_pipeline.models import CaptionModel, ModelConfig, VideoBatch, build_model
from fcvc_pipeline.training.batches import (
    Batch,
    CaptionSet,
    build_caption_set,
    count_batches,
    make_batches,
    without_videos,
)
from fcvc_pipeline.training.config import CPU_BF16_BY_DEFAULT, TrainConfig, option_name
from fcvc_pipeline.training.distributed import Dist, barrier, broadcast_flag
from fcvc_pipeline.training.losses import LossTerms, caption_loss
from fcvc_pipeline.training.optim import WeightAverage, learning_rate
from fcvc_pipeline.training.scst import (
    Rewards,
    ScstStep,
    baselines,
    pad_cat,
    policy_inputs,
    policy_loss,
    reward_references,
    scst_accumulate,
    scst_means,
    scst_zero_sums,
    slice_output,
)
from fcvc_pipeline.training.state import TrainState, accumulate, epoch_line, jsonl, means, zero_sums
from fcvc_pipeline.training.tensorboard import EpochScalars

FAULT_ENV = "FCVC_FAULT_KILL_AT_STEP"  # test hook: SIGKILL this process right after that optimizer step
RESUME_HINT = "rerun the same command with --resume added; it continues exactly where this one stopped"


@dataclass
class TrainData:
    """What a run trains and validates on, in memory."""

    vocab: Vocabulary
    store: FeatureStore
    store_path: Path
    bank: FeatureBank | StoreBank  # StoreBank: streamed (``--features stream``)
    train_ids: list[str]
    val_ids: list[str]
    train_set: CaptionSet
    val_set: CaptionSet
    val_refs: dict[str, list[str]]
    train_rows: list[CaptionRow]  # the training captions with features (self-critical training's references)


def load_train_data(vocab: Vocabulary, rows: list[CaptionRow], store: FeatureStore, store_path: Path,
                    usable: list[str], model_cfg: ModelConfig, device: torch.device, main: bool, *,
                    features: str = "memory", memory_budget: str | None = None, dist: Dist | None = None,
                    cache_dir: Path | None = None, features_fingerprint: str | None = None) -> TrainData:
    """The run's captions and features. ``features``: memory | stream | auto (``plan_features`` against
    ``memory_budget``); in memory under torchrun with several processes on this machine, one
    memory-mapped bank under ``cache_dir`` is shared by all of them, keyed by ``features_fingerprint``
    (the store's ``content_fingerprint`` of the train + val videos, which the stage has already computed)."""
    train_ids = sorted({r.video_id for r in rows if r.split == "train"} & set(usable))
    val_ids = sorted({r.video_id for r in rows if r.split == "val"} & set(usable))
    if not val_ids and main:
        progress.warn("no validation video has captions and features: best.pt will follow the last epoch, "
                      "and early stopping is off")
    if not train_ids:
        raise MismatchError("no training video has both captions and features",
                            hint="check the split column of the annotations and run `fcvc extract` on the training videos")
    ids, regions = train_ids + val_ids, model_cfg.uses_regions
    mode, why, layout = plan_features(store, ids, regions=regions, mode=features, budget=memory_budget)
    if main:
        progress.log(f"features: {mode} ({why})")
    d = dist or Dist()
    bank: FeatureBank | StoreBank
    if mode == "stream":
        bank = StoreBank(store_path, ids, regions=regions, layout=layout)
    elif d.local_world > 1 and cache_dir is not None:
        bank = shared_feature_bank(store, ids, regions=regions, cache_dir=cache_dir, builder=d.local_rank == 0,
                                   wait=lambda: barrier(d), layout=layout, content=features_fingerprint)
    else:
        bank = load_feature_bank(store, ids, regions=regions, layout=layout)
    if mode == "memory" and device.type == "cuda" and bank.nbytes() < 0.5 * torch.cuda.mem_get_info(device)[0]:
        bank = bank.to(device)
    index = bank.index()
    return TrainData(vocab=vocab, store=store, store_path=store_path, bank=bank, train_ids=train_ids, val_ids=val_ids,
                     train_set=build_caption_set([r for r in rows if r.split == "train"], vocab, index),
                     val_set=build_caption_set([r for r in rows if r.split == "val"], vocab, index),
                     val_refs=references_by_video(r for r in rows if r.split == "val" and r.video_id in index),
                     train_rows=[r for r in rows if r.split == "train" and r.video_id in index])


class Trainer:
    """Trains one run: optional :meth:`restore` (and :meth:`extend`), then ``fit()`` = :meth:`train_epoch`
    until done, :meth:`choose_decoding`.

    ``settings``: what the run depends on (its manifest's key: stage, version, config, inputs), written into
    last.pt so that the stage can tell what a later ``--resume`` changes; ``manifest_key`` is its fingerprint.
    """

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, data: TrainData, run_dir: Path, *,
                 dist: Dist, device: torch.device, manifest_key: str, settings: dict[str, Any] | None = None,
                 init: dict[str, Any] | None = None):
        self.cfg, self.model_cfg, self.data, self.run_dir = cfg, model_cfg, data, run_dir
        self.dist, self.device, self.manifest_key, self.settings = dist, device, manifest_key, settings
        torch.manual_seed(cfg.seed)
        self.model: CaptionModel = build_model(model_cfg).to(device)
        if init is not None:  # self-critical training starts from another run's best.pt (checked by the stage)
            self.model.load_state_dict(init["state_dict"])
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.base_lr = cfg.scst_lr if cfg.scst else cfg.lr
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.base_lr, weight_decay=cfg.weight_decay)
        self.ema = WeightAverage(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.rewards: Rewards | None = None
        self.sampler: torch.Generator | None = None
        if cfg.scst:
            self.rewards = self.scst_rewards()
            self.sampler = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + 3)
        self.per_video = cfg.scst_samples if cfg.scst else None
        self.batches_per_epoch = count_batches(data.train_set, cfg.batch_size, self.per_video) // dist.world
        self.total_steps = self.schedule_total(cfg.epochs, cfg.max_steps)
        self.state = TrainState()
        self.restored = False
        self.scalars: EpochScalars | None = None
        self._stop_signal: list[int] = []  # filled by SIGTERM/SIGINT while fit() runs
        self.net: torch.nn.Module = self.model
        use_bf16 = resolve_precision(cfg.precision, device, cpu_bf16_by_default=CPU_BF16_BY_DEFAULT) == "bf16"
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    def schedule_total(self, epochs: int, max_steps: int | None) -> int:
        """The optimizer steps the learning-rate schedule spans for these settings."""
        return max_steps or epochs * max(1, self.batches_per_epoch)

    # .. the run .............................................................................................
    def fit(self) -> tuple[TrainState, DecodingOptions | None]:
        """Train to the end (from the restored state, if :meth:`restore` was called); returns the final state
        and, on the main rank, the decoding chosen on validation.

        SIGTERM (what cluster schedulers send before they kill) and SIGINT stop training after the current
        step: last.pt is written at that step and :class:`StoppedBySignal` says how to resume.
        """
        with _stop_on_signals() as stop_signal:
            self._stop_signal = stop_signal
            if self.cfg.tensorboard and self.dist.main:
                self.scalars = EpochScalars(self.run_dir, self.state.history)
            try:
                return self._fit()
            finally:
                if self.scalars is not None:
                    self.scalars.close()

    def _fit(self) -> tuple[TrainState, DecodingOptions | None]:
        if not self.restored:
            torch.manual_seed(self.cfg.seed + 1)  # dropout stream, independent of the initialisation
        if self.dist.enabled:
            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.dist.main:
            d = self.data
            progress.log(f"train [{self.cfg.run_name}]: {self.cfg.model}, {self.parameters / 1e6:.2f}M parameters, "
                         f"{len(d.train_ids)} train / {len(d.val_ids)} val videos, {len(d.train_set)} captions, "
                         f"{self.batches_per_epoch} batches per epoch on {self.device}")
        if self.cfg.scst and not self.restored and self.dist.main:
            self.validate_start()
        # a run resumed after it had already stopped (early stop or --max-steps) goes straight to the end
        stop = (self.state.batch == 0 and self.out_of_patience()) or self.reached_max_steps()
        while self.state.epoch < self.cfg.epochs and not stop:
            stop = self.train_epoch()
        self.check_stop_signal()  # one that came during the last validation: last.pt is already written
        decoding = self.choose_decoding() if self.dist.main else None
        barrier(self.dist)
        return self.state, decoding

    def out_of_patience(self) -> bool:
        """Early stopping: ``patience`` epochs have passed without a better validation CIDEr (counted from
        the last extension when that came later)."""
        start = self.state.patience_start()
        return start is not None and self.state.epoch - start >= self.cfg.patience

    def reached_max_steps(self) -> bool:
        return self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps

    # .. one step, one epoch ...................................................................................
    def train_step(self, b: Batch, videos: VideoBatch | None = None) -> LossTerms | ScstStep:
        """One optimizer step on batch ``b`` (``videos``: its features when already read, e.g. prefetched)."""
        cfg, s = self.cfg, self.state
        lr = learning_rate(s.step, base=self.base_lr, warmup=cfg.warmup_steps,
                           total=s.initial_total_steps(self.total_steps), changes=s.schedule_changes())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if videos is None:
            videos = self.data.bank.batch(b.video_rows)
        videos = videos.to(self.device)
        terms = self.scst_loss(b, videos) if cfg.scst else self.xe_loss(b, videos)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, self.state.step)
        self.state.step += 1
        return terms

    def xe_loss(self, b: Batch, videos: VideoBatch) -> LossTerms:
        """Eq. 7 on the batch's reference captions (teacher forcing)."""
        dev = self.device
        with self.autocast:
            out = self.net(videos, b.inputs.to(dev), b.video_index.to(dev))
        return caption_loss(out, b.targets.to(dev), self.model_cfg, label_smoothing=self.cfg.label_smoothing)

    # .. self-critical training (training/scst.py) ............................................................
    def scst_rewards(self) -> Rewards:
        """The reward over the training videos' references; videos with none left after normalisation are
        taken out of the training set and listed."""
        d = self.data
        kept, empty = CiderD.usable(reward_references(d.train_rows))
        if empty:
            if self.dist.main:
                progress.warn(f"self-critical training skips {len(empty)} training video(s) whose references have "
                              f"no words left after normalisation: {', '.join(empty[:10])}"
                              + (" ..." if len(empty) > 10 else ""))
            index = d.bank.index()
            d.train_set = without_videos(d.train_set, {index[v] for v in empty})
        if not kept:
            raise MismatchError("no training video has a reference caption with words in it: nothing to reward")
        return Rewards(kept, d.vocab)

    def scst_loss(self, b: Batch, videos: VideoBatch) -> ScstStep:
        """Sample, reward, baseline, and the policy-gradient loss (+ the cross-entropy term when weighted)."""
        cfg, dev, d = self.cfg, self.device, self.data
        assert self.rewards is not None and self.sampler is not None
        S, max_len = cfg.scst_samples, d.vocab.max_len
        ids = [d.bank.video_ids[r] for r in b.video_rows.tolist()]
        with self.autocast:
            samples = sample(self.model, videos, samples=S, max_len=max_len, generator=self.sampler)
        rewards = self.rewards(ids, samples)
        greedy_rewards = None
        if cfg.scst_baseline == "greedy":
            with self.autocast:
                greedy_rewards = self.rewards.greedy_rewards(self.model, videos, ids, max_len)
        base = baselines(rewards, S, cfg.scst_baseline, greedy_rewards)
        advantage = torch.tensor(rewards - base, dtype=torch.float32, device=dev)
        inputs, targets, mask = policy_inputs(samples, self.model_cfg)
        rows, width = inputs.shape
        video_index = samples.video_index
        xe = cfg.scst_xe_weight > 0
        if xe:  # the reference captions ride in the same forward
            inputs = pad_cat(inputs, b.inputs.to(dev), self.model_cfg.pad_id)
            video_index = torch.cat([video_index, b.video_index.to(dev)])
        self.model.eval()  # the policy that drew the samples: dropout off
        try:
            with self.autocast:
                out = self.net(videos, inputs, video_index)
        finally:
            self.model.train()
        pg = policy_loss(slice_output(out, slice(0, rows), width), targets, mask, advantage, self.model_cfg)
        step = ScstStep(total=pg, pg_loss=float(pg.detach()), rewards=rewards, baselines=base,
                        sample_tokens=int(samples.lengths.sum()))
        if xe:
            terms = caption_loss(slice_output(out, slice(rows, None), b.inputs.shape[1]), b.targets.to(dev),
                                 self.model_cfg, label_smoothing=cfg.label_smoothing)
            step.total = pg + cfg.scst_xe_weight * terms.total
            step.nll, step.tokens = float(terms.nll.detach()), terms.tokens
        return step

    def validate_start(self) -> None:
        """Self-critical training: the starting weights are "epoch 0". Their validation CIDEr is the one to beat
        and they are best.pt until an epoch beats them, so SCST never leaves a run worse than it found it on
        validation; early stopping counts from there too."""
        s = self.state
        scores = self.evaluate(self.model)
        if scores.get("val_cider") is None:
            return  # no validation split: best.pt follows the last epoch, as in any run
        s.best_cider, s.best_epoch = scores["val_cider"], 0
        self.save(self.run_dir / "best.pt", weights=self.model)
        progress.log(f"epoch 0 (the --init weights): val CIDEr {scores['val_cider']:.3f}  BLEU-4 {scores['val_bleu4']:.3f}")

    def zero_sums(self) -> dict[str, float]:
        return scst_zero_sums() if self.cfg.scst else zero_sums()

    def accumulate(self, step: LossTerms | ScstStep) -> None:
        if isinstance(step, ScstStep):
            scst_accumulate(self.state.sums, step)
        else:
            accumulate(self.state.sums, step)

    def means(self, sums: dict[str, float]) -> dict[str, Any]:
        return scst_means(sums) if self.cfg.scst else means(sums)

    def epoch_batches(self, epoch: int) -> list[Batch]:
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        batches = make_batches(self.data.train_set, self.cfg.batch_size, generator=gen, vocab=self.data.vocab,
                               per_video=self.per_video)
        if self.dist.enabled:
            d = self.dist
            batches = batches[: len(batches) - len(batches) % d.world][d.rank::d.world]
        return batches

    def train_epoch(self) -> bool:
        """Train the epoch in progress from where the state stands; validate; save. True: stop training."""
        cfg, s, main = self.cfg, self.state, self.dist.main
        epoch = s.epoch
        batches = self.epoch_batches(epoch)
        if not s.batch:
            s.sums = self.zero_sums()
        self.model.train()
        t0 = time.perf_counter()
        stop = False
        bar = progress.bar(total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch") if main else None
        if bar is not None:
            bar.update(s.batch)
        features = self.batch_features(batches, s.batch)
        for i in range(s.batch, len(batches)):
            terms = self.train_step(batches[i], next(features))
            self.accumulate(terms)
            if bar is not None:
                if isinstance(terms, ScstStep):
                    bar.set_postfix(reward=f"{terms.rewards.mean():.3f}")
                else:
                    bar.set_postfix(loss=f"{terms.total.item():.3f}")
                bar.update(1)
            last_of_run = self.reached_max_steps()
            if cfg.checkpoint_every and s.step % cfg.checkpoint_every == 0 and i + 1 < len(batches) \
                    and not last_of_run and main:
                elapsed = s.sums.get("seconds_before", 0.0) + time.perf_counter() - t0
                s.batch = i + 1
                self.save(self.run_dir / "last.pt", position=self.mid_epoch_state(epoch, i + 1, elapsed))
            fault_injection(s.step)
            if self._stop_signal:
                self.stop_here(epoch, i + 1, s.sums.get("seconds_before", 0.0) + time.perf_counter() - t0)
            if last_of_run:
                stop = True
                break
        if bar is not None:
            bar.close()
        del features  # streamed: the loader workers and the batches they read ahead go before validation
        seconds = time.perf_counter() - t0 + s.sums.get("seconds_before", 0.0)
        record = {"epoch": epoch + 1, "step": s.step, "lr": self.optimizer.param_groups[0]["lr"],
                  **self.means(s.sums), "seconds": seconds, "sec_per_10M_params": seconds / (self.parameters / 1e7)}
        s.epoch, s.batch, s.sums = epoch + 1, 0, self.zero_sums()
        if main:
            stop = self.end_of_epoch(record) or stop
        return broadcast_flag(stop, self.dist, self.device)

    def batch_features(self, batches: list[Batch], start: int) -> Iterator[VideoBatch]:
        """The features of ``batches[start:]`` in order: from the bank, or (streamed) read ahead from the store by
        ``loader_workers`` DataLoader processes, at most two batches per worker in flight. Which batches and in
        what order is fixed by the epoch's plan, so streaming changes no number and resumes at ``start``."""
        bank = self.data.bank
        if not isinstance(bank, StoreBank):
            return (bank.batch(b.video_rows) for b in batches[start:])
        workers = self.cfg.loader_workers
        loader = DataLoader(_BatchReads(bank, [b.video_rows for b in batches[start:]]), batch_size=None,
                            num_workers=workers, prefetch_factor=2 if workers else None,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator())  # its seed draw must not touch the dropout stream
        return iter(loader)

    def mid_epoch_state(self, epoch: int, batch: int, elapsed: float) -> TrainState:
        """The resume state after ``batch`` batches of epoch ``epoch`` (``elapsed``: its training seconds)."""
        s = self.state
        return TrainState(epoch=epoch, batch=batch, step=s.step, sums={**s.sums, "seconds_before": elapsed},
                          history=s.history, best_cider=s.best_cider, best_epoch=s.best_epoch,
                          extensions=s.extensions)

    def stop_here(self, epoch: int, batch: int, elapsed: float) -> None:
        """A stop signal arrived: write last.pt at the current step (main rank), then raise StoppedBySignal."""
        s, signum = self.state, self._stop_signal[0]
        if self.dist.main:
            self.save(self.run_dir / "last.pt", position=self.mid_epoch_state(epoch, batch, elapsed))
        name = signal.Signals(signum).name
        raise StoppedBySignal(signum, f"{name}: training of '{self.cfg.run_name}' stopped at epoch {epoch + 1}, "
                                      f"batch {batch}, step {s.step}; {self.run_dir / 'last.pt'} keeps it",
                              hint=RESUME_HINT)

    def check_stop_signal(self) -> None:
        """Between training and choosing the decoding (last.pt is written at the end of each epoch): a stop
        signal ends the run here; --resume goes straight to choosing the decoding."""
        if self._stop_signal:
            signum, s = self._stop_signal[0], self.state
            raise StoppedBySignal(signum, f"{signal.Signals(signum).name}: training of '{self.cfg.run_name}' stopped "
                                          f"after epoch {s.epoch}, step {s.step}, before choosing the beam size; "
                                          f"{self.run_dir / 'last.pt'} keeps it", hint=RESUME_HINT)

    def end_of_epoch(self, record: dict[str, Any]) -> bool:
        """Validate, keep best.pt, write last.pt and metrics.jsonl (main rank). True: out of patience."""
        s = self.state
        evaluated = self.ema.model if self.ema is not None else self.model
        record.update(self.evaluate(evaluated))
        improved = record.get("val_cider") is not None and (s.best_cider is None or record["val_cider"] > s.best_cider)
        s.history.append(record)
        if improved or record.get("val_cider") is None:  # no validation split: the latest is best
            s.best_cider, s.best_epoch = record.get("val_cider"), record["epoch"]
            self.save(self.run_dir / "best.pt", weights=evaluated)
        stop = False
        if self.out_of_patience():
            progress.log(f"no better validation CIDEr for {self.cfg.patience} epochs: stopping")
            stop = True
        self.save(self.run_dir / "last.pt", position=s)
        atomic_write_text(self.run_dir / "metrics.jsonl", jsonl(s.history))
        if self.scalars is not None:
            self.scalars.write(record)
        progress.log(epoch_line(record))
        return stop

    # .. validation ..........................................................................................
    @torch.no_grad()
    def evaluate(self, model: CaptionModel) -> dict[str, Any]:
        """Validation loss and greedy validation captions scored with BLEU-4 and CIDEr."""
        d = self.data
        if len(d.val_set) == 0:
            return {}
        model.eval()
        sums = zero_sums()
        for b in make_batches(d.val_set, self.cfg.batch_size, generator=None, vocab=d.vocab):
            with self.autocast:
                out = model(d.bank.batch(b.video_rows).to(self.device), b.inputs.to(self.device),
                            b.video_index.to(self.device))
            accumulate(sums, caption_loss(out, b.targets.to(self.device), self.model_cfg))
        options = DecodingOptions(beam_size=self.cfg.val_beam_size, max_len=d.vocab.max_len)
        captions, scores = caption_and_score(model, d.bank, d.vocab, d.val_refs, options, metrics=("bleu", "cider"),
                                             device=self.device)
        model.train()
        averages = means(sums)
        return {"val_loss": averages["train_loss"], "val_nll": averages["train_nll"], "val_cider": scores["CIDEr"],
                "val_bleu4": scores["Bleu_4"], "val_unk": count_unk(captions.values())}

    @torch.no_grad()
    def choose_decoding(self) -> DecodingOptions:
        """Caption the validation split with best.pt at each of ``select_beams``; keep the beam size with
        the highest CIDEr (the smaller on a tie) and write it into best.pt as its ``decoding``."""
        d = self.data
        best_path = self.run_dir / "best.pt"
        ckpt = load_checkpoint(best_path)
        if not self.cfg.select_beams or not d.val_refs:
            decoding = DecodingOptions()
        else:
            model = model_from_checkpoint(ckpt, best_path, self.device)
            ciders: dict[str, float] = {}
            for beam in sorted(set(self.cfg.select_beams)):
                self.check_stop_signal()
                options = DecodingOptions(beam_size=beam, max_len=d.vocab.max_len)
                _, scores = caption_and_score(model, d.bank, d.vocab, d.val_refs, options, metrics=("cider",),
                                              device=self.device)
                ciders[str(beam)] = scores["CIDEr"]
            chosen = max(ciders, key=lambda b: (ciders[b], -int(b)))
            decoding = DecodingOptions(beam_size=int(chosen), chosen_on="val", val_cider_by_beam=ciders)
            progress.log("validation CIDEr by beam size: " + ", ".join(f"{b}: {c:.3f}" for b, c in ciders.items())
                         + f" -> beam {chosen}")
        save_checkpoint(best_path, {**ckpt, "decoding": decoding.to_json()})
        return decoding

    # .. checkpoints ...........................................................................................
    def identity(self) -> dict[str, Any]:
        """What every checkpoint of the run says about where it came from."""
        d = self.data
        return {"model_config": self.model_cfg.to_json(), "vocab": d.vocab.to_json(),
                "vocab_fingerprint": d.vocab.fingerprint(), "store_settings_fingerprint": d.store.settings_fingerprint,
                "store_path": str(d.store_path), "manifest_key": self.manifest_key,
                "features_identity": weights_identity(d.store.settings)}

    def save(self, path: Path, *, position: TrainState | None = None, weights: torch.nn.Module | None = None) -> None:
        """last.pt (``position``: the resume state with optimizer, average and RNG) or best.pt (``weights``:
        the evaluated weights alone)."""
        payload = {**self.identity(),
                   "rng": {"torch": torch.get_rng_state(),
                           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                   **({"sample": self.sampler.get_state()} if self.sampler is not None else {})}}
        if position is not None:
            payload.update(settings=self.settings, state_dict=self.model.state_dict(),
                           ema_state_dict=self.ema.model.state_dict() if self.ema is not None else None,
                           optimizer=self.optimizer.state_dict(), **position.to_checkpoint())
        else:
            assert weights is not None
            payload.update(state_dict=weights.state_dict(), ema_state_dict=None, optimizer={}, position={},
                           history=[], best={"cider": self.state.best_cider, "epoch": self.state.best_epoch},
                           train_seconds=sum(h["seconds"] for h in self.state.history))
        save_checkpoint(path, payload)

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a last.pt (the stage has checked that it was written with these settings and data,
        or with a schedule that :meth:`extend` then lengthens)."""
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None:
            self.ema.model.load_state_dict(ckpt["ema_state_dict"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        if self.sampler is not None:  # self-critical training: the sampling stream goes on where it was
            if ckpt["rng"].get("sample") is None:
                raise MismatchError("this last.pt has no sampling state: it was not written by self-critical training",
                                    hint="--force to start the run over")
            self.sampler.set_state(ckpt["rng"]["sample"])
        self.state = TrainState.from_checkpoint(ckpt)
        self.restored = True
        if self.dist.main:
            s = self.state
            progress.log(f"resuming '{self.cfg.run_name}' at epoch {s.epoch + 1}, batch {s.batch}, step {s.step}")

    def extend(self, changed: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
        """Record an extension of the restored run (``changed``: setting -> (old, new), epochs/max_steps
        grown) at its current position; returns the record. From here the schedule's decay is stretched to
        the new total and early stopping counts its patience afresh."""
        s, old = self.state, {k: v[0] for k, v in changed.items()}
        old_total = self.schedule_total(old.get("epochs", self.cfg.epochs), old.get("max_steps", self.cfg.max_steps))
        if s.extensions:  # the total in force is the one the last extension set
            old_total = s.extensions[-1]["total_steps"]["new"]
        record = {"epoch": s.epoch, "batch": s.batch, "step": s.step,
                  "changed": {k: {"old": a, "new": b} for k, (a, b) in changed.items()},
                  "total_steps": {"old": old_total, "new": self.total_steps}}
        s.extensions.append(record)
        if self.dist.main:
            where = f"after epoch {s.epoch}" if not s.batch else f"in epoch {s.epoch + 1} at batch {s.batch}"
            progress.log(f"extending '{self.cfg.run_name}' {where} (step {s.step}): "
                         + ", ".join(f"{option_name(k)} {a} -> {b}" for k, (a, b) in changed.items())
                         + f"; the schedule now spans {self.total_steps} steps (was {old_total})")
        return record


class _BatchReads(Dataset):
    """Item i: the VideoBatch of the i-th batch's videos, read from the store (in a DataLoader worker)."""

    def __init__(self, bank: StoreBank, rows: list[torch.Tensor]):
        self.bank, self.rows = bank, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> VideoBatch:
        return self.bank.batch(self.rows[i])


@contextlib.contextmanager
def _stop_on_signals():
    """While training: SIGTERM and SIGINT only record themselves (in the yielded list), so the loop can stop
    after the current step with its work saved. Elsewhere (not the main thread) nothing is installed."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def fault_injection(step: int) -> None:
    """Test hook: ``FCVC_FAULT_KILL_AT_STEP=N`` kills this process (SIGKILL) right after step N."""
    at = os.environ.get(FAULT_ENV)
    if at and int(at) == step:
        os.kill(os.getpid(), signal.SIGKILL)
