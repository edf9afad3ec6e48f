"""Stored features in memory: the videos a model trains on or captions, stacked into one bank.

Read once from a :class:`~fcvc_pipeline.features.store.FeatureStore`; a batch of rows becomes the
:class:`~fcvc_pipeline.models.VideoBatch` the captioners take (cast to float32 per batch, so the bank
keeps the store's float16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from fcvc_pipeline import progress
from fcvc_pipeline.errors import MismatchError
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.models.state import VideoBatch


@dataclass
class FeatureBank:
    """Features of a set of videos, stacked (kept in the store's dtype; cast per batch)."""

    video_ids: list[str]
    frames: torch.Tensor  # [V, N, frame_dim]
    clips: torch.Tensor | None  # [V, N, clip_dim]
    regions: torch.Tensor | None  # [V, N, M, region_dim]

    def index(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.video_ids)}

    def to(self, device: torch.device) -> "FeatureBank":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return FeatureBank(self.video_ids, move(self.frames), move(self.clips), move(self.regions))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.frames, self.clips, self.regions) if t is not None)

    def batch(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32):
        """The :class:`VideoBatch` of the videos at ``rows`` (indices into this bank)."""
        pick = lambda t: None if t is None else t.index_select(0, rows.to(t.device)).to(dtype)  # noqa: E731
        return VideoBatch(frames=pick(self.frames), clips=pick(self.clips), regions=pick(self.regions))


def load_feature_bank(store: FeatureStore, video_ids: Sequence[str], *, regions: bool) -> FeatureBank:
    """Read the given (complete) videos from the store into memory, once."""
    frames, clips, regs = [], [], []
    for vid in progress.bar(video_ids, desc="loading features", unit="video"):
        f = store.read_video(vid)
        frames.append(f.frame_features)
        clips.append(f.clip_features)
        if regions:
            if f.region_features is None:
                raise MismatchError(f"video {vid!r} in {store.path} has no region features, which this model needs")
            regs.append(f.region_features)
    has_clips = all(c is not None for c in clips) and len(clips) > 0
    return FeatureBank(
        video_ids=list(video_ids),
        frames=torch.from_numpy(np.stack(frames)),
        clips=torch.from_numpy(np.stack(clips)) if has_clips else None,
        regions=torch.from_numpy(np.stack(regs)) if regions else None,
    )


