"""The bundled sample set: coloured shapes doing actions, with paraphrased captions (MSR-VTT format).

Each video shows one big object (a circle, square, triangle or bar in red, green, blue, yellow or
purple) over a plain black, gray or white background, doing one of six actions over 2.5 s:
moving left, right or up (with a short motion trail), growing, shrinking or blinking. The factors
are chosen to survive the feature extractor the demo can run offline (a randomly initialised
Inception-V3 with re-estimated BatchNorm statistics, fed 15 frames resized to 299x299):

- colour is a large uniform area, so it dominates the pooled features;
- actions also differ in *which* frames occur, not only in their order, because a mean over
  frames (the global feature) and attention without positions ignore order: moving objects start
  near the centre and end near the edge they move toward, so left and right visit different
  halves of the frame; growing spans large sizes and shrinking small ones; blinking adds empty
  frames; the motion trail shows the direction inside every single frame;
- shapes have very different silhouettes (round, square, pointed, long and thin).

Measured on the first, 150-video version of the set (seed 0) with such features (pooled 2048-d,
15 frames, ridge probe trained on the 105 training videos, scored on the 45 others): colour 98%
(chance 20%), background 100%, shape 51-56% (25%), action 56% from the frame mean, 67% from mean and
spread over frames, 91% when frame order is available (17%).

Splits: about 70% train, 14% validate, 16% test. Some colour-shape-action combinations are held
out of training: half of the test videos show one of 12 combinations that occur only in test, and
half of the validation videos one of 12 others that occur only in validation, so that choices made
on validation (checkpoint, beam size, settings) reward the same generalisation the test measures.
Every colour, shape and action word still occurs in train; the other val/test videos reuse
combinations seen in training. Captions
(5 per video) come from sentence templates with synonyms ("a red circle moves to the left", "the
red ball is moving left", ...); a val/test caption uses only words that occur in training captions.

Everything is drawn from two ``random.Random`` streams derived from the seed (the plan and the
captions; a string seed is hashed with SHA-512, independent of PYTHONHASHSEED): the same seed gives
byte-identical ``annotations.json`` and identical rendered frames; the encoded files are usually
byte-identical too, but x264 has been seen (twice, inside a long test process) to write other bytes for
the same frames, decoding to pixels within a few levels. ``generate_sample`` is importable so
``fcvc demo`` can rebuild the set when the repository's ``data/`` is not at hand (an installed wheel).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import av
import numpy as np

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import atomic_write_text
from fcvc_pipeline.errors import ConfigError

GENERATOR = "fcvc_pipeline.captions.synthetic"
GENERATOR_VERSION = 2  # 2: validation has novel combinations of its own
DEFAULT_N = 450
DEFAULT_SIZE = 128
DEFAULT_FRAMES = 30
DEFAULT_FPS = 12
CAPTIONS_PER_VIDEO = 5
MAX_HELD_OUT = 12  # distinct colour-shape-action combinations reserved for test (and as many for validation)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 175, 60), "blue": (40, 80, 235),
    "yellow": (240, 215, 40), "purple": (185, 50, 210),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (18, 18, 18), "gray": (125, 125, 125),
                                                "white": (238, 238, 238)}
SHAPES = ("circle", "square", "triangle", "bar")
ACTIONS = ("left", "right", "up", "grow", "shrink", "blink")

# The first entry of each list is the plain word; the others are paraphrases.
NOUNS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "round shape", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular shape"),
    "bar": ("bar", "stick", "long rectangle"),
}
VERBS: dict[str, tuple[str, ...]] = {  # "the red circle ___"
    "left": ("moves to the left", "moves left", "slides to the left", "goes left"),
    "right": ("moves to the right", "moves right", "slides to the right", "goes right"),
    "up": ("moves up", "rises", "goes up", "floats upward"),
    "grow": ("grows", "gets bigger", "grows larger", "expands"),
    "shrink": ("shrinks", "gets smaller", "becomes smaller", "shrinks away"),
    "blink": ("blinks", "flashes", "blinks on and off", "flickers"),
}
GERUNDS: dict[str, tuple[str, ...]] = {  # "the red circle is ___"
    "left": ("moving to the left", "moving left", "sliding left"),
    "right": ("moving to the right", "moving right", "sliding right"),
    "up": ("moving up", "rising", "going up"),
    "grow": ("growing", "getting bigger", "expanding"),
    "shrink": ("shrinking", "getting smaller"),
    "blink": ("blinking", "flashing", "flickering"),
}
TEMPLATES = (
    "a {c} {n} {v}",
    "the {c} {n} is {g}",
    "a {c} {n} {v} on a {b} background",
    "there is a {c} {n} {g}",
    "on a {b} background a {c} {n} {v}",
    "a {n} that is {c} {v}",
    "the {c} {n} {v}",
)


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render and caption one video (positions and sizes in frame units)."""

    video_id: str
    split: str  # train | validate | test (MSR-VTT spelling)
    colour: str
    shape: str
    action: str
    background: str
    held_out: bool  # a combination that never occurs in train (each occurs in only one of val and test)
    rgb: tuple[int, int, int]  # object colour after jitter
    bg_rgb: tuple[int, int, int]
    x0: float  # object centre at the first frame
    y0: float
    x1: float  # ... and at the last
    y1: float
    s0: float  # object extent (fraction of the frame side) at the first frame
    s1: float  # ... and at the last
    blink_phase: int  # frames; the object is hidden when ((t + phase) // 4) is odd


