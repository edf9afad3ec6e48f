"""What the model benchmarks share: real-shaped random inputs, the device/threads setup, a timer.

Random tensors of the real shapes (15 frames, 64 regions, 2048/4096-d features, vocab ~10k) stand in for
data: timings do not depend on the values, only on the shapes (and, for decoding, on caption lengths,
which the benchmarks report).
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import click
import torch

from fcvc_pipeline.devices import resolve_device
from fcvc_pipeline.models import ModelConfig, VideoBatch


@dataclass(frozen=True)
class Shapes:
    vocab: int = 10_000
    frames: int = 15
    regions: int = 64
    frame_dim: int = 2048
    clip_dim: int = 4096
    region_dim: int = 2048
    d_model: int = 512
    max_len: int = 20

    def model_config(self, model: str) -> ModelConfig:
        return ModelConfig(model=model, vocab_size=self.vocab, frame_dim=self.frame_dim, clip_dim=self.clip_dim,
                           region_dim=self.region_dim, num_regions=self.regions, num_frames=self.frames,
                           d_model=self.d_model, max_len=self.max_len)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def shape_options(f: Callable) -> Callable:
    """--vocab/--frames/--regions/--frame-dim/--clip-dim/--region-dim/--d-model: shrink for quick runs."""
    defaults = Shapes()
    for name, help_text in reversed([
        ("vocab", "vocabulary size"), ("frames", "frames per video"), ("regions", "regions per frame"),
        ("frame-dim", "pooled frame feature size"), ("clip-dim", "clip feature size (0: none)"),
        ("region-dim", "region feature size"), ("d-model", "model width d"),
    ]):
        f = click.option(f"--{name}", type=int, default=getattr(defaults, name.replace("-", "_")),
                         show_default=True, help=help_text)(f)
    f = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")(f)
    f = click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")(f)
    return f


def random_videos(shapes: Shapes, num_videos: int, device: torch.device, *, seed: int = 0) -> VideoBatch:
    g = torch.Generator().manual_seed(seed)
    # non-negative like ReLU/pooled CNN features
    frames = torch.rand(num_videos, shapes.frames, shapes.frame_dim, generator=g)
    clips = torch.rand(num_videos, shapes.frames, shapes.clip_dim, generator=g) if shapes.clip_dim else None
    regions = torch.rand(num_videos, shapes.frames, shapes.regions, shapes.region_dim, generator=g)
    return VideoBatch(frames, clips, regions).to(device)


def setup(device_spec: str, threads: int | None) -> tuple[torch.device, dict[str, Any]]:
    if threads is not None:
        torch.set_num_threads(threads)
    device = resolve_device(device_spec)
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor() or None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return device, info


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds on the clock
    cpu: float  # CPU seconds of this process (all threads): robust to other processes on a shared CPU

    @staticmethod
    def median(timings: list["Timing"]) -> "Timing":
        return Timing(statistics.median(t.wall for t in timings), statistics.median(t.cpu for t in timings))


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Timing, Any]:
    """(timing, result) of one call, with the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Timing(time.perf_counter() - w0, time.process_time() - c0), result
