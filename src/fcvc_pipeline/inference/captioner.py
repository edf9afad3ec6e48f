"""Captioning a bank of in-memory features with a trained model (validation, scoring, ``fcvc caption``)."""

from __future__ import annotations

from typing import Sequence

import torch

from fcvc_pipeline.training.batches import FeatureBank
from fcvc_pipeline.captions.vocabulary import Vocabulary


@torch.inference_mode()
def caption_bank(model, bank: FeatureBank, vocab: Vocabulary, *, rows: Sequence[int] | None = None,
                 beam_size: int = 1, max_len: int = 20, length_penalty: float = 1.0,
                 batch_videos: int = 32, device: torch.device | str = "cpu") -> dict[str, object]:
    """video id -> :class:`fcvc_pipeline.inference.decoding.Hypothesis` for the bank rows given (all by default)."""
    from fcvc_pipeline.inference.decoding import generate

    was_training = model.training
    model.eval()
    rows = list(range(len(bank.video_ids))) if rows is None else list(rows)
    out: dict[str, object] = {}
    try:
        for start in range(0, len(rows), batch_videos):
            chunk = torch.tensor(rows[start:start + batch_videos], dtype=torch.long)
            videos = bank.batch(chunk).to(device)
            hyps = generate(model, videos, beam_size=beam_size, max_len=max_len, length_penalty=length_penalty)
            for r, h in zip(chunk.tolist(), hyps):
                out[bank.video_ids[r]] = h
    finally:
        model.train(was_training)
    return out
