"""Finding videos, decoding them, and picking the frames the backbones see.

Listing (:func:`list_videos`): inputs are directories (searched recursively for video extensions),
video files, or text files listing paths (``.txt``/``.lst``/``.list``; one path per line, ``#``
comments, relative paths resolved from the list's folder). The video id is the file stem; two inputs
with one id are an error naming both. :func:`list_videos_in_order` (captioning) keeps the order given
and both files, with ids made unique by their parent folders (:func:`unique_ids`).

Decoding (:func:`decode_video`): decord first; PyAV when decord cannot open or decode a file (AV1,
truncated files, some frame sizes). decord's frame count comes from the container index and is used
as is when every frame we need decodes; PyAV counts the frames that actually decode (it stops at
the first undecodable packet).

Sampling rule, for ``T`` decoded frames and ``N`` wanted frames::

    index_k = floor((k + 0.5) * T / N),   k = 0 .. N-1

i.e. the centre of each of ``N`` equal segments. With ``T >= N`` the indices are distinct; with
``T < N`` each frame repeats ``N/T`` times (in order), e.g. ``T=3, N=6 -> 0 0 1 1 2 2``.
Clip ``k`` (for the clip backbone) is ``L`` frames centred on ``index_k`` with a temporal stride
``s``: ``index_k + s * (j - L // 2)`` for ``j = 0 .. L-1``, clamped to ``[0, T-1]`` (edge frames
repeat).

Decoding runs in worker processes with a per-video timeout: see :mod:`fcvc_pipeline.features.decode_pool`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from fcvc_pipeline.errors import ConfigError

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv",
    ".ts", ".mts", ".m2ts", ".vob", ".gif",
})
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
DECODERS = ("auto", "decord", "pyav")


# --------------------------------------------------------------------------------------------------
# Listing inputs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoSource:
    video_id: str  # the file stem
    path: Path


def _is_video_name(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_EXTENSIONS


def _walk(directory: Path) -> Iterator[Path]:
    """Video-named entries below ``directory`` (files, dangling links, and folders named like videos).

    Hidden entries (``.name``) are skipped; symlinked folders are not followed.
    """
    for root, dirs, files in os.walk(directory):
        keep = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            if _is_video_name(d):
                yield Path(root) / d  # a folder named like a video: listed so it fails visibly
            else:
                keep.append(d)
        dirs[:] = keep
        for f in sorted(files):
            if not f.startswith(".") and _is_video_name(f):
                yield Path(root) / f


def _read_list(path: Path, problems: list[str]) -> list[Path]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{path}: cannot read the list of videos ({e})")
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        out.append(p if p.is_absolute() else path.parent / p)
    return out


def _named_paths(inputs: Sequence[str | Path], problems: list[str]) -> list[Path]:
    """Every video path ``inputs`` name, in the order given: a folder's videos as :func:`_walk` finds them
    (by name, its own files before its subfolders'), a list file's in its order."""
    found: list[Path] = []
    for raw in inputs:
        if "://" in str(raw):  # Path() would fold https://host/a.mp4 into https:/host/a.mp4
            problems.append(f"{raw}: URLs are not supported; download the video and name the file")
            continue
        p = Path(raw).expanduser()
        if p.is_dir() and not (_is_video_name(p.name) and p.is_symlink()):
            found.extend(_walk(p))
        elif p.is_file() and p.suffix.lower() in LIST_EXTENSIONS:
            for entry in _read_list(p, problems):
                found.extend(_walk(entry) if entry.is_dir() else [entry])
        elif p.exists() or p.is_symlink():
            found.append(p)
        else:
            problems.append(f"{p}: no such file or directory")
    return found


def _stem(p: Path) -> str:
    return p.stem if not p.is_dir() else p.name.rsplit(".", 1)[0]


def _each_once(found: list[Path], problems: list[str]) -> list[Path]:
    """``found`` without repeats of one file (by absolute path) and without names that give no id."""
    seen: set[str] = set()
    out = []
    for p in found:
        key = os.path.abspath(p)
        if key in seen:
            continue  # the same file named twice
        seen.add(key)
        if not _stem(p):
            problems.append(f"{p}: cannot derive a video id from this name")
            continue
        out.append(p)
    return out


def list_videos(inputs: Sequence[str | Path]) -> list[VideoSource]:
    """The videos named by ``inputs``, sorted by id. Raises :class:`ConfigError` listing every problem.

    A command-line input that does not exist is a problem; a missing path inside a list file, a
    dangling link or a folder named like a video is listed anyway and fails later, per video. Two files
    with one id (stem) are a problem too: a feature store keys videos by id.
    """
    problems: list[str] = []
    by_id: dict[str, VideoSource] = {}
    for p in _each_once(_named_paths(inputs, problems), problems):
        vid = _stem(p)
        if vid in by_id:
            problems.append(f"two inputs have the video id {vid!r}: {by_id[vid].path} and {p} "
                            f"(video ids are file stems; rename one)")
            continue
        by_id[vid] = VideoSource(vid, p)
    if problems:
        raise ConfigError(problems)
    return [by_id[k] for k in sorted(by_id)]


def list_videos_in_order(inputs: Sequence[str | Path]) -> list[VideoSource]:
    """The videos named by ``inputs`` in the order given (what ``fcvc caption`` captions), each file once,
    with ids made unique by :func:`unique_ids`. Raises :class:`ConfigError` as :func:`list_videos` does,
    but two files with one stem are both kept."""
    problems: list[str] = []
    paths = _each_once(_named_paths(inputs, problems), problems)
    if problems:
        raise ConfigError(problems)
    return [VideoSource(vid, p) for vid, p in zip(unique_ids(paths), paths)]


def _tail(parents: tuple[str, ...], k: int, name: str) -> str:
    return "/".join((*parents[max(0, len(parents) - k):], name))


def unique_ids(paths: Sequence[Path]) -> list[str]:
    """One id per path (distinct paths): the file stem, unless several paths share it. Each of those gets
    the fewest of its parent folders that tell it apart from the others, joined with ``/``
    (``a/clip.mp4``, ``b/clip.mp4`` -> ``a/clip``, ``b/clip``; ``x/a/clip.mp4``, ``y/a/clip.mp4``,
    ``b/clip.mp4`` -> ``x/a/clip``, ``y/a/clip``, ``b/clip``); files of one folder that differ only in
    their extension keep it (``clip.mp4``, ``clip.mkv``). Parents are those of the absolute path.
    """
    stems = [_stem(Path(p)) for p in paths]
    ids = list(stems)
    groups: dict[str, list[int]] = {}
    for i, stem in enumerate(stems):
        groups.setdefault(stem, []).append(i)
    for members in groups.values():
        if len(members) == 1:
            continue
        parts = {i: Path(os.path.abspath(paths[i])).parts for i in members}
        parents = {i: parts[i][1:-1] for i in members}  # below the root
        same_folder = len({parents[i] for i in members}) < len(members)
        for i in members:
            name = parts[i][-1] if same_folder else stems[i]
            start = 0 if same_folder else 1
            for k in range(start, max(start, len(parents[i])) + 1):
                candidate = _tail(parents[i], k, name)
                others = {_tail(parents[j], k, parts[j][-1] if same_folder else stems[j]) for j in members if j != i}
                if candidate not in others:
                    break
            ids[i] = candidate
    counts: dict[str, int] = {}
    for vid in ids:
        counts[vid] = counts.get(vid, 0) + 1
    # a stem may look like another file's made-up id ("clip.mp4" from clip.mp4.avi): the full path then
    return [vid if counts[vid] == 1 else os.path.abspath(p) for vid, p in zip(ids, paths)]


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------
def sample_indices(num_decoded: int, num_samples: int) -> np.ndarray:
    """``floor((k + 0.5) * T / N)`` for ``k < N``: int64 [N] (see the module docstring)."""
    if num_decoded < 1 or num_samples < 1:
        raise ValueError("need at least one decoded frame and one sample")
    k = np.arange(num_samples, dtype=np.int64)
    return ((2 * k + 1) * num_decoded) // (2 * num_samples)


def clip_windows(centres: np.ndarray, num_decoded: int, length: int, stride: int = 1) -> np.ndarray:
    """Frame indices of one clip per centre: int64 [N, L], ``centre + stride * (j - L // 2)`` clamped."""
    offsets = stride * (np.arange(length, dtype=np.int64) - length // 2)
    return np.clip(np.asarray(centres, dtype=np.int64)[:, None] + offsets[None, :], 0, num_decoded - 1)


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSpec:
    """How clip frames are cut: ``length`` frames ``stride`` apart, resized, centre-cropped to ``crop``.

    ``resize`` = (H, W) resizes every frame to that size (the C3D recipe: 128x171); otherwise the short
    side is scaled to ``short_side`` keeping the aspect ratio.
    """

    length: int = 16
    stride: int = 1
    resize: tuple[int, int] | None = (128, 171)
    short_side: int | None = None
    crop: int = 112


@dataclass(frozen=True)
class DecodePlan:
    frames: int  # N sampled frames
    frame_size: int  # frames are resized (squashed) to frame_size x frame_size
    clip: ClipSpec | None = None
    decoder: str = "auto"  # auto (decord, then PyAV) | decord | pyav
    chunk: int = 16  # frames fetched from decord at a time (bounds memory for 1080p)


@dataclass
class DecodedVideo:
    frames: np.ndarray  # uint8 [N, S, S, 3] RGB, resized to the plan's frame size
    frame_indices: np.ndarray  # int32 [N] indices into the decoded video
    clip_frames: np.ndarray | None  # uint8 [K, c, c, 3] RGB: the distinct frames the clips use
    clip_index: np.ndarray | None  # int32 [N, L] rows of clip_frames making clip n
    num_frames: int  # T: frames that decode
    fps: float
    width: int
    height: int
    decoder: str  # "decord" or "pyav"
    fallback_reason: str | None = None  # why decord was not used, when PyAV decoded


class DecodeError(Exception):
    """A video that cannot be decoded; the message says why (one line)."""


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    if frame.shape[0] == height and frame.shape[1] == width:
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))


def _clip_frame(frame: np.ndarray, spec: ClipSpec) -> np.ndarray:
    h, w = frame.shape[:2]
    if spec.resize is not None:
        rh, rw = spec.resize
    else:
        side = spec.short_side or spec.crop
        scale = side / min(h, w)
        rh, rw = max(side, round(h * scale)), max(side, round(w * scale))
    out = _resize(frame, rh, rw)
    top, left = (rh - spec.crop) // 2, (rw - spec.crop) // 2
    return np.ascontiguousarray(out[top:top + spec.crop, left:left + spec.crop])


class _Assembler:
    """Collects decoded frames (in any order) into the arrays of a :class:`DecodedVideo`."""

    def __init__(self, plan: DecodePlan, num_decoded: int):
        self.plan = plan
        self.T = num_decoded
        self.sampled = sample_indices(num_decoded, plan.frames)  # [N]
        self.sample_set = set(self.sampled.tolist())
        self.windows = None  # [N, L]
        self.clip_ids: list[int] = []
        if plan.clip is not None:
            self.windows = clip_windows(self.sampled, num_decoded, plan.clip.length, plan.clip.stride)
            self.clip_ids = sorted(set(self.windows.ravel().tolist()))
        self.clip_set = set(self.clip_ids)
        self.needed = sorted(self.sample_set | self.clip_set)
        self._frames: dict[int, np.ndarray] = {}
        self._clips: dict[int, np.ndarray] = {}

    def add(self, index: int, rgb: np.ndarray) -> None:
        """Keep what frame ``index`` (uint8 [H, W, 3]) contributes: a resized frame and/or a clip crop."""
        s = self.plan.frame_size
        if index in self.sample_set and index not in self._frames:
            self._frames[index] = _resize(rgb, s, s)
        if index in self.clip_set and index not in self._clips:
            self._clips[index] = _clip_frame(rgb, self.plan.clip)

    def missing(self) -> list[int]:
        return [i for i in self.needed
                if (i in self.sample_set and i not in self._frames) or (i in self.clip_set and i not in self._clips)]

    def result(self, *, fps: float, width: int, height: int, decoder: str,
               fallback_reason: str | None = None) -> DecodedVideo:
        frames = np.stack([self._frames[i] for i in self.sampled.tolist()])
        clip_frames = clip_index = None
        if self.windows is not None:
            row = {idx: r for r, idx in enumerate(self.clip_ids)}
            clip_frames = np.stack([self._clips[i] for i in self.clip_ids])
            clip_index = np.array([[row[i] for i in w] for w in self.windows.tolist()], dtype=np.int32)
        return DecodedVideo(frames=frames, frame_indices=self.sampled.astype(np.int32), clip_frames=clip_frames,
                            clip_index=clip_index, num_frames=self.T, fps=float(fps), width=int(width),
                            height=int(height), decoder=decoder, fallback_reason=fallback_reason)


_NOISE = (
    re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: "),  # decord: "[12:00:00] /src/video_reader.cc:151: "
    re.compile(r"\[Errno -?\d+\] "),  # PyAV: errno prefix
    re.compile(r": '[^']*'(?=;|$)"),  # PyAV: the file name (the caller names the file)
    re.compile(r"last error log: \[[^\]]*\] "),  # PyAV: "[mov,mp4,m4a,...] "
)


def first_line(e: BaseException) -> str:
    """A one-line, human reason from a decoder exception (C++ context and file names removed)."""
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(("Stack trace", "[bt]"))]
    line = "; ".join(lines[:2]) if lines else text
    for pattern in _NOISE:
        line = pattern.sub("", line)
    return line[:300]


