"""Unit tests of the training batches (``training/batches.py``) and the feature bank (``features/bank.py``).

A tiny caption table: 7 videos with 1..8 captions each, every caption a distinct token sequence so a
batch row can be traced back to the caption it came from.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from fcvc_pipeline.captions.vocabulary import SPECIALS, CaptionRow, Vocabulary
from fcvc_pipeline.errors import MismatchError
from fcvc_pipeline.features.bank import FeatureBank, load_feature_bank
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.models import VideoBatch
from fcvc_pipeline.training.batches import (
    CaptionSet,
    build_caption_set,
    count_batches,
    make_batches,
    resolve_training_videos,
)

WORDS = ("a", "man", "dog", "runs", "jumps", "on", "the", "grass", "red", "car")
VOCAB = Vocabulary(tokens=(*SPECIALS, *WORDS), max_len=6)
CAPTIONS_PER_VIDEO = {"v0": 3, "v1": 1, "v2": 5, "v3": 2, "v4": 8, "v5": 4, "v6": 2}
BATCH_SIZE = 6


def caption_rows() -> list[CaptionRow]:
    """Caption k starts with the (distinct) pair WORDS[k % 10], WORDS[k // 10], then 0..4 more words."""
    rows, k = [], 0
    for vid, n in CAPTIONS_PER_VIDEO.items():
        for _ in range(n):
            tokens = (WORDS[k % 10], WORDS[k // 10], *WORDS[3:3 + k % 5])
            rows.append(CaptionRow(vid, "train", " ".join(tokens), tokens))
            k += 1
    return rows


BANK_INDEX = {vid: i for i, vid in enumerate(sorted(CAPTIONS_PER_VIDEO))}


@pytest.fixture(scope="module")
def captions() -> CaptionSet:
    return build_caption_set(caption_rows(), VOCAB, BANK_INDEX)


def decoded_rows(batch) -> list[tuple[int, tuple[int, ...]]]:
    """(bank row, token ids) of every caption row of a batch, read back from ``targets``."""
    out = []
    for r in range(batch.targets.shape[0]):
        t = batch.targets[r].tolist()
        out.append((int(batch.video_rows[batch.video_index[r]]), tuple(t[:t.index(VOCAB.eos_id)])))
    return out


def batch_signature(batches) -> list[list[int]]:
    return [b.video_rows.tolist() for b in batches]


# -- build_caption_set -----------------------------------------------------------------------------
def test_build_caption_set_ties_captions_to_bank_rows_and_encodes_them():
    rows = [CaptionRow("v1", "train", "a dog", ("a", "dog")),
            CaptionRow("gone", "train", "a man", ("a", "man")),  # no features: dropped
            CaptionRow("v0", "train", "a zebra runs", ("a", "zebra", "runs"))]
    cs = build_caption_set(rows, VOCAB, {"v0": 0, "v1": 5})
    assert len(cs) == 2
    assert cs.video_rows.dtype == torch.long and cs.video_rows.tolist() == [5, 0]
    assert cs.tokens == [[VOCAB.id("a"), VOCAB.id("dog")], [VOCAB.id("a"), VOCAB.unk_id, VOCAB.id("runs")]]
    assert all(VOCAB.bos_id not in t and VOCAB.eos_id not in t for t in cs.tokens)


def test_the_fixture_has_distinct_captions(captions):
    assert len(captions) == sum(CAPTIONS_PER_VIDEO.values())
    assert len({tuple(t) for t in captions.tokens}) == len(captions)


# -- make_batches ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [None, 0, 1])
def test_every_caption_appears_exactly_once_per_epoch(captions, seed):
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    batches = make_batches(captions, BATCH_SIZE, generator=gen, vocab=VOCAB)
    got = Counter(row for b in batches for row in decoded_rows(b))
    want = Counter(zip(captions.video_rows.tolist(), (tuple(t) for t in captions.tokens)))
    assert got == want and sum(got.values()) == len(captions)


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_videos_are_whole_and_batches_respect_the_size(captions, seed):
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    batches = make_batches(captions, BATCH_SIZE, generator=gen, vocab=VOCAB)
    per_row = Counter(captions.video_rows.tolist())
    seen: list[int] = []
    for b in batches:
        videos = b.video_rows.tolist()
        assert len(set(videos)) == len(videos)  # each video once per batch
        seen.extend(videos)
        for j, v in enumerate(videos):  # all captions of the video are here
            assert int((b.video_index == j).sum()) == per_row[v]
        rows = b.inputs.shape[0]
        assert rows == sum(per_row[v] for v in videos)
        assert rows <= BATCH_SIZE or len(videos) == 1, (videos, rows)
    assert sorted(seen) == sorted(per_row)  # each video in exactly one batch
    big = [b for b in batches if b.inputs.shape[0] > BATCH_SIZE]
    assert [b.video_rows.tolist() for b in big] == [[BANK_INDEX["v4"]]]  # 8 captions: alone, over the size


def test_rows_are_bos_words_and_words_eos_padded(captions):
    for b in make_batches(captions, BATCH_SIZE, generator=torch.Generator().manual_seed(3), vocab=VOCAB):
        assert b.inputs.dtype == b.targets.dtype == b.video_index.dtype == b.video_rows.dtype == torch.long
        assert b.inputs.shape == b.targets.shape
        R, T = b.inputs.shape
        assert b.video_index.shape == (R,)
        assert int(b.video_index.min()) == 0 and int(b.video_index.max()) == len(b.video_rows) - 1
        lengths = []
        for r in range(R):
            inp, tgt = b.inputs[r].tolist(), b.targets[r].tolist()
            n = tgt.index(VOCAB.eos_id)  # words in this caption
            lengths.append(n)
            assert inp[0] == VOCAB.bos_id
            assert inp[1:n + 1] == tgt[:n]  # targets are inputs shifted by one
            assert all(w not in (VOCAB.pad_id, VOCAB.bos_id, VOCAB.eos_id) for w in tgt[:n])
            assert inp[n + 1:] == [VOCAB.pad_id] * (T - n - 1)
            assert tgt[n + 1:] == [VOCAB.pad_id] * (T - n - 1)
        assert T == max(lengths) + 1  # padded to the longest caption of the batch only


def test_a_caption_without_words_is_bos_then_eos():
    cs = CaptionSet(video_rows=torch.tensor([0, 0]), tokens=[[], [VOCAB.id("dog")]])
    (b,) = make_batches(cs, 4, generator=None, vocab=VOCAB)
    assert b.inputs.tolist() == [[VOCAB.bos_id, VOCAB.pad_id], [VOCAB.bos_id, VOCAB.id("dog")]]
    assert b.targets.tolist() == [[VOCAB.eos_id, VOCAB.pad_id], [VOCAB.id("dog"), VOCAB.eos_id]]


def test_the_same_seed_gives_the_same_batches_and_another_seed_another_order(captions):
    def epoch(seed):
        return make_batches(captions, BATCH_SIZE, generator=torch.Generator().manual_seed(seed), vocab=VOCAB)

    a, b = epoch(7), epoch(7)
    assert batch_signature(a) == batch_signature(b)
    for x, y in zip(a, b):
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
        assert torch.equal(x.video_index, y.video_index)
    orders = {tuple(v for b in epoch(seed) for v in b.video_rows.tolist()) for seed in range(5)}
    assert len(orders) > 1  # the seed changes the order of the videos
    assert tuple(v for b in epoch(8) for v in b.video_rows.tolist()) != \
        tuple(v for b in epoch(7) for v in b.video_rows.tolist())
    # one generator over two epochs: a new order each epoch
    gen = torch.Generator().manual_seed(7)
    first = make_batches(captions, BATCH_SIZE, generator=gen, vocab=VOCAB)
    second = make_batches(captions, BATCH_SIZE, generator=gen, vocab=VOCAB)
    assert batch_signature(first) == batch_signature(a) and batch_signature(second) != batch_signature(first)


def test_without_a_generator_videos_are_packed_greedily_in_row_order(captions):
    batches = make_batches(captions, BATCH_SIZE, generator=None, vocab=VOCAB)
    # v0..v6 have 3 1 5 2 8 4 2 captions: [3+1] [5] [2] [8] [4+2]
    assert batch_signature(batches) == [[0, 1], [2], [3], [4], [5, 6]]
    for size in (1, 2, 5, 6, 8, 9, 100):
        assert count_batches(captions, size) == len(make_batches(captions, size, generator=None, vocab=VOCAB))
    assert count_batches(captions, BATCH_SIZE) == 5
    assert count_batches(captions, 100) == 1 and count_batches(captions, 1) == len(CAPTIONS_PER_VIDEO)
    empty = CaptionSet(video_rows=torch.zeros(0, dtype=torch.long), tokens=[])
    assert count_batches(empty, 4) == 0 and make_batches(empty, 4, generator=None, vocab=VOCAB) == []


# -- the store side: which videos train, and the bank ---------------------------------------------
N, M, D, C = 3, 4, 8, 5


def write_store(path, videos: dict[str, int], *, clips: bool = False, regions: bool = True) -> FeatureStore:
    store = FeatureStore.create(path, {"frames": N, "dtype": "float16"})
    for vid, seed in videos.items():
        rng = np.random.default_rng(seed)
        arrays = {"frame_indices": np.arange(N, dtype=np.int32),
                  "frame_features": rng.standard_normal((N, D)).astype(np.float32)}
        if regions:
            arrays["region_features"] = rng.standard_normal((N, M, D)).astype(np.float32)
        if clips:
            arrays["clip_features"] = rng.standard_normal((N, C)).astype(np.float32)
        store.write_video(vid, arrays, {})
    return store


def test_resolve_training_videos_lists_usable_and_missing_and_refuses_no_overlap(tmp_path):
    store = write_store(tmp_path / "f.zarr", {"v0": 0, "v2": 2, "other": 9})
    store.record_failure("v1", path="/v1.mp4", stage="decode", error="x")  # failed: has no features
    usable, missing = resolve_training_videos(store, caption_rows(), tmp_path / "f.zarr")
    assert usable == ["v0", "v2"]
    assert missing == ["v1", "v3", "v4", "v5", "v6"]

    alien = [CaptionRow("zz1", "train", "a dog", ("a", "dog")), CaptionRow("zz2", "train", "a car", ("a", "car"))]
    with pytest.raises(MismatchError) as e:
        resolve_training_videos(store, alien, tmp_path / "f.zarr")
    text = str(e.value)
    assert str(tmp_path / "f.zarr") in text and "share no video" in text
    assert "2 annotated" in text and "3 with features" in text and "zz1" in text and "other" in text
    assert e.value.hint and "--workdir" in e.value.hint


def test_feature_bank_batches_are_float32_rows_in_the_asked_order(tmp_path):
    ids = {"a": 0, "b/1": 1, "c": 2}
    store = write_store(tmp_path / "f.zarr", ids, clips=True)
    order = ["c", "a", "b/1"]
    bank = load_feature_bank(store, order, regions=True)
    assert bank.video_ids == order and bank.index() == {"c": 0, "a": 1, "b/1": 2}
    assert bank.frames.dtype == torch.float16 and bank.frames.shape == (3, N, D)  # kept in the store's dtype
    assert bank.clips.shape == (3, N, C) and bank.regions.shape == (3, N, M, D)

    rows = torch.tensor([2, 0, 2])
    vb = bank.batch(rows)
    assert isinstance(vb, VideoBatch) and vb.num_videos == 3
    for name, stored in (("frames", "frame_features"), ("clips", "clip_features"), ("regions", "region_features")):
        t = getattr(vb, name)
        assert t.dtype == torch.float32, name
        for k, r in enumerate(rows.tolist()):
            want = store.read_video(order[r]).__getattribute__(stored).astype(np.float32)
            np.testing.assert_array_equal(t[k].numpy(), want, err_msg=f"{name} row {k}")
    assert bank.batch(torch.tensor([1]), dtype=torch.float64).frames.dtype == torch.float64
    assert bank.nbytes() == 2 * (3 * N * D + 3 * N * C + 3 * N * M * D)


def test_feature_bank_without_clips_or_regions(tmp_path):
    store = write_store(tmp_path / "f.zarr", {"a": 0, "b": 1}, regions=False)
    bank = load_feature_bank(store, ["b", "a"], regions=False)
    vb = bank.batch(torch.tensor([1]))
    assert bank.clips is None and bank.regions is None and vb.clips is None and vb.regions is None
    np.testing.assert_array_equal(vb.frames[0].numpy(), store.read_video("a").frame_features.astype(np.float32))
    with pytest.raises(MismatchError) as e:
        load_feature_bank(store, ["a"], regions=True)
    assert "region features" in str(e.value) and "'a'" in str(e.value)


def test_caption_rows_index_the_bank_they_were_built_for(tmp_path):
    store = write_store(tmp_path / "f.zarr", {"v2": 2, "v0": 0})
    usable, _ = resolve_training_videos(store, caption_rows(), tmp_path / "f.zarr")
    bank = load_feature_bank(store, usable, regions=True)
    cs = build_caption_set(caption_rows(), VOCAB, bank.index())
    assert len(cs) == CAPTIONS_PER_VIDEO["v0"] + CAPTIONS_PER_VIDEO["v2"]
    (b,) = make_batches(cs, 100, generator=None, vocab=VOCAB)
    vb = bank.batch(b.video_rows)
    per_row = vb.frames.index_select(0, b.video_index)  # each caption row gets its own video's frames
    for r, vid_row in enumerate(b.video_rows[b.video_index].tolist()):
        np.testing.assert_array_equal(per_row[r].numpy(),
                                      store.read_video(bank.video_ids[vid_row]).frame_features.astype(np.float32))


def test_feature_bank_to_keeps_everything(tmp_path):
    bank = FeatureBank(["x"], torch.ones(1, N, D, dtype=torch.float16), None, torch.zeros(1, N, M, D))
    moved = bank.to(torch.device("cpu"))
    assert moved.video_ids == ["x"] and moved.clips is None
    assert torch.equal(moved.frames, bank.frames) and torch.equal(moved.regions, bank.regions)
