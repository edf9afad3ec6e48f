import math

import pytest
import torch

from fcvc_pipeline.errors import MismatchError
from fcvc_pipeline.models import ModelConfig, ModelOutput
from fcvc_pipeline.training.losses import caption_loss


def _cfg(**kw):
    return ModelConfig(model="fcvc-cf-ia", vocab_size=4, attn_lambda=0.5, attn_mu=0.25, **kw)


def test_loss_terms_equal_a_hand_computed_example():
    """Two captions, V = 4, T = 3; caption 2 has one pad step.

    logits are 0 except a 2*ln2 at the target of some steps, so p(target) is either 1/4 (all zeros) or
    4/7 (exp(2 ln2) = 4 against three ones):
      caption 1: targets 3, 2, 2 with boosts at steps 1 and 2 -> -ln(4/7) -ln(4/7) -ln(1/4)
      caption 2: targets 3, 2, pad with a boost at step 1      -> -ln(4/7) -ln(1/4)
      nll = (3 ln(7/4) + 2 ln 4) / 5
    frame weights (N = 2): caption 1 steps sum to (1.5, 1.5); caption 2 (pad step excluded) to (1.0, 1.0)
      frame penalty = ((0.5^2 + 0.5^2) + (0 + 0)) / 2 = 0.25
    region weights (N = 1, M = 2): caption 1 steps sum to (3, 0); caption 2 (two steps) to (1, 1)
      region penalty = ((2^2 + 1^2) + 0) / 2 = 2.5
    """
    pad = 0
    targets = torch.tensor([[3, 2, 2], [3, 2, pad]])
    logits = torch.zeros(2, 3, 4)
    boost = 2 * math.log(2)
    logits[0, 0, 3] = boost
    logits[0, 1, 2] = boost
    logits[1, 0, 3] = boost
    frame_attn = torch.tensor([[[0.5, 0.5], [0.25, 0.75], [0.75, 0.25]],
                               [[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]]])  # last step of caption 2 is pad
    region_attn = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 0.0]]],
                                [[[0.0, 1.0]], [[1.0, 0.0]], [[0.0, 1.0]]]])
    terms = caption_loss(ModelOutput(logits, frame_attn, region_attn), targets, _cfg())
    nll = (3 * math.log(7 / 4) + 2 * math.log(4)) / 5
    assert terms.tokens == 5
    assert terms.nll.item() == pytest.approx(nll, rel=1e-6)
    assert terms.frame_penalty.item() == pytest.approx(0.25, rel=1e-6)
    assert terms.region_penalty.item() == pytest.approx(2.5, rel=1e-6)
    assert terms.total.item() == pytest.approx(nll + 0.5 * 0.25 + 0.25 * 2.5, rel=1e-6)


def test_models_without_attention_have_zero_penalties():
    targets = torch.tensor([[3, 2]])
    terms = caption_loss(ModelOutput(torch.randn(1, 2, 4)), targets, _cfg())
    assert terms.frame_penalty.item() == 0 and terms.region_penalty.item() == 0
    assert terms.total.item() == pytest.approx(terms.nll.item())


def test_gradient_flows_into_the_attention_weights():
    frame_attn = torch.full((1, 2, 3), 1 / 3, requires_grad=True)
    out = ModelOutput(torch.zeros(1, 2, 4, requires_grad=True), frame_attn, None)
    caption_loss(out, torch.tensor([[3, 2]]), _cfg()).total.backward()
    assert frame_attn.grad is not None and frame_attn.grad.abs().sum() > 0


def test_bf16_logits_are_scored_in_float32():
    logits = torch.randn(2, 3, 4)
    targets = torch.tensor([[3, 2, 0], [1, 3, 2]])
    a = caption_loss(ModelOutput(logits), targets, _cfg())
    b = caption_loss(ModelOutput(logits.bfloat16()), targets, _cfg())
    assert b.total.dtype == torch.float32
    assert b.nll.item() == pytest.approx(a.nll.item(), abs=0.05)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(MismatchError, match="targets"):
        caption_loss(ModelOutput(torch.zeros(2, 3, 4)), torch.zeros(2, 4, dtype=torch.long), _cfg())


def test_label_smoothing_matches_torch_and_keeps_plain_nll():
    """total = torch's smoothed cross-entropy over non-pad tokens; nll is unchanged by smoothing."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[3, 5, 2, 0], [4, 2, 0, 0]])
    plain = caption_loss(ModelOutput(logits), targets, _cfg())
    smooth = caption_loss(ModelOutput(logits), targets, _cfg(), label_smoothing=0.2)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0,
                                                 label_smoothing=0.2)
    assert smooth.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert smooth.nll.item() == pytest.approx(plain.nll.item(), rel=1e-6)
    assert smooth.total.item() != pytest.approx(plain.total.item(), rel=1e-3)
