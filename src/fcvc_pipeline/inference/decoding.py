"""Caption generation: batched beam search (beam 1 = greedy) over the models' incremental API.

One search loop, two ways to score the next token:

- :func:`generate` -- incremental: each video is encoded once (frame/region projections), each model
  step feeds one token per hypothesis through the per-layer conv windows (FCVC) or the LSTM state, and
  ``state.reorder`` follows the beams.
- :func:`generate_full_recompute` -- the reference: every step re-runs the model's full ``forward`` on
  the whole prefix (re-encoding the videos too, unless ``reuse_encoding``). Same search, same results up
  to float rounding; used by the tests and the decode benchmark.

Search rules (fairseq's): each step ranks the 2K best (beam, token) continuations of every video; an
``<eos>`` among the first K closes a hypothesis, the first K others become the next beams. A video is done
when it has K closed hypotheses; done videos leave the batch. After ``max_len`` tokens only ``<eos>`` is
allowed (the hypothesis is marked ``truncated``). ``<pad>`` and ``<bos>`` are never generated. The best
closed hypothesis of each video is returned, ranked by ``score / (len(tokens) + 1) ** length_penalty``
(+1 counts the ``<eos>``; ``length_penalty`` 0 ranks by the total log-probability).

Region features: step-wise decoding reads every region of every video once per step and IA layer, a
memory-bound read, so by default the regions are projected to d once (a 4x smaller tensor to stream)
rather than folded into the query as training may do (``region_mode`` overrides; see
``models/fcvc.py:choose_region_mode``). Measured on CPU, batch 16, beam 5: project 1.3-2.8 s, fold 4.6 s.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fcvc_pipeline.errors import ConfigError, FcvcError
from fcvc_pipeline.models.state import VideoBatch

DECODE_REGION_MODE = "project"


@dataclass
class Hypothesis:
    tokens: list[int]  # without <bos>/<eos>
    score: float  # total log-probability: sum(token_scores) + eos_score
    token_scores: list[float]  # log-probability of each emitted token (aligned with tokens)
    frame_attn: np.ndarray | None  # [len(tokens), N] frame weights at the step that emitted each token
    region_attn: np.ndarray | None  # [len(tokens), N, M]
    eos_score: float = 0.0  # log-probability of the closing <eos>
    normalized_score: float = 0.0  # the length-penalised score the search ranked by
    truncated: bool = False  # <eos> was forced after max_len tokens

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "score": self.score, "normalized_score": self.normalized_score,
                "token_scores": self.token_scores, "eos_score": self.eos_score, "truncated": self.truncated}


# -- public entry points -------------------------------------------------------------------------------------
def generate(model, videos: VideoBatch, *, beam_size: int = 1, max_len: int = 20, length_penalty: float = 1.0,
             region_mode: str = DECODE_REGION_MODE) -> list[Hypothesis]:
    """One hypothesis per video, batched over the videos, through the incremental step API."""
    return _search(model, videos, beam_size, max_len, length_penalty,
                   lambda index, steps: _Incremental(model, videos, index, row_steps=steps, region_mode=region_mode))


def generate_full_recompute(model, videos: VideoBatch, *, beam_size: int = 1, max_len: int = 20,
                            length_penalty: float = 1.0, reuse_encoding: bool = False) -> list[Hypothesis]:
    """The reference path: each step runs the model's full forward over the whole prefix.

    ``reuse_encoding`` encodes the videos once and re-runs only the decoder (isolates what the per-layer
    windows save from what encoding once saves).
    """
    return _search(model, videos, beam_size, max_len, length_penalty,
                   lambda index, steps: _Recompute(model, videos, index, reuse_encoding=reuse_encoding, row_steps=steps))


def _search(model, videos: VideoBatch, beam_size: int, max_len: int, length_penalty: float,
            make_scorer) -> list[Hypothesis]:
    """Beam search over B videos x K beams with the scorer ``make_scorer(video_index, row_steps)``."""
    _check_options(model, beam_size, max_len)
    B, K = videos.num_videos, beam_size
    if B == 0:
        return []
    with _eval_mode(model), torch.inference_mode():
        video_index = torch.arange(B, device=videos.frames.device).repeat_interleave(K)
        scorer = make_scorer(video_index, B * K * (max_len + 1))
        return _beam_search(scorer, model.config, B, K, max_len, length_penalty, videos.frames.device)


def greedy(model, videos: VideoBatch, *, max_len: int = 20) -> list[Hypothesis]:
    """Plain greedy decoding (argmax every step, no pruning): the independent reference for beam size 1."""
    _check_options(model, 1, max_len)
    cfg, B = model.config, videos.num_videos
    if B == 0:
        return []
    with _eval_mode(model), torch.inference_mode():
        video_index = torch.arange(B, device=videos.frames.device)
        scorer = _Incremental(model, videos, video_index, row_steps=B * (max_len + 1), region_mode=DECODE_REGION_MODE)
        tokens: list[list[int]] = [[] for _ in range(B)]
        scores: list[list[float]] = [[] for _ in range(B)]
        fas: list[list[np.ndarray]] = [[] for _ in range(B)]
        ras: list[list[np.ndarray]] = [[] for _ in range(B)]
        out: list[Hypothesis | None] = [None] * B
        last = torch.full((B,), cfg.bos_id, dtype=torch.long, device=videos.frames.device)
        for t in range(max_len + 1):
            logp, fa, ra = scorer.step(last)
            _ban(logp, cfg, force_eos=t == max_len)
            best_lp, best = logp.max(dim=-1)
            best_c, lp_c = best.tolist(), best_lp.tolist()
            fa_c = None if fa is None else fa.float().cpu().numpy()
            ra_c = None if ra is None else ra.float().cpu().numpy()
            for b in range(B):
                if out[b] is not None:
                    continue
                if best_c[b] == cfg.eos_id:
                    score = sum(scores[b]) + lp_c[b]
                    out[b] = Hypothesis(tokens[b], score, scores[b], _stack(fas[b], fa_c), _stack(ras[b], ra_c),
                                        eos_score=lp_c[b], normalized_score=score / (len(tokens[b]) + 1),
                                        truncated=t == max_len)
                    continue
                tokens[b].append(best_c[b])
                scores[b].append(lp_c[b])
                if fa_c is not None:
                    fas[b].append(fa_c[b])
                if ra_c is not None:
                    ras[b].append(ra_c[b])
            if all(h is not None for h in out):
                break
            last = best
        return out  # type: ignore[return-value]


class NonFiniteModelError(FcvcError):
    """The model's output is NaN or infinite: there is nothing meaningful to sample."""


