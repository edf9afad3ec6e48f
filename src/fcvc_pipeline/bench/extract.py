"""``fcvc bench extract``: end-to-end extraction throughput against the bare backbone forward, for the
networks' precision and layout side by side.

In one process on one device: synthetic MSVD-like videos (320x240, textured, moving) are written
with PyAV; a reference store is extracted first (networks built and BatchNorm-calibrated once, in fp32),
then every mode (:data:`MODES`: fp32 with contiguous networks, the CPU path before ``--precision``;
fp32 channels-last; bf16 autocast channels-last) extracts the videos end to end (decode workers +
batching + store writes) with the reference's very networks, each once untimed (warm kernels) and then
in interleaved rounds (every mode once per round, so changes of the machine's load hit them alike; the
median round is reported). Then the same networks run forward-only on the pre-decoded, pre-processed
tensors of the same batch shapes, again interleaved; their outputs (pooled, regions, clips) are compared
with fp32-contiguous's (largest difference relative to the largest value, cosine similarity). The ratio
e2e / bare says how much decoding and I/O cost on top of compute (1.0: fully hidden). Measured twice:
frames only (``--c3d-weights none``) and frames + C3D clips. ``--compile`` also times ``torch.compile``
of the Inception forward. Random weights are used (no download); throughput does not depend on the
weight values.
"""

from __future__ import annotations

import json
import os
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
from fcvc_pipeline.devices import cpu_has_bf16, device_for_rank, resolve_precision
from fcvc_pipeline.errors import ConfigError
from fcvc_pipeline.features.backbones import CLIP_MODELS
from fcvc_pipeline.features.decode_pool import DecodePool
from fcvc_pipeline.features.extraction import default_workers_and_batch, run_extraction
from fcvc_pipeline.features.networks import Backbones, load_from_record
from fcvc_pipeline.features.settings import decode_plan
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.features.video import DECODE_THREADS_ENV, list_videos
from fcvc_pipeline.features.video import decode_threads as video_decode_threads
from fcvc_pipeline.stages.extract import ExtractConfig

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


# The side-by-side modes: (precision, channels_last). fp32_contiguous is the CPU path before --precision
# (fp32, contiguous networks); every mode's features are compared with it.
MODES: dict[str, tuple[str, bool]] = {"fp32_contiguous": ("fp32", False), "fp32_channels_last": ("fp32", True),
                                      "bf16_channels_last": ("bf16", True)}
REFERENCE_MODE = "fp32_contiguous"
TARGET_SPEEDUP = {"fp32_channels_last": 1.6, "bf16_channels_last": 3.0}  # end to end, vs fp32_contiguous (CPU)


def _backbones(store: FeatureStore, device, precision: str, channels_last: bool) -> Backbones:
    """The store's networks, rebuilt (fresh modules: the layout is applied in place) for one mode."""
    settings = store.settings
    records = store.backbone_records()
    inception = load_from_record(store, "inception", records["inception"])
    clip = load_from_record(store, "clip", records["clip"]) if settings.get("clip") else None
    clip_info = CLIP_MODELS[settings["clip"]["model"]] if settings.get("clip") else None
    return Backbones(inception, clip, clip_info, device, precision=precision, channels_last=channels_last)


def _forward(bb: Backbones, frame_inputs: list[torch.Tensor], clip_inputs: list[torch.Tensor], device
             ) -> tuple[float, dict[str, np.ndarray]]:
    """Seconds for every batch's forward (outputs copied back as float32), and the outputs."""
    pooled, regions, clips = [], [], []
    with torch.inference_mode(), bb._autocast():
        _sync(device)
        t0 = time.perf_counter()
        for x in frame_inputs:
            p, r = bb.inception(x)
            pooled.append(p.float().cpu())
            regions.append(r.float().cpu())
        for x in clip_inputs:
            clips.append(bb.clip(x).float().cpu())
        _sync(device)
        seconds = time.perf_counter() - t0
    out = {"pooled": torch.cat(pooled).numpy(), "regions": torch.cat(regions).numpy()}
    if clips:
        out["clips"] = torch.cat(clips).numpy()
    return seconds, out


