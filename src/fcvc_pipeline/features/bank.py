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
from fcvc_pipeline.errors import FcvcError, MismatchError
from fcvc_pipeline.features.store import DamagedVideoError, FeatureStore
from fcvc_pipeline.models.state import VideoBatch
from fcvc_pipeline.naming import short_id


class DamagedFeaturesError(FcvcError):
    """Some of the videos to load have damaged features; lists them (video, file, reason)."""

    kind = "damaged"

    def __init__(self, store_path, damaged: list[DamagedVideoError], total: int, *, shown: int = 10):
        self.damaged = damaged
        lines = [f"  {short_id(e.video_id)}: {e.path}: {e.reason}" for e in damaged[:shown]]
        if len(damaged) > shown:
            lines.append(f"  ... and {len(damaged) - shown} more")
        super().__init__(f"{len(damaged)} of {total} videos in {store_path} have damaged features; nothing was "
                         f"trained or captioned:\n" + "\n".join(lines),
                         hint="`fcvc extract --verify VIDEOS...` re-extracts them; `fcvc train --skip-damaged` "
                              "trains without them")


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
    """Read the given (complete) videos from the store into memory, once.

    Every video is checked as it is read (``FeatureStore.read_video``); damaged ones are all read
    and reported together, in one :class:`DamagedFeaturesError`.
    """
    frames, clips, regs = [], [], []
    damaged: list[DamagedVideoError] = []
    for vid in progress.bar(video_ids, desc="loading features", unit="video"):
        try:
            f = store.read_video(vid)
        except DamagedVideoError as e:
            damaged.append(e)
            continue
        if damaged:
            continue  # keep checking, keep no memory
        frames.append(f.frame_features)
        clips.append(f.clip_features)
        if regions:
            if f.region_features is None:
                raise MismatchError(f"video {vid!r} in {store.path} has no region features, which this model needs")
            regs.append(f.region_features)
    if damaged:
        raise DamagedFeaturesError(store.path, damaged, len(video_ids))
    has_clips = all(c is not None for c in clips) and len(clips) > 0
    return FeatureBank(
        video_ids=list(video_ids),
        frames=torch.from_numpy(np.stack(frames)),
        clips=torch.from_numpy(np.stack(clips)) if has_clips else None,
        regions=torch.from_numpy(np.stack(regs)) if regions else None,
    )


