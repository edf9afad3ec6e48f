"""The best constant caption: the quality floor a captioner must clear.

Every distinct training caption is given to every test video; the one with the highest CIDEr is the best
constant caption. A model that does not beat it clearly has learned the language prior, not the videos.
References and candidates are tokenised once (pycocoevalcap's PTBTokenizer when Java is there, the
documented Python tokenizer otherwise); CIDEr is then computed per candidate.
"""

from __future__ import annotations

from typing import Iterable

from pycocoevalcap.cider.cider import Cider

from fcvc_pipeline.evaluation.metrics import java_available, ptb_tokenize, python_tokenize


def best_constant_caption(candidates: Iterable[str], references: dict[str, list[str]], *,
                          limit: int = 2000) -> tuple[str, float]:
    """(caption, CIDEr) of the candidate that scores highest when given to every video."""
    unique = sorted(set(c for c in candidates if c.strip()))[:limit]
    if not unique or not references:
        raise ValueError("need at least one candidate caption and one referenced video")
    tokenize = ptb_tokenize if java_available() else python_tokenize
    videos = sorted(references)
    flat = [r for v in videos for r in references[v]]
    tokens = tokenize(flat + unique)
    refs_tok, k = {}, 0
    for v in videos:
        refs_tok[v] = tokens[k:k + len(references[v])]
        k += len(references[v])
    cand_tok = tokens[k:]
    best, best_score = unique[0], float("-inf")
    for caption, hyp in zip(unique, cand_tok):
        score, _ = Cider().compute_score(refs_tok, {v: [hyp] for v in videos})
        if score > best_score:
            best, best_score = caption, float(score)
    return best, best_score