@dataclass
class Samples:
    """Captions drawn from the model (``sample``): row ``i`` belongs to video ``video_index[i]``."""

    tokens: Tensor  # [R, max_len + 1] sampled ids, then <eos>, then <pad>
    lengths: Tensor  # [R] tokens before <eos>
    truncated: Tensor  # [R] bool: <eos> was forced after max_len tokens (it was not drawn)
    video_index: Tensor  # [R] the video of each row (videos 0..B-1, each repeated ``samples`` times)


def sample(model, videos: VideoBatch, *, samples: int, max_len: int, generator: torch.Generator,
           region_mode: str = DECODE_REGION_MODE) -> Samples:
    """Draw ``samples`` captions per video from the model's distribution (multinomial, temperature 1), with
    the incremental decoder and the same rules as the search: ``<pad>``/``<bos>`` are never drawn (their
    probability is shared out over the rest) and ``<eos>`` is forced after ``max_len`` tokens. Dropout is
    off (the incremental state assumes it). Only ``generator`` supplies randomness, so a run that saves and
    restores its state draws the same captions (self-critical training's resume).
    """
    _check_options(model, 1, max_len)
    if samples < 1:
        raise ConfigError(f"samples must be >= 1 (got {samples})")
    cfg, B = model.config, videos.num_videos
    device = videos.frames.device
    R = B * samples
    video_index = torch.arange(B, device=device).repeat_interleave(samples)
    tokens = torch.full((R, max_len + 1), cfg.pad_id, dtype=torch.long, device=device)
    lengths = torch.full((R,), max_len, dtype=torch.long, device=device)
    done = torch.zeros(R, dtype=torch.bool, device=device)
    if B == 0:
        return Samples(tokens, lengths, done.clone(), video_index)
    with _eval_mode(model), torch.inference_mode():
        scorer = _Incremental(model, videos, video_index, row_steps=R * (max_len + 1), region_mode=region_mode)
        last = torch.full((R,), cfg.bos_id, dtype=torch.long, device=device)
        for t in range(max_len + 1):
            logp, _, _ = scorer.step(last)
            _ban(logp, cfg, force_eos=t == max_len)
            probs = logp.float().exp()
            if not bool((torch.isfinite(probs).all(dim=1) & (probs.sum(dim=1) > 0)).all()):
                raise NonFiniteModelError(f"the model's next-word probabilities at step {t + 1} are not finite "
                                          f"numbers (NaN or infinity): its weights have diverged",
                                          hint="lower the learning rate and start again from the last good "
                                               "checkpoint (--force)")
            drawn = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            drawn = torch.where(done, torch.full_like(drawn, cfg.pad_id), drawn)
            tokens[:, t] = drawn
            ended = (drawn == cfg.eos_id) & ~done
            lengths = torch.where(ended, torch.full_like(lengths, t), lengths)
            done = done | ended
            if bool(done.all()):
                break
            last = torch.where(done, torch.full_like(drawn, cfg.eos_id), drawn)
    # clones made outside inference mode: the training step feeds these ids through autograd
    return Samples(tokens.clone(), lengths.clone(), lengths.clone() == max_len, video_index.clone())


