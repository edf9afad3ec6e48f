"""The optimisation schedule: the learning rate as a pure function of the step, and the weight average."""

from __future__ import annotations

import copy
import math

import torch


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
