"""Self-critical sequence training (SCST): fine-tune a trained captioner on CIDEr-D itself.

The method: Rennie et al., CVPR 2017, with the baseline of Luo (arXiv 2003.09971, "a better variant of
self-critical sequence training"). For each training video the model draws ``samples`` captions
(``inference.decoding.sample``: multinomial, no teacher forcing); each sample w gets the reward
r(w) = CIDEr-D(w, the video's training references) from :class:`~fcvc_pipeline.evaluation.cider.CiderD`,
whose document frequencies come once from every training video's references; the loss is the policy
gradient

    L = - sum_rows (r(w) - b) * sum_t log p(w_t | w_<t, video)  /  (sampled tokens in the batch)

with the baseline b = the mean reward of the video's *other* samples (``mean``, the default: no extra
decoding, and an unbiased baseline because it does not depend on w) or the reward of the video's greedy
caption (``greedy``, the 2017 paper's). ``xe_weight`` > 0 adds that much of the cross-entropy loss on the
video's reference captions (Eq. 7 with its attention penalties).

Decisions:

- **One forward, no dropout.** Samples are drawn with dropout off (the incremental decoder assumes it), so
  the log-probabilities that carry the gradient are computed by the model's parallel forward over the
  sampled captions with dropout off too: the gradient is that of the policy that drew the samples. The
  reference captions of the cross-entropy term go through the same forward (one call, so DDP sees one
  forward per backward).
- **What counts.** Each drawn token and the drawn ``<eos>``; an ``<eos>`` forced after ``max_len`` tokens
  was not drawn and carries no gradient. ``<pad>``/``<bos>`` are banned in sampling, so their logits are
  removed from the softmax here too.
- **References** are the training captions with the vocabulary's normalisation (lowercase, punctuation
  stripped, not truncated), tokenised once. A video none of whose references has a word left is skipped
  (the caller lists them). A non-finite reward is an error, never a gradient.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fcvc_pipeline.captions.text import normalize_caption
from fcvc_pipeline.captions.vocabulary import CaptionRow, Vocabulary
from fcvc_pipeline.errors import FcvcError
from fcvc_pipeline.evaluation.cider import CiderD
from fcvc_pipeline.inference.decoding import Samples, greedy
from fcvc_pipeline.models.config import ModelConfig
from fcvc_pipeline.models.state import ModelOutput, VideoBatch

SCST_SUM_KEYS = ("samples", "reward", "baseline", "advantage_positive", "pg_loss", "sample_tokens", "steps",
                 "tokens", "nll", "total")


class NonFiniteRewardError(FcvcError):
    """A reward that is not a finite number: training stops instead of taking a step with it."""


def reward_references(rows: Iterable[CaptionRow]) -> dict[str, list[str]]:
    """video id -> its references as the reward sees them: normalised like the vocabulary's tokens, whole."""
    refs: dict[str, list[str]] = {}
    for r in rows:
        refs.setdefault(r.video_id, []).append(" ".join(normalize_caption(r.caption)))
    return refs


@dataclass
class ScstStep:
    """What one SCST step computed: the loss to back-propagate and the figures the epoch record averages."""

    total: Tensor  # scalar
    pg_loss: float
    rewards: np.ndarray  # [R]
    baselines: np.ndarray  # [R]
    sample_tokens: int  # drawn tokens (without <eos>)
    nll: float | None = None  # cross-entropy of the reference captions (when xe_weight > 0)
    tokens: int = 0  # their target tokens


def scst_zero_sums() -> dict[str, float]:
    return dict.fromkeys(SCST_SUM_KEYS, 0.0)


def scst_accumulate(sums: dict[str, float], step: ScstStep) -> None:
    n = float(step.rewards.size)
    sums["samples"] += n
    sums["reward"] += float(step.rewards.sum())
    sums["baseline"] += float(step.baselines.sum())
    sums["advantage_positive"] += float((step.rewards > step.baselines).sum())
    sums["pg_loss"] += step.pg_loss
    sums["total"] += float(step.total.detach())
    sums["steps"] += 1.0
    sums["sample_tokens"] += float(step.sample_tokens)
    if step.nll is not None:
        sums["nll"] += step.nll * step.tokens
        sums["tokens"] += float(step.tokens)


def scst_means(sums: dict[str, float]) -> dict[str, float | None]:
    """The epoch record's training figures of an SCST run (rewards are CIDEr-D on the 0-10 scale of
    pycocoevalcap, like ``val_cider``)."""
    n, steps = max(sums["samples"], 1.0), max(sums["steps"], 1.0)
    return {"train_loss": sums["total"] / steps, "train_pg_loss": sums["pg_loss"] / steps,
            "train_reward": sums["reward"] / n, "train_baseline": sums["baseline"] / n,
            "train_positive_advantage": sums["advantage_positive"] / n,
            "train_sample_length": sums["sample_tokens"] / n,
            "train_nll": sums["nll"] / sums["tokens"] if sums["tokens"] else None}


