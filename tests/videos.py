"""Small synthetic test videos, written with PyAV (no network, no sample files in the repo).

The makers return ``uint8`` arrays shaped ``[T, H, W, 3]`` (RGB); :func:`write_video` encodes such an
array with a chosen codec and container. The bad-file makers build the broken inputs the extraction
tests feed to ``fcvc extract`` (empty, text named ``.mp4``, truncated, audio-only).

Typical use::

    from tests.videos import moving_square_frames, write_video
    write_video(tmp / "red.mp4", moving_square_frames(12, 48, 64, colour=(255, 0, 0)))
"""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np

# codec -> (default pixel format for even sizes, pixel format for odd sizes or None if unsupported)
_PIX_FMT = {
    "libx264": ("yuv420p", "yuv444p"),
    "libvpx-vp9": ("yuv420p", "yuv444p"),
    "libvpx": ("yuv420p", None),
    "libsvtav1": ("yuv420p", None),
    "mpeg4": ("yuv420p", None),
    "mjpeg": ("yuvj420p", None),
}


def has_encoder(codec: str) -> bool:
    """True when the bundled FFmpeg of PyAV can encode with ``codec``."""
    import av

    try:
        av.codec.Codec(codec, "w")
    except Exception:  # UnknownCodecError and friends
        return False
    return True


def moving_square_frames(num_frames: int, height: int = 48, width: int = 64, *,
                         colour: tuple[int, int, int] = (255, 0, 0),
                         background: tuple[int, int, int] = (16, 16, 16),
                         square: int | None = None) -> np.ndarray:
    """A square of ``colour`` moving left to right over ``background``: uint8 [T, H, W, 3]."""
    side = square or max(2, min(height, width) // 3)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[:] = np.asarray(background, dtype=np.uint8)
    top = (height - side) // 2
    for t in range(num_frames):
        left = int(round((width - side) * (t / max(1, num_frames - 1))))
        frames[t, top:top + side, left:left + side] = np.asarray(colour, dtype=np.uint8)
    return frames


def numbered_frames(num_frames: int, height: int = 32, width: int = 32, *, step: int = 8) -> np.ndarray:
    """Flat grey frames whose level encodes the frame index (``level = 16 + step * t``), uint8 [T, H, W, 3].

    :func:`frame_number` reads the index back from a decoded (and resized) frame, so tests can check
    which source frames a sampler picked even through lossy compression.
    """
    if 16 + step * (num_frames - 1) > 240:
        raise ValueError(f"{num_frames} frames do not fit in the grey range with step {step}")
    levels = (16 + step * np.arange(num_frames)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def frame_number(frame: np.ndarray, *, step: int = 8) -> int:
    """The index :func:`numbered_frames` encoded in ``frame`` (uint8 [H, W, 3])."""
    return int(round((float(np.asarray(frame, dtype=np.float64).mean()) - 16.0) / step))


def random_frames(num_frames: int, height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """Smooth random colour blobs (compress well, still textured): uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(num_frames, max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    rows = np.linspace(0, small.shape[1] - 1, height).round().astype(int)
    cols = np.linspace(0, small.shape[2] - 1, width).round().astype(int)
    return np.ascontiguousarray(small[:, rows][:, :, cols])


def write_video(path: str | Path, frames: np.ndarray, *, fps: int = 25, codec: str = "libx264",
                pix_fmt: str | None = None, container_format: str | None = None,
                options: dict[str, str] | None = None, faststart: bool = False) -> Path:
    """Encode ``frames`` (uint8 [T, H, W, 3], RGB) into ``path`` with PyAV; returns ``path``.

    The container follows the file suffix unless ``container_format`` names one (e.g. ``"mp4"`` for a
    file called ``clip.avi``). Odd frame sizes use 4:4:4 chroma where the codec allows it. ``faststart``
    puts an mp4's index before the data (so truncating the file keeps it openable).
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if pix_fmt is None:
        even, odd = _PIX_FMT.get(codec, ("yuv420p", None))
        if h % 2 or w % 2:
            if odd is None:
                raise ValueError(f"{codec} cannot encode odd frame sizes ({w}x{h}) here; use libx264")
            pix_fmt = odd
        else:
            pix_fmt = even
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if codec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner on stderr otherwise
    container_options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", format=container_format, options=container_options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.time_base = Fraction(1, fps)
        opts = dict(options or {})
        if codec == "libx264":
            opts.setdefault("crf", "12")
            opts.setdefault("preset", "ultrafast")
        elif codec == "libvpx-vp9":
            opts.setdefault("crf", "20")
            opts.setdefault("b", "0")
            opts.setdefault("deadline", "realtime")
            opts.setdefault("cpu-used", "8")
        elif codec == "libsvtav1":
            opts.setdefault("preset", "12")
            opts.setdefault("crf", "30")
        stream.options = opts
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_only(path: str | Path, *, seconds: float = 0.5, codec: str = "aac", rate: int = 16000) -> Path:
    """An audio-only file (a sine tone), e.g. ``tone.mp4`` with no video stream."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * rate)
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        chunk = 1024
        for start in range(0, n, chunk):
            piece = tone[None, start:start + chunk]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_truncated(source: str | Path, path: str | Path, *, keep: float = 0.5) -> Path:
    """A copy of ``source`` cut after ``keep`` (a fraction) of its bytes."""
    data = Path(source).read_bytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def write_text_as_video(path: str | Path, text: str = "this is not a video\n") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text * 20, encoding="utf-8")
    return path


def copy_video(source: str | Path, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    return path
