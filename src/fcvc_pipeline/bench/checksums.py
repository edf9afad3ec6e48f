"""``fcvc bench checksums``: what the feature store's checksums cost, against the work around them.

Two stores of the same videos (the paper's shapes: 15 frames, 2048-d pooled, 8x8x2048 regions, 4096-d
clips, float16, ReLU-like values) are written and read in interleaved rounds:

* ``checksummed``: :meth:`FeatureStore.write_video` / :meth:`FeatureStore.read_video` as fcvc uses them
  (Zstd with its per-chunk checksum, chunk sizes, a SHA-256 of each video checked on every read);
* ``plain``: the same arrays with zarr's default codec (no checksum) read straight back, which is what
  fcvc did before checksums.

The extra seconds per video are then set against the work they sit in, measured in the same run:
``fcvc extract``'s per-video backbone forward (Inception-V3 on 15 frames plus C3D on 15 clips, random
weights; the real extraction also decodes, so this is the smallest denominator) and one training
epoch's share per video (train steps of the default model on batches of 3 videos x 20 captions, the
trainer's packing at MSR-VTT's caption count). The features are read once per training run, so the
share of one epoch is the worst case (a one-epoch run). Target: every ratio under 5%.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import zarr

from fcvc_pipeline import progress
from fcvc_pipeline.bench.model_inputs import Shapes, random_videos, setup, timed
from fcvc_pipeline.commands.common import common_options, run_and_exit
from fcvc_pipeline.features.backbones import C3D, InceptionFeatures, build_c3d, build_inception_v3
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.models import DEFAULT_MODEL, build_model
from fcvc_pipeline.training.losses import caption_loss

TARGET = 0.05


@dataclass(frozen=True)
class ChecksumBenchConfig:
    videos: int = 24
    rounds: int = 3
    frames: int = 15
    train_steps: int = 3
    forward_videos: int = 1
    device: str = "cpu"
    threads: int | None = None
    workdir: Path | None = None  # where the two stores go (default: a temporary folder)


def _video(rng: np.random.Generator, frames: int) -> dict[str, np.ndarray]:
    relu = lambda *shape: np.maximum(rng.standard_normal(shape, dtype=np.float32), 0)  # noqa: E731
    return {"frame_indices": np.arange(frames, dtype=np.int32) * 6, "frame_features": relu(frames, 2048),
            "region_features": relu(frames, 64, 2048), "clip_features": relu(frames, 4096)}


def _write_plain(root: Path, vid: str, arrays: dict[str, np.ndarray]) -> None:
    group = zarr.open_group(str(root), mode="a", zarr_format=3).require_group(vid)
    for name, value in arrays.items():
        value = value.astype(np.float16) if value.dtype.kind == "f" else value
        group.create_array(name, data=value, chunks=value.shape, overwrite=True)
    group.attrs.put({"video_id": vid, "complete": True})


def _read_plain(root: Any, vid: str, names: list[str]) -> dict[str, np.ndarray]:
    group = root[vid]
    return {name: group[name][:] for name in names}  # known names, as the store reads them (no listing)


def _forward_seconds_per_video(cfg: ChecksumBenchConfig, device: torch.device) -> float:
    """Backbone forward of one video: Inception-V3 (15 frames at 299) + C3D (15 clips of 16 x 112)."""
    inception = InceptionFeatures(build_inception_v3(seed=0)).to(device).eval()
    c3d: C3D = build_c3d(seed=0).to(device).eval()
    frames = torch.randn(cfg.frames * cfg.forward_videos, 3, 299, 299, device=device)
    clips = torch.randn(cfg.frames * cfg.forward_videos, 3, 16, 112, 112, device=device)
    with torch.inference_mode():
        inception(frames[:2])
        c3d(clips[:1])  # warm-up
        t, _ = timed(lambda: (inception(frames), *[c3d(clips[s:s + 4]) for s in range(0, len(clips), 4)]), device)
    return t.wall / cfg.forward_videos


def _epoch_seconds_per_video(cfg: ChecksumBenchConfig, device: torch.device) -> float:
    """Training time per video and epoch of the default model (3 videos x 20 captions per step)."""
    shapes = Shapes()
    videos_per_step, per_video = 3, 20
    model_cfg = shapes.model_config(DEFAULT_MODEL)
    model = build_model(model_cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    videos = random_videos(shapes, videos_per_step, device)
    g = torch.Generator().manual_seed(0)
    n = videos_per_step * per_video
    inputs = torch.randint(4, shapes.vocab, (n, shapes.max_len), generator=g).to(device)
    inputs[:, 0] = 1
    targets = inputs.roll(-1, dims=1)
    targets[:, -1] = 2
    index = torch.arange(videos_per_step).repeat_interleave(per_video).to(device)

    def step():
        terms = caption_loss(model(videos, inputs, index), targets, model_cfg)
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        opt.step()

    step()  # warm-up
    times = [timed(step, device)[0].wall for _ in range(cfg.train_steps)]
    return statistics.median(times) / videos_per_step


def run_checksum_bench(cfg: ChecksumBenchConfig) -> dict[str, Any]:
    device, env = setup(cfg.device, cfg.threads)
    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="fcvc-bench-checksums-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = {f"video{i:03d}": _video(rng, cfg.frames) for i in range(cfg.videos)}
    ids = list(data)
    times: dict[str, list[float]] = {k: [] for k in ("write_checksummed", "write_plain", "read_checksummed",
                                                     "read_plain")}
    try:
        progress.log(f"bench checksums: {cfg.videos} videos x {cfg.rounds} interleaved rounds in {work}")
        for r in range(cfg.rounds):
            store = FeatureStore.create(work / f"checksummed{r}.zarr", {"dtype": "float16", "bench": True})
            plain = work / f"plain{r}.zarr"
            zarr.create_group(str(plain), zarr_format=3)

            def write_checksummed():
                for vid in ids:
                    store.write_video(vid, data[vid], {})

            def write_plain():
                for vid in ids:
                    _write_plain(plain, vid, data[vid])

            def read_checksummed():
                for vid in ids:
                    store.read_video(vid)

            def read_plain():
                root = zarr.open_group(str(plain), mode="r", zarr_format=3)  # opened once, like the store
                for vid in ids:
                    _read_plain(root, vid, sorted(data[vid]))

            jobs = [("write_checksummed", write_checksummed), ("write_plain", write_plain)]
            for name, fn in (jobs if r % 2 == 0 else jobs[::-1]):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) / cfg.videos)
            jobs = [("read_checksummed", read_checksummed), ("read_plain", read_plain)]
            for name, fn in (jobs if r % 2 == 0 else jobs[::-1]):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) / cfg.videos)
        # the checksummed store decodes to the very arrays written
        check = FeatureStore.open(work / "checksummed0.zarr").read_video(ids[-1])
        assert np.array_equal(check.region_features, data[ids[-1]]["region_features"].astype(np.float16))
        progress.log("bench checksums: backbone forward and training steps for the denominators")
        forward = _forward_seconds_per_video(cfg, device)
        epoch = _epoch_seconds_per_video(cfg, device)
    finally:
        if cfg.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    extra_write = med["write_checksummed"] - med["write_plain"]
    extra_read = med["read_checksummed"] - med["read_plain"]
    ratios = {"extract_throughput_cost": extra_write / forward,
              "train_epoch_cost": extra_read / epoch,
              "read_ratio_checksummed_to_plain": med["read_checksummed"] / med["read_plain"],
              "write_ratio_checksummed_to_plain": med["write_checksummed"] / med["write_plain"]}
    for k, v in ratios.items():
        progress.log(f"  {k}: {v:.4f}")
    return {
        "config": {"videos": cfg.videos, "rounds": cfg.rounds, "frames": cfg.frames, "model": DEFAULT_MODEL},
        "environment": env,
        "seconds_per_video": {**{k: round(v, 6) for k, v in med.items()},
                              "backbone_forward": round(forward, 4), "train_epoch_share": round(epoch, 4)},
        "all_rounds": {k: [round(x, 6) for x in v] for k, v in times.items()},
        "ratios": {k: round(v, 4) for k, v in ratios.items()},
        "target": {"cost_at_most": TARGET,
                   "met": ratios["extract_throughput_cost"] <= TARGET and ratios["train_epoch_cost"] <= TARGET},
    }


@click.command("checksums")
@click.option("--videos", type=int, default=24, show_default=True, help="Videos per store and round.")
@click.option("--rounds", type=int, default=3, show_default=True, help="Interleaved write/read rounds (median).")
@click.option("--train-steps", type=int, default=3, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
@common_options
def bench_checksums(videos, rounds, train_steps, device, threads, workdir, json_out, verbose):
    """Cost of the store's checksums: extra write/read seconds per video against the backbone forward
    of one video and one training epoch's share of one video (same run)."""
    cfg = ChecksumBenchConfig(videos=videos, rounds=rounds, train_steps=train_steps, device=device, threads=threads,
                              workdir=None)
    run_and_exit(lambda: run_checksum_bench(cfg), json_out=json_out, verbose=verbose)
