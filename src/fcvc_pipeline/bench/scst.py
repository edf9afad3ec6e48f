"""``fcvc bench train --scst``: what one self-critical step costs, phase by phase, side by side in one run.

One step of ``training/scst.py`` on a batch of ``videos`` videos x ``samples`` sampled captions:

- ``sample``: drawing the captions with the incremental decoder (no gradient);
- ``reward``: their CIDEr-D (ids -> words, then :class:`~fcvc_pipeline.evaluation.cider.CiderD` against a
  reference corpus of ``corpus_videos`` videos x ``refs_per_video`` random captions, built once);
- ``greedy``: with ``--scst-baseline greedy``, the greedy captions and their reward;
- ``forward_backward``: the forward over the sampled captions, the policy-gradient loss, backward and the
  AdamW update.

Phases are timed in interleaved rounds (every model, every phase, each round) and the medians are
reported with the reward's share: ``reward_to_forward_backward`` is the figure the issue asks for. For
scale, each round also scores the same batch with pycocoevalcap's ``Cider`` (pure Python, its document
frequencies from the batch alone, so it does less work than a corpus reward would), which is what a
reward computed with the evaluation code would cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pycocoevalcap.cider.cider import Cider

from fcvc_pipeline import progress
from fcvc_pipeline.bench.model_inputs import Shapes, Timing, random_videos, setup, timed
from fcvc_pipeline.captions.vocabulary import SPECIALS, Vocabulary
from fcvc_pipeline.errors import require
from fcvc_pipeline.inference.decoding import sample
from fcvc_pipeline.models import build_model, canonical_model_name
from fcvc_pipeline.training.scst import Rewards, baselines, policy_inputs, policy_loss

PHASES = ("sample", "reward", "greedy", "forward_backward")


@dataclass(frozen=True)
class ScstBenchConfig:
    models: tuple[str, ...] = ("fcvc-cf-ia",)
    videos: int = 12  # a 64-caption batch at 5 samples per video
    samples: int = 5
    baseline: str = "mean"
    corpus_videos: int = 1000
    refs_per_video: int = 20
    steps: int = 5
    warmup: int = 1
    shapes: Shapes = field(default_factory=Shapes)
    device: str = "auto"
    threads: int | None = None
    bf16: bool | None = None  # None: on CUDA only
    seed: int = 0

    def validate(self) -> list[str]:
        p = []
        if self.videos < 1 or self.samples < 2 and self.baseline == "mean" or self.samples < 1:
            p.append(f"need at least 1 video and 2 samples per video with the mean baseline "
                     f"(got {self.videos} x {self.samples})")
        if self.corpus_videos < self.videos or self.refs_per_video < 1:
            p.append("the reference corpus must cover the batch's videos, with at least one reference each")
        if self.steps < 1 or self.warmup < 0:
            p.append("--steps must be >= 1 and --warmup >= 0")
        if self.baseline not in ("mean", "greedy"):
            p.append(f"--scst-baseline must be mean or greedy (got {self.baseline!r})")
        return p


def _corpus(cfg: ScstBenchConfig, vocab: Vocabulary) -> dict[str, list[str]]:
    """Random references with a Zipf-like word distribution (common words recur, as in real captions)."""
    rng = np.random.default_rng(cfg.seed)
    words = np.array(vocab.tokens[len(SPECIALS):])
    p = 1.0 / np.arange(1, words.size + 1)
    p /= p.sum()
    corpus = {}
    for v in range(cfg.corpus_videos):
        lengths = rng.integers(5, 16, cfg.refs_per_video)
        corpus[f"video{v:06d}"] = [" ".join(rng.choice(words, n, p=p)) for n in lengths]
    return corpus


class _Subject:
    def __init__(self, name: str, cfg: ScstBenchConfig, device: torch.device, rewards: Rewards, ids: list[str],
                 refs: dict[str, list[str]]):
        torch.manual_seed(cfg.seed)
        self.name, self.cfg, self.device, self.rewards, self.ids, self.refs = name, cfg, device, rewards, ids, refs
        self.model_cfg = cfg.shapes.model_config(name)
        self.model = build_model(self.model_cfg).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        self.videos = random_videos(cfg.shapes, cfg.videos, device, seed=cfg.seed)
        use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.times: dict[str, list[Timing]] = {p: [] for p in (*PHASES, "pycocoevalcap_reward")}
        self.lengths: list[float] = []

    def step(self, record: bool) -> None:
        cfg, vocab_max = self.cfg, self.cfg.shapes.max_len
        holder: dict[str, Any] = {}

        def draw():
            with self.autocast:
                holder["samples"] = sample(self.model, self.videos, samples=cfg.samples, max_len=vocab_max,
                                           generator=self.generator)

        def reward():
            holder["rewards"] = self.rewards(self.ids, holder["samples"])

        def greedy():
            with self.autocast:
                holder["greedy"] = self.rewards.greedy_rewards(self.model, self.videos, self.ids, vocab_max)

        def learn():
            s = holder["samples"]
            base = baselines(holder["rewards"], cfg.samples, cfg.baseline, holder.get("greedy"))
            advantage = torch.tensor(holder["rewards"] - base, dtype=torch.float32, device=self.device)
            inputs, targets, mask = policy_inputs(s, self.model_cfg)
            self.model.eval()
            with self.autocast:
                out = self.model(self.videos, inputs, s.video_index)
            loss = policy_loss(out, targets, mask, advantage, self.model_cfg)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.model.train()

        def reference_reward():  # the evaluation code's CIDEr-D on the same captions
            s = holder["samples"]
            words = [self.rewards.vocab.decode(row[:n]) for row, n in zip(s.tokens.tolist(), s.lengths.tolist())]
            video_of = [self.ids[i] for i in s.video_index.tolist()]
            gts = {f"{i}": self.refs[v] for i, v in enumerate(video_of)}
            Cider().compute_score(gts, {f"{i}": [w] for i, w in enumerate(words)})

        plan = [("sample", draw), ("reward", reward)]
        if cfg.baseline == "greedy":
            plan.append(("greedy", greedy))
        plan += [("forward_backward", learn), ("pycocoevalcap_reward", reference_reward)]
        for phase, fn in plan:
            t = timed(fn, self.device)[0]
            if record:
                self.times[phase].append(t)
        if record:
            self.lengths.append(float(holder["samples"].lengths.float().mean()))

    def row(self) -> dict[str, Any]:
        med = {p: Timing.median(ts).wall for p, ts in self.times.items() if ts}
        step = sum(med[p] for p in PHASES if p in med)
        return {"parameters": self.model.num_parameters(), "seconds": med, "step_seconds": step,
                "seconds_all": {p: [t.wall for t in ts] for p, ts in self.times.items() if ts},
                "reward_to_forward_backward": med["reward"] / med["forward_backward"],
                "reward_share_of_step": med["reward"] / step,
                "pycocoevalcap_to_reward": med["pycocoevalcap_reward"] / med["reward"],
                "pycocoevalcap_to_forward_backward": med["pycocoevalcap_reward"] / med["forward_backward"],
                "mean_sample_length": float(np.mean(self.lengths))}


def run_scst_bench(cfg: ScstBenchConfig) -> dict[str, Any]:
    require(cfg.validate())
    device, env = setup(cfg.device, cfg.threads)
    vocab = Vocabulary(tokens=SPECIALS + tuple(f"w{i}" for i in range(cfg.shapes.vocab - len(SPECIALS))),
                       max_len=cfg.shapes.max_len)
    refs = _corpus(cfg, vocab)
    t0 = time.perf_counter()
    rewards = Rewards(refs, vocab)
    build_seconds = time.perf_counter() - t0
    ids = sorted(refs)[: cfg.videos]
    names = list(dict.fromkeys(canonical_model_name(m) for m in cfg.models))
    progress.log(f"bench train --scst: {', '.join(names)}; {cfg.videos} videos x {cfg.samples} samples, reward "
                 f"corpus {cfg.corpus_videos} videos x {cfg.refs_per_video} references (built in "
                 f"{build_seconds:.2f}s), on {device} ({env['threads']} threads)")
    subjects = [_Subject(n, cfg, device, rewards, ids, refs) for n in names]
    for s in subjects:
        for _ in range(cfg.warmup):
            s.step(record=False)
    for r in progress.bar(range(cfg.steps), desc="rounds", unit="round"):
        for s in subjects[r % len(subjects):] + subjects[: r % len(subjects)]:
            s.step(record=True)
    rows = {s.name: s.row() for s in subjects}
    for name, row in rows.items():
        sec = row["seconds"]
        progress.log(f"  {name}: sample {sec['sample']:.3f}s, reward {sec['reward'] * 1e3:.1f}ms, forward+backward "
                     f"{sec['forward_backward']:.3f}s -> the reward is {row['reward_to_forward_backward']:.3f}x the "
                     f"forward+backward and {100 * row['reward_share_of_step']:.1f}% of the step; pycocoevalcap "
                     f"would take {row['pycocoevalcap_to_reward']:.0f}x longer "
                     f"({row['pycocoevalcap_to_forward_backward']:.2f}x the forward+backward)")
    return {"config": {"videos": cfg.videos, "samples": cfg.samples, "baseline": cfg.baseline,
                       "corpus_videos": cfg.corpus_videos, "refs_per_video": cfg.refs_per_video,
                       "timed_steps": cfg.steps, "warmup": cfg.warmup, "shapes": cfg.shapes.to_json(),
                       "bf16_autocast": cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"},
            "environment": env, "reward_corpus_build_seconds": build_seconds, "models": rows}
