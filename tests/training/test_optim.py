"""The learning-rate schedule and the weight average."""

import torch

from fcvc_pipeline.training.optim import WeightAverage


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