# -- planning (pure, no video I/O) -------------------------------------------------------------------

def _balanced_order(items: Sequence[tuple[str, str, str]], count: int, rng: random.Random) -> list[tuple]:
    """``count`` combinations, greedily keeping each colour, shape and action (and combination) equally used.

    Any prefix is balanced, so even a tiny set covers every colour, shape and action quickly.
    """
    order = list(items)
    rng.shuffle(order)  # tie-break
    used: dict[Any, int] = {}
    out = []
    for _ in range(count):
        def cost(combo):
            c, s, a = combo
            return used.get(("c", c), 0) + used.get(("s", s), 0) + used.get(("a", a), 0) + 3 * used.get(combo, 0)
        best = min(order, key=cost)  # min keeps the first of equals: the shuffled order breaks ties
        out.append(best)
        for key in (("c", best[0]), ("s", best[1]), ("a", best[2]), best):
            used[key] = used.get(key, 0) + 1
    return out


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, validate, test) video counts for ``n`` videos."""
    n_test = max(1, round(0.16 * n))
    n_val = max(1, round(0.14 * n))
    return n - n_val - n_test, n_val, n_test


def _motion(action: str, rng: random.Random) -> tuple[float, float, float, float, float, float]:
    """(x0, y0, x1, y1, s0, s1) for one action, with per-video jitter."""
    x0, y0 = 0.5 + rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.06, 0.06)
    if action in ("left", "right", "up"):
        dist = rng.uniform(0.30, 0.36)
        dx, dy = {"left": (-dist, 0.0), "right": (dist, 0.0), "up": (0.0, -dist)}[action]
        s = rng.uniform(0.55, 0.62)
        return x0, y0, x0 + dx, y0 + dy, s, s
    if action == "grow":
        return x0, y0, x0, y0, rng.uniform(0.28, 0.33), rng.uniform(0.82, 0.88)
    if action == "shrink":
        return x0, y0, x0, y0, rng.uniform(0.60, 0.66), rng.uniform(0.13, 0.17)
    s = rng.uniform(0.55, 0.65)  # blink: still, roughly centred
    return x0, y0, x0, y0, s, s


def _jitter(rgb: tuple[int, int, int], amount: int, rng: random.Random) -> tuple[int, int, int]:
    return tuple(min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)  # type: ignore[return-value]


def plan_sample(n: int = DEFAULT_N, seed: int = 0) -> list[VideoSpec]:
    """The videos of a sample set (no rendering): ids, splits, factors and motion parameters."""
    if n < 6:
        raise ConfigError(f"a sample set needs at least 6 videos (got {n})")
    rng = random.Random(seed)
    combos = [(c, s, a) for c in COLOURS for s in SHAPES for a in ACTIONS]
    n_train, n_val, n_test = split_sizes(n)
    n_novel, n_val_novel = n_test // 2, n_val // 2
    k_test, k_val = min(MAX_HELD_OUT, n_novel), min(MAX_HELD_OUT, n_val_novel)
    # two balanced draws, so each split's held-out set covers the colours, shapes and actions evenly
    test_held = _balanced_order(combos, k_test, rng) if k_test else []
    val_held = _balanced_order([c for c in combos if c not in test_held], k_val, rng) if k_val else []
    held = test_held + val_held
    held_set = set(held)
    seen_pool = [c for c in combos if c not in held_set]
    train = _balanced_order(seen_pool, n_train, rng)
    val = [val_held[i % len(val_held)] for i in range(n_val_novel)] + \
        [rng.choice(train) for _ in range(n_val - n_val_novel)]
    test = [test_held[i % len(test_held)] for i in range(n_novel)] + \
        [rng.choice(train) for _ in range(n_test - n_novel)]

    specs = []
    for split, group in (("train", train), ("validate", val), ("test", test)):
        for colour, shape, action in group:
            background = rng.choice(sorted(BACKGROUNDS))
            x0, y0, x1, y1, s0, s1 = _motion(action, rng)
            specs.append(VideoSpec(
                video_id=f"video{len(specs)}", split=split, colour=colour, shape=shape, action=action,
                background=background, held_out=(colour, shape, action) in held_set,
                rgb=_jitter(COLOURS[colour], 12, rng), bg_rgb=_jitter(BACKGROUNDS[background], 8, rng),
                x0=round(x0, 4), y0=round(y0, 4), x1=round(x1, 4), y1=round(y1, 4), s0=round(s0, 4),
                s1=round(s1, 4), blink_phase=rng.randrange(4)))
    return specs


def _caption(spec: VideoSpec, template: str, rng: random.Random) -> str:
    nouns, verbs, gerunds = NOUNS[spec.shape], VERBS[spec.action], GERUNDS[spec.action]
    noun = nouns[0] if rng.random() < 0.5 else rng.choice(nouns)  # the plain word half of the time
    text = template.format(c=spec.colour, n=noun, v=rng.choice(verbs), g=rng.choice(gerunds), b=spec.background)
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.4:
        text += "."
    return text


def write_captions(specs: Sequence[VideoSpec], seed: int = 0) -> dict[str, list[str]]:
    """video id -> captions; val/test captions draw only words that occur in training captions."""
    rng = random.Random(f"captions-{seed}")
    out: dict[str, list[str]] = {}
    train_words: set[str] = set()
    for spec in sorted(specs, key=lambda s: s.split != "train"):  # train first (stable within a split)
        caps: list[str] = []
        templates = rng.sample(TEMPLATES, CAPTIONS_PER_VIDEO)
        for template in templates:
            for _ in range(50):
                text = _caption(spec, template, rng)
                words = set(text.lower().rstrip(".").split())
                if text not in caps and (spec.split == "train" or words <= train_words):
                    break
            else:  # could not stay within the training words (only for tiny sets): plain wording
                text = TEMPLATES[0].format(c=spec.colour, n=NOUNS[spec.shape][0], v=VERBS[spec.action][0])
            caps.append(text)
            if spec.split == "train":
                train_words |= set(text.lower().rstrip(".").split())
        out[spec.video_id] = caps
    return out


# -- rendering ----------------------------------------------------------------------------------------

def _mask(shape: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, s: float) -> np.ndarray:
    """Boolean coverage [H, W] of one shape of extent ``s`` centred at (cx, cy)."""
    dx, dy = xs - cx, ys - cy
    h = s / 2
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "square":
        return (np.abs(dx) <= 0.9 * h) & (np.abs(dy) <= 0.9 * h)
    if shape == "triangle":  # apex up, base at the bottom, as wide as it is tall
        return (dy >= -h) & (dy <= h) & (2 * np.abs(dx) <= dy + h)
    if shape == "bar":  # long and thin, horizontal
        return (np.abs(dx) <= 1.5 * h) & (np.abs(dy) <= 0.36 * h)
    raise ValueError(f"unknown shape {shape!r}")


TRAIL = ((0.30, 0.15), (0.20, 0.30), (0.10, 0.50))  # (how far back in clip time, opacity), far to near


def render_video(spec: VideoSpec, *, size: int = DEFAULT_SIZE, frames: int = DEFAULT_FRAMES,
                 supersample: int = 2) -> np.ndarray:
    """RGB frames uint8 [T, size, size, 3], anti-aliased by supersampling."""
    big = size * supersample
    grid = (np.arange(big, dtype=np.float32) + 0.5) / big
    xs, ys = grid[None, :], grid[:, None]  # [1, W], [H, 1]
    colour = np.asarray(spec.rgb, dtype=np.float32)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    moving = spec.action in ("left", "right", "up")

    def place(t: float) -> tuple[float, float, float]:
        t = min(1.0, max(0.0, t))
        if spec.action == "grow" or spec.action == "shrink":  # size changes geometrically: even to the eye
            s = spec.s0 * (spec.s1 / spec.s0) ** t
        else:
            s = spec.s0 + (spec.s1 - spec.s0) * t
        return spec.x0 + (spec.x1 - spec.x0) * t, spec.y0 + (spec.y1 - spec.y0) * t, s

    for i in range(frames):
        t = i / max(1, frames - 1)
        img = np.empty((big, big, 3), dtype=np.float32)
        img[:] = np.asarray(spec.bg_rgb, dtype=np.float32)
        visible = spec.action != "blink" or ((i + spec.blink_phase) // 4) % 2 == 0
        layers = [(t - back, alpha) for back, alpha in TRAIL if moving and t - back > 0] + [(t, 1.0)]
        if visible:
            for when, alpha in layers:
                cx, cy, s = place(when)
                m = _mask(spec.shape, xs, ys, cx, cy, s)[..., None] * np.float32(alpha)  # [H, W, 1]
                img = img * (1 - m) + colour * m
        small = img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
        out[i] = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    return out


def rgb_to_yuv420p(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB uint8 [H, W, 3] -> (Y [H, W], Cb [H/2, W/2], Cr [H/2, W/2]) uint8, BT.601 limited range."""
    rgb = frame.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    h, w = y.shape

    def sub(c: np.ndarray) -> np.ndarray:  # [H, W] -> [H/2, W/2], mean of each 2x2 block
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    def u8(c: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(c), 0, 255).astype(np.uint8)

    return u8(y), u8(sub(cb)), u8(sub(cr))


