"""Types shared by every captioning model: the video batch, the outputs, and the row -> video map.

A batch holds B videos and R caption rows; row r belongs to video ``video_index[r]``. The per-video
encodings (the frame and region features projected to d) are computed once per video and shared by its
rows, either by gathering (small tensors) or through :class:`Rows` (the big region tensor is never copied
per row: rows are grouped per video and attend in one batched matmul).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from fcvc_pipeline.errors import MismatchError


@dataclass
class VideoBatch:
    """Features of B videos (float)."""

    frames: Tensor  # [B, N, frame_dim] pooled Inception-V3
    clips: Tensor | None = None  # [B, N, clip_dim] C3D, one clip per frame
    regions: Tensor | None = None  # [B, N, M, region_dim]; may be None for models that do not use regions

    @property
    def num_videos(self) -> int:
        return int(self.frames.shape[0])

    def to(self, device, dtype: torch.dtype | None = None) -> "VideoBatch":
        move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return VideoBatch(move(self.frames), move(self.clips), move(self.regions))

    def index_select(self, idx: Tensor) -> "VideoBatch":
        pick = lambda t: None if t is None else t.index_select(0, idx.to(t.device))  # noqa: E731
        return VideoBatch(pick(self.frames), pick(self.clips), pick(self.regions))


@dataclass
class ModelOutput:
    logits: Tensor  # [R, T, V]
    frame_attn: Tensor | None = None  # [R, T, N] float32: frame weights (mean over heads) of the last TA layer
    region_attn: Tensor | None = None  # [R, T, N, M] float32: region weights of the last IA layer


class StepOutput(NamedTuple):
    """One incremental decoding step (unpacks as ``log_probs, frame_attn, region_attn, state``)."""

    log_probs: Tensor  # [R, V] float32
    frame_attn: Tensor | None  # [R, N]
    region_attn: Tensor | None  # [R, N, M]
    state: object  # the model's decoder state, advanced by one token


class Rows:
    """Which video each caption row belongs to, and how to batch rows per video.

    ``group`` packs a per-row tensor ``[R, T, F]`` into ``[B, C*T, F]`` (C = most rows of one video, empty
    slots zero) so that a per-video tensor ``[B, K, F']`` can be used by ``torch.bmm`` without copying it
    for every row; ``ungroup`` undoes it. Three layouts, picked once: one row per video in order (nothing
    to do), equal-sized contiguous blocks (a reshape: beam search, repeated captions), anything else (a
    scatter into padded slots).
    """

    def __init__(self, index: Tensor, num_videos: int):
        self.index = index  # [R] int64
        self.num_videos = num_videos
        R = index.numel()
        if R == num_videos and torch.equal(index, torch.arange(R, device=index.device)):
            self.layout, self.per_video, self._slot = "identity", 1, None
            return
        counts = torch.bincount(index, minlength=num_videos)
        self.per_video = max(int(counts.max()), 1) if R else 1
        contiguous = R == self.per_video * num_videos and bool((index[1:] >= index[:-1]).all())
        if contiguous:
            self.layout, self._slot = "blocks", None
            return
        # rank of each row among the rows of its video -> flat slot video * C + rank
        order = torch.argsort(index, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(index)
        rank[order] = torch.arange(R, device=index.device) - starts[index[order]]
        self.layout, self._slot = "scatter", index * self.per_video + rank

    @property
    def num_rows(self) -> int:
        return self.index.numel()

    def gather(self, per_video: Tensor) -> Tensor:
        """[B, ...] -> [R, ...] (for small per-video tensors)."""
        return per_video if self.layout == "identity" else per_video.index_select(0, self.index)

    def group(self, x: Tensor) -> Tensor:
        """[R, T, F] -> [B, C*T, F]."""
        R, T, F = x.shape
        B, C = self.num_videos, self.per_video
        if self.layout == "identity":
            return x
        if self.layout == "blocks":
            return x.reshape(B, C * T, F)
        packed = x.new_zeros(B * C, T, F).index_copy(0, self._slot, x)
        return packed.view(B, C * T, F)

    def ungroup(self, y: Tensor, steps: int) -> Tensor:
        """[B, C*T, F] -> [R, T, F]."""
        F = y.shape[-1]
        if self.layout == "identity":
            return y
        if self.layout == "blocks":
            return y.reshape(self.num_rows, steps, F)
        return y.reshape(self.num_videos * self.per_video, steps, F).index_select(0, self._slot)


def default_video_index(video_index: Tensor | None, rows: int, num_videos: int, device) -> Tensor:
    """``video_index`` checked, or ``arange(R)`` when it is None (then R must equal B)."""
    if video_index is None:
        if rows != num_videos:
            raise MismatchError(f"{rows} caption rows for {num_videos} videos: pass video_index to say which "
                                f"video each row belongs to")
        return torch.arange(rows, device=device)
    if video_index.dim() != 1 or video_index.numel() != rows:
        raise MismatchError(f"video_index must have one entry per caption row ({rows}); got shape "
                            f"{tuple(video_index.shape)}")
    video_index = video_index.to(device=device, dtype=torch.long)
    if rows and (int(video_index.min()) < 0 or int(video_index.max()) >= num_videos):
        raise MismatchError(f"video_index values must lie in [0, {num_videos}) (the batch has {num_videos} videos)")
    return video_index
