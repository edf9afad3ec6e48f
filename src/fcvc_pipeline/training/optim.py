"""The parts of the training loop that are not the loop: torchrun setup, the learning-rate schedule, the
weight average, the running epoch sums and the epoch log line, and the fault-injection hook of the
resume test. ``stages/train.py`` holds the stage itself.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from fcvc_pipeline.workdir import resolve_device


# -- distributed ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str) -> tuple[Dist, torch.device]:
    """Read torchrun's environment; start the process group (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_spec)
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_spec != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    return Dist(rank=rank, world=world, local_rank=local_rank), device


def broadcast_flag(flag: bool, d: Dist, device: torch.device) -> bool:
    if not d.enabled:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


# -- the schedule ----------------------------------------------------------------------------------------
def learning_rate(step: int, *, base: float, warmup: int, total: int) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine decay to 10% of it at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress_ = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_)))


# -- the weight average -------------------------------------------------------------------------------
class WeightAverage:
    """An exponential moving average of a model's parameters (buffers are copied as they are).

    The decay ramps up as min(decay, (1 + step) / (10 + step)) so the early, random weights fade quickly;
    a pure function of the step, so resuming reproduces it exactly.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        for a, b in zip(self.model.parameters(), model.parameters()):
            a.lerp_(b.detach(), 1.0 - decay)
        for a, b in zip(self.model.buffers(), model.buffers()):
            a.copy_(b)


def fault_injection(step: int) -> None:
    """Test hook: ``FCVC_FAULT_KILL_AT_STEP=N`` kills this process (SIGKILL) right after step N."""
    at = os.environ.get("FCVC_FAULT_KILL_AT_STEP")
    if at and int(at) == step:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# -- small helpers ---------------------------------------------------------------------------------------
def zero_sums() -> dict[str, float]:
    return {"tokens": 0.0, "captions": 0.0, "nll": 0.0, "total": 0.0, "frame_penalty": 0.0, "region_penalty": 0.0}


def accumulate(sums: dict[str, float], terms) -> None:
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


def jsonl(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record, sort_keys=True) + "\n"


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def epoch_line(r: dict[str, Any]) -> str:
    parts = [f"epoch {r['epoch']}", f"loss {r['train_loss']:.3f} (nll {r['train_nll']:.3f})"]
    if "val_loss" in r:
        parts += [f"val loss {r['val_loss']:.3f}", f"val CIDEr {fmt(r['val_cider'])}", f"BLEU-4 {fmt(r['val_bleu4'])}",
                  f"<unk> {r['val_unk']}"]
    parts.append(f"{r['seconds']:.1f}s")
    return "  ".join(parts)


class NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
