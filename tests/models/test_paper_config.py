"""The model properties of test_caption_models.py (causality; incremental step/reorder == full forward) at the
paper's configuration -- kernel size 5, 8 attention heads -- for every FCVC variant, every conv mask the config
offers and both region modes, in float32 as the models run.

The tiny configs elsewhere use k = 3 and 2 heads, where a window or head-splitting bug that only shows with
a 4-step conv window or 8 heads of width 4 would pass unnoticed.
"""


import pytest
import torch

from fcvc_pipeline.models import MODEL_NAMES, build_model
from tests.models.tiny_models import MAX_LEN, assert_causal, tiny_captions, tiny_config, tiny_videos

FCVC_MODELS = [m for m in MODEL_NAMES if not tiny_config(m).is_lstm]
PAPER = dict(kernel_size=5, heads=8, d_model=32)  # d_head = 4
MASKS = ("causal", "paper")  # t-4..t, and the centred kernel with its right half masked (t-2..t)


pytestmark = pytest.mark.usefixtures("one_thread")


def _paper_model(model: str, mask: str, seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(tiny_config(model, **PAPER, conv_mask=mask)).eval()
    assert m.config.kernel_size == 5 and m.config.heads == 8 and m.config.d_model % 8 == 0
    return m


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("model", FCVC_MODELS)
def test_causality_at_the_paper_config(model, mask):
    """Changing token t+1 leaves every output at steps <= t unchanged (and does change step t+1)."""
    m = _paper_model(model, mask)
    inputs, _ = tiny_captions(2, MAX_LEN + 1)  # 9 steps: longer than one k = 5 window
    with torch.no_grad():
        assert_causal(m, tiny_videos(2), inputs)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("model", FCVC_MODELS)
def test_incremental_steps_and_reorder_equal_full_forward_at_the_paper_config(model, mask):
    """init_state / step reproduce decode() position by position; after 5 steps (every layer's window full of
    real inputs) the rows are reordered like beam search does -- kept, duplicated, permuted -- and the state
    continues exactly the chosen prefixes. Rows share videos in a scattered order."""
    m = _paper_model(model, mask)
    region_modes = ("project", "fold") if m.config.uses_regions else ("project",)
    videos = tiny_videos(3)
    steps = MAX_LEN + 1
    first, _ = tiny_captions(5, steps, seed=1)
    video_index = torch.tensor([2, 0, 1, 0, 2])
    keep = torch.tensor([3, 3, 0, 4, 2])  # parents after step 5 (row 1 dropped, row 3 duplicated)
    switch = 5
    tail, _ = tiny_captions(5, steps, seed=2)
    final = torch.cat([first[keep, :switch], tail[:, switch:]], dim=1)
    with torch.no_grad():
        full_first = m(videos, first, video_index)
        full_final = m(videos, final, video_index[keep])
        for region_mode in region_modes:
            encoded = m.encode(videos, region_mode=region_mode)
            state = m.init_state(encoded, video_index)
            for t in range(steps):
                if t == switch:
                    state = state.reorder(keep)
                full = full_first if t < switch else full_final
                tokens = (first if t < switch else final)[:, t]
                log_probs, fa, ra, state = m.step(encoded, state, tokens)
                torch.testing.assert_close(log_probs, torch.log_softmax(full.logits[:, t], -1), atol=2e-5, rtol=1e-4)
                for got, want in ((fa, full.frame_attn), (ra, full.region_attn)):
                    assert (got is None) == (want is None)
                    if got is not None:
                        torch.testing.assert_close(got, want[:, t], atol=1e-5, rtol=1e-4)
    # the continuation differs from the original rows, so following the wrong parent would show
    assert not torch.allclose(full_final.logits[:, switch:], full_first.logits[:, switch:])
