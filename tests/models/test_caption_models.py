"""Properties every captioning model must have (all six, tiny sizes)."""

import pytest
import torch

from fcvc_pipeline.errors import ConfigError, MismatchError
from fcvc_pipeline.models import MODEL_NAMES, VideoBatch, build_model
from fcvc_pipeline.training.losses import caption_loss
from tests.models.tiny_models import MAX_LEN, VOCAB, assert_causal, tiny_captions, tiny_config, tiny_videos

ATTENTION_MODELS = [m for m in MODEL_NAMES if tiny_config(m).uses_frame_attention]
REGION_MODELS = [m for m in MODEL_NAMES if tiny_config(m).uses_regions]


def make(model: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_config(model, **overrides)).eval()


def assert_outputs_close(a, b, atol=1e-5):
    torch.testing.assert_close(a.logits, b.logits, atol=atol, rtol=1e-4)
    for x, y in ((a.frame_attn, b.frame_attn), (a.region_attn, b.region_attn)):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_shapes(model):
    m = make(model)
    videos = tiny_videos(3)
    inputs, _ = tiny_captions(3, 6)
    out = m(videos, inputs)
    assert out.logits.shape == (3, 6, VOCAB)
    cfg = m.config
    assert (out.frame_attn is not None) == cfg.uses_frame_attention
    assert (out.region_attn is not None) == cfg.uses_regions
    if out.frame_attn is not None:
        assert out.frame_attn.shape == (3, 6, 4) and out.frame_attn.dtype == torch.float32
    if out.region_attn is not None:
        assert out.region_attn.shape == (3, 6, 4, 4) and out.region_attn.dtype == torch.float32


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_causality(model):
    """Changing token t+1 leaves every output at steps <= t unchanged (and does change a later one)."""
    m = make(model)
    inputs, _ = tiny_captions(2, 7)
    assert_causal(m, tiny_videos(2), inputs)


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("region_mode", ["project", "fold"])
def test_incremental_steps_equal_full_forward(model, region_mode):
    m = make(model)
    videos = tiny_videos(3)
    inputs, _ = tiny_captions(6, MAX_LEN + 1)
    video_index = torch.tensor([0, 0, 1, 2, 2, 2])
    full = m(videos, inputs, video_index)
    encoded = m.encode(videos, region_mode=region_mode)
    state = m.init_state(encoded, video_index)
    for t in range(inputs.shape[1]):
        log_probs, fa, ra, state = m.step(encoded, state, inputs[:, t])
        torch.testing.assert_close(log_probs, torch.log_softmax(full.logits[:, t], -1), atol=2e-5, rtol=1e-4)
        if full.frame_attn is not None:
            torch.testing.assert_close(fa, full.frame_attn[:, t], atol=1e-5, rtol=1e-4)
        if full.region_attn is not None:
            torch.testing.assert_close(ra, full.region_attn[:, t], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_reorder_follows_rows(model):
    """After reorder(index) the state continues exactly the prefixes of the chosen rows."""
    m = make(model)
    videos = tiny_videos(2)
    inputs, _ = tiny_captions(4, 5, seed=3)
    video_index = torch.tensor([0, 0, 1, 1])
    encoded = m.encode(videos)
    state = m.init_state(encoded, video_index)
    for t in range(3):
        _, _, _, state = m.step(encoded, state, inputs[:, t])
    pick = torch.tensor([1, 1, 3, 2])
    state.reorder(pick)
    reordered = inputs[pick]
    full = m(videos, reordered, video_index[pick])
    log_probs, *_ = m.step(encoded, state, reordered[:, 3])
    torch.testing.assert_close(log_probs, torch.log_softmax(full.logits[:, 3], -1), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("model", ATTENTION_MODELS)
def test_attention_weights_are_distributions(model):
    m = make(model)
    out = m(tiny_videos(3), tiny_captions(3, 6)[0])
    torch.testing.assert_close(out.frame_attn.sum(-1), torch.ones(3, 6))
    assert (out.frame_attn >= 0).all()
    if out.region_attn is not None:
        torch.testing.assert_close(out.region_attn.sum(-1), torch.ones(3, 6, 4))  # within each frame


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_video_index_sharing_equals_repeating_videos(model):
    m = make(model)
    videos = tiny_videos(3)
    inputs, _ = tiny_captions(5, 6, seed=1)
    for video_index in (torch.tensor([0, 0, 1, 1, 2]), torch.tensor([2, 0, 1, 0, 2])):  # blocks, scattered
        shared = m(videos, inputs, video_index)
        repeated = m(videos.index_select(video_index), inputs)
        assert_outputs_close(shared, repeated)


@pytest.mark.parametrize("model", REGION_MODELS)
def test_region_modes_agree(model):
    m = make(model)
    videos = tiny_videos(2)
    inputs, _ = tiny_captions(4, 6)
    vi = torch.tensor([0, 1, 1, 0])
    a = m.decode(m.encode(videos, region_mode="project"), inputs, vi)
    b = m.decode(m.encode(videos, region_mode="fold"), inputs, vi)
    assert_outputs_close(a, b)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_every_parameter_gets_a_gradient(model):
    m = make(model).train()
    inputs, targets = tiny_captions(4, 6, lengths=[5, 3, 4, 2])
    out = m(tiny_videos(2), inputs, torch.tensor([0, 0, 1, 1]))
    terms = caption_loss(out, targets, m.config)
    terms.total.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert missing == []


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_trains_on_tiny_random_data(model):
    """A few Adam steps on one small fixed batch: the loss falls clearly."""
    m = make(model, seed=1, dropout=0.1).train()
    videos = tiny_videos(4, seed=2)
    inputs, targets = tiny_captions(8, 7, seed=2, lengths=[6, 5, 4, 6, 3, 5, 6, 4])
    video_index = torch.arange(4).repeat_interleave(2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        terms = caption_loss(m(videos, inputs, video_index), targets, m.config)
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        losses.append(terms.total.item())
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("model", ["fcvc-cf-ia", "lstm"])
def test_without_clip_features(model):
    """clip_dim 0 builds no clip projection; a batch without clips equals one with zero clips."""
    m0 = make(model, clip_dim=0)
    assert m0(tiny_videos(2, clips=False), tiny_captions(2, 5)[0]).logits.isfinite().all()
    m = make(model)
    v = tiny_videos(2)
    zero = VideoBatch(v.frames, torch.zeros_like(v.clips), v.regions)
    none = VideoBatch(v.frames, None, v.regions)
    inputs = tiny_captions(2, 5)[0]
    assert_outputs_close(m(none, inputs), m(zero, inputs))


def test_clear_errors_for_mismatched_inputs():
    m = make("fcvc-cf-ia")
    inputs = tiny_captions(2, 5)[0]
    v = tiny_videos(2)
    with pytest.raises(MismatchError, match="frame features"):
        m(VideoBatch(v.frames[..., :5], v.clips, v.regions), inputs)
    with pytest.raises(MismatchError, match="region features"):
        m(VideoBatch(v.frames, v.clips, None), inputs)
    with pytest.raises(MismatchError, match="video_index"):
        m(v, tiny_captions(3, 5)[0])
    with pytest.raises(ConfigError, match="max_len"):
        m(v, tiny_captions(2, MAX_LEN + 2)[0])
    with pytest.raises(MismatchError, match="vocabulary"):
        m(v, torch.full((2, 3), VOCAB))


@pytest.mark.parametrize("model", ["fcvc-cf-ia", "fcvc-all", "lstm"])
def test_bf16_autocast_keeps_weights_in_float32(model):
    m = make(model)
    inputs, targets = tiny_captions(2, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(tiny_videos(2), inputs)
    terms = caption_loss(out, targets, m.config)
    assert terms.total.dtype == torch.float32 and torch.isfinite(terms.total)
    if out.frame_attn is not None:
        assert out.frame_attn.dtype == torch.float32
        torch.testing.assert_close(out.frame_attn.sum(-1), torch.ones(2, 5))
    if out.region_attn is not None:
        torch.testing.assert_close(out.region_attn.sum(-1), torch.ones(2, 5, 4))


@pytest.mark.parametrize("model", ["fcvc-cf-ia", "fcvc-ia", "lstm"])
def test_bf16_autocast_incremental_matches_full(model):
    m = make(model)
    videos = tiny_videos(2)
    inputs, _ = tiny_captions(2, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = torch.log_softmax(m(videos, inputs).logits.float(), -1)
        encoded = m.encode(videos, region_mode="fold")
        state = m.init_state(encoded, torch.arange(2))
        for t in range(inputs.shape[1]):
            log_probs, fa, ra, state = m.step(encoded, state, inputs[:, t])
            assert log_probs.dtype == torch.float32
            torch.testing.assert_close(log_probs, full[:, t], atol=2e-2, rtol=2e-2)
