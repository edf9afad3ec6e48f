"""``fcvc bench caption``: captioning video files with ``--model FILE.fcvc`` against the work directory's path.

One process, one device. Set up untimed, in a temporary folder: synthetic MSVD-like videos (320x240,
textured, moving; ``bench extract``'s), a work directory whose feature store has the demo's settings (15
frames at 171x171, a seeded random Inception-V3 with BatchNorm statistics re-estimated on two other
videos, no C3D), a ``best.pt`` of an *untrained* FCVC-CF&IA of the demo's shape (d = 256; random weights
from a fixed seed, a 64-word vocabulary, the run's default decoding: beam 5), and that checkpoint exported
with ``fcvc export``. Untrained because training would dominate the bench and captioning time does not
depend on what the weights say, except through caption length: an untrained model rarely stops early, so
its captions run to the longest allowed (reported as ``mean_caption_words``), the slow side of decoding.

Three ways to caption the same videos, each a full ``run_caption`` call (load the model, rebuild and check
the feature networks, decode, compute features, beam search), timed in interleaved rounds (each round runs
every side once, in a rotated order, so a change in a shared machine's load reaches every side alike; the
median over rounds is reported):

- ``model``: ``fcvc caption --model FILE`` (features computed in memory, nothing written);
- ``workdir_cold``: ``fcvc caption --checkpoint best.pt`` in the work directory with an empty feature
  cache (the features are extracted into ``caption-features/`` and read back: what every first caption of
  a video costs there, and what ``fcvc caption`` did before ``--model`` existed);
- ``workdir_cached``: the same call again, every video's features already in the cache.

Each side captions 1 video (latency) and ``--videos`` videos (throughput, default 16). The ratios are
``model / workdir_*`` seconds (below 1: ``--model`` is faster). Captions must be token-identical across
the three sides (``captions_identical``). Memory, in a fresh Python process (Linux ``/proc/self/status``):
its resident size after ``from fcvc_pipeline import Captioner`` (which imports torch), the peak while
``Captioner.load`` reads the file (``load_peak_mb``; ``load_extra_mb`` is that peak over the size after the
imports), and the peak while it captions one video (networks built, decoded, features, beam search); the
peak is reset between the steps (``clear_refs``; ``peak_reset`` false where the kernel refuses, and then
each peak includes the ones before). The process's start-up (Python and torch imports, which every
``fcvc`` command pays and the in-process timings above do not) is timed there too.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch

from fcvc_pipeline import progress
from fcvc_pipeline.bench.extract import write_videos
from fcvc_pipeline.bench.model_inputs import setup
from fcvc_pipeline.captions.vocabulary import SPECIALS, Vocabulary
from fcvc_pipeline.commands.common import run_and_exit
from fcvc_pipeline.errors import require
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.inference.checkpoint import save_checkpoint
from fcvc_pipeline.inference.options import DecodingOptions
from fcvc_pipeline.models import DEFAULT_MODEL, ModelConfig, build_model
from fcvc_pipeline.stages.caption import CaptionConfig, run_caption
from fcvc_pipeline.stages.export import ExportConfig, run_export
from fcvc_pipeline.stages.extract import ExtractConfig, run_extract
from fcvc_pipeline.workdir import Workdir

SIDES = ("model", "workdir_cold", "workdir_cached")

_MEMORY_PROBE = """
import json, resource, sys, time

def status_mb(key):  # this process's resident memory now (VmRSS) or its peak (VmHWM), in MiB
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def reset_peak():  # VmHWM starts again from the current size (Linux >= 4.0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

t0 = time.perf_counter()
from fcvc_pipeline import Captioner
import torch
torch.set_num_threads(int(sys.argv[3]))
out = {"import_seconds": time.perf_counter() - t0, "rss_after_import_mb": status_mb("VmRSS"),
       "peak_after_import_mb": status_mb("VmHWM"), "peak_reset": reset_peak()}