# -- scoring the next token ---------------------------------------------------------------------------------------
class _Incremental:
    def __init__(self, model, videos: VideoBatch, video_index: Tensor, *, row_steps: int, region_mode: str):
        self.model = model
        self.encoded = model.encode(videos, row_steps=row_steps, region_mode=region_mode)
        self.state = model.init_state(self.encoded, video_index)

    def step(self, last: Tensor):
        log_probs, fa, ra, self.state = self.model.step(self.encoded, self.state, last)
        return log_probs, fa, ra

    def reorder(self, rows: Tensor) -> None:
        self.state = self.state.reorder(rows)

    def drop_videos(self, keep: Tensor, new_ids: Tensor) -> None:
        self.encoded = self.encoded.index_select(keep)
        self.state = self.state.renumber_videos(new_ids, keep.numel())


class _Recompute:
    def __init__(self, model, videos: VideoBatch, video_index: Tensor, *, reuse_encoding: bool, row_steps: int):
        self.model, self.videos, self.video_index = model, videos, video_index
        self.encoded = model.encode(videos, row_steps=row_steps, region_mode=DECODE_REGION_MODE) if reuse_encoding else None
        self.prefix = torch.empty(video_index.numel(), 0, dtype=torch.long, device=video_index.device)

    def step(self, last: Tensor):
        self.prefix = torch.cat([self.prefix, last.unsqueeze(1)], dim=1)
        if self.encoded is None:
            out = self.model(self.videos, self.prefix, self.video_index)
        else:
            out = self.model.decode(self.encoded, self.prefix, self.video_index)
        log_probs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        fa = None if out.frame_attn is None else out.frame_attn[:, -1]
        ra = None if out.region_attn is None else out.region_attn[:, -1]
        return log_probs, fa, ra

    def reorder(self, rows: Tensor) -> None:
        self.prefix = self.prefix.index_select(0, rows)
        self.video_index = self.video_index.index_select(0, rows)

    def drop_videos(self, keep: Tensor, new_ids: Tensor) -> None:
        if self.encoded is None:
            self.videos = self.videos.index_select(keep)
        else:
            self.encoded = self.encoded.index_select(keep)
        self.video_index = new_ids.index_select(0, self.video_index)


