"""``fcvc bench extract``: end-to-end extraction throughput against the bare backbone forward.

In one process on one device: synthetic MSVD-like videos (320x240, textured, moving) are written
with PyAV; after an untimed warm-up extraction of one batch (so both sides run with warm kernels),
``run_extract`` extracts them (decode workers + batching + store writes), then the very
same networks (reloaded from the store) run forward-only on the pre-decoded, pre-processed tensors
of the same batch shapes. The ratio e2e / bare says how much decoding and I/O cost on top of compute
(1.0: fully hidden). Measured twice: frames only (``--c3d-weights none``) and frames + C3D clips.
Random weights are used (no download); throughput does not depend on the weight values.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import click
import numpy as np
import torch

from fcvc_pipeline import progress
from fcvc_pipeline.commands.common import run_and_exit
from fcvc_pipeline.devices import device_for_rank
from fcvc_pipeline.features.decode_pool import DecodePool
from fcvc_pipeline.features.extraction import default_workers_and_batch
from fcvc_pipeline.features.networks import prepare_backbones
from fcvc_pipeline.features.settings import decode_plan
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.features.video import list_videos
from fcvc_pipeline.stages.extract import ExtractConfig, run_extract

TARGET_RATIO = 0.85


def write_videos(folder: Path, count: int, frames: int, height: int, width: int, seed: int = 0) -> None:
    """Textured frames with a drifting pattern and a moving square, H.264 in mp4."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        base = rng.integers(0, 256, size=(height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
        base = np.repeat(np.repeat(base, 8, axis=0), 8, axis=1)
        with av.open(str(folder / f"bench{i:04d}.mp4"), mode="w") as out:
            stream = out.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.time_base = Fraction(1, 25)
            stream.options = {"preset": "veryfast", "crf": "23"}
            for t in range(frames):
                img = base[t % 8:t % 8 + height, (2 * t) % 16:(2 * t) % 16 + width].copy()
                x = int((width - 40) * t / max(1, frames - 1))
                img[height // 2 - 20:height // 2 + 20, x:x + 40] = (255, 32 * (i % 8), 0)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = t
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bare(store_path: Path, folder: Path, batch_size: int, workers: int, device, max_videos: int) -> dict[str, Any]:
    """Forward-only time of the store's networks on pre-decoded tensors of the e2e batch shapes.

    Uses the first ``max_videos`` videos (their tensors are all held in memory at once)."""
    store = FeatureStore.open(store_path, mode="a")
    settings = store.settings
    backbones = prepare_backbones(store, settings, {"inception": None, "clip": None}, device,
                                  calibration=lambda: (_ for _ in ()).throw(RuntimeError("no calibration here")))
    videos = [o.video for o in DecodePool(decode_plan(settings), workers=workers, timeout=600)
              .imap(list_videos([folder])[:max_videos]) if o.video is not None]
    frames = np.concatenate([v.frames for v in videos])  # uint8 [F, S, S, 3]
    frame_inputs = [backbones.frame_inputs(frames[s:s + batch_size]) for s in range(0, len(frames), batch_size)]
    clip_inputs = []
    clip_batch = max(1, batch_size // 4)
    if backbones.clip is not None:
        clips = np.concatenate([v.clip_frames[v.clip_index] for v in videos])  # uint8 [F, L, c, c, 3]
        clip_inputs = [backbones.clip_inputs(clips[s:s + clip_batch]) for s in range(0, len(clips), clip_batch)]
    with torch.inference_mode(), backbones._autocast():
        backbones.inception(frame_inputs[0])  # warm-up (kernel selection), untimed
        if clip_inputs:
            backbones.clip(clip_inputs[0])
        _sync(device)
        t0 = time.perf_counter()
        for x in frame_inputs:
            pooled, regions = backbones.inception(x)
            pooled.float().cpu()
            regions.float().cpu()
        for x in clip_inputs:
            backbones.clip(x).float().cpu()
        _sync(device)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "frames": int(len(frames)), "videos": len(videos)}


def _measure(label: str, folder: Path, work: Path, *, frames: int, frame_size: int, c3d: bool, device: str,
             batch_size: int | None, workers: int | None, bare_videos: int) -> dict[str, Any]:
    dev = device_for_rank(device)
    workers_n, batch_n = default_workers_and_batch(dev, workers, batch_size, frames)
    store = work / f"{label}.zarr"
    cfg = ExtractConfig(inputs=(folder,), store=store, frames=frames, frame_size=frame_size,
                        inception_weights="random", c3d_weights="random" if c3d else "none", device=device,
                        batch_size=batch_n, workers=workers_n, calibration_frames=16)
    # warm-up: the same networks and batch shapes once, untimed (kernel selection, allocator caches)
    progress.log(f"[bench extract] {label}: warm-up")
    warm_dir = work / f"{label}_warmup"
    warm_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted(folder.iterdir())[:max(1, -(-batch_n // frames))]:
        (warm_dir / src.name).write_bytes(src.read_bytes())
    run_extract(replace(cfg, inputs=(warm_dir,), store=work / f"{label}_warmup.zarr"))
    progress.log(f"[bench extract] {label}: end-to-end extraction")
    t0 = time.perf_counter()
    result = run_extract(cfg)
    total = time.perf_counter() - t0
    if result.failed:
        raise RuntimeError(f"bench videos failed to extract: {result.failed}")
    progress.log(f"[bench extract] {label}: bare backbone forward on pre-decoded tensors")
    bare = _bare(store, folder, batch_n, workers_n, dev, bare_videos)
    e2e_fps = result.frames / result.loop_seconds
    bare_fps = bare["frames"] / bare["seconds"]
    return {
        "videos": result.completed, "frames": result.frames, "batch_size": batch_n, "workers": workers_n,
        "e2e_seconds": round(result.loop_seconds, 3), "e2e_setup_seconds": round(total - result.loop_seconds, 3),
        "e2e_videos_per_s": round(result.completed / result.loop_seconds, 4),
        "e2e_frames_per_s": round(e2e_fps, 3),
        "e2e_compute_seconds": round(result.compute_seconds, 3),
        # share of the end-to-end loop spent inside forwards: 1.0 = decode and writes fully hidden
        # (steadier than the ratio on a shared machine, whose load can change between the two timings)
        "e2e_compute_share": round(result.compute_seconds / result.loop_seconds, 3),
        "bare_seconds": round(bare["seconds"], 3), "bare_frames_per_s": round(bare_fps, 3),
        "bare_videos": bare["videos"], "bare_videos_per_s": round(bare["videos"] / bare["seconds"], 4),
        "ratio": round(e2e_fps / bare_fps, 3),
    }


@click.command("extract")
@click.option("--videos", type=int, default=6, show_default=True, help="Videos for the frames-only measurement.")
@click.option("--c3d-videos", type=int, default=2, show_default=True,
              help="Videos for the frames + C3D measurement (0 skips it).")
@click.option("--video-frames", type=int, default=90, show_default=True, help="Frames per synthetic video.")
@click.option("--video-size", default="320x240", show_default=True, help="WxH of the synthetic videos (MSVD-like).")
@click.option("--frames", type=int, default=15, show_default=True)
@click.option("--frame-size", type=int, default=299, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=None)
@click.option("--workers", type=int, default=None)
@click.option("--bare-videos", type=int, default=64, show_default=True,
              help="At most this many videos for the bare-forward timing (their tensors are held in memory).")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write videos and stores here (default: a temporary folder, deleted).")
@click.option("--json", "json_out", is_flag=True, help="Print the figures as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True)
def bench_extract(videos, c3d_videos, video_frames, video_size, frames, frame_size, device, batch_size, workers,
                  bare_videos, keep, json_out, verbose):
    """Extraction throughput (videos/s, frames/s) vs the bare backbone forward, with and without C3D."""
    def run():
        w, h = (int(x) for x in video_size.lower().split("x"))
        with tempfile.TemporaryDirectory(prefix="fcvc-bench-extract-") as tmp:
            root = Path(keep) if keep else Path(tmp)
            t0 = time.perf_counter()
            write_videos(root / "videos", videos, video_frames, h, w)
            if c3d_videos:
                write_videos(root / "videos_c3d", c3d_videos, video_frames, h, w, seed=1)
            dev = device_for_rank(device)
            report: dict[str, Any] = {
                "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                "torch_threads": torch.get_num_threads(), "frames_per_video": frames, "frame_size": frame_size,
                "video": f"{w}x{h}, {video_frames} frames, H.264", "weights": "random (throughput only)",
                "writing_videos_seconds": round(time.perf_counter() - t0, 2),
            }
            report["frames_only"] = _measure("frames_only", root / "videos", root, frames=frames,
                                             frame_size=frame_size, c3d=False, device=device,
                                             batch_size=batch_size, workers=workers, bare_videos=bare_videos)
            if c3d_videos:
                report["frames_and_c3d"] = _measure("frames_and_c3d", root / "videos_c3d", root, frames=frames,
                                                    frame_size=frame_size, c3d=True, device=device,
                                                    batch_size=batch_size, workers=workers,
                                                    bare_videos=bare_videos)
                vps = report["frames_and_c3d"]["e2e_videos_per_s"]
                report["msvd_1970_videos_estimate_seconds"] = round(1970 / vps, 1) if vps > 0 else None
            ratios = [report[k]["ratio"] for k in ("frames_only", "frames_and_c3d") if k in report]
            report["target_ratio"] = TARGET_RATIO
            report["meets_target"] = all(r >= TARGET_RATIO for r in ratios)
        if not json_out:
            click.echo(json.dumps(report, indent=2), err=True)
        return report

    run_and_exit(run, json_out=json_out, verbose=verbose)
