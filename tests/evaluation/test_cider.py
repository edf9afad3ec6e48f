"""CIDEr-D for SCST rewards: equality with pycocoevalcap's Cider, corpus document frequencies, errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from fcvc_pipeline.errors import MismatchError
from fcvc_pipeline.evaluation.cider import CiderD, _bigram_length, cider_d


def _pycocoevalcap(gts, hyps, sigma=6.0):
    """pycocoevalcap's per-item CIDEr-D, in the order of ``gts``: every video of ``gts`` is in the corpus."""
    res = {v: [hyps[v]] for v in gts}
    mean, scores = Cider(sigma=sigma).compute_score(gts, res)
    return mean, np.asarray(scores, dtype=np.float64)


# Hand-made: each video exercises one feature of the formula. "a" is in every video's references, so its
# weight is 0 (df == number of videos).
HAND_REFS = {
    "identical": ["a man is playing a guitar", "a person plays the guitar on a stage"],
    "no_overlap": ["a cat is eating food", "a kitten eats from a bowl", "a cat eats"],
    "one_word": ["a woman is slicing an onion", "a woman cuts an onion with a knife"],
    "repeats": ["a dog runs in the snow", "a puppy runs through the snow", "a dog is playing", "a dog", "a snow dog"],
    "long_hyp": ["a girl rides", "a girl rides a horse"],
    "short_hyp": ["a band is playing a song on a big stage in front of many people tonight"],
    "empty_ref": ["a baby is laughing", ""],  # the empty reference still counts in the division
    "all_common": ["a", "a a"],
    "empty_hyp": ["a panda eats bamboo"],
}
HAND_HYPS = {
    "identical": "a man is playing a guitar",
    "no_overlap": "zebra volcano quantum",
    "one_word": "onion",
    "repeats": "a a a dog dog dog dog snow snow",
    "long_hyp": "a girl rides a horse a girl rides a horse a girl rides a horse a girl rides",
    "short_hyp": "a band is playing",
    "empty_ref": "a baby is laughing",
    "all_common": "a",
    "empty_hyp": "",
}


def test_hand_made_cases_equal_pycocoevalcap():
    mean, scores = cider_d(HAND_REFS, HAND_HYPS)
    want_mean, want = _pycocoevalcap(HAND_REFS, HAND_HYPS)
    assert scores.dtype == np.float64 and scores.shape == (len(HAND_REFS),)
    np.testing.assert_allclose(scores, want, rtol=0, atol=1e-9)
    assert mean == pytest.approx(want_mean, abs=1e-9)

    by_video = dict(zip(HAND_REFS, scores))
    assert by_video["identical"] > 5.0  # not degenerate: a matching caption scores high
    assert by_video["no_overlap"] == 0.0 and by_video["empty_hyp"] == 0.0
    assert by_video["all_common"] == 0.0  # the only n-gram has df == number of videos: weight 0
    assert 0.0 < by_video["repeats"] < by_video["identical"]
    assert 0.0 < by_video["empty_ref"]

    scorer = CiderD(HAND_REFS)
    assert scorer.document_frequency("a") == len(HAND_REFS) == len(scorer)
    assert scorer.document_frequency(["a", "dog"]) == 1 and scorer.document_frequency("zebra") == 0
    assert scorer.ref_len == pytest.approx(np.log(len(HAND_REFS)))


def test_empty_reference_counts_in_the_division():
    refs = {"v1": ["a man is running fast"], "v2": ["a man is running fast", ""], "v3": ["a dog sits"]}
    hyps = {"v1": "a man is running fast", "v2": "a man is running fast", "v3": "a dog sits"}
    _, scores = cider_d(refs, hyps)
    np.testing.assert_allclose(scores, _pycocoevalcap(refs, hyps)[1], rtol=0, atol=1e-9)
    # v2 has the same non-empty reference as v1 plus an empty one: half of v1's score (df differs not).
    assert scores[1] == pytest.approx(scores[0] / 2, abs=1e-12)