# -- the search ------------------------------------------------------------------------------------------------------
def _beam_search(scorer, cfg, B: int, K: int, max_len: int, length_penalty: float, device) -> list[Hypothesis]:
    V = cfg.vocab_size
    alive = np.arange(B)  # original video id of each current video slot
    beam_scores = torch.zeros(B, K, device=device)
    beam_scores[:, 1:] = -math.inf  # all beams start identical: expand only the first
    last = torch.full((B * K,), cfg.bos_id, dtype=torch.long, device=device)
    # history: transition s (s >= 1) -> the rows of step s: their last token, parent row at step s-1, its log-prob
    tok_hist: list[np.ndarray] = []
    parent_hist: list[np.ndarray] = []
    lp_hist: list[np.ndarray] = []
    fa_hist: list[Tensor | None] = []  # per step: the attention of that step's rows
    ra_hist: list[Tensor | None] = []
    finals: list[list[tuple[float, float, int, int, float]]] = [[] for _ in range(B)]  # (norm, score, t, row, eos_lp)
    n_cand = min(2 * K, K * V)
    for t in range(max_len + 1):
        logp, fa, ra = scorer.step(last)  # [Rc, V]
        fa_hist.append(fa)
        ra_hist.append(ra)
        _ban(logp, cfg, force_eos=t == max_len)
        Bc = alive.size
        cand = (beam_scores.reshape(-1, 1) + logp).view(Bc, K * V)
        top_s, top_i = cand.topk(n_cand, dim=1)  # [Bc, 2K]
        parent, token = top_i // V, top_i % V
        is_eos = token == cfg.eos_id

        # close the <eos> candidates ranked among the first K
        top_s_c, parent_c, eos_c = top_s.cpu().numpy(), parent.cpu().numpy(), is_eos.cpu().numpy()
        eos_lp = logp[:, cfg.eos_id].cpu().numpy()
        bs, js = np.nonzero(eos_c[:, :K] & np.isfinite(top_s_c[:, :K]))
        for b, j in zip(bs.tolist(), js.tolist()):
            row = b * K + int(parent_c[b, j])
            score = float(top_s_c[b, j])
            finals[alive[b]].append((score / (t + 1) ** length_penalty, score, t, row, float(eos_lp[row])))
        if t == max_len:
            break

        # the first K non-<eos> candidates become the next beams
        pick = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :K]  # [Bc, K]
        beam_scores = top_s.gather(1, pick)
        new_tok = token.gather(1, pick).reshape(-1)
        rows = (torch.arange(Bc, device=device).unsqueeze(1) * K + parent.gather(1, pick)).reshape(-1)
        token_lp = logp[rows, new_tok]

        done = np.array([len(finals[v]) >= K for v in alive])
        if done.all():
            break
        if done.any():
            keep = np.nonzero(~done)[0]
            keep_rows = (keep[:, None] * K + np.arange(K)).reshape(-1)
            keep_t = torch.from_numpy(keep).to(device)
            keep_rows_t = torch.from_numpy(keep_rows).to(device)
            rows, new_tok, token_lp = rows[keep_rows_t], new_tok[keep_rows_t], token_lp[keep_rows_t]
            beam_scores = beam_scores[keep_t]
            new_ids = torch.full((Bc,), -1, dtype=torch.long, device=device)
            new_ids[keep_t] = torch.arange(keep.size, device=device)
            scorer.reorder(rows)
            scorer.drop_videos(keep_t, new_ids)
            alive = alive[keep]
        else:
            scorer.reorder(rows)
        tok_hist.append(new_tok.cpu().numpy())
        parent_hist.append(rows.cpu().numpy())
        lp_hist.append(token_lp.float().cpu().numpy())
        last = new_tok

    winners = [max(f, key=lambda x: x[0]) if f else None for f in finals]
    return _backtrack(winners, tok_hist, parent_hist, lp_hist, fa_hist, ra_hist, max_len)