def _yuv_frame(frame: np.ndarray):
    """An ``av.VideoFrame`` (yuv420p) whose row padding is zeroed, not left uninitialised.

    Reproducibility depends on this: with a plane's line size wider than its width (a 24-pixel chroma
    row in a 32-byte line), x264 was seen to produce different bytes for the same pixels from run to
    run, because the padding held leftovers of earlier frames. The conversion is done here too,
    rather than by FFmpeg's scaler inside PyAV's encode, for the same reason.
    """
    h, w = frame.shape[:2]
    out = av.VideoFrame(w, h, "yuv420p")
    for plane, data in zip(out.planes, rgb_to_yuv420p(frame)):
        buf = np.zeros((plane.height, plane.line_size), dtype=np.uint8)
        buf[:, :plane.width] = data
        plane.update(buf)
    return out


def write_mp4(path: Path, frames: np.ndarray, *, fps: int = DEFAULT_FPS, gop: int = 12, crf: int = 20) -> None:
    """H.264 (yuv420p) MP4, one keyframe every ``gop`` frames, single-threaded for reproducibility."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.thread_count = 1
            stream.options = {"crf": str(crf), "preset": "medium",
                              "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
            for arr in frames:
                for packet in stream.encode(_yuv_frame(arr)):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the whole set ------------------------------------------------------------------------------------

def build_annotations(specs: Sequence[VideoSpec], captions: dict[str, list[str]], *, n: int, seed: int,
                      size: int, frames: int, fps: int) -> dict[str, Any]:
    """The MSR-VTT ``videodatainfo.json`` document (plus an ``info`` block and per-video factors)."""
    videos, sentences = [], []
    for i, spec in enumerate(specs):
        videos.append({"video_id": spec.video_id, "id": i, "split": spec.split, "category": 0,
                       "url": f"videos/{spec.video_id}.mp4", "start time": 0.0,
                       "end time": round(frames / fps, 3),
                       "factors": {"colour": spec.colour, "shape": spec.shape, "action": spec.action,
                                   "background": spec.background, "held_out": spec.held_out}})
    for spec in specs:
        for caption in captions[spec.video_id]:
            sentences.append({"caption": caption, "video_id": spec.video_id, "sen_id": len(sentences)})
    return {"info": {"description": "fcvc synthetic sample: coloured shapes doing actions",
                     "generator": GENERATOR, "generator_version": GENERATOR_VERSION, "n": n, "seed": seed,
                     "size": size, "frames": frames, "fps": fps},
            "videos": videos, "sentences": sentences}


def _readme(doc: dict[str, Any], specs: Sequence[VideoSpec], total_bytes: int) -> str:
    info = doc["info"]
    counts = {s: sum(1 for v in specs if v.split == s) for s in ("train", "validate", "test")}
    held = {split: sorted({(v.colour, v.shape, v.action) for v in specs if v.held_out and v.split == split})
            for split in ("validate", "test")}
    novel_videos = {split: sum(1 for v in specs if v.held_out and v.split == split) for split in held}
    words = sorted({w for s in doc["sentences"] for w in s["caption"].lower().rstrip(".").split()})
    lines = [
        "# Sample set: coloured shapes doing actions",
        "",
        f"{len(specs)} short videos ({info['size']}x{info['size']}, {info['frames']} frames at {info['fps']} fps, "
        f"H.264 yuv420p, keyframe every second) with {len(doc['sentences'])} captions, in the MSR-VTT "
        f"`videodatainfo.json` format (`annotations.json`); {total_bytes / 1e6:.1f} MB in all.",
        "Written by `scripts/make_sample_data.py` (`fcvc_pipeline.captions.synthetic`), "
        f"seed {info['seed']}: the same seed gives the same annotations and frames.",
        "",
        f"- colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}; backgrounds: {', '.join(BACKGROUNDS)}",
        "- actions: moving left / right / up (from near the centre toward that edge, with a motion trail), "
        "growing (to large sizes), shrinking (to small sizes), blinking (hidden in every other 4-frame period)",
        f"- splits: {counts['train']} train, {counts['validate']} validate, {counts['test']} test; "
        f"{novel_videos['test']} test videos show one of {len(held['test'])} colour-shape-action combinations "
        f"that occur only in test, and {novel_videos['validate']} validation videos one of "
        f"{len(held['validate'])} others that occur only in validation (all their words occur in train)",
        f"- {CAPTIONS_PER_VIDEO} captions per video from {len(TEMPLATES)} sentence templates with synonyms; "
        f"{len(words)} distinct words",
        "- each video's factors are in `videos[].factors` (not used by fcvc; for analysis)",
        "",
        "Held-out combinations, test only: " + "; ".join(" ".join(h) for h in held["test"])
        + ". Validation only: " + "; ".join(" ".join(h) for h in held["validate"]) + ".",
        "",
        "Regenerate, or write a larger set for benchmarks:",
        "",
        "    python scripts/make_sample_data.py --out data/sample",
        "    python scripts/make_sample_data.py --out /tmp/sample-2000 --n 2000",
        "",
    ]
    return "\n".join(lines)


def _prepare_out_dir(out_dir: Path) -> None:
    """Refuse a non-empty folder unless it holds an earlier output of this generator."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not is_sample_dir(out_dir):
        raise ConfigError(f"{out_dir} is not empty and holds no sample set written by fcvc",
                          hint="choose an empty or new --out folder")


