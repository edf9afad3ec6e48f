"""The learning-rate schedule and the weight average."""

import math

import pytest
import torch

from fcvc_pipeline.training.optim import WeightAverage, decay_progress, learning_rate


def test_weight_average_follows_the_ramped_decay():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model, step=0)  # decay min(0.5, 1/10) = 0.1: 0.1 * 1 + 0.9 * 3
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 2.8))
    ema.update(model, step=100)  # decay 0.5: 0.5 * 2.8 + 0.5 * 3
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 2.9))
    assert not any(p.requires_grad for p in ema.model.parameters())


# -- the schedule and its extensions ----------------------------------------------------------------------
def _cosine(step, base, warmup, total):  # the schedule as it was before extensions existed
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def test_without_extensions_the_schedule_is_unchanged_bit_for_bit():
    for warmup, total in ((4, 20), (50, 5), (3, 3), (0, 7)):
        assert all(learning_rate(s, base=5e-4, warmup=warmup, total=total) == _cosine(s, 5e-4, warmup, total)
                   for s in range(40))


def test_an_extension_stretches_the_rest_of_the_decay_from_where_it_is():
    base, warmup = 1.0, 4
    old = [learning_rate(s, base=base, warmup=warmup, total=20) for s in range(30)]
    new = [learning_rate(s, base=base, warmup=warmup, total=20, changes=[(12, 40)]) for s in range(45)]
    assert new[:13] == old[:13]  # up to and at the change: the old schedule (no jump)
    assert all(a >= b for a, b in zip(new[12:], new[13:]))  # then down, more slowly ...
    assert new[16] > old[16] and new[40] == pytest.approx(0.1 * base) and new[44] == new[40]  # ... to the same floor
    # a second extension goes on from the stretched schedule
    twice = [learning_rate(s, base=base, warmup=warmup, total=20, changes=[(12, 40), (30, 60)]) for s in range(61)]
    assert twice[:31] == new[:31] and twice[44] > new[44] and twice[60] == pytest.approx(0.1 * base)


def test_an_extension_during_the_warm_up_is_the_schedule_of_the_new_total():
    for at in (0, 3, 4):  # before or at the end of the warm-up: nothing has decayed yet
        assert all(learning_rate(s, base=1.0, warmup=4, total=10, changes=[(at, 30)])
                   == learning_rate(s, base=1.0, warmup=4, total=30) for s in range(35))


def test_an_extension_after_the_end_stays_at_the_floor():
    assert {learning_rate(s, base=1.0, warmup=2, total=10, changes=[(10, 30)]) for s in range(10, 35)} == {
        learning_rate(10, base=1.0, warmup=2, total=10)}
    assert decay_progress(25, 2, 10, [(10, 30)]) == 1.0