t0 = time.perf_counter()
cap = Captioner.load(sys.argv[1], device="cpu")
out["load_seconds"] = time.perf_counter() - t0
out["load_peak_mb"] = status_mb("VmHWM")
out["rss_after_load_mb"] = status_mb("VmRSS")
reset_peak()
(c,) = cap.caption([sys.argv[2]], workers=1)
assert c.ok, c.error
out["caption_one_peak_mb"] = status_mb("VmHWM")
print(json.dumps(out))
"""


@dataclass(frozen=True)
class CaptionBenchConfig:
    videos: int = 16  # the throughput measurement; the latency one captions 1
    rounds: int = 5
    video_frames: int = 90
    video_size: tuple[int, int] = (320, 240)  # W, H
    frames: int = 15
    frame_size: int = 171
    d_model: int = 256
    words: int = 64
    device: str = "cpu"
    threads: int | None = None
    workers: int | None = None
    workdir: Path | None = None  # where videos, work directory and model go (default: a temporary folder)

    def problems(self) -> list[str]:
        out = []
        if self.videos < 1 or self.rounds < 1:
            out.append("--videos and --rounds must be at least 1")
        if self.frame_size < 75:
            out.append("--frame-size must be at least 75 (Inception-V3)")
        return out


def prepare_captioner(cfg: CaptionBenchConfig, root: Path) -> tuple[list[Path], Path, Path, Path]:
    """(videos, work directory, best.pt, exported .fcvc) under ``root``: see the module docstring.

    Writes ``cfg.videos`` synthetic videos (``root/videos``), two calibration videos, a work directory
    (random Inception-V3, ``cfg.frames`` frames at ``cfg.frame_size``, no C3D), an untrained model's
    ``best.pt`` (d = ``cfg.d_model``) and ``root/captioner.fcvc`` (``fcvc export``). Also used by
    ``fcvc bench serve``."""
    w, h = cfg.video_size
    write_videos(root / "videos", cfg.videos, cfg.video_frames, h, w)
    write_videos(root / "calibration", 2, cfg.video_frames, h, w, seed=7)
    videos = sorted((root / "videos").glob("*.mp4"))
    work = root / "work"
    run_extract(ExtractConfig(inputs=(root / "calibration",), workdir=work, frames=cfg.frames,
                              frame_size=cfg.frame_size, inception_weights="random", c3d_weights="none",
                              device=cfg.device, workers=cfg.workers, calibration_frames=2 * cfg.frames))
    store = FeatureStore.open(Workdir(work).features)
    vocab = Vocabulary(tokens=SPECIALS + tuple(f"word{i}" for i in range(cfg.words)), min_count=1)
    model_cfg = ModelConfig(model=DEFAULT_MODEL, vocab_size=len(vocab), frame_dim=int(store.settings["frame_dim"]),
                            clip_dim=0, region_dim=int(store.settings["frame_dim"]),
                            num_regions=int(store.settings["num_regions"]), num_frames=cfg.frames,
                            d_model=cfg.d_model, max_len=vocab.max_len)
    torch.manual_seed(0)
    model = build_model(model_cfg)
    best = Workdir(work).run(DEFAULT_MODEL) / "best.pt"
    best.parent.mkdir(parents=True)
    save_checkpoint(best, {"model_config": model_cfg.to_json(), "vocab": vocab.to_json(),
                           "vocab_fingerprint": vocab.fingerprint(),
                           "store_settings_fingerprint": store.settings_fingerprint, "store_path": str(store.path),
                           "manifest_key": "bench", "state_dict": model.state_dict(),
                           "decoding": DecodingOptions().to_json()})
    exported = root / "captioner.fcvc"
    run_export(ExportConfig(output=exported, workdir=work, checkpoint=best))
    return videos, work, best, exported


def _memory(exported: Path, video: Path, threads: int) -> dict[str, float]:
    """Peak resident memory of a fresh process: after imports, Captioner.load, one caption (module docstring)."""
    env = {**os.environ, "FCVC_PROGRESS": "0", "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(exported), str(video), str(threads)],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"the memory probe failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load_extra_mb"] = out["load_peak_mb"] - out["rss_after_import_mb"]
    return {k: v if isinstance(v, bool) else round(v, 3 if k.endswith("seconds") else 1) for k, v in out.items()}


def run_caption_bench(cfg: CaptionBenchConfig) -> dict[str, Any]:
    require(cfg.problems())
    device, env = setup(cfg.device, cfg.threads)
    root = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="fcvc-bench-caption-"))
    root.mkdir(parents=True, exist_ok=True)
    sizes = sorted({1, cfg.videos})
    times: dict[str, dict[int, list[float]]] = {side: {n: [] for n in sizes} for side in SIDES}
    captions: dict[str, dict[int, list[tuple[str, str | None]]]] = {side: {} for side in SIDES}
    try:
        t0 = time.perf_counter()
        progress.log(f"bench caption: writing {cfg.videos} videos, a work directory and its exported model in {root}")
        videos, work, best, exported = prepare_captioner(cfg, root)
        setup_seconds = time.perf_counter() - t0
        cache = Workdir(work).caption_features
        common = dict(device=str(device), workers=cfg.workers)

        def call(side: str, inputs: list[Path]) -> list[tuple[str, str | None]]:
            if side == "model":
                result = run_caption(CaptionConfig(inputs=tuple(inputs), model=exported, **common))
            else:
                if side == "workdir_cold":
                    shutil.rmtree(cache, ignore_errors=True)
                result = run_caption(CaptionConfig(inputs=tuple(inputs), workdir=work, checkpoint=best, **common))
            if result.failed:
                raise RuntimeError(f"bench videos failed to caption: {result.failed}")
            return [(c.video, c.text) for c in result.captions]

        progress.log("bench caption: warm-up (one video each way, untimed)")
        for side in SIDES:
            call(side, videos[:1])
        for r in range(cfg.rounds):
            order = SIDES[r % len(SIDES):] + SIDES[:r % len(SIDES)]
            for n in sizes:
                for side in order:
                    if side == "workdir_cached":  # the cache must hold these videos: filled, untimed
                        call(side, videos[:n])
                    t = time.perf_counter()
                    captions[side][n] = call(side, videos[:n])
                    times[side][n].append(time.perf_counter() - t)
            progress.log(f"bench caption: round {r + 1}/{cfg.rounds}: " + ", ".join(
                f"{side} {n}: {times[side][n][-1]:.2f} s" for side in SIDES for n in sizes))
        progress.log("bench caption: peak memory of Captioner.load in a fresh process")
        memory = _memory(exported, videos[0], torch.get_num_threads())
        size = exported.stat().st_size
    finally:
        if cfg.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    med = {side: {n: statistics.median(times[side][n]) for n in sizes} for side in SIDES}
    per_side = {side: {str(n): {"seconds": round(med[side][n], 3),
                                "seconds_per_video": round(med[side][n] / n, 3),
                                "videos_per_s": round(n / med[side][n], 3),
                                "all_rounds": [round(x, 3) for x in times[side][n]]} for n in sizes}
                for side in SIDES}
    ratios = {f"model_to_{other}": {str(n): round(med["model"][n] / med[other][n], 3) for n in sizes}
              for other in SIDES[1:]}
    words = [len((text or "").split()) for _, text in captions["model"][max(sizes)]]
    identical = all(captions[side][n] == captions["model"][n] for side in SIDES for n in sizes)
    for name, value in ratios.items():
        progress.log(f"  {name}: " + ", ".join(f"{n} video(s) {v:.3f}" for n, v in value.items()))
    return {
        "config": {"videos": cfg.videos, "rounds": cfg.rounds, "video": f"{cfg.video_size[0]}x{cfg.video_size[1]}, "
                   f"{cfg.video_frames} frames, H.264", "frames": cfg.frames, "frame_size": cfg.frame_size,
                   "model": DEFAULT_MODEL, "d_model": cfg.d_model, "vocabulary": cfg.words + len(SPECIALS),
                   "weights": "untrained (seed 0); random Inception-V3 (throughput only)",
                   "beam_size": DecodingOptions().beam_size,
                   "workers": cfg.workers},
        "environment": env,
        "setup_seconds": round(setup_seconds, 2),
        "model_file_bytes": size,
        "sides": per_side,
        "ratios": ratios,
        "captions_identical": identical,
        "mean_caption_words": round(sum(words) / len(words), 2),
        "memory": memory,
    }


@click.command("caption")
@click.option("--videos", type=int, default=16, show_default=True, help="Videos of the throughput measurement.")
@click.option("--rounds", type=int, default=5, show_default=True, help="Interleaved rounds (median).")
@click.option("--video-frames", type=int, default=90, show_default=True, help="Frames per synthetic video.")
@click.option("--frame-size", type=int, default=171, show_default=True, help="The store's frame size (the demo's).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
@click.option("--workers", type=int, default=None, help="Decode processes (default: by CPU count).")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write videos, work directory and model here (default: a temporary folder, deleted).")
@click.option("--json", "json_out", is_flag=True, help="Print the figures as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True)
def bench_caption(videos, rounds, video_frames, frame_size, device, threads, workers, keep, json_out, verbose):
    """Captioning latency (1 video) and throughput (--videos) with --model FILE.fcvc against the work
    directory's path (empty and full feature cache), side by side; peak memory of Captioner.load."""
    cfg = CaptionBenchConfig(videos=videos, rounds=rounds, video_frames=video_frames, frame_size=frame_size,
                             device=device, threads=threads, workers=workers, workdir=keep)

    def run():
        report = run_caption_bench(cfg)
        if not json_out:
            click.echo(json.dumps(report, indent=2), err=True)
        return report

    run_and_exit(run, json_out=json_out, verbose=verbose)