# Threads each decoder may use inside one decode worker (decord's num_threads, PyAV's thread_count). One by
# default: the workers already decode videos in parallel, and the feature forward in the parent process
# uses every core, so a decoder that also spreads over all cores only oversubscribes them (docs/extract.md
# has the measurement). ``$FCVC_DECODE_THREADS`` changes it; the decode pool checks it before workers start.
DECODE_THREADS_ENV = "FCVC_DECODE_THREADS"


def decode_threads() -> int:
    """Threads per decoder: ``$FCVC_DECODE_THREADS`` (a positive integer) or 1; a bad value is a ConfigError."""
    raw = os.environ.get(DECODE_THREADS_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"${DECODE_THREADS_ENV} must be a positive integer (got {raw!r})")
    return int(raw)


def _decode_decord(path: Path, plan: DecodePlan) -> DecodedVideo:
    import decord  # noqa: PLC0415 -- decoder libraries load in the decode worker that uses them

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=decode_threads())
    total = len(vr)
    if total < 1:
        raise DecodeError("decord found no video frames")
    asm = _Assembler(plan, total)
    needed = asm.needed
    height = width = 0
    for start in range(0, len(needed), plan.chunk):
        idx = needed[start:start + plan.chunk]
        batch = vr.get_batch(idx).asnumpy()  # uint8 [b, H, W, 3]
        if batch.ndim != 4 or batch.shape[0] != len(idx) or batch.shape[-1] != 3:
            raise DecodeError(f"decord returned an unexpected batch shape {batch.shape}")
        height, width = batch.shape[1:3]
        for i, frame in zip(idx, batch):
            asm.add(i, frame)
    return asm.result(fps=vr.get_avg_fps() or 0.0, width=width, height=height, decoder="decord")