def agreement(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """How close ``got`` is to ``ref`` (rows = feature vectors): the largest absolute difference relative
    to the reference's largest magnitude, and the cosine similarity of each vector (mean, min)."""
    a = got.reshape(-1, got.shape[-1]).astype(np.float64)
    b = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    scale = float(np.abs(b).max()) or 1.0
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
    return {"max_rel_diff": float(f"{np.abs(a - b).max() / scale:.3g}"),
            "cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6)}


def _bare(store_path: Path, folder: Path, batch_size: int, workers: int, device, max_videos: int,
          modes: list[str], rounds: int, compile_modes: list[str]) -> dict[str, Any]:
    """Forward-only time of the store's networks on pre-decoded tensors of the e2e batch shapes, per mode,
    in interleaved rounds (median), and each mode's outputs against fp32_contiguous's.

    Uses the first ``max_videos`` videos (their tensors are all held in memory at once). ``compile_modes``:
    modes also run with ``torch.compile`` on the Inception forward (the first call's time is its compile)."""
    store = FeatureStore.open(store_path)
    settings = store.settings
    videos = [o.video for o in DecodePool(decode_plan(settings), workers=workers, timeout=600)
              .imap(list_videos([folder])[:max_videos]) if o.video is not None]
    frames = np.concatenate([v.frames for v in videos])  # uint8 [F, S, S, 3]
    clips = (np.concatenate([v.clip_frames[v.clip_index] for v in videos])  # uint8 [F, L, c, c, 3]
             if settings.get("clip") else None)
    clip_batch = max(1, batch_size // 4)
    runs: dict[str, tuple[Backbones, list[torch.Tensor], list[torch.Tensor]]] = {}
    compile_seconds: dict[str, float] = {}
    for mode in modes + [f"{m}_compiled" for m in compile_modes]:
        precision, channels_last = MODES[mode.removesuffix("_compiled")]
        bb = _backbones(store, device, precision, channels_last)
        frame_inputs = [bb.frame_inputs(frames[s:s + batch_size]) for s in range(0, len(frames), batch_size)]
        clip_inputs = ([bb.clip_inputs(clips[s:s + clip_batch]) for s in range(0, len(clips), clip_batch)]
                       if clips is not None else [])
        if mode.endswith("_compiled"):
            bb.inception = torch.compile(bb.inception)  # type: ignore[assignment]
            t0 = time.perf_counter()
            _forward(bb, frame_inputs[:1], [], device)  # compiles (and warms up) the Inception forward
            compile_seconds[mode] = time.perf_counter() - t0
        runs[mode] = (bb, frame_inputs, clip_inputs)
        _forward(bb, frame_inputs[:1], clip_inputs[:1], device)  # warm-up (kernel selection), untimed
    times: dict[str, list[float]] = {m: [] for m in runs}
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for _ in range(rounds):
        for mode, (bb, fi, ci) in runs.items():
            seconds, out = _forward(bb, fi, ci, device)
            times[mode].append(seconds)
            outputs.setdefault(mode, out)
    result: dict[str, Any] = {"frames": int(len(frames)), "videos": len(videos), "modes": {}}
    ref = outputs.get(REFERENCE_MODE)
    for mode in runs:
        seconds = float(np.median(times[mode]))
        entry: dict[str, Any] = {"seconds": round(seconds, 3), "rounds": [round(t, 3) for t in times[mode]],
                                 "frames_per_s": round(len(frames) / seconds, 3)}
        if mode in compile_seconds:
            entry["compile_seconds"] = round(compile_seconds[mode], 2)
        if ref is not None:
            entry["agreement"] = {k: agreement(outputs[mode][k], ref[k]) for k in ref}
        result["modes"][mode] = entry
    return result


def _measure(label: str, folder: Path, work: Path, *, frames: int, frame_size: int, c3d: bool, device: str,
             batch_size: int | None, workers: int | None, bare_videos: int, modes: list[str], rounds: int,
             compile_modes: list[str]) -> dict[str, Any]:
    dev = device_for_rank(device)
    workers_n, batch_n = default_workers_and_batch(dev, workers, batch_size, frames)
    cfg = ExtractConfig(inputs=(folder,), store=work / f"{label}.zarr", frames=frames, frame_size=frame_size,
                        inception_weights="random", c3d_weights="random" if c3d else "none", device=device,
                        batch_size=batch_n, workers=workers_n, calibration_frames=16, precision="fp32")
    job = cfg.check()
    # the reference store: networks built and calibrated once (fp32) on the first videos, reused by every mode
    warm_dir = work / f"{label}_warmup"
    warm_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted(folder.iterdir())[:max(1, -(-batch_n // frames))]:
        (warm_dir / src.name).write_bytes(src.read_bytes())
    warm_job = replace(cfg, inputs=(warm_dir,)).check()
    ref_path = work / f"{label}_reference.zarr"
    run_extraction(replace(warm_job, store_path=ref_path))
    ref = FeatureStore.open(ref_path)

    def extract(mode: str, store: Path, inputs_job):
        precision, channels_last = MODES[mode]
        return run_extraction(replace(inputs_job, store_path=store, precision=precision, channels_last=channels_last),
                              reference=ref, settings=dict(ref.settings), command=None)

    for mode in modes:  # warm-up: the same networks and batch shapes once, untimed
        progress.log(f"[bench extract] {label}: warm-up, {mode}")
        extract(mode, work / f"{label}_warmup_{mode}.zarr", warm_job)
    e2e: dict[str, list[Any]] = {m: [] for m in modes}
    for r in range(rounds):  # interleaved: every mode once per round, so load changes hit them alike
        for mode in modes:
            progress.log(f"[bench extract] {label}: end-to-end extraction, {mode}, round {r + 1}/{rounds}")
            t0 = time.perf_counter()
            result = extract(mode, work / f"{label}_{mode}_{r}.zarr", job)
            total = time.perf_counter() - t0
            if result.failed:
                raise RuntimeError(f"bench videos failed to extract: {result.failed}")
            e2e[mode].append((result, total))
    progress.log(f"[bench extract] {label}: bare backbone forward on pre-decoded tensors")
    bare = _bare(ref_path, folder, batch_n, workers_n, dev, bare_videos, modes, rounds, compile_modes)
    out: dict[str, Any] = {"batch_size": batch_n, "workers": workers_n, "rounds": rounds, "modes": {}}
    for mode in modes:
        runs = sorted(e2e[mode], key=lambda rt: rt[0].loop_seconds)
        result, total = runs[len(runs) // 2]  # the median round (the slower middle one for an even count)
        e2e_fps = result.frames / result.loop_seconds
        b = bare["modes"][mode]
        out["modes"][mode] = {
            "precision": MODES[mode][0], "channels_last": MODES[mode][1],
            "videos": result.completed, "frames": result.frames,
            "e2e_seconds": round(result.loop_seconds, 3), "e2e_rounds": [round(r.loop_seconds, 3) for r, _ in e2e[mode]],
            "e2e_setup_seconds": round(total - result.loop_seconds, 3),
            "e2e_videos_per_s": round(result.completed / result.loop_seconds, 4),
            "e2e_frames_per_s": round(e2e_fps, 3),
            "e2e_compute_seconds": round(result.compute_seconds, 3),
            # share of the end-to-end loop spent inside forwards: 1.0 = decode and writes fully hidden
            # (steadier than the ratio on a shared machine, whose load can change between the two timings)
            "e2e_compute_share": round(result.compute_seconds / result.loop_seconds, 3),
            "bare_seconds": b["seconds"], "bare_frames_per_s": b["frames_per_s"],
            "bare_videos": bare["videos"], "bare_videos_per_s": round(bare["videos"] / b["seconds"], 4),
            "ratio": round(e2e_fps / b["frames_per_s"], 3),
        }
        if "agreement" in b:
            out["modes"][mode]["agreement"] = b["agreement"]
    base = out["modes"].get(REFERENCE_MODE)
    if base is not None:
        for mode, entry in out["modes"].items():
            entry["e2e_speedup"] = round(entry["e2e_frames_per_s"] / base["e2e_frames_per_s"], 3)
            entry["bare_speedup"] = round(entry["bare_frames_per_s"] / base["bare_frames_per_s"], 3)
    for mode, b in bare["modes"].items():
        if mode.endswith("_compiled"):
            entry = dict(b)
            if mode.removesuffix("_compiled") in bare["modes"]:
                entry["speedup_vs_eager"] = round(b["frames_per_s"] /
                                                  bare["modes"][mode.removesuffix("_compiled")]["frames_per_s"], 3)
            out.setdefault("compiled_bare", {})[mode] = entry
    # the figures of the default path (what `fcvc extract` runs now), under the keys earlier reports used
    default = "bf16_channels_last" if resolve_precision("auto", dev) == "bf16" else "fp32_channels_last"
    out["default_mode"] = default if default in out["modes"] else modes[-1]
    out.update({k: out["modes"][out["default_mode"]][k] for k in ("videos", "frames", "e2e_frames_per_s",
                                                                  "bare_frames_per_s", "ratio", "e2e_compute_share",
                                                                  "e2e_videos_per_s")})
    return out


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
@click.option("--threads", type=int, default=None,
              help="torch intra-op threads of the forward (default: torch's, after fcvc's own default).")
@click.option("--decode-threads", type=click.IntRange(min=1), default=None,
              help=f"Threads per decoder in the decode workers (sets ${DECODE_THREADS_ENV} for the run; default 1).")
@click.option("--modes", default=",".join(MODES), show_default=True,
              help=f"Comma-separated, measured side by side in interleaved rounds: {', '.join(MODES)}.")
@click.option("--rounds", type=int, default=1, show_default=True,
              help="Interleaved rounds (every mode once per round); the median round is reported.")
@click.option("--compile", "compile_", is_flag=True,
              help="Also time torch.compile of the Inception forward (bare forward of the channels-last modes): "
                   "compile seconds and steady-state speed.")
@click.option("--bare-videos", type=int, default=64, show_default=True,
              help="At most this many videos for the bare-forward timing (their tensors are held in memory).")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write videos and stores here (default: a temporary folder, deleted).")
@click.option("--json", "json_out", is_flag=True, help="Print the figures as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True)
def bench_extract(videos, c3d_videos, video_frames, video_size, frames, frame_size, device, batch_size, workers,
                  threads, decode_threads, modes, rounds, compile_, bare_videos, keep, json_out, verbose):
    """Extraction throughput (videos/s, frames/s) vs the bare backbone forward, with and without C3D, for
    fp32-contiguous (the old CPU path), fp32-channels-last and bf16-channels-last side by side, and the
    features of each against fp32-contiguous."""
    def run():
        chosen = [m.strip() for m in modes.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in MODES]
        if unknown or not chosen or rounds < 1:
            raise ConfigError(f"--modes must name some of {', '.join(MODES)} (got {modes!r}) and --rounds be >= 1")
        compile_modes = [m for m in chosen if MODES[m][1]] if compile_ else []
        if threads:
            torch.set_num_threads(threads)
        if decode_threads:  # the decode workers inherit the environment when they start
            os.environ[DECODE_THREADS_ENV] = str(decode_threads)
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
                "cpu_has_bf16": cpu_has_bf16(), "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(), "decode_threads": video_decode_threads(),
                "frames_per_video": frames, "frame_size": frame_size,
                "video": f"{w}x{h}, {video_frames} frames, H.264", "weights": "random (throughput only)",
                "writing_videos_seconds": round(time.perf_counter() - t0, 2),
            }
            common = dict(frames=frames, frame_size=frame_size, device=device, batch_size=batch_size,
                          workers=workers, bare_videos=bare_videos, modes=chosen, rounds=rounds,
                          compile_modes=compile_modes)
            report["frames_only"] = _measure("frames_only", root / "videos", root, c3d=False, **common)
            if c3d_videos:
                report["frames_and_c3d"] = _measure("frames_and_c3d", root / "videos_c3d", root, c3d=True,
                                                    **{**common, "compile_modes": []})
                vps = report["frames_and_c3d"]["e2e_videos_per_s"]
                report["msvd_1970_videos_estimate_seconds"] = round(1970 / vps, 1) if vps > 0 else None
            parts = [report[k] for k in ("frames_only", "frames_and_c3d") if k in report]
            report["target_ratio"] = TARGET_RATIO
            report["meets_target"] = all(m["ratio"] >= TARGET_RATIO for p in parts for m in p["modes"].values())
            if REFERENCE_MODE in chosen and dev.type == "cpu":
                report["target_speedup"] = {m: t for m, t in TARGET_SPEEDUP.items() if m in chosen}
                report["meets_speedup_target"] = all(p["modes"][m]["e2e_speedup"] >= t for p in parts
                                                     for m, t in report["target_speedup"].items())
        if not json_out:
            click.echo(json.dumps(report, indent=2), err=True)
        return report

    run_and_exit(run, json_out=json_out, verbose=verbose)
