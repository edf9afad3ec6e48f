"""``fcvc bench train``: training step time per 10M parameters for every model against ``lstm``, one run.

A step = forward + Eq. 7 loss + backward + AdamW update on a batch of ``captions`` caption rows drawn
from ``captions / captions_per_video`` videos. The trainer packs all captions of a video into one batch
(so the per-video encoding, the region projection above all, is shared), and a 64-caption batch holds one
or two videos at MSVD's ~41 captions per video; the default, 20 per video, is MSR-VTT's count and the
conservative side of that. ``--captions-per-video 1`` is the case least favourable to the region-attention
models (a dataset with one caption per clip). Caption lengths are drawn uniformly from [5, max_len]
(padded to the longest, as the trainer does).

The paper's Table 3 figure, seconds per 10M parameters, is ``seconds_per_step / (parameters / 1e7)``; the
ratio to ``lstm`` comes from figures measured in this same run, in interleaved rounds (each round times
one step of every model, in a rotated order) so that a shift in a shared machine's load reaches every
model alike; the median over rounds is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click
import torch

from fcvc_pipeline import progress
from fcvc_pipeline.bench.model_inputs import Shapes, Timing, random_videos, setup, shape_options, timed
from fcvc_pipeline.bench.scst import ScstBenchConfig, run_scst_bench
from fcvc_pipeline.commands.common import common_options, run_and_exit
from fcvc_pipeline.errors import require
from fcvc_pipeline.models import ABLATION_ORDER, build_model, canonical_model_name
from fcvc_pipeline.models.fcvc import choose_region_mode
from fcvc_pipeline.training.losses import caption_loss

PAPER_SECONDS_PER_10M = {"lstm": 203, "fcvc": 186, "fcvc-cf-ia": 253}  # Table 3 (per epoch, their GPU)


@dataclass(frozen=True)
class TrainBenchConfig:
    models: tuple[str, ...] = ABLATION_ORDER
    captions: int = 60  # what the trainer packs into a 64-caption batch at 20 captions per video
    captions_per_video: int = 20
    steps: int = 5
    warmup: int = 1
    shapes: Shapes = field(default_factory=Shapes)
    device: str = "auto"
    threads: int | None = None
    bf16: bool | None = None  # autocast on CUDA (the trainer's setting); None = on for CUDA, off on CPU
    seed: int = 0

    def validate(self) -> list[str]:
        p = []
        if self.captions < 1 or self.captions_per_video < 1 or self.captions % self.captions_per_video:
            p.append(f"--captions ({self.captions}) must be a positive multiple of --captions-per-video "
                     f"({self.captions_per_video})")
        if self.steps < 1 or self.warmup < 0:
            p.append("--steps must be >= 1 and --warmup >= 0")
        if not self.models:
            p.append("--models names no model")
        return p


@dataclass
class TrainBenchResult:
    config: dict[str, Any]
    environment: dict[str, Any]
    models: dict[str, dict[str, Any]]
    paper_seconds_per_10M_params: dict[str, int]
    target: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _batch(cfg: TrainBenchConfig, device: torch.device):
    g = torch.Generator().manual_seed(cfg.seed)
    shapes = cfg.shapes
    lengths = torch.randint(5, shapes.max_len + 1, (cfg.captions,), generator=g)
    T = int(lengths.max()) + 1
    words = torch.randint(4, shapes.vocab, (cfg.captions, T), generator=g)
    steps = torch.arange(T)
    inputs = torch.where(steps[None] <= lengths[:, None], words, 0)
    inputs[:, 0] = 1  # <bos>
    targets = torch.where(steps[None] < lengths[:, None], words.roll(-1, dims=1), 0)
    targets[torch.arange(cfg.captions), lengths] = 2  # <eos>
    video_index = torch.arange(cfg.captions // cfg.captions_per_video).repeat_interleave(cfg.captions_per_video)
    return inputs.to(device), targets.to(device), video_index.to(device)


class _Subject:
    """One model with its optimizer, ready to take timed training steps on the shared batch."""

    def __init__(self, name: str, cfg: TrainBenchConfig, device, videos, inputs, targets, video_index):
        torch.manual_seed(cfg.seed)
        self.name, self.device = name, device
        self.model_cfg = cfg.shapes.model_config(name)
        self.model = build_model(self.model_cfg).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
        self.times: list[Timing] = []
        self.region_mode = None
        if self.model_cfg.uses_regions:
            shapes = cfg.shapes
            self.region_mode = choose_region_mode(videos.num_videos, shapes.frames * shapes.regions, shapes.region_dim,
                                                  shapes.d_model, inputs.numel(),
                                                  sum(p.inherited for p in self.model_cfg.layer_plan()))

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = self.model(videos, inputs, video_index)
            terms = caption_loss(out, targets, self.model_cfg)
            self.optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            self.optimizer.step()
            return terms.total.detach()

        self.step = step

    def timed_step(self) -> None:
        self.times.append(timed(self.step, self.device)[0])

    def row(self) -> dict[str, Any]:
        params = self.model.num_parameters()
        median = Timing.median(self.times)
        row = {"parameters": params, "seconds_per_step": median.wall, "cpu_seconds_per_step": median.cpu,
               "step_seconds_all": [t.wall for t in self.times],
               "seconds_per_step_per_10M_params": median.wall / (params / 1e7),
               "cpu_seconds_per_step_per_10M_params": median.cpu / (params / 1e7)}
        if self.region_mode is not None:
            row["region_mode"] = self.region_mode
        return row


def run_train_bench(cfg: TrainBenchConfig) -> TrainBenchResult:
    require(cfg.validate())
    names = list(dict.fromkeys(canonical_model_name(m) for m in cfg.models))
    if "lstm" not in names:
        names.insert(0, "lstm")  # the baseline every ratio is taken against
    device, env = setup(cfg.device, cfg.threads)
    inputs, targets, video_index = _batch(cfg, device)
    videos = random_videos(cfg.shapes, cfg.captions // cfg.captions_per_video, device, seed=cfg.seed)
    progress.log(f"bench train: {len(names)} models, {cfg.captions} captions over {videos.num_videos} videos, "
                 f"{inputs.shape[1]} steps, on {device} ({env['threads']} threads)")
    subjects = [_Subject(n, cfg, device, videos, inputs, targets, video_index) for n in names]
    for subject in subjects:
        for _ in range(cfg.warmup):
            subject.step()
    # Interleaved rounds: every model takes one step per round, in an order rotated each round, so a
    # change in the machine's load touches all models alike instead of whichever happened to run then.
    for r in progress.bar(range(cfg.steps), desc="rounds", unit="round"):
        for subject in subjects[r % len(subjects):] + subjects[: r % len(subjects)]:
            subject.timed_step()
    rows = {s.name: s.row() for s in subjects}
    for name, row in rows.items():
        progress.log(f"  {name}: {row['parameters'] / 1e6:.1f}M parameters, {row['seconds_per_step']:.3f} s/step, "
                     f"{row['seconds_per_step_per_10M_params']:.3f} s/step per 10M")
    del subjects
    base = rows["lstm"]
    for row in rows.values():
        row["per_10M_ratio_to_lstm"] = row["seconds_per_step_per_10M_params"] / base["seconds_per_step_per_10M_params"]
        row["step_ratio_to_lstm"] = row["seconds_per_step"] / base["seconds_per_step"]
        row["cpu_per_10M_ratio_to_lstm"] = (row["cpu_seconds_per_step_per_10M_params"]
                                            / base["cpu_seconds_per_step_per_10M_params"])
    cf = rows.get("fcvc-cf-ia")
    return TrainBenchResult(
        config={"captions": cfg.captions, "captions_per_video": cfg.captions_per_video, "videos": videos.num_videos,
                "caption_steps": int(inputs.shape[1]), "timed_steps": cfg.steps, "warmup": cfg.warmup,
                "bf16_autocast": cfg.bf16 if cfg.bf16 is not None else device.type == "cuda",
                "shapes": cfg.shapes.to_json()},
        environment=env,
        models=rows,
        paper_seconds_per_10M_params=PAPER_SECONDS_PER_10M,
        target={"fcvc-cf-ia_per_10M_ratio_to_lstm_at_most": 1.0, "paper_ratio": round(253 / 203, 3),
                "met": None if cf is None else cf["per_10M_ratio_to_lstm"] <= 1.0},
    )


@click.command("train")
@click.option("--models", default="lstm,fcvc,fcvc-ta,fcvc-ia,fcvc-all,fcvc-cf-ia", show_default=True,
              help="Comma-separated models to time (lstm is always included: the baseline).")
@click.option("--captions", type=int, default=60, show_default=True,
              help="Caption rows per batch (the trainer packs whole videos up to --batch-size 64: 3 x 20).")
@click.option("--captions-per-video", type=int, default=20, show_default=True,
              help="Rows sharing one video's encoding (the trainer packs all of a video's captions; "
                   "MSR-VTT has 20, MSVD ~41; 1 is the worst case for region attention).")
@click.option("--steps", type=int, default=5, show_default=True,
              help="Timed rounds; each times one step of every model (median reported).")
@click.option("--warmup", type=int, default=1, show_default=True)
@click.option("--max-len", type=int, default=20, show_default=True)
@click.option("--bf16/--fp32", "bf16", default=None, help="bf16 autocast (default: on CUDA only, like the trainer).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--scst", is_flag=True,
              help="Time a self-critical step instead, phase by phase (sampling, reward, forward+backward) for "
                   "--models (default then: fcvc-cf-ia): batches of --captions / --scst-samples videos, a reward "
                   "corpus of --corpus-videos videos x --captions-per-video references.")
@click.option("--scst-samples", type=int, default=5, show_default=True, help="With --scst: samples per video.")
@click.option("--scst-baseline", type=click.Choice(["mean", "greedy"]), default="mean", show_default=True,
              help="With --scst: greedy also times the greedy captions and their reward.")
@click.option("--corpus-videos", type=int, default=1000, show_default=True,
              help="With --scst: videos in the reward's reference corpus (MSVD has 1,200 training videos).")
@shape_options
@common_options
def bench_train(models, captions, captions_per_video, steps, warmup, max_len, bf16, seed, scst, scst_samples,
                scst_baseline, corpus_videos, vocab, frames, regions, frame_dim, clip_dim, region_dim, d_model, device,
                threads, workdir, json_out, verbose):
    """Training step time per 10M parameters, every model against lstm (same batch, same run); with --scst,
    the cost of a self-critical step's reward against its forward and backward."""

    def run():
        shapes = Shapes(vocab=vocab, frames=frames, regions=regions, frame_dim=frame_dim, clip_dim=clip_dim,
                        region_dim=region_dim, d_model=d_model, max_len=max_len)
        if scst:
            chosen = "fcvc-cf-ia" if click.get_current_context().get_parameter_source("models").name == "DEFAULT" \
                else models
            return run_scst_bench(ScstBenchConfig(
                models=tuple(m.strip() for m in chosen.split(",") if m.strip()), videos=captions // scst_samples,
                samples=scst_samples, baseline=scst_baseline, corpus_videos=corpus_videos,
                refs_per_video=captions_per_video, steps=steps, warmup=warmup, shapes=shapes, device=device,
                threads=threads, bf16=bf16, seed=seed))
        cfg = TrainBenchConfig(models=tuple(m.strip() for m in models.split(",") if m.strip()), captions=captions,
                               captions_per_video=captions_per_video, steps=steps, warmup=warmup, shapes=shapes,
                               device=device, threads=threads, bf16=bf16, seed=seed)
        result = run_train_bench(cfg)
        cf = result.models.get("fcvc-cf-ia")
        if cf is not None:
            progress.log(f"fcvc-cf-ia per 10M parameters: {cf['per_10M_ratio_to_lstm']:.2f}x lstm "
                         f"(paper 1.25x; target <= 1.0x)")
        return result

    run_and_exit(run, json_out=json_out, verbose=verbose)
