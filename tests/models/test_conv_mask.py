"""ModelConfig.conv_mask: "causal" (ConvS2S, window t-(k-1)..t) and "paper" (kernel centred on t with the
right half masked, window t-(k-1)//2..t) -- the conv itself, every FCVC variant, incremental decoding, and
how saved configs load."""

import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from fcvc_pipeline.errors import ConfigError
from fcvc_pipeline.models import ModelConfig, build_model
from fcvc_pipeline.models.causal_conv import CausalConv1d
from fcvc_pipeline.models.config import CONV_MASKS
from tests.models.tiny_models import tiny_config, tiny_videos

FCVC_VARIANTS = ("fcvc", "fcvc-ta", "fcvc-ia", "fcvc-all", "fcvc-cf-ia")
# steps back one layer's output reads, for k = 5
REACH = {"causal": 4, "paper": 2}


def _config(model: str, mask: str, **overrides) -> ModelConfig:
    return tiny_config(model, **{"kernel_size": 5, "heads": 8, "d_model": 32, "conv_mask": mask, **overrides})


def _model(model: str, mask: str, **overrides):
    torch.manual_seed(0)
    return build_model(_config(model, mask, **overrides)).double().eval()


def _tokens(rows: int, steps: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, 20, (rows, steps), generator=g)
    tokens[:, 0] = 1
    return tokens


def _videos(n: int):
    return tiny_videos(n).to("cpu", torch.float64)


def _dependencies(conv: CausalConv1d, steps: int, t: int) -> list[int]:
    """The input steps s whose change changes the conv output at step t."""
    torch.manual_seed(1)
    x = torch.randn(1, steps, conv.in_dim, dtype=torch.float64)
    base = conv(x)[0, t]
    deps = []
    for s in range(steps):
        x2 = x.clone()
        x2[0, s] += 1.0
        if not torch.equal(conv(x2)[0, t], base):
            deps.append(s)
    return deps


# -- the conv module ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", CONV_MASKS)
def test_one_layer_receptive_field(mask):
    conv = CausalConv1d(4, 6, 5, mask=mask).double()
    t = 7
    deps = _dependencies(conv, 10, t)
    assert deps == list(range(t - REACH[mask], t + 1))
    if mask == "paper":  # t-2..t: not t-3 (nor t-4), and never the future
        assert t - 3 not in deps and t - 4 not in deps
    else:  # t-4..t (the ConvS2S window)
        assert t - 4 in deps and t - 5 not in deps
    # near the start the zero padding stands in for the missing steps
    assert _dependencies(conv, 10, 1) == [0, 1]


