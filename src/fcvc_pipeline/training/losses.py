"""The training loss of Eq. 7, with each term exposed so the trainer can log it.

    L = L_nll + lambda * sum_i (1 - sum_t alpha_{t,i})^2 + mu * sum_{i,j} (1 - sum_t beta_{t,i,j})^2

Normalisation (the paper leaves it open):

- ``nll``: mean negative log-likelihood over the non-pad target tokens of the batch.
- ``frame_penalty``: per caption, sum over frames i of (1 - sum_t alpha_{t,i})^2 where t runs over that
  caption's non-pad steps; then the mean over captions. alpha = the model's ``frame_attn`` (the frame
  weights of its last temporal-attention layer, mean over heads).
- ``region_penalty``: per caption, sum over frames i and regions j of (1 - sum_t beta_{t,i,j})^2 over the
  non-pad steps; then the mean over captions. beta = ``region_attn`` (the last inherited-attention layer).

A penalty is zero (a constant, no gradient) for models without the corresponding attention. The whole
computation is float32, whatever autocast did to the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fcvc_pipeline.errors import MismatchError
from fcvc_pipeline.models.config import ModelConfig
from fcvc_pipeline.models.state import ModelOutput


@dataclass
class LossTerms:
    total: Tensor  # scalar: nll + attn_lambda * frame_penalty + attn_mu * region_penalty
    nll: Tensor  # scalar: mean over non-pad target tokens
    frame_penalty: Tensor  # scalar: mean over captions
    region_penalty: Tensor  # scalar: mean over captions
    tokens: int  # non-pad target tokens

    def to_floats(self) -> dict[str, float]:
        return {"total": float(self.total), "nll": float(self.nll), "frame_penalty": float(self.frame_penalty),
                "region_penalty": float(self.region_penalty), "tokens": self.tokens}


def caption_loss(output: ModelOutput, targets: Tensor, config: ModelConfig, *, label_smoothing: float = 0.0) -> LossTerms:
    """targets [R, T]: the next token at every input position (ends with <eos>, padded with pad_id).

    ``label_smoothing`` eps > 0 trains against (1 - eps) * one-hot + eps * uniform: ``total`` then uses
    (1 - eps) * nll + eps * (mean over the vocabulary of -log p), while ``nll`` stays the plain negative
    log-likelihood (what is logged and compared across runs).
    """
    logits = output.logits
    if targets.shape != logits.shape[:2]:
        raise MismatchError(f"targets have shape {tuple(targets.shape)} but the logits cover {tuple(logits.shape[:2])}")
    mask = targets != config.pad_id  # [R, T]
    tokens = int(mask.sum())
    if label_smoothing > 0:  # one log-softmax for both terms
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        nll = -(picked * mask).sum() / max(tokens, 1)
        uniform = -(log_probs.mean(dim=-1) * mask).sum() / max(tokens, 1)
        objective = (1.0 - label_smoothing) * nll + label_smoothing * uniform
    else:
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=config.pad_id,
                              reduction="sum") / max(tokens, 1)
        objective = nll
    step_mask = mask.float()
    zero = logits.new_zeros((), dtype=torch.float32)
    frame_penalty = zero
    if output.frame_attn is not None:
        totals = (output.frame_attn.float() * step_mask[:, :, None]).sum(dim=1)  # [R, N]
        frame_penalty = ((1.0 - totals) ** 2).sum(dim=1).mean()
    region_penalty = zero
    if output.region_attn is not None:
        totals = (output.region_attn.float() * step_mask[:, :, None, None]).sum(dim=1)  # [R, N, M]
        region_penalty = ((1.0 - totals) ** 2).sum(dim=(1, 2)).mean()
    total = objective + config.attn_lambda * frame_penalty + config.attn_mu * region_penalty
    return LossTerms(total=total, nll=nll, frame_penalty=frame_penalty, region_penalty=region_penalty, tokens=tokens)
