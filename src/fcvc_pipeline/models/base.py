"""The interface every captioner implements, and the frame-feature projection they share.

Teacher forcing: ``model(videos, tokens, video_index) -> ModelOutput``. Decoding, one token at a time:

    encoded = model.encode(videos)                       # per-video work, once
    state = model.init_state(encoded, video_index)       # one row per hypothesis
    log_probs, frame_attn, region_attn, state = model.step(encoded, state, last_tokens)
    state.reorder(beam_rows)                             # beams picked their parents

``forward`` is exactly ``decode(encode(videos), tokens, video_index)``, and ``step`` reproduces the
logits of ``decode`` position by position (tested).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fcvc_pipeline.errors import MismatchError
from fcvc_pipeline.models.config import ModelConfig
from fcvc_pipeline.models.state import ModelOutput, StepOutput, VideoBatch


class VideoProjection(nn.Module):
    """f_n = W_f [pooled_n ; clip_n] + b (+ p_n) -> d, written as two linears so absent clips simply drop out.

    Without clip features (``clip_dim`` 0, or a batch with ``clips`` None) the clip half of the input is
    zero, which is the same as leaving its term out. p_n is a learned frame-position embedding, present
    when ``cfg.use_frame_positions`` (the FCVC family by default, not the LSTM).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.frame_dim, self.clip_dim = cfg.frame_dim, cfg.clip_dim
        self.frame = nn.Linear(cfg.frame_dim, cfg.d_model)
        self.clip = nn.Linear(cfg.clip_dim, cfg.d_model, bias=False) if cfg.clip_dim > 0 else None
        self.position = (nn.Parameter(0.02 * torch.randn(cfg.num_frames, cfg.d_model))
                         if cfg.use_frame_positions else None)

    def forward(self, videos: VideoBatch) -> Tensor:
        """-> [B, N, d]."""
        check_video_batch(videos, self.frame_dim, self.clip_dim)
        f = self.frame(videos.frames)
        if self.clip is not None and videos.clips is not None:
            f = f + self.clip(videos.clips)
        if self.position is not None:
            n = f.shape[1]
            if n > self.position.shape[0]:
                raise MismatchError(f"{n} frames per video, but the model was built for {self.position.shape[0]}")
            f = f + self.position[:n].to(f.dtype)
        return f


def check_video_batch(videos: VideoBatch, frame_dim: int, clip_dim: int, region_dim: int | None = None) -> None:
    """Clear errors for features that do not fit the model (instead of a matmul shape error)."""
    fr = videos.frames
    if fr.dim() != 3 or fr.shape[-1] != frame_dim:
        raise MismatchError(f"frame features have shape {tuple(fr.shape)}; the model expects "
                            f"[videos, frames, {frame_dim}]")
    B, N = fr.shape[:2]
    if videos.clips is not None and clip_dim > 0 and tuple(videos.clips.shape) != (B, N, clip_dim):
        raise MismatchError(f"clip features have shape {tuple(videos.clips.shape)}; the model expects "
                            f"[{B}, {N}, {clip_dim}]")
    if region_dim is not None:
        if videos.regions is None:
            raise MismatchError("this model uses inherited attention and needs region features, "
                                "but the batch has none (extract them with `fcvc extract`)")
        r = videos.regions
        if r.dim() != 4 or tuple(r.shape[:2]) != (B, N) or r.shape[-1] != region_dim:
            raise MismatchError(f"region features have shape {tuple(r.shape)}; the model expects "
                                f"[{B}, {N}, regions, {region_dim}]")


class CaptionModel(nn.Module):
    """Base class of the FCVC variants and the LSTM baseline (see the module docstring)."""

    config: ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    # .. teacher forcing ...................................................................................
    def forward(self, videos: VideoBatch, tokens: Tensor, video_index: Tensor | None = None) -> ModelOutput:
        """tokens [R, T] (<bos> first, padded with pad_id); row r captions video video_index[r]."""
        self.check_tokens(tokens)
        encoded = self.encode(videos, row_steps=tokens.numel())
        return self.decode(encoded, tokens, video_index)

    def check_tokens(self, tokens: Tensor) -> None:
        cfg = self.config
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise MismatchError(f"tokens must be an integer tensor [captions, steps] (got {tuple(tokens.shape)}, "
                                f"{tokens.dtype})")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= cfg.vocab_size):
            raise MismatchError(f"token ids must lie in [0, {cfg.vocab_size}) for this model's vocabulary "
                                f"(got {int(tokens.min())}..{int(tokens.max())}): model and vocabulary do not match")

    # .. per-video work and decoding (implemented by each model) ................................................
    def encode(self, videos: VideoBatch, *, row_steps: int | None = None, region_mode: str = "auto") -> Any:
        """Everything computed once per video. ``row_steps`` (caption rows x steps that will read these
        videos) and ``region_mode`` ("auto", "project", "fold") only steer how region features are kept."""
        raise NotImplementedError

    def decode(self, encoded: Any, tokens: Tensor, video_index: Tensor | None = None) -> ModelOutput:
        raise NotImplementedError

    def init_state(self, encoded: Any, video_index: Tensor) -> Any:
        raise NotImplementedError

    def step(self, encoded: Any, state: Any, last_tokens: Tensor) -> StepOutput:
        """last_tokens [R] (the previous output, <bos> first) -> StepOutput with log_probs [R, V]."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