@pytest.mark.parametrize("sigma", [0.5, 2.0, 6.0])
def test_length_penalty_equals_pycocoevalcap(sigma):
    # Hypotheses of many lengths against references of other lengths: the Gaussian penalty on the
    # difference of pycocoevalcap's lengths (bigram counts) must match for any sigma.
    refs = {"v1": ["a man is playing a guitar on the stage", "a man plays"], "v2": ["two dogs run"],
            "v3": ["a woman is cooking some food in a big kitchen", "someone cooks"]}
    for extra in range(0, 8):
        hyps = {"v1": " ".join(["a", "man", "plays", "guitar"] + ["guitar"] * extra),
                "v2": "two dogs run" + " fast" * extra,
                "v3": "a woman" + " is cooking" * extra}
        got = CiderD(refs, sigma=sigma).score(list(hyps), list(hyps.values()))
        np.testing.assert_allclose(got, _pycocoevalcap(refs, hyps, sigma=sigma)[1], rtol=0, atol=1e-9)
    # the penalty bites: with a narrow sigma, a longer copy scores lower than an exact one
    narrow = CiderD(refs, sigma=sigma)
    exact, longer = narrow.score(["v2", "v2"], ["two dogs run", "two dogs run run run"])
    assert longer < exact


def test_length_is_pycocoevalcap_bigram_count():
    # pycocoevalcap counts a caption's length on its bigrams. For captions with words the penalty's delta
    # is the same as with word counts, so no score shows the quirk: it is checked here directly.
    assert [_bigram_length("a b c d".split()[:k]) for k in range(5)] == [0, 0, 1, 2, 3]


def test_one_video_corpus_scores_zero_like_pycocoevalcap():
    refs = {"only": ["a man is playing a guitar"]}
    hyps = {"only": "a man is playing a guitar"}
    _, scores = cider_d(refs, hyps)
    np.testing.assert_array_equal(scores, _pycocoevalcap(refs, hyps)[1])  # ref_len = log(1) = 0
    assert scores[0] == 0.0


VOCAB = [f"w{i}" for i in range(30)]


def _random_corpus(rng: random.Random, videos: int, prefix: str = "vid"):
    refs = {}
    for v in range(videos):
        refs[f"{prefix}{v}"] = [" ".join(rng.choices(VOCAB, k=rng.randint(1, 15)))
                                for _ in range(rng.randint(1, 20))]
    return refs


def _random_hypothesis(rng: random.Random, refs: list[str]) -> str:
    kind = rng.random()
    if kind < 0.25:  # a copy of a reference
        return rng.choice(refs)
    if kind < 0.6:  # a reference with some words replaced, dropped or repeated
        words = rng.choice(refs).split()
        out = []
        for w in words:
            r = rng.random()
            if r < 0.2:
                out.append(rng.choice(VOCAB))
            elif r < 0.3:
                continue
            elif r < 0.4:
                out.extend([w, w])
            else:
                out.append(w)
        return " ".join(out)
    return " ".join(rng.choices(VOCAB, k=rng.randint(0, 15)))  # random words, sometimes none


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_cases_several_samples_per_video_equal_pycocoevalcap(seed):
    rng = random.Random(seed)
    gts = _random_corpus(rng, rng.randint(20, 50))
    videos = list(gts)
    samples = 5
    hyps = [{v: _random_hypothesis(rng, gts[v]) for v in videos} for _ in range(samples)]

    # One call for all samples, round-major so that a video's samples are not adjacent.
    got = CiderD(gts).score(videos * samples, [h[v] for h in hyps for v in videos]).reshape(samples, len(videos))
    for k in range(samples):  # pycocoevalcap: one hypothesis per video per call, df from all of gts
        np.testing.assert_allclose(got[k], _pycocoevalcap(gts, hyps[k])[1], rtol=0, atol=1e-9)
    assert np.all(np.isfinite(got)) and got.max() > 1.0 and (got == 0).any()


