"""The optimisation schedule: the learning rate as a pure function of the step, and the weight average."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch


# -- the schedule ----------------------------------------------------------------------------------------
def learning_rate(step: int, *, base: float, warmup: int, total: int,
                  changes: Sequence[tuple[int, int]] = ()) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine decay to 10% of it at ``total``.

    ``changes``: the run's schedule extensions, ``(at_step, new_total)`` in order (``fcvc train --resume``
    with a larger ``--epochs``/``--max-steps``). From ``at_step`` on, the rest of the decay is stretched to
    end at ``new_total``: the learning rate goes on from the value it had there (no jump) down to the same
    floor. An extension made before the decay began (during the warm-up) therefore gives exactly the
    schedule of a run started with ``new_total``, and one made after the end stays at the floor. Still a
    pure function of the step (and the recorded changes), so resuming needs no scheduler object.
    """
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * decay_progress(step, warmup, total, changes))))


def decay_progress(step: int, warmup: int, total: int, changes: Sequence[tuple[int, int]] = ()) -> float:
    """How far the cosine decay has gone at ``step`` (0 at the end of the warm-up, 1 at the end)."""
    start, done, end = warmup, 0.0, total  # the current segment: ``done`` at ``start``, 1 at ``end``

    def progress(s: int) -> float:
        return min(1.0, done + (1.0 - done) * max(0, s - start) / max(1, end - start))

    for at, new_total in changes:
        if step < at:
            break
        if at > start:
            start, done = at, progress(at)
        end = new_total
    return progress(step)


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