class Rewards:
    """CIDEr-D rewards of sampled token ids, for the videos of a feature bank."""

    def __init__(self, references: dict[str, list[str]], vocab: Vocabulary):
        self.cider = CiderD(references)
        self.vocab = vocab

    def __call__(self, video_ids: Sequence[str], samples: Samples) -> np.ndarray:
        rows = samples.tokens.cpu().tolist()
        lengths = samples.lengths.cpu().tolist()
        videos = [video_ids[i] for i in samples.video_index.cpu().tolist()]
        words = [self.vocab.decode_tokens(row[:n]) for row, n in zip(rows, lengths)]
        rewards = self.cider.score(videos, words)
        bad = ~np.isfinite(rewards)
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise NonFiniteRewardError(f"the CIDEr-D reward of a caption sampled for video '{videos[i]}' is "
                                       f"{rewards[i]} ({' '.join(words[i])!r})",
                                       hint="this is a bug in the reward; please report it with the run's config.json")
        return rewards

    def greedy_rewards(self, model, videos: VideoBatch, video_ids: Sequence[str], max_len: int) -> np.ndarray:
        """The reward of each video's greedy caption (the ``greedy`` baseline)."""
        hyps = greedy(model, videos, max_len=max_len)
        words = [self.vocab.decode_tokens(h.tokens) for h in hyps]
        return self.cider.score(list(video_ids), words)


def baselines(rewards: np.ndarray, samples_per_video: int, kind: str, greedy_rewards: np.ndarray | None) -> np.ndarray:
    """The baseline of each sample (rows grouped by video, ``samples_per_video`` rows each)."""
    per_video = rewards.reshape(-1, samples_per_video)
    if kind == "mean":
        others = (per_video.sum(axis=1, keepdims=True) - per_video) / (samples_per_video - 1)
        return others.reshape(-1)
    if kind == "greedy":
        assert greedy_rewards is not None
        return np.repeat(greedy_rewards, samples_per_video)
    raise ValueError(f"unknown SCST baseline {kind!r}")


def policy_inputs(samples: Samples, cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    """(inputs, targets, mask) for the forward over the sampled captions: inputs are ``<bos>`` + the drawn
    tokens; targets the drawn tokens and ``<eos>``; the mask keeps drawn positions only."""
    tokens = samples.tokens[:, : int(samples.lengths.max()) + 1] if samples.lengths.numel() else samples.tokens
    bos = torch.full_like(tokens[:, :1], cfg.bos_id)
    inputs = torch.cat([bos, tokens[:, :-1]], dim=1)
    inputs = torch.where(inputs == cfg.eos_id, torch.full_like(inputs, cfg.pad_id), inputs)
    steps = torch.arange(tokens.shape[1], device=tokens.device)
    mask = steps[None, :] <= samples.lengths[:, None]
    mask &= ~(samples.truncated[:, None] & (steps[None, :] == samples.lengths[:, None]))
    return inputs, tokens, mask


def policy_loss(output: ModelOutput, targets: Tensor, mask: Tensor, advantage: Tensor, cfg: ModelConfig) -> Tensor:
    """- sum (advantage * log p(drawn token)) over the drawn tokens, divided by their number (float32)."""
    logits = output.logits.float()
    banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    banned[[cfg.pad_id, cfg.bos_id]] = True
    log_probs = torch.log_softmax(logits.masked_fill(banned, -math.inf), dim=-1)
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    picked = torch.where(mask, picked, torch.zeros_like(picked))  # <pad> targets hold -inf
    return -(advantage[:, None] * picked).sum() / mask.sum().clamp(min=1)


def pad_cat(a: Tensor, b: Tensor, pad_id: int) -> Tensor:
    """Stack two [R, T] token tensors of different T, padding the shorter with ``pad_id``."""
    width = max(a.shape[1], b.shape[1])

    def widen(t: Tensor) -> Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad_id)
    return torch.cat([widen(a), widen(b)], dim=0)


def slice_output(output: ModelOutput, rows: slice, width: int) -> ModelOutput:
    """Rows and the first ``width`` positions of a model output (one forward serving two losses)."""
    def cut(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[rows, :width]
    return ModelOutput(logits=output.logits[rows, :width], frame_attn=cut(output.frame_attn),
                       region_attn=cut(output.region_attn))
