"""The trainer's progress as one typed value, :class:`TrainState`: what ``last.pt`` stores beside the weights.

Resuming restores it whole, so an interrupted run continues at the same batch with the same running
sums, history and best epoch, and ends with the same numbers as an uninterrupted one. Its checkpoint
layout (keys ``position``, ``history``, ``best``, ``train_seconds``) is the one fcvc has always written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fcvc_pipeline.training.losses import LossTerms

SUM_KEYS = ("tokens", "captions", "nll", "total", "frame_penalty", "region_penalty")


def zero_sums() -> dict[str, float]:
    return dict.fromkeys(SUM_KEYS, 0.0)


def accumulate(sums: dict[str, float], terms: LossTerms) -> None:
    """Add one batch's loss terms, weighted by its target tokens."""
    n = float(terms.tokens)
    sums["tokens"] += n
    sums["nll"] += float(terms.nll.detach()) * n
    sums["total"] += float(terms.total.detach()) * n
    sums["frame_penalty"] += float(terms.frame_penalty.detach()) * n
    sums["region_penalty"] += float(terms.region_penalty.detach()) * n


def means(sums: dict[str, float]) -> dict[str, float]:
    n = max(sums["tokens"], 1.0)
    return {"train_loss": sums["total"] / n, "train_nll": sums["nll"] / n,
            "train_frame_penalty": sums["frame_penalty"] / n, "train_region_penalty": sums["region_penalty"] / n}


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs (the epoch in progress is epoch + 1)
    batch: int = 0  # batches of the epoch in progress already trained
    step: int = 0  # optimizer steps in all
    # running loss sums of the epoch in progress (+ "seconds_before": its training time before a resume)
    sums: dict[str, float] = field(default_factory=zero_sums)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per completed epoch
    best_cider: float | None = None
    best_epoch: int | None = None
    # the run's schedule extensions (``fcvc train --resume`` with a larger --epochs/--max-steps), in order; each
    # {"epoch", "step": where it happened, "changed": {setting: {"old", "new"}}, "total_steps": {"old", "new"}}
    extensions: list[dict[str, Any]] = field(default_factory=list)

    # .. checkpoint layout ...................................................................................
    def to_checkpoint(self) -> dict[str, Any]:
        return {"position": {"epoch": self.epoch, "batch": self.batch, "step": self.step, "sums": dict(self.sums)},
                "history": list(self.history), "best": {"cider": self.best_cider, "epoch": self.best_epoch},
                "train_seconds": sum(h["seconds"] for h in self.history), "extensions": list(self.extensions)}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> TrainState:
        pos, best = ckpt["position"], ckpt["best"]
        return cls(epoch=int(pos["epoch"]), batch=int(pos["batch"]), step=int(pos["step"]), sums=dict(pos["sums"]),
                   history=list(ckpt["history"]), best_cider=best["cider"], best_epoch=best["epoch"],
                   extensions=list(ckpt.get("extensions", [])))  # absent before extensions existed

    # .. derived ...............................................................................................
    def schedule_changes(self) -> list[tuple[int, int]]:
        """The extensions that changed the learning-rate schedule's total, as ``optim.learning_rate`` takes them."""
        return [(e["step"], e["total_steps"]["new"]) for e in self.extensions
                if e["total_steps"]["new"] != e["total_steps"]["old"]]

    def initial_total_steps(self, current: int) -> int:
        """The schedule's total before the first extension (``current`` when the run was never extended)."""
        return self.extensions[0]["total_steps"]["old"] if self.extensions else current

    def patience_start(self) -> int | None:
        """The epoch early stopping counts from: the best epoch, or the last extension when that came later
        (extending a run resets the patience counter). None without validation: no early stopping."""
        if self.best_epoch is None:
            return None
        return max(self.best_epoch, self.extensions[-1]["epoch"] if self.extensions else 0)

    @property
    def seconds_per_epoch(self) -> float | None:
        return sum(h["seconds"] for h in self.history) / len(self.history) if self.history else None


def jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def epoch_line(r: dict[str, Any]) -> str:
    if "train_reward" in r:  # self-critical training
        parts = [f"epoch {r['epoch']}", f"reward {r['train_reward']:.3f} (baseline {r['train_baseline']:.3f}, "
                 f"{100 * r['train_positive_advantage']:.0f}% above it, {r['train_sample_length']:.1f} words)"]
    else:
        parts = [f"epoch {r['epoch']}", f"loss {r['train_loss']:.3f} (nll {r['train_nll']:.3f})"]
    if "val_loss" in r:
        parts += [f"val loss {r['val_loss']:.3f}", f"val CIDEr {fmt(r['val_cider'])}", f"BLEU-4 {fmt(r['val_bleu4'])}",
                  f"<unk> {r['val_unk']}"]
    parts.append(f"{r['seconds']:.1f}s")
    return "  ".join(parts)