def test_corpus_document_frequencies_for_a_scored_subset():
    rng = random.Random(7)
    corpus = _random_corpus(rng, 60)
    hyps = {v: _random_hypothesis(rng, refs) for v, refs in corpus.items()}
    subset = rng.sample(list(corpus), 15)

    got = CiderD(corpus).score(subset, [hyps[v] for v in subset])
    _, full = _pycocoevalcap(corpus, hyps)  # pycocoevalcap given the whole corpus
    want = dict(zip(corpus, full))
    np.testing.assert_allclose(got, [want[v] for v in subset], rtol=0, atol=1e-9)

    # The corpus matters: scoring the subset on its own (df from 15 videos) gives other numbers.
    _, alone = cider_d({v: corpus[v] for v in subset}, {v: hyps[v] for v in subset})
    assert np.abs(alone - got).max() > 1e-3


def test_token_lists_equal_strings_and_batch_order_does_not_matter():
    rng = random.Random(3)
    gts = _random_corpus(rng, 25)
    scorer = CiderD(gts)
    ids = [rng.choice(list(gts)) for _ in range(80)]
    texts = [_random_hypothesis(rng, gts[v]) for v in ids]
    as_text = scorer.score(ids, texts)
    as_tokens = scorer.score(ids, [t.split() for t in texts])
    np.testing.assert_array_equal(as_tokens, as_text)
    as_tuples = scorer.score(ids, [tuple(t.split()) for t in texts])
    np.testing.assert_array_equal(as_tuples, as_text)

    order = list(range(len(ids)))
    rng.shuffle(order)
    shuffled = scorer.score([ids[i] for i in order], [texts[i] for i in order])
    np.testing.assert_allclose(shuffled, as_text[order], rtol=0, atol=1e-12)
    one_by_one = [scorer.score([v], [t])[0] for v, t in zip(ids[:10], texts[:10])]
    np.testing.assert_allclose(one_by_one, as_text[:10], rtol=0, atol=1e-12)
    assert scorer.score([], []).shape == (0,)


def test_unknown_video_raises_mismatch_naming_it():
    scorer = CiderD(HAND_REFS)
    with pytest.raises(MismatchError, match="'not_a_video'"):
        scorer.score(["identical", "not_a_video"], ["a man", "a man"])
    with pytest.raises(MismatchError, match="2 video ids but 1 hypotheses"):
        scorer.score(["identical", "one_word"], ["a man"])
    assert "identical" in scorer and "not_a_video" not in scorer


def test_videos_without_a_usable_reference_raise_and_usable_splits_them():
    refs = {"good": ["a man runs"], "none": [], "blank": ["", "   "], "half": ["", "a dog"]}
    with pytest.raises(MismatchError) as info:
        CiderD(refs)
    message = str(info.value)
    assert "'blank'" in message and "'none'" in message and "'good'" not in message and "'half'" not in message
    assert "usable" in message  # the hint says what to do

    kept, empty = CiderD.usable(refs)
    assert empty == ["blank", "none"]
    assert kept == {"good": ["a man runs"], "half": ["", "a dog"]}
    scores = CiderD(kept).score(["good", "half"], ["a man runs", "a dog"])
    np.testing.assert_allclose(scores, _pycocoevalcap(kept, {"good": "a man runs", "half": "a dog"})[1],
                               rtol=0, atol=1e-9)

    with pytest.raises(MismatchError, match="'solo'.*one string"):
        CiderD({"solo": "a man runs"})
    with pytest.raises(MismatchError, match="no reference captions"):
        CiderD({})


def test_cider_d_requires_the_same_videos():
    with pytest.raises(MismatchError, match="'extra'"):
        cider_d({"a": ["x y"]}, {"a": "x y", "extra": "z"})
    with pytest.raises(MismatchError, match="'b'"):
        cider_d({"a": ["x y"], "b": ["z"]}, {"a": "x y"})


def test_bad_parameters():
    with pytest.raises(ValueError):
        CiderD(HAND_REFS, sigma=0.0)
    with pytest.raises(ValueError):
        CiderD(HAND_REFS, n=0)