def _open_pyav(path: Path):
    import av  # noqa: PLC0415 -- decoder libraries load in the decode worker that uses them

    try:
        container = av.open(str(path), mode="r")
    except Exception as e:  # av.error.* subclasses OSError/ValueError
        raise DecodeError(f"not a readable video file ({first_line(e)})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        raise DecodeError("no video stream in the file" + (f" (it has: {', '.join(kinds)})" if kinds else ""))
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.thread_count = decode_threads()  # FFmpeg's default (0) is one thread per core: see DECODE_THREADS_ENV
    return container, stream


def _pyav_frames(path: Path) -> Iterator[Any]:
    """Decoded frames of the first video stream; stops quietly at the first undecodable packet."""
    container, stream = _open_pyav(path)
    try:
        gen = container.decode(stream)
        while True:
            try:
                frame = next(gen)
            except StopIteration:
                return
            except Exception:  # corrupt/truncated data: the frames so far are what decodes
                return
            yield frame
    finally:
        container.close()


def _decode_pyav(path: Path, plan: DecodePlan, fallback_reason: str | None) -> DecodedVideo:
    # pass 1: count the frames that actually decode (cheap: no colour conversion)
    total = sum(1 for _ in _pyav_frames(path))
    if total < 1:
        raise DecodeError("no frame of the video stream could be decoded (truncated or corrupt file)")
    asm = _Assembler(plan, total)
    wanted = set(asm.needed)
    last = asm.needed[-1]
    container, stream = _open_pyav(path)
    fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    container.close()
    width = height = 0
    # pass 2: convert only the frames we need
    for i, frame in enumerate(_pyav_frames(path)):
        if i in wanted:
            rgb = frame.to_ndarray(format="rgb24")  # uint8 [H, W, 3]
            height, width = rgb.shape[:2]
            asm.add(i, rgb)
        if i >= last:
            break
    if asm.missing():
        raise DecodeError("frames that decoded on the first pass did not decode again")
    return asm.result(fps=fps, width=width, height=height, decoder="pyav", fallback_reason=fallback_reason)


def check_video_path(path: Path) -> None:
    """Raise :class:`DecodeError` for paths that cannot be a video file at all."""
    if path.is_symlink() and not path.exists():
        raise DecodeError(f"dangling symbolic link (points to {os.readlink(path)})")
    if not path.exists():
        raise DecodeError("file not found")
    if path.is_dir():
        raise DecodeError("is a directory, not a video file")
    if not path.is_file():
        raise DecodeError("not a regular file")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise DecodeError("file is not readable (permission denied)")


def decode_video(path: str | Path, plan: DecodePlan, *, on_stage: Callable[[str], None] | None = None) -> DecodedVideo:
    """Decode ``path`` and return the sampled frames (and clip frames) of ``plan``.

    ``on_stage`` is told which decoder runs ("decord", "pyav") so a supervisor knows who hung.
    Raises :class:`DecodeError` with a one-line reason.
    """
    path = Path(path)
    check_video_path(path)
    reason = None
    if plan.decoder in ("auto", "decord"):
        if on_stage:
            on_stage("decord")
        try:
            return _decode_decord(path, plan)
        except DecodeError as e:
            reason = str(e)
        except Exception as e:  # decord raises DECORDError / RuntimeError with C++ context
            reason = f"decord: {first_line(e)}"
        if plan.decoder == "decord":
            raise DecodeError(reason)
    if on_stage:
        on_stage("pyav")
    try:
        return _decode_pyav(path, plan, reason)
    except DecodeError as e:
        raise DecodeError(str(e)) from None
    except Exception as e:
        raise DecodeError(f"PyAV: {first_line(e)}") from None
