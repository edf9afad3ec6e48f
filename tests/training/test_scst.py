"""Self-critical training's parts: sampling from the incremental decoder, the baselines, and the one forward
whose log-probabilities must be those of the policy that drew the samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fcvc_pipeline.inference.decoding import _ban, sample
from fcvc_pipeline.models import ModelConfig, build_model
from fcvc_pipeline.models.state import VideoBatch
from fcvc_pipeline.training.scst import baselines, policy_inputs, policy_loss, reward_references


def _model(model="fcvc-cf-ia", max_len=6, vocab=9):
    torch.manual_seed(0)
    cfg = ModelConfig(model=model, vocab_size=vocab, frame_dim=8, clip_dim=4, region_dim=8, num_regions=4, num_frames=3,
                      max_len=max_len, d_model=16, layers=2, heads=2, kernel_size=3, dropout=0.3)
    return build_model(cfg).eval()


def _videos(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return VideoBatch(frames=torch.randn(n, 3, 8, generator=g), clips=torch.randn(n, 3, 4, generator=g),
                      regions=torch.randn(n, 3, 4, 8, generator=g))


@pytest.mark.parametrize("model", ["fcvc-cf-ia", "lstm"])
def test_samples_follow_the_search_rules_and_the_generator(model):
    m, videos = _model(model), _videos()
    cfg = m.config
    a = sample(m, videos, samples=4, max_len=6, generator=torch.Generator().manual_seed(5))
    b = sample(m, videos, samples=4, max_len=6, generator=torch.Generator().manual_seed(5))
    c = sample(m, videos, samples=4, max_len=6, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.video_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    for row, n, cut in zip(a.tokens.tolist(), a.lengths.tolist(), a.truncated.tolist()):
        assert row[n] == cfg.eos_id and all(t == cfg.pad_id for t in row[n + 1:])
        assert all(t not in (cfg.pad_id, cfg.bos_id, cfg.eos_id) for t in row[:n])
        assert cut == (n == 6)
    assert m.training is False


def test_a_sampled_first_word_follows_the_model_distribution():
    m, videos = _model(), _videos(n=1)
    cfg = m.config
    with torch.no_grad():
        out = m(videos, torch.full((1, 1), cfg.bos_id), torch.zeros(1, dtype=torch.long))
        logp = torch.log_softmax(out.logits[0, 0].float(), dim=-1).unsqueeze(0)
    _ban(logp, cfg, force_eos=False)
    expected = torch.softmax(logp[0], dim=-1).numpy()
    n = 20_000
    drawn = sample(m, videos, samples=n, max_len=1, generator=torch.Generator().manual_seed(0))
    first = np.bincount(drawn.tokens[:, 0].numpy(), minlength=cfg.vocab_size) / n
    assert first[cfg.pad_id] == first[cfg.bos_id] == 0
    assert np.abs(first - expected).max() < 4 * math.sqrt(0.25 / n)  # 4 standard deviations at worst


@pytest.mark.parametrize("model", ["fcvc-cf-ia", "fcvc", "lstm"])
def test_the_training_forward_scores_the_samples_as_the_sampler_drew_them(model):
    """One parallel forward over the sampled captions gives, per caption, the sum of the log-probabilities the
    incremental decoder drew each token with (banned tokens removed, a forced <eos> not counted)."""
    m, videos = _model(model, max_len=4), _videos(n=3)
    cfg = m.config
    s = sample(m, videos, samples=3, max_len=4, generator=torch.Generator().manual_seed(2))
    assert s.truncated.any() and not s.truncated.all()  # both kinds of ending are checked below
    inputs, targets, mask = policy_inputs(s, cfg)
    out = m(videos, inputs, s.video_index)
    per_row = []
    for r in range(s.tokens.shape[0]):  # advantage one-hot on row r: the loss is -log p(row r) / tokens
        adv = torch.zeros(s.tokens.shape[0])
        adv[r] = 1.0
        per_row.append(-float(policy_loss(out, targets, mask, adv, cfg).detach()) * float(mask.sum()))
    # the reference: step through the incremental decoder, feeding the drawn tokens
    with torch.inference_mode():
        enc = m.encode(videos, region_mode="project")
        state = m.init_state(enc, s.video_index)
        last = torch.full((s.tokens.shape[0],), cfg.bos_id)
        totals = torch.zeros(s.tokens.shape[0], dtype=torch.float64)
        for t in range(5):
            logp, _, _, state = m.step(enc, state, last)
            _ban(logp, cfg, force_eos=False)
            logp = torch.log_softmax(logp, dim=-1)  # what multinomial draws from: the banned mass shared out
            tok = s.tokens[:, t]
            drawn = (t <= s.lengths) & ~(s.truncated & (t == s.lengths))
            totals += torch.where(drawn, logp.gather(1, tok.clamp(min=0)[:, None])[:, 0].double(), 0.0)
            last = torch.where(tok == cfg.pad_id, torch.full_like(tok, cfg.eos_id), tok)
    assert np.allclose(per_row, totals.numpy(), atol=1e-4)
    assert int(mask.sum()) == int((s.lengths + (~s.truncated).long()).sum())


def test_a_positive_advantage_makes_its_sample_more_likely():
    m, videos = _model(), _videos(n=1)
    m.train()
    s = sample(m, videos, samples=2, max_len=6, generator=torch.Generator().manual_seed(3))
    inputs, targets, mask = policy_inputs(s, m.config)
    adv = torch.tensor([1.0, -1.0])

    def logp_rows():
        with torch.no_grad():
            m.eval()
            out = m(videos, inputs, s.video_index)
            return [-float(policy_loss(out, targets, mask, torch.eye(2)[r], m.config)) for r in range(2)]

    before = logp_rows()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    m.eval()
    policy_loss(m(videos, inputs, s.video_index), targets, mask, adv, m.config).backward()
    opt.step()
    after = logp_rows()
    assert after[0] > before[0] and after[1] < before[1]


def test_baselines():
    rewards = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    assert baselines(rewards, 3, "mean", None).tolist() == [2.5, 2.0, 1.5, 3.0, 3.0, 0.0]
    assert baselines(rewards, 3, "greedy", np.array([1.5, 2.0])).tolist() == [1.5] * 3 + [2.0] * 3
    with pytest.raises(ValueError):
        baselines(rewards, 3, "max", None)


def test_reward_references_use_the_vocabulary_normalisation_untruncated():
    from fcvc_pipeline.captions.vocabulary import CaptionRow

    rows = [CaptionRow("v", "train", "A Man, RUNS fast!", ("a", "man")), CaptionRow("v", "train", "?!", ()),
            CaptionRow("w", "train", "A dog.", ("a", "dog"))]
    assert reward_references(rows) == {"v": ["a man runs fast", ""], "w": ["a dog"]}


def test_a_diverged_model_is_a_clear_error_not_a_sample():
    from fcvc_pipeline.inference.decoding import NonFiniteModelError

    m = _model()
    with torch.no_grad():
        next(m.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteModelError, match="not finite"):
        sample(m, _videos(), samples=2, max_len=4, generator=torch.Generator().manual_seed(0))
