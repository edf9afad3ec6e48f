"""A fast CIDEr-D for self-critical sequence training (SCST) rewards.

SCST scores several sampled captions per video at every training step against the same reference
corpus. pycocoevalcap's ``Cider`` re-extracts the n-grams of every reference and recomputes the document
frequencies on each call, in pure Python; :class:`CiderD` does that work once, when it is built from the
corpus, and then scores batches of hypotheses with numpy.

**Same numbers as pycocoevalcap.** Built from the same references, :meth:`CiderD.score` returns what
``pycocoevalcap.cider.cider.Cider().compute_score(gts, res)`` returns per item (to float rounding), with
``gts`` the whole corpus: document frequencies count each n-gram once per video whose references contain
it, ``ref_len = log(number of videos)``, an n-gram's weight is ``tf * (ref_len - log(max(1, df)))``
(n-grams no reference contains have df 0), the similarity of one order is
``sum over the hypothesis n-grams of min(w_hyp, w_ref) * w_ref``, divided by the product of the two
norms when neither is zero, times the Gaussian length penalty ``exp(-delta**2 / (2 * sigma**2))``; the
orders are averaged, the references summed, the sum divided by the number of references (a reference
with no word still counts) and multiplied by 10. :func:`cider_d` is the drop-in for
``Cider().compute_score`` (the corpus is the scored items' own references).

**The length quirk, kept on purpose.** pycocoevalcap's "length" of a caption is counted while it walks
the order-index-1 n-grams, so it is the number of *bigrams* (``max(words - 1, 0)``), not of words; the
penalty's ``delta`` is the difference of these. (For two captions with at least one word each it equals
the difference of word counts, and a caption with no word scores, or as a reference adds, 0 either way,
so the quirk never changes a score; it is kept so that the two stay equal by construction.) It is the same
quantity whatever ``n`` is: pycocoevalcap always extracts n-grams up to 4, so equality with it holds for
the default ``n=4`` (other values of ``n`` make its scorer fail or average in empty orders; here they
simply use orders 1..n).

Differences in what is accepted (not in the numbers): a video id missing from the corpus, and a video
whose references hold no word at all, raise :class:`~fcvc_pipeline.errors.MismatchError` naming the
video (pycocoevalcap would silently score the latter 0); :meth:`CiderD.usable` splits those videos out
so that the caller can skip them and say so. Leaving them out changes the corpus size, hence
``ref_len``: scores then equal pycocoevalcap's run on the kept videos.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from fcvc_pipeline.errors import MismatchError

__all__ = ["CiderD", "cider_d"]

_SHOWN = 5  # how many video ids an error message lists before "..."


def _names(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(v) for v in ids[:_SHOWN])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > _SHOWN else "")


def _tokens(caption: str | Sequence[str]) -> list[str]:
    return caption.split() if isinstance(caption, str) else list(caption)


def _ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    """Counts of the 1..n-grams (as tuples of tokens) of one caption."""
    counts: Counter = Counter()
    for k in range(1, n + 1):
        counts.update(zip(*(tokens[j:] for j in range(k))))
    return counts


def _bigram_length(tokens: Sequence[str]) -> int:
    # pycocoevalcap's "length": the number of bigrams of the caption (see the module docstring).
    return max(len(tokens) - 1, 0)


@dataclass(frozen=True)
class _VideoRefs:
    """One video's references as sparse tf-idf weights over the video's own n-gram columns.

    ``columns`` are the sorted global ids of the n-grams of the video's references; entry ``e`` is the
    weight ``weight[e]`` of column ``column[e]`` in reference ``group[e] // n``, order ``group[e] % n``.
    Stored sparse (a dense [refs, columns] matrix per video costs several hundred MB on a corpus of
    thousands of videos with 20 references each).
    """

    columns: np.ndarray  # int64 [m], sorted
    column: np.ndarray  # intp [nnz]
    group: np.ndarray  # intp [nnz]: ref * n + order
    weight: np.ndarray  # float64 [nnz]
    norms: np.ndarray  # float64 [refs, n]
    lengths: np.ndarray  # float64 [refs], bigram counts

    @property
    def num_refs(self) -> int:
        return int(self.lengths.shape[0])


class CiderD:
    """CIDEr-D against a fixed reference corpus: document frequencies and reference vectors computed once.

    ``references`` maps a video id to its references, each an already tokenised string (tokens separated
    by whitespace). Every video needs at least one reference with a word (see :meth:`usable`).
    """

    def __init__(self, references: Mapping[str, Sequence[str]], *, n: int = 4, sigma: float = 6.0):
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive number, got {sigma!r}")
        self.n = int(n)
        self.sigma = float(sigma)
        _, empty = self.usable(references)
        if empty:
            raise MismatchError(f"{len(empty)} video(s) have no non-empty reference caption: {_names(empty)}",
                                hint="CiderD.usable(references) splits them out, to skip and report them")
        if not references:
            raise MismatchError("there are no reference captions to build CIDEr-D from")

        # Pass 1: n-gram counts of every reference, global n-gram ids, document frequencies.
        self._ids: dict[tuple[str, ...], int] = {}
        df: list[int] = []
        orders: list[int] = []
        cooked: dict[str, list[tuple[list[int], list[int], int]]] = {}
        for video, refs in references.items():
            seen: set[int] = set()
            per_ref = []
            for ref in refs:
                tokens = [sys.intern(t) for t in ref.split()]
                counts = _ngram_counts(tokens, self.n)
                gids = []
                for ngram in counts:
                    gid = self._ids.get(ngram)
                    if gid is None:
                        gid = self._ids[ngram] = len(df)
                        df.append(0)
                        orders.append(len(ngram) - 1)
                    gids.append(gid)
                    if gid not in seen:
                        seen.add(gid)
                        df[gid] += 1
                per_ref.append((gids, list(counts.values()), _bigram_length(tokens)))
            cooked[video] = per_ref

        self.num_videos = len(references)
        self.ref_len = math.log(float(self.num_videos))
        self._df = np.asarray(df, dtype=np.float64)
        self._order = np.asarray(orders, dtype=np.intp)
        self._idf = self.ref_len - np.log(np.maximum(1.0, self._df))

        # Pass 2: each video's reference weights, norms and lengths as arrays.
        self._videos: dict[str, _VideoRefs] = {}
        for video, per_ref in cooked.items():
            self._videos[video] = self._video_arrays(per_ref)

    @staticmethod
    def usable(references: Mapping[str, Sequence[str]]) -> tuple[dict[str, list[str]], list[str]]:
        """Split ``references`` into the videos CIDEr-D can use and the sorted ids of those it cannot.

        A video is unusable when none of its references has a word (an empty list, or only empty or
        blank strings). References given as one string instead of a list raise MismatchError.
        """
        kept: dict[str, list[str]] = {}
        empty: list[str] = []
        for video, refs in references.items():
            if isinstance(refs, str):
                raise MismatchError(f"the references of video {video!r} are one string, not a list of captions")
            refs = list(refs)
            bad = [r for r in refs if not isinstance(r, str)]
            if bad:
                raise MismatchError(f"a reference of video {video!r} is not a string ({type(bad[0]).__name__})")
            if any(r.split() for r in refs):
                kept[video] = refs
            else:
                empty.append(video)
        return kept, sorted(empty)

    def __len__(self) -> int:
        return self.num_videos

    def __contains__(self, video: object) -> bool:
        return video in self._videos

    def document_frequency(self, ngram: str | Sequence[str]) -> int:
        """In how many corpus videos' references ``ngram`` (a string or a sequence of tokens) appears."""
        gid = self._ids.get(tuple(_tokens(ngram)))
        return 0 if gid is None else int(self._df[gid])

    def _video_arrays(self, per_ref: list[tuple[list[int], list[int], int]]) -> _VideoRefs:
        n = self.n
        ref_of = np.concatenate([np.full(len(gids), r, dtype=np.intp) for r, (gids, _, _) in enumerate(per_ref)])
        gid = np.concatenate([np.asarray(gids, dtype=np.int64) for gids, _, _ in per_ref])
        tf = np.concatenate([np.asarray(tfs, dtype=np.float64) for _, tfs, _ in per_ref])
        columns, column = np.unique(gid, return_inverse=True)
        weight = tf * self._idf[gid]
        group = ref_of * n + self._order[gid]
        num_refs = len(per_ref)
        norms = np.sqrt(np.bincount(group, weights=weight * weight, minlength=num_refs * n)).reshape(num_refs, n)
        lengths = np.asarray([length for _, _, length in per_ref], dtype=np.float64)
        return _VideoRefs(columns=columns, column=column.reshape(-1).astype(np.intp), group=group,
                          weight=weight, norms=norms, lengths=lengths)

    def score(self, video_ids: Sequence[str], hypotheses: Sequence[str] | Sequence[Sequence[str]]) -> np.ndarray:
        """CIDEr-D of ``hypotheses[i]`` against the references of ``video_ids[i]``: float64 [len(hypotheses)].

        A hypothesis is a tokenised string (split on whitespace) or a list of tokens. The same video may
        appear any number of times (several samples per video); its references are compared with all of
        its hypotheses at once.
        """
        if len(video_ids) != len(hypotheses):
            raise MismatchError(f"{len(video_ids)} video ids but {len(hypotheses)} hypotheses to score")
        missing = sorted({v for v in video_ids if v not in self._videos}, key=str)
        if missing:
            raise MismatchError(f"{len(missing)} video(s) are not in the CIDEr-D reference corpus: {_names(missing)}")
        total = len(hypotheses)
        if total == 0:
            return np.zeros(0, dtype=np.float64)
        n = self.n

        # Every hypothesis n-gram: which hypothesis, which global id (-1: in no reference), tf, order.
        hyp_of: list[int] = []
        gids: list[int] = []
        tfs: list[int] = []
        orders: list[int] = []
        lengths = np.empty(total, dtype=np.float64)
        ids = self._ids
        for i, hyp in enumerate(hypotheses):
            tokens = _tokens(hyp)
            lengths[i] = _bigram_length(tokens)
            counts = _ngram_counts(tokens, n)
            hyp_of.extend([i] * len(counts))
            for ngram, tf in counts.items():
                gids.append(ids.get(ngram, -1))
                tfs.append(tf)
                orders.append(len(ngram) - 1)
        hyp_of_a = np.asarray(hyp_of, dtype=np.intp)
        gid_a = np.asarray(gids, dtype=np.int64)
        known = gid_a >= 0
        idf = np.full(gid_a.shape, self.ref_len, dtype=np.float64)  # unknown n-gram: df 0 -> log(max(1, 0)) = 0
        idf[known] = self._idf[gid_a[known]]
        weight = np.asarray(tfs, dtype=np.float64) * idf
        norms = np.sqrt(np.bincount(hyp_of_a * n + np.asarray(orders, dtype=np.intp), weights=weight * weight,
                                    minlength=total * n)).reshape(total, n)

        # Per video: the hypotheses' weights over the video's reference columns, then all similarities.
        video_list = list(video_ids)
        by_video: dict[str, list[int]] = {}
        for i, video in enumerate(video_list):
            by_video.setdefault(video, []).append(i)
        # Entries of each hypothesis are contiguous in hyp order: start offsets per hypothesis.
        starts = np.searchsorted(hyp_of_a, np.arange(total + 1))
        scores = np.empty(total, dtype=np.float64)
        for video, rows in by_video.items():
            refs = self._videos[video]
            scores[rows] = self._score_video(refs, np.asarray(rows, dtype=np.intp), starts, gid_a, weight,
                                             norms, lengths)
        bad = [video_list[i] for i in np.flatnonzero(~np.isfinite(scores))]
        if bad:
            raise MismatchError(f"CIDEr-D is not finite for video(s): {_names(sorted(set(bad), key=str))}")
        return scores

    def _score_video(self, refs: _VideoRefs, rows: np.ndarray, starts: np.ndarray, gid: np.ndarray,
                     weight: np.ndarray, norms: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        n = self.n
        samples = len(rows)
        num_refs = refs.num_refs
        m = len(refs.columns)
        # The hypotheses' entries, and where each lands among the video's columns (if it is one of them).
        lo, hi = starts[rows], starts[rows + 1]
        counts = hi - lo
        entry = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        local_row = np.repeat(np.arange(samples), counts)
        entry_gid = gid[entry]
        pos = np.searchsorted(refs.columns, entry_gid)
        pos_c = np.minimum(pos, m - 1)
        inside = (entry_gid >= 0) & (pos < m) & (refs.columns[pos_c] == entry_gid)
        hyp = np.zeros((samples, m), dtype=np.float64)
        hyp[local_row[inside], pos[inside]] = weight[entry[inside]]

        # sum over shared n-grams of min(w_hyp, w_ref) * w_ref, per (sample, reference, order).
        contrib = np.minimum(hyp[:, refs.column], refs.weight) * refs.weight  # [samples, nnz]
        keys = (np.arange(samples, dtype=np.intp)[:, None] * (num_refs * n) + refs.group[None, :]).reshape(-1)
        dots = np.bincount(keys, weights=contrib.reshape(-1), minlength=samples * num_refs * n)
        dots = dots.reshape(samples, num_refs, n)
        denom = norms[rows][:, None, :] * refs.norms[None, :, :]
        nonzero = denom != 0
        sim = np.where(nonzero, dots / np.where(nonzero, denom, 1.0), dots)
        delta = lengths[rows][:, None] - refs.lengths[None, :]
        sim *= np.exp(-(delta * delta) / (2.0 * self.sigma ** 2))[:, :, None]
        return sim.sum(axis=1).mean(axis=1) / num_refs * 10.0


def cider_d(references: Mapping[str, Sequence[str]],
            hypotheses: Mapping[str, str | Sequence[str]]) -> tuple[float, np.ndarray]:
    """``(mean, per-item scores)`` as ``Cider().compute_score(gts, res)`` returns them for the same items.

    ``references``: video id -> tokenised reference strings (the corpus is exactly these videos);
    ``hypotheses``: video id -> one tokenised string (or list of tokens), for the same ids. The per-item
    scores follow the order of ``references``.
    """
    extra = [v for v in hypotheses if v not in references]
    missing = [v for v in references if v not in hypotheses]
    if extra or missing:
        problems = []
        if extra:
            problems.append(f"hypotheses for video(s) without references: {_names(extra)}")
        if missing:
            problems.append(f"references of video(s) without a hypothesis: {_names(missing)}")
        raise MismatchError("hypotheses and references do not match: " + "; ".join(problems))
    scorer = CiderD(references)
    videos = list(references)
    scores = scorer.score(videos, [hypotheses[v] for v in videos])
    return float(np.mean(scores)), scores