def generate_sample(out_dir: Path, *, n: int = DEFAULT_N, seed: int = 0, size: int = DEFAULT_SIZE,
                    frames: int = DEFAULT_FRAMES, fps: int = DEFAULT_FPS, show_progress: bool = True) -> Path:
    """Write ``out_dir/videos/*.mp4``, ``out_dir/annotations.json`` (last) and ``out_dir/README.md``.

    Returns the annotations path. An existing sample set in ``out_dir`` is replaced (its videos that
    the new set does not have are removed); any other non-empty folder is refused.
    """
    out_dir = Path(out_dir)
    problems = []
    if size < 32 or size % 2:
        problems.append(f"size must be an even number >= 32 (got {size})")
    if frames < 15:
        problems.append(f"frames must be >= 15, the number fcvc samples per video (got {frames})")
    if fps < 1:
        problems.append(f"fps must be >= 1 (got {fps})")
    if problems:
        raise ConfigError(problems)
    _prepare_out_dir(out_dir)
    specs = plan_sample(n, seed)
    captions = write_captions(specs, seed)
    video_dir = out_dir / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations.json").unlink(missing_ok=True)  # "complete" marker: rewritten last
    wanted = {f"{s.video_id}.mp4" for s in specs}
    for old in video_dir.glob("*.mp4"):
        if old.name not in wanted:
            old.unlink()

    items = progress.bar(specs, desc="sample videos", unit="video") if show_progress else specs
    for spec in items:
        write_mp4(video_dir / f"{spec.video_id}.mp4", render_video(spec, size=size, frames=frames), fps=fps)
    doc = build_annotations(specs, captions, n=n, seed=seed, size=size, frames=frames, fps=fps)
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    total = sum(p.stat().st_size for p in video_dir.glob("*.mp4")) + len(text.encode("utf-8"))
    atomic_write_text(out_dir / "README.md", _readme(doc, specs, total))
    atomic_write_text(out_dir / "annotations.json", text)
    return out_dir / "annotations.json"


def is_sample_dir(path: Path) -> bool:
    """True when ``path`` holds a complete sample set written by this generator."""
    try:
        info = json.loads((Path(path) / "annotations.json").read_text(encoding="utf-8")).get("info", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(info, dict) and info.get("generator") == GENERATOR


def bundled_sample_dir() -> Path | None:
    """The repository's ``data/sample``, when at hand: beside the source tree (an editable install) or
    under the current directory (a checkout with fcvc installed from it, as nox does); else None."""
    candidates = [parent / "data" / "sample" for parent in Path(__file__).resolve().parents
                  if (parent / "pyproject.toml").is_file()]
    candidates.append(Path.cwd() / "data" / "sample")
    for candidate in candidates:
        if is_sample_dir(candidate):
            return candidate
    return None


__all__ = ["generate_sample", "plan_sample", "write_captions", "build_annotations", "render_video", "write_mp4",
           "bundled_sample_dir", "is_sample_dir", "VideoSpec", "split_sizes", "COLOURS", "SHAPES", "ACTIONS",
           "BACKGROUNDS"]