def _backtrack(winners, tok_hist, parent_hist, lp_hist, fa_hist, ra_hist, max_len: int) -> list[Hypothesis]:
    """Rebuild each winner's tokens, scores and attention from the per-step history."""
    paths: list[list[tuple[int, int]]] = []  # per winner: (step, row at that step) of each emitted token
    out: list[Hypothesis] = []
    for w in winners:
        if w is None:  # cannot happen with max_len >= 0 (the last step closes every beam); be explicit anyway
            out.append(Hypothesis([], -math.inf, [], None, None, eos_score=-math.inf, normalized_score=-math.inf))
            paths.append([])
            continue
        norm, score, t_end, row, eos_lp = w
        tokens, scores, path = [], [], []
        for s in range(t_end, 0, -1):
            tokens.append(int(tok_hist[s - 1][row]))
            scores.append(float(lp_hist[s - 1][row]))
            row = int(parent_hist[s - 1][row])
            path.append((s - 1, row))
        tokens.reverse(), scores.reverse(), path.reverse()
        out.append(Hypothesis(tokens, score, scores, None, None, eos_score=eos_lp, normalized_score=norm,
                              truncated=t_end == max_len))
        paths.append(path)
    for hist, field in ((fa_hist, "frame_attn"), (ra_hist, "region_attn")):
        if not hist or hist[0] is None:
            continue
        per_step: dict[int, list[tuple[int, int, int]]] = {}
        for i, path in enumerate(paths):
            for pos, (s, row) in enumerate(path):
                per_step.setdefault(s, []).append((i, pos, row))
        arrays = [np.zeros((len(p),) + tuple(hist[0].shape[1:]), dtype=np.float32) for p in paths]
        for s, reqs in per_step.items():
            idx = torch.tensor([r for _, _, r in reqs], dtype=torch.long, device=hist[s].device)
            got = hist[s].index_select(0, idx).float().cpu().numpy()
            for k, (i, pos, _) in enumerate(reqs):
                arrays[i][pos] = got[k]
        for h, a in zip(out, arrays):
            setattr(h, field, a)
    return out


# -- helpers ------------------------------------------------------------------------------------------------------------
def _ban(logp: Tensor, cfg, *, force_eos: bool) -> None:
    """In place: never emit <pad>/<bos>; only <eos> once the length limit is reached."""
    if force_eos:
        eos = logp[:, cfg.eos_id].clone()
        logp.fill_(-math.inf)
        logp[:, cfg.eos_id] = eos
    else:
        logp[:, cfg.pad_id] = -math.inf
        logp[:, cfg.bos_id] = -math.inf


def _stack(rows: list[np.ndarray], like: np.ndarray | None) -> np.ndarray | None:
    if like is None:
        return None
    return np.stack(rows) if rows else np.zeros((0,) + like.shape[1:], dtype=np.float32)


def _check_options(model, beam_size: int, max_len: int) -> None:
    problems = []
    if not isinstance(beam_size, int) or beam_size < 1:
        problems.append(f"beam size must be an integer >= 1 (got {beam_size!r})")
    if not isinstance(max_len, int) or max_len < 0:
        problems.append(f"max_len must be an integer >= 0 (got {max_len!r})")
    elif not model.config.is_lstm and max_len > model.config.max_len:
        problems.append(f"max_len {max_len} exceeds the {model.config.max_len} positions this model was built for")
    if problems:
        raise ConfigError(problems)


@contextlib.contextmanager
def _eval_mode(model):
    """Decoding needs dropout off (the incremental state assumes it); restore the caller's mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
