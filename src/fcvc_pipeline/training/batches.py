"""Training batches: captions as token ids, tied to the rows of a feature bank, packed video by video.

One example is one (video, caption) pair. Batches are built video by video: a batch holds *all* the
captions of the videos in it (up to ``batch_size`` captions), so the model encodes each video once
(the 15 x 64 x 2048 region projection is the costliest op) and shares it across its captions through
``video_index``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from fcvc_pipeline.captions.vocabulary import CaptionRow, Vocabulary
from fcvc_pipeline.errors import MismatchError
from fcvc_pipeline.features.store import FeatureStore


@dataclass
class CaptionSet:
    """Token-id captions of one split, each tied to a row of a :class:`FeatureBank`."""

    video_rows: torch.Tensor  # [C] int64: feature-bank row of each caption
    tokens: list[list[int]]  # [C] token ids without <bos>/<eos> (already truncated to max_len)

    def __len__(self) -> int:
        return len(self.tokens)


def build_caption_set(rows: Sequence[CaptionRow], vocab: Vocabulary, bank_index: dict[str, int]) -> CaptionSet:
    keep = [r for r in rows if r.video_id in bank_index]
    return CaptionSet(
        video_rows=torch.tensor([bank_index[r.video_id] for r in keep], dtype=torch.long),
        tokens=[vocab.encode(r.tokens) for r in keep],
    )


def without_videos(captions: CaptionSet, rows: set[int]) -> CaptionSet:
    """The caption set without the captions of these bank rows."""
    keep = [i for i, r in enumerate(captions.video_rows.tolist()) if r not in rows]
    return CaptionSet(video_rows=captions.video_rows[keep], tokens=[captions.tokens[i] for i in keep])


@dataclass
class Batch:
    video_rows: torch.Tensor  # [B] bank rows of the distinct videos in the batch
    video_index: torch.Tensor  # [R] position in video_rows of each caption
    inputs: torch.Tensor  # [R, T] <bos> w_1 .. w_n <pad>...
    targets: torch.Tensor  # [R, T] w_1 .. w_n <eos> <pad>...


def _pack(captions: CaptionSet, batch_size: int, generator: torch.Generator | None, per_video: int | None = None):
    """(caption ids per video row, the videos of each batch): videos shuffled when ``generator`` is given,
    then packed whole, in order, until the next one would exceed ``batch_size`` captions. ``per_video``:
    count each video as that many rows instead of its captions (self-critical training's samples)."""
    by_video: dict[int, list[int]] = {}
    for i, row in enumerate(captions.video_rows.tolist()):
        by_video.setdefault(row, []).append(i)
    videos = sorted(by_video)
    if generator is not None:
        videos = [videos[i] for i in torch.randperm(len(videos), generator=generator).tolist()]
    groups, current, size = [], [], 0
    for v in videos:
        rows = per_video or len(by_video[v])
        if current and size + rows > batch_size:
            groups.append(current)
            current, size = [], 0
        current.append(v)
        size += rows
    if current:
        groups.append(current)
    return by_video, groups


def count_batches(captions: CaptionSet, batch_size: int, per_video: int | None = None) -> int:
    """Batches of the unshuffled packing, without collating them (a shuffled epoch may pack into a batch
    more or fewer; the trainer uses this count only to plan its learning-rate schedule)."""
    return len(_pack(captions, batch_size, None, per_video)[1])


def make_batches(captions: CaptionSet, batch_size: int, *, generator: torch.Generator | None,
                 vocab: Vocabulary, per_video: int | None = None) -> list[Batch]:
    """Group captions by video, shuffle the videos (when ``generator`` is given), pack whole videos
    (``per_video``: as in :func:`_pack`)."""
    by_video, groups = _pack(captions, batch_size, generator, per_video)
    return [_collate(g, by_video, captions, vocab) for g in groups]


def _collate(videos: list[int], by_video: dict[int, list[int]], captions: CaptionSet, vocab: Vocabulary) -> Batch:
    caption_ids = [c for v in videos for c in by_video[v]]
    video_index = [j for j, v in enumerate(videos) for _ in by_video[v]]
    longest = max(len(captions.tokens[c]) for c in caption_ids) + 1
    inputs = torch.full((len(caption_ids), longest), vocab.pad_id, dtype=torch.long)
    targets = torch.full((len(caption_ids), longest), vocab.pad_id, dtype=torch.long)
    for r, c in enumerate(caption_ids):
        ids = captions.tokens[c]
        inputs[r, : len(ids) + 1] = torch.tensor([vocab.bos_id, *ids])
        targets[r, : len(ids) + 1] = torch.tensor([*ids, vocab.eos_id])
    return Batch(torch.tensor(videos, dtype=torch.long), torch.tensor(video_index, dtype=torch.long), inputs, targets)


def resolve_training_videos(store: FeatureStore, rows: Sequence[CaptionRow], store_path: Path) -> tuple[list[str], list[str]]:
    """Videos with both captions and features, and the annotated ones without features.

    Refuses a store and a vocabulary that share no video (they do not belong together).
    """
    have = set(store.completed_ids())
    annotated = sorted({r.video_id for r in rows})
    usable = [v for v in annotated if v in have]
    missing = [v for v in annotated if v not in have]
    if not usable:
        raise MismatchError(
            f"the feature store {store_path} and the vocabulary share no video "
            f"({len(annotated)} annotated, {len(have)} with features; e.g. {annotated[:3]} vs {sorted(have)[:3]})",
            hint="extract the videos of this annotation file, or point --workdir at the matching work directory")
    return usable, missing
