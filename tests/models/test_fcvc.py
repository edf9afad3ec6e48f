"""FCVC building blocks: inherited attention (Eq. 6) by hand, temporal attention (Eq. 5), the causal conv,
row grouping, and the region projection done once per video."""

import math

import pytest
import torch
from torch import nn

from fcvc_pipeline.models import Rows, build_model
from fcvc_pipeline.models.attention import InheritedAttention, RegionMemory, TemporalAttention
from fcvc_pipeline.models.causal_conv import CausalConv1d
from tests.models.tiny_models import tiny_captions, tiny_config, tiny_videos


def _identity_(linear: nn.Linear, scale: float = 1.0) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.eye(linear.weight.shape[0]) * scale)
        if linear.bias is not None:
            linear.bias.zero_()


@pytest.fixture
def hand_ia():
    """d = 2, W^Q = W^K = W^O = I, 2 frames x 2 regions, chosen so every number is checkable by hand.

    y = [ln3 * sqrt2, 0]; scale 1/sqrt2 -> scores are ln3 * r[0]:
      frame 1: r11 = [1, 0], r12 = [0, 0]  -> scores (ln3, 0) -> beta = (3/4, 1/4)
      frame 2: r21 = [0, 1], r22 = [0, 2]  -> scores (0, 0)   -> beta = (1/2, 1/2)
    alpha = (1/4, 3/4)
    v = 1/4 (3/4 [1,0] + 1/4 [0,0]) + 3/4 (1/2 [0,1] + 1/2 [0,2]) = [0.1875, 1.125]
    """
    ia = InheritedAttention(2)
    for lin in (ia.query, ia.key, ia.out):
        _identity_(lin)
    y = torch.tensor([[[math.log(3) * math.sqrt(2), 0.0]]])  # [R=1, T=1, d=2]
    regions = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 2.0]]])  # [B=1, N*M=4, d]
    alpha = torch.tensor([[[0.25, 0.75]]])  # [1, 1, N=2]
    return ia, y, regions, alpha


def test_inherited_attention_matches_eq6_by_hand(hand_ia):
    ia, y, regions, alpha = hand_ia
    rows = Rows(torch.tensor([0]), 1)
    context, beta = ia(y, alpha, RegionMemory(regions, num_frames=2), rows)
    torch.testing.assert_close(beta[0, 0], torch.tensor([[0.75, 0.25], [0.5, 0.5]]))
    torch.testing.assert_close(context[0, 0], torch.tensor([0.1875, 1.125]))


def test_inherited_attention_with_raw_regions_folds_the_projection_exactly(hand_ia):
    """Raw regions rho with r = 2 rho + b give the same beta and context as the projected r."""
    ia, y, regions, alpha = hand_ia
    proj = nn.Linear(2, 2)
    with torch.no_grad():
        proj.weight.copy_(2 * torch.eye(2))
        proj.bias.copy_(torch.tensor([1.0, -1.0]))
    raw = (regions - proj.bias.detach()) / 2
    context, beta = ia(y, alpha, RegionMemory(raw, num_frames=2, projection=proj), Rows(torch.tensor([0]), 1))
    torch.testing.assert_close(beta[0, 0], torch.tensor([[0.75, 0.25], [0.5, 0.5]]))
    torch.testing.assert_close(context[0, 0], torch.tensor([0.1875, 1.125]))