def test_paper_mask_is_the_centred_kernel_with_its_right_half_zeroed():
    """The paper's reading, written out: a k = 5 kernel centred on step t ("same" padding 2 | 2) whose taps
    on t+1, t+2 are masked to zero. The stored 3-tap conv computes exactly that."""
    torch.manual_seed(0)
    conv = CausalConv1d(4, 6, 5, mask="paper").double()
    assert conv.taps == 3 and tuple(conv.weight.shape) == (6, 3, 4)
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    centred = torch.zeros(6, 4, 5, dtype=torch.float64)  # conv1d layout [out, in, k], tap j reads t-2+j
    centred[:, :, :3] = conv.weight.detach().permute(0, 2, 1)  # t-2, t-1, t
    # centred[:, :, 3:] (t+1, t+2) stays masked
    expected = F.conv1d(x.transpose(1, 2), centred, conv.bias.detach(), padding=2).transpose(1, 2)
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("mask", CONV_MASKS)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_conv_step_equals_full(mask, k):
    torch.manual_seed(0)
    conv = CausalConv1d(5, 6, k, mask=mask).double()
    assert conv.taps == (k if mask == "causal" else (k + 1) // 2)
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    full = conv(x)
    window = conv.initial_window(2, device=x.device, dtype=x.dtype)
    assert window.shape == (2, conv.taps - 1, 5)
    for t in range(7):
        y, window = conv.step(window, x[:, t])
        torch.testing.assert_close(y, full[:, t])


def test_unknown_mask_is_refused_by_the_conv():
    with pytest.raises(ConfigError, match="conv mask"):
        CausalConv1d(4, 4, 5, mask="centred")


def test_paper_mask_stores_only_the_live_taps():
    causal = build_model(_config("fcvc", "causal"))
    paper = build_model(_config("fcvc", "paper"))
    assert list(causal.state_dict()) == list(paper.state_dict())  # same names, narrower conv weights
    for a, b in zip(causal.layers, paper.layers):
        assert tuple(a.conv.weight.shape) == (64, 5, 32) and tuple(b.conv.weight.shape) == (64, 3, 32)
    d, layers = 32, 4
    assert causal.num_parameters() - paper.num_parameters() == layers * (2 * d) * 2 * d  # 2 of 5 taps dropped
    with pytest.raises(RuntimeError, match="size mismatch"):  # a checkpoint cannot load into the other mask
        paper.load_state_dict(causal.state_dict())


# -- the models -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", CONV_MASKS)
@pytest.mark.parametrize("model", FCVC_VARIANTS)
def test_future_tokens_do_not_change_the_past(model, mask):
    m = _model(model, mask)
    videos = _videos(2)
    tokens = _tokens(2, 8)
    with torch.no_grad():
        out = m(videos, tokens)
        for t in (0, 3, 6):
            changed = tokens.clone()
            changed[:, t + 1:] = _tokens(2, 8, seed=t + 1)[:, t + 1:]
            again = m(videos, changed)
            torch.testing.assert_close(again.logits[:, :t + 1], out.logits[:, :t + 1], rtol=0, atol=0)
            if out.frame_attn is not None:
                torch.testing.assert_close(again.frame_attn[:, :t + 1], out.frame_attn[:, :t + 1], rtol=0, atol=0)
            if out.region_attn is not None:
                torch.testing.assert_close(again.region_attn[:, :t + 1], out.region_attn[:, :t + 1], rtol=0, atol=0)
            assert not torch.equal(again.logits[:, t + 1:], out.logits[:, t + 1:])


@pytest.mark.parametrize("model", ["fcvc", "fcvc-cf-ia"])
@pytest.mark.parametrize("mask", CONV_MASKS)
def test_stack_receptive_field(model, mask):
    """Attention never mixes caption steps, so L layers see L * reach steps back (2 layers here)."""
    m = _model(model, mask, layers=2, max_len=12)
    videos = _videos(1)
    tokens = _tokens(1, 11)
    t, reach = 10, 2 * REACH[mask]
    with torch.no_grad():
        base = m(videos, tokens).logits[0, t]
        for s, depends in ((t - reach, True), (t - reach - 1, False)):
            changed = tokens.clone()
            changed[0, s] = 3 if tokens[0, s] != 3 else 4
            assert (not torch.equal(m(videos, changed).logits[0, t], base)) == depends, (s, depends)


@pytest.mark.parametrize("mask", CONV_MASKS)
@pytest.mark.parametrize("model", FCVC_VARIANTS)
def test_incremental_steps_equal_the_full_forward(model, mask):
    """init_state / step / reorder (beam search keeps and duplicates rows) reproduce decode()."""
    m = _model(model, mask)
    videos = _videos(2)
    vi = torch.tensor([0, 1, 1])
    first = _tokens(3, 8, seed=1)
    keep = torch.tensor([2, 2, 0])  # after step 3 the rows continue from these parents
    final = torch.cat([first[keep, :3], _tokens(3, 8, seed=2)[:, 3:]], dim=1)
    with torch.no_grad():
        enc = m.encode(videos)
        full_first = torch.log_softmax(m.decode(enc, first, vi).logits, dim=-1)
        full_final_out = m.decode(enc, final, vi[keep])
        full_final = torch.log_softmax(full_final_out.logits, dim=-1)
        state = m.init_state(enc, vi)
        for t in range(8):
            if t == 3:
                state.reorder(keep)
            out = m.step(enc, state, (first if t < 3 else final)[:, t])
            state = out.state
            expected = full_first[:, t] if t < 3 else full_final[:, t]
            torch.testing.assert_close(out.log_probs, expected.float(), atol=1e-5, rtol=1e-5)
            if t >= 3 and out.frame_attn is not None:
                torch.testing.assert_close(out.frame_attn, full_final_out.frame_attn[:, t])
        assert all(w.shape[1] == m.layers[0].conv.taps - 1 for w in state.windows)


# -- the config -----------------------------------------------------------------------------------------------
def test_default_mask_is_the_papers():
    assert ModelConfig().conv_mask == "paper"
    assert "conv_mask" in ModelConfig().to_json()  # only the legacy "causal" is left out
    assert ModelConfig(kernel_size=5, conv_mask="causal").conv_taps == 5
    assert ModelConfig(kernel_size=5, conv_mask="paper").conv_taps == 3


def test_saved_config_without_the_key_loads_as_causal():
    saved = _config("fcvc-cf-ia", "paper").to_json()
    assert ModelConfig.from_json(json.loads(json.dumps(saved))).conv_mask == "paper"  # exact round trip
    del saved["conv_mask"]
    assert ModelConfig.from_json(saved).conv_mask == "causal"


def test_a_causal_config_is_written_exactly_as_before_the_field_existed():
    """Run manifests embed the model config: a causal run's stays byte-identical, so it stays up to date."""
    causal = _config("fcvc-cf-ia", "causal")
    assert "conv_mask" not in causal.to_json()
    assert ModelConfig.from_json(causal.to_json()) == causal


def test_missing_key_stays_causal_even_after_the_default_flips():
    """from_json fills in "causal" explicitly, not through the field's default."""

    @dataclass(frozen=True)
    class Flipped(ModelConfig):
        conv_mask: str = "paper"

    assert Flipped().conv_mask == "paper"
    saved = Flipped(model="fcvc", vocab_size=10).to_json()
    del saved["conv_mask"]
    assert Flipped.from_json(saved).conv_mask == "causal"
    assert "conv_mask" not in Flipped(model="fcvc", vocab_size=10, conv_mask="causal").to_json()


def test_unknown_mask_is_listed_with_the_other_problems():
    cfg = dataclasses.replace(_config("fcvc", "causal"), conv_mask="centre", dropout=2.0)
    problems = cfg.validate()
    assert any("conv_mask" in p and "causal" in p and "paper" in p for p in problems), problems
    assert any("dropout" in p for p in problems)
    with pytest.raises(ConfigError) as e:
        build_model(cfg)
    assert len(e.value.problems) == len(problems)
