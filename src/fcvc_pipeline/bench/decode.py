"""``fcvc bench decode``: incremental beam search against full recomputation, side by side in one run.

Three ways to run the same beam search (same captions, checked):

- ``incremental``: :func:`~fcvc_pipeline.inference.decoding.generate` -- videos encoded once, one token per step through
  the per-layer conv windows;
- ``full_recompute``: every step re-runs ``model(videos, prefix)`` (encoding included) -- the reference;
- ``prefix_recompute`` (opt-in with ``--modes``): encoding once, but every step re-runs the decoder over the
  whole prefix -- what the conv windows alone save.

Random weights make every hypothesis run to ``max_len`` (the worst case, reported as ``mean_tokens``).
Wall-clock seconds give the ratios; the process CPU seconds are reported too (on a shared CPU, with
``--threads 1``, they are the figure other processes disturb least).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click
import torch

from fcvc_pipeline import progress
from fcvc_pipeline.bench.model_inputs import Shapes, random_videos, setup, shape_options, timed
from fcvc_pipeline.commands.common import common_options, run_and_exit
from fcvc_pipeline.errors import require
from fcvc_pipeline.inference.decoding import generate, generate_full_recompute
from fcvc_pipeline.models import DEFAULT_MODEL, build_model, canonical_model_name

TARGET_RATIO = 3.0
MODES = ("incremental", "prefix_recompute", "full_recompute")
DEFAULT_MODES = ("incremental", "full_recompute")


@dataclass(frozen=True)
class DecodeBenchConfig:
    model: str = DEFAULT_MODEL
    videos: int = 64
    beam: int = 5
    max_len: int = 20
    length_penalty: float = 1.0
    modes: tuple[str, ...] = DEFAULT_MODES
    shapes: Shapes = field(default_factory=Shapes)
    device: str = "auto"
    threads: int | None = None
    seed: int = 0

    def validate(self) -> list[str]:
        p = []
        if self.videos < 1 or self.beam < 1 or self.max_len < 1:
            p.append("--videos, --beam and --max-len must be >= 1")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or "incremental" not in self.modes:
            p.append(f"--modes must include incremental and be among {', '.join(MODES)} (got {', '.join(self.modes)})")
        return p


@dataclass
class DecodeBenchResult:
    config: dict[str, Any]
    environment: dict[str, Any]
    parameters: int
    seconds: dict[str, float]
    cpu_seconds: dict[str, float]
    ratios: dict[str, float]
    cpu_ratios: dict[str, float]
    captions_per_second: dict[str, float]
    mean_tokens: float
    same_captions: dict[str, float]
    target: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_decode_bench(cfg: DecodeBenchConfig) -> DecodeBenchResult:
    require(cfg.validate())
    model_name = canonical_model_name(cfg.model)
    shapes = Shapes(**{**cfg.shapes.to_json(), "max_len": max(cfg.shapes.max_len, cfg.max_len)})
    device, env = setup(cfg.device, cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(shapes.model_config(model_name)).to(device).eval()
    videos = random_videos(shapes, cfg.videos, device, seed=cfg.seed)
    opts = dict(beam_size=cfg.beam, max_len=cfg.max_len, length_penalty=cfg.length_penalty)
    runners = {
        "incremental": lambda v: generate(model, v, **opts),
        "prefix_recompute": lambda v: generate_full_recompute(model, v, reuse_encoding=True, **opts),
        "full_recompute": lambda v: generate_full_recompute(model, v, **opts),
    }
    progress.log(f"bench decode: {model_name}, {cfg.videos} videos, beam {cfg.beam}, max_len {cfg.max_len} "
                 f"on {device} ({env['threads']} threads)")
    warm = videos.index_select(torch.arange(min(2, cfg.videos), device=device))
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    hyps: dict[str, list] = {}
    for mode in cfg.modes:
        runners[mode](warm)  # first-call costs (allocator, kernels) out of the timing
        timing, hyps[mode] = timed(lambda: runners[mode](videos), device)
        seconds[mode], cpu[mode] = timing.wall, timing.cpu
        progress.log(f"  {mode}: {timing.wall:.2f} s ({timing.cpu:.2f} CPU s)")
    others = [m for m in cfg.modes if m != "incremental"]
    ratios = {f"{m}_over_incremental": seconds[m] / seconds["incremental"] for m in others}
    cpu_ratios = {f"{m}_over_incremental": cpu[m] / cpu["incremental"] for m in others}
    reference = hyps["incremental"]
    same = {m: sum(a.tokens == b.tokens for a, b in zip(reference, hyps[m])) / len(reference)
            for m in cfg.modes if m != "incremental"}
    ratio = ratios.get("full_recompute_over_incremental")
    return DecodeBenchResult(
        config={"model": model_name, "videos": cfg.videos, "beam": cfg.beam, "max_len": cfg.max_len,
                "length_penalty": cfg.length_penalty, "shapes": shapes.to_json()},
        environment=env,
        parameters=model.num_parameters(),
        seconds=seconds,
        cpu_seconds=cpu,
        ratios=ratios,
        cpu_ratios=cpu_ratios,
        captions_per_second={m: cfg.videos / s for m, s in seconds.items()},
        mean_tokens=sum(len(h.tokens) for h in reference) / len(reference),
        same_captions=same,
        target={"full_recompute_over_incremental_at_least": TARGET_RATIO,
                "met": None if ratio is None else ratio >= TARGET_RATIO},
    )


@click.command("decode")
@click.option("--model", default="fcvc-cf-ia", show_default=True, help="Model to decode with.")
@click.option("--videos", type=int, default=64, show_default=True, help="Videos per batch.")
@click.option("--beam", type=int, default=5, show_default=True)
@click.option("--max-len", type=int, default=20, show_default=True)
@click.option("--length-penalty", type=float, default=1.0, show_default=True)
@click.option("--modes", default=",".join(DEFAULT_MODES), show_default=True,
              help=f"Comma-separated decoding paths to time, among {', '.join(MODES)} (incremental is required).")
@click.option("--seed", type=int, default=0, show_default=True)
@shape_options
@common_options
def bench_decode(model, videos, beam, max_len, length_penalty, modes, seed, vocab, frames, regions, frame_dim,
                 clip_dim, region_dim, d_model, device, threads, workdir, json_out, verbose):
    """Incremental vs full-recompute beam search (same captions, timed in one run)."""

    def run():
        shapes = Shapes(vocab=vocab, frames=frames, regions=regions, frame_dim=frame_dim, clip_dim=clip_dim,
                        region_dim=region_dim, d_model=d_model, max_len=max_len)
        cfg = DecodeBenchConfig(model=model, videos=videos, beam=beam, max_len=max_len, length_penalty=length_penalty,
                                modes=tuple(m.strip() for m in modes.split(",") if m.strip()), shapes=shapes,
                                device=device, threads=threads, seed=seed)
        result = run_decode_bench(cfg)
        r = result.ratios.get("full_recompute_over_incremental")
        if r is not None:
            progress.log(f"incremental is {r:.1f}x faster than full recompute (target >= {TARGET_RATIO:g}x)")
        return result

    run_and_exit(run, json_out=json_out, verbose=verbose)