def test_temporal_attention_matches_eq5_written_out():
    torch.manual_seed(0)
    d, H, N = 8, 2, 3
    ta = TemporalAttention(d, H)
    frames = torch.randn(1, N, d)
    y = torch.randn(1, 2, d)
    keys, values = ta.memory(frames)
    context, alpha = ta(y, keys, values, Rows(torch.tensor([0]), 1))
    dh = d // H
    heads, weights = [], []
    for h in range(H):
        sl = slice(h * dh, (h + 1) * dh)
        q = ta.query(y)[0][:, sl]  # [T, dh]
        k = ta.key(frames)[0][:, sl]  # [N, dh]
        v = ta.value(frames)[0][:, sl]
        a = torch.softmax(q @ k.T / math.sqrt(dh), dim=-1)  # [T, N]
        weights.append(a)
        heads.append(a @ v)
    expected = ta.out(torch.cat(heads, dim=-1))
    torch.testing.assert_close(context[0], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(alpha[0], torch.stack(weights).mean(0), atol=1e-6, rtol=1e-5)


# a frame distribution no TA layer of the tiny model produces
SWAPPED_ALPHA = torch.softmax(torch.tensor([2.0, -1.0, 0.5, -2.0]), dim=0)


def _cf_ia_run(m, path: str, *, swap_layer: int | None = None):
    """Run fcvc-cf-ia (teacher forcing, or step by step) with forward hooks: when ``swap_layer`` is given, that
    layer's TA frame weights alpha are replaced by SWAPPED_ALPHA on their way out (its context is untouched).

    Returns (log-probs [R, T, V], frame_attn [R, T, N], {IA layer: [(y, alpha, regions, rows, context, beta)
    per call]}, [(original alpha, replacement) per swap])."""
    videos = tiny_videos(2)
    inputs = tiny_captions(2, 5)[0]
    seen: dict[int, list[tuple]] = {}
    swaps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def swap(module, args, out):
        context, alpha = out
        new = SWAPPED_ALPHA.expand_as(alpha).clone()
        swaps.append((alpha, new))
        return context, new

    handles = [] if swap_layer is None else [m.layers[swap_layer].temporal.register_forward_hook(swap)]
    for i, layer in enumerate(m.layers):
        if layer.inherited is not None:
            handles.append(layer.inherited.register_forward_hook(
                lambda module, args, out, i=i: seen.setdefault(i, []).append((*args, *out))))
    try:
        with torch.no_grad():
            if path == "forward":
                out = m(videos, inputs)
                log_probs, frame_attn = torch.log_softmax(out.logits, -1), out.frame_attn
            else:
                encoded = m.encode(videos)
                state = m.init_state(encoded, torch.arange(2))
                steps = []
                for t in range(inputs.shape[1]):
                    lp, fa, _, state = m.step(encoded, state, inputs[:, t])
                    steps.append((lp, fa))
                log_probs = torch.stack([lp for lp, _ in steps], 1)
                frame_attn = torch.stack([fa for _, fa in steps], 1)
    finally:
        for h in handles:
            h.remove()
    return log_probs, frame_attn, seen, swaps


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("path", ["forward", "step"])
def test_cf_ia_upper_layers_inherit_alpha_from_the_top_ta_layer(path):
    """fcvc-cf-ia, 4 layers: TA in layers 1-2, IA in layers 3-4, and both IA layers use layer 2's alpha.

    Swapping layer 2's alpha (and nothing else) reaches both IA layers directly: each receives exactly the
    swapped weights; layer 3's query is unchanged, so its context changes through alpha alone; layer 4's
    context recomputed with the original alpha differs from what it produced. Swapping layer 1's alpha reaches
    nothing (only layer 2's alpha is inherited).
    """
    torch.manual_seed(0)
    m = build_model(tiny_config("fcvc-cf-ia", layers=4)).eval()
    plan = m.config.layer_plan()
    assert [(p.temporal, p.inherited) for p in plan] == [(True, False), (True, False), (False, True), (False, True)]
    ia_layers = (2, 3)  # 0-based: layers 3 and 4

    def alpha_of(frame_attn, call):  # the exposed frame weights of one forward / step, as IA receives them
        return frame_attn if path == "forward" else frame_attn[:, call:call + 1]

    base_lp, base_fa, base, _ = _cf_ia_run(m, path)
    calls = len(base[2])
    assert calls == (1 if path == "forward" else 5)
    for i in ia_layers:  # exposed frame_attn = layer 2's alpha = what both IA layers receive
        for call in range(calls):
            assert torch.equal(base[i][call][1], alpha_of(base_fa, call))

    # -- swap layer 2's alpha -------------------------------------------------------------------------------
    lp, fa, seen, swaps = _cf_ia_run(m, path, swap_layer=1)
    assert len(swaps) == calls
    assert all((orig - new).abs().max() > 0.1 for orig, new in swaps)  # a real change
    for call, (_, new) in enumerate(swaps):
        assert torch.equal(alpha_of(fa, call), new)
        for i in ia_layers:
            assert torch.equal(seen[i][call][1], new), f"IA layer {i + 1} did not get layer 2's alpha"
        # layer 3: same query, same regions, same beta (beta does not depend on alpha) -- another context
        y3, _, _, _, ctx3, beta3 = seen[2][call]
        assert torch.equal(y3, base[2][call][0])
        assert torch.equal(beta3, base[2][call][5])
        assert not torch.allclose(ctx3, base[2][call][4], atol=1e-4)
        # layer 4: with its own (changed) query, the inherited alpha still decides its context
        y4, alpha4, regions4, rows4, ctx4, _ = seen[3][call]
        with torch.no_grad():
            again = m.layers[3].inherited(y4, alpha4, regions4, rows4)[0]
            with_original_alpha = m.layers[3].inherited(y4, base[3][call][1], regions4, rows4)[0]
        torch.testing.assert_close(again, ctx4)
        assert not torch.allclose(with_original_alpha, ctx4, atol=1e-4)
    assert not torch.allclose(lp, base_lp, atol=1e-4)

    # -- swap layer 1's alpha: nothing inherits it -----------------------------------------------------------
    lp1, fa1, seen1, swaps1 = _cf_ia_run(m, path, swap_layer=0)
    assert len(swaps1) == calls and all((o - n).abs().max() > 0.1 for o, n in swaps1)
    for i in ia_layers:
        for call in range(calls):
            assert torch.equal(seen1[i][call][1], base[i][call][1])  # the inherited weights: untouched
            assert torch.equal(seen1[i][call][4], base[i][call][4])
    assert torch.equal(fa1, base_fa) and torch.equal(lp1, base_lp)


def test_causal_conv_step_equals_full():
    torch.manual_seed(0)
    conv = CausalConv1d(5, 6, 3)
    x = torch.randn(2, 7, 5)
    full = conv(x)
    window = conv.initial_window(2, device=x.device, dtype=x.dtype)
    for t in range(7):
        y, window = conv.step(window, x[:, t])
        torch.testing.assert_close(y, full[:, t], atol=1e-6, rtol=1e-5)
    # output t depends on inputs t-2..t only
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert torch.allclose(conv(x2)[:, 3:], full[:, 3:]) and not torch.allclose(conv(x2)[:, 2], full[:, 2])


@pytest.mark.parametrize("index, layout", [([0, 1, 2], "identity"), ([0, 0, 1, 1, 2, 2], "blocks"),
                                           ([2, 0, 0, 1, 0], "scatter"), ([1, 1], "scatter")])
def test_rows_group_and_ungroup(index, layout):
    idx = torch.tensor(index)
    rows = Rows(idx, 3)
    assert rows.layout == layout
    x = torch.randn(len(index), 2, 4)
    grouped = rows.group(x)
    assert grouped.shape == (3, rows.per_video * 2, 4)
    torch.testing.assert_close(rows.ungroup(grouped, 2), x)
    per_video = torch.randn(3, 4, 5)
    # a grouped bmm reads each row's own video
    got = rows.ungroup(torch.bmm(grouped, per_video), 2)
    torch.testing.assert_close(got, torch.bmm(x, per_video[idx]))


def test_region_projection_runs_once_per_video():
    torch.manual_seed(0)
    m = build_model(tiny_config("fcvc-cf-ia")).eval()
    calls = []
    m.region_proj.register_forward_hook(lambda mod, args, out: calls.append(tuple(args[0].shape)))
    videos = tiny_videos(2)
    inputs = tiny_captions(6, 5)[0]
    m.decode(m.encode(videos, region_mode="project"), inputs, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert calls == [(2, 16, 10)]  # [B, N*M, region_dim]: the 2 videos, not the 6 captions
