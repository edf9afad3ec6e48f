import functools
import itertools
import math

import numpy as np
import pytest
import torch

from fcvc_pipeline.inference.decoding import generate, generate_full_recompute, greedy
from fcvc_pipeline.errors import ConfigError
from fcvc_pipeline.training.losses import caption_loss
from fcvc_pipeline.models import CaptionModel, ModelConfig, ModelOutput, StepOutput, VideoBatch, build_model
from fcvc_pipeline.models import MODEL_NAMES
from tests.models.tiny_models import MAX_LEN, tiny_captions, tiny_config, tiny_videos

PAD, BOS, EOS = 0, 1, 2


@functools.lru_cache(maxsize=None)
def _model(name: str):
    """A tiny model trained for a few steps so that video b captions with 1 + b % 6 words: lengths vary, videos
    finish at different steps (random weights just repeat one token)."""
    torch.manual_seed(0)
    m = build_model(tiny_config(name)).train()
    videos = tiny_videos(6, seed=1)
    inputs, targets = tiny_captions(12, 7, seed=4, lengths=[1 + b % 6 for b in range(6) for _ in range(2)])
    video_index = torch.arange(6).repeat_interleave(2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(30):
        loss = caption_loss(m(videos, inputs, video_index), targets, m.config).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def _same(a, b, atol=1e-4):
    assert [h.tokens for h in a] == [h.tokens for h in b]
    for x, y in zip(a, b):
        assert x.score == pytest.approx(y.score, abs=atol)
        np.testing.assert_allclose(x.token_scores, y.token_scores, atol=atol)
        for p, q in ((x.frame_attn, y.frame_attn), (x.region_attn, y.region_attn)):
            assert (p is None) == (q is None)
            if p is not None:
                np.testing.assert_allclose(p, q, atol=atol)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_beam_one_equals_greedy(model):
    m = _model(model)
    videos = tiny_videos(6, seed=1)
    g = greedy(m, videos, max_len=MAX_LEN)
    _same(generate(m, videos, beam_size=1, max_len=MAX_LEN), g)
    assert len({len(h.tokens) for h in g}) > 1  # the videos really finish at different steps


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_incremental_equals_full_recompute(model):
    m = _model(model)
    videos = tiny_videos(5, seed=2)
    inc = generate(m, videos, beam_size=3, max_len=MAX_LEN)
    _same(inc, generate_full_recompute(m, videos, beam_size=3, max_len=MAX_LEN))
    _same(inc, generate_full_recompute(m, videos, beam_size=3, max_len=MAX_LEN, reuse_encoding=True))


@pytest.mark.parametrize("model", ["fcvc-cf-ia", "fcvc-ta", "lstm"])
def test_hypotheses_are_consistent_with_the_model(model):
    """Scores add up, attention rows align with tokens, and teacher forcing the result reproduces them."""
    m = _model(model)
    videos = tiny_videos(4, seed=3)
    hyps = generate(m, videos, beam_size=3, max_len=MAX_LEN, length_penalty=1.0)
    for b, h in enumerate(hyps):
        assert len(h.tokens) <= MAX_LEN and not {PAD, BOS, EOS} & set(h.tokens)
        assert h.score == pytest.approx(sum(h.token_scores) + h.eos_score, abs=1e-4)
        assert h.normalized_score == pytest.approx(h.score / (len(h.tokens) + 1), abs=1e-4)
        assert h.truncated == (len(h.tokens) == MAX_LEN)
        inputs = torch.tensor([[BOS, *h.tokens]])
        with torch.no_grad():
            out = m(videos.index_select(torch.tensor([b])), inputs)
        logp = torch.log_softmax(out.logits[0], -1)
        expected = logp[torch.arange(len(h.tokens) + 1), torch.tensor([*h.tokens, EOS])]
        np.testing.assert_allclose(h.token_scores, expected[:-1].numpy(), atol=1e-4)
        if out.frame_attn is not None:
            np.testing.assert_allclose(h.frame_attn, out.frame_attn[0, : len(h.tokens)].numpy(), atol=1e-5)
            assert h.frame_attn.shape == (len(h.tokens), 4)
        if out.region_attn is not None:
            np.testing.assert_allclose(h.region_attn, out.region_attn[0, : len(h.tokens)].numpy(), atol=1e-5)


def test_generate_restores_training_mode_and_checks_options():
    torch.manual_seed(0)
    m = build_model(tiny_config("fcvc-cf-ia")).train()
    generate(m, tiny_videos(2), beam_size=2, max_len=4)
    assert m.training
    with pytest.raises(ConfigError, match="max_len"):
        generate(m, tiny_videos(2), max_len=MAX_LEN + 1)
    with pytest.raises(ConfigError, match="beam size"):
        generate(m, tiny_videos(2), beam_size=0)
    assert generate(m, tiny_videos(0), beam_size=2, max_len=4) == []


# -- the search itself, on a scripted model whose next-token distribution depends on the last token ----------
class MarkovModel(CaptionModel):
    """log p(next | last, video) = table[video, last]: a model whose best caption can be found exhaustively."""

    def __init__(self, table: torch.Tensor):
        V = table.shape[-1]
        super().__init__(ModelConfig(model="lstm", vocab_size=V))
        self.table = torch.log_softmax(table, dim=-1)  # [B, V, V]

    def encode(self, videos, *, row_steps=None, region_mode="auto"):
        return self.table[: videos.num_videos]

    def decode(self, encoded, tokens, video_index=None):
        vi = torch.arange(tokens.shape[0]) if video_index is None else video_index
        return ModelOutput(logits=encoded[vi[:, None], tokens])

    class State:
        def __init__(self, video_index):
            self.video_index = video_index

        def reorder(self, index):
            self.video_index = self.video_index[index]
            return self

        def renumber_videos(self, new_ids, num_videos):
            self.video_index = new_ids[self.video_index]
            return self

    def init_state(self, encoded, video_index):
        return MarkovModel.State(video_index)

    def step(self, encoded, state, last_tokens):
        return StepOutput(encoded[state.video_index, last_tokens].clone(), None, None, state)


def _exhaustive_best(table: torch.Tensor, max_len: int, length_penalty: float):
    logp = torch.log_softmax(table, -1)
    words = range(3, table.shape[-1])
    best = None
    for n in range(max_len + 1):
        for seq in itertools.product(words, repeat=n):
            path = [BOS, *seq]
            score = sum(float(logp[a, b]) for a, b in zip(path, [*seq, EOS]))
            norm = score / (n + 1) ** length_penalty
            if best is None or norm > best[0]:
                best = (norm, list(seq), score)
    return best


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_a_wide_beam_finds_the_exhaustive_optimum(length_penalty):
    torch.manual_seed(0)
    table = torch.randn(3, 6, 6) * 2  # 3 videos, 3 real words, max 3 tokens: 40 captions each
    model = MarkovModel(table)
    videos = VideoBatch(frames=torch.zeros(3, 1, 1))
    hyps = generate(model, videos, beam_size=40, max_len=3, length_penalty=length_penalty)
    for b, h in enumerate(hyps):
        norm, tokens, score = _exhaustive_best(table[b], 3, length_penalty)
        assert h.tokens == tokens
        assert h.score == pytest.approx(score, abs=1e-4)
    _same(hyps, generate_full_recompute(model, videos, beam_size=40, max_len=3, length_penalty=length_penalty))


def test_beam_search_beats_greedy_where_greedy_is_short_sighted():
    """From <bos>: word a (0.55) or b (0.45); after a nothing is likely, after b <eos> is almost certain."""
    V = 5  # pad bos eos a b
    p = torch.full((1, V, V), 1e-9)
    p[0, BOS, 3], p[0, BOS, 4] = 0.55, 0.45
    p[0, 3, 3], p[0, 3, 4], p[0, 3, EOS] = 0.35, 0.35, 0.30
    p[0, 4, EOS], p[0, 4, 3], p[0, 4, 4] = 0.98, 0.01, 0.01
    model = MarkovModel(p.log())
    videos = VideoBatch(frames=torch.zeros(1, 1, 1))
    assert greedy(model, videos, max_len=4)[0].tokens[0] == 3
    best = generate(model, videos, beam_size=2, max_len=4, length_penalty=0.0)[0]
    assert best.tokens == [4]
    assert best.score == pytest.approx(math.log(0.45 * 0.98), abs=1e-5)
