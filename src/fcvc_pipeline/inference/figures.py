"""The attention figure of ``fcvc caption --attention OUT``, drawn with Pillow.

Layout (one PNG per video)::

    title: video id, then the generated caption
    [ word column ] [ frame 1 ] [ frame 2 ] ... [ frame N ] [ region attention ]
    word 1          bar        bar             bar         most-attended frame + heatmap
    word 2          ...
    legend: colour scale and what the bars and heatmaps show

- Temporal attention (alpha, one weight per frame, summing to 1 for each word) is a bar under each
  frame, its height and colour scaled by the largest weight in the figure, so rows can be compared;
  the most-attended frame of each word is outlined and its weight printed.
- Region attention (beta, one weight per cell of the g x g grid of that frame) is drawn as a
  heatmap over the word's most-attended frame, scaled to its own maximum (beta sums to 1 over the
  cells, so only its shape matters); the peak weight is printed.
- With no temporal attention (FCVC without attention, the LSTM baseline) the rows say so; with
  region attention but no frame weights, the frame whose region map peaks highest is shown.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fcvc_pipeline.artifacts import atomic_write_bytes

# Colours (RGB) of the figure.
BACKGROUND = (255, 255, 255)
INK = (33, 33, 33)
MUTED = (120, 120, 120)
CELL = (242, 242, 245)
GRID = (220, 220, 226)
HIGHLIGHT = (214, 39, 40)

# Anchors of a perceptually ordered colour scale (dark purple -> red -> yellow), as in "inferno".
_SCALE = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66),
                   (245, 125, 21), (250, 193, 39), (252, 255, 164)], dtype=np.float32)


def colour_scale(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to RGB uint8 (shape + [3])."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0) * (len(_SCALE) - 1)
    lo = np.floor(v).astype(np.int64)
    hi = np.minimum(lo + 1, len(_SCALE) - 1)
    frac = (v - lo)[..., None]
    return np.round(_SCALE[lo] * (1 - frac) + _SCALE[hi] * frac).astype(np.uint8)


def _font(size: int, *, bold: bool = False) -> ImageFont.ImageFont:
    names = ["DejaVuSans-Bold.ttf", "Arial Bold.ttf"] if bold else ["DejaVuSans.ttf", "Arial.ttf"]
    for name in names:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if _text_width(draw, text, font) <= width:
        return text
    while text and _text_width(draw, text + "\u2026", font) > width:
        text = text[:-1]
    return text + "\u2026"


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int = 2) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if _text_width(draw, trial, font) <= width or not current:
            current = trial
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [_fit(draw, " ".join(lines[max_lines - 1:]), font, width)]
    return [_fit(draw, line, font, width) for line in lines] or [""]


def _as_uint8_frames(frames: np.ndarray) -> np.ndarray:
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or f.shape[0] < 1:
        raise ValueError(f"frames must have shape [N, H, W, 3] with N >= 1, got {list(f.shape)}")
    if f.dtype != np.uint8:
        f = np.nan_to_num(f.astype(np.float32))
        if f.max(initial=0.0) <= 1.0:
            f = f * 255.0
        f = np.clip(np.round(f), 0, 255).astype(np.uint8)
    return f


def _check_attention(words: Sequence[str], frame_attn, region_attn, n_frames: int):
    t = len(words)
    alpha = beta = None
    grid = 0
    if frame_attn is not None:
        alpha = np.asarray(frame_attn, dtype=np.float64)
        if alpha.ndim == 2 and alpha.shape[0] > t:
            alpha = alpha[:t]  # rows past the words: the step that emitted <eos>
        if alpha.shape != (t, n_frames):
            raise ValueError(f"frame_attn must have shape [T={t}, N={n_frames}] (one row per word), "
                             f"got {list(alpha.shape)}")
        alpha = np.clip(np.nan_to_num(alpha, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    if region_attn is not None:
        beta = np.asarray(region_attn, dtype=np.float64)
        if beta.ndim == 3 and beta.shape[0] > t:
            beta = beta[:t]
        if beta.ndim != 3 or beta.shape[:2] != (t, n_frames):
            raise ValueError(f"region_attn must have shape [T={t}, N={n_frames}, M], got {list(beta.shape)}")
        grid = math.isqrt(beta.shape[2])
        if grid * grid != beta.shape[2] or grid == 0:
            raise ValueError(f"region_attn has M={beta.shape[2]} regions per frame: not a square grid")
        beta = np.clip(np.nan_to_num(beta, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    return alpha, beta, grid


def _fit_box(w: int, h: int, box_w: int, box_h: int) -> tuple[int, int]:
    """The largest (width, height) with the aspect of w x h that fits in box_w x box_h."""
    scale = min(box_w / max(w, 1), box_h / max(h, 1))
    return max(1, int(round(w * scale))), max(1, int(round(h * scale)))


def _thumb(frame: np.ndarray, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR)


def _heatmap(frame: np.ndarray, weights: np.ndarray, grid: int, size: tuple[int, int]) -> Image.Image:
    """``frame`` with ``weights`` ([grid*grid], row-major) as a heatmap over it, at ``size``."""
    w = weights.reshape(grid, grid).astype(np.float32)
    peak = float(w.max())
    w = w / peak if peak > 0 else w
    # upsample the grid smoothly to the picture (bilinear on the float map), then colour it
    up = np.asarray(Image.fromarray(w, mode="F").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    up = np.clip(up, 0.0, 1.0)
    base = np.asarray(_thumb(frame, size), dtype=np.float32)
    colour = colour_scale(up).astype(np.float32)
    # dim what is not attended, tint what is: the picture stays recognisable under the colour
    opacity = (0.70 * up)[..., None]
    shade = (0.45 + 0.55 * up)[..., None]
    out = base * shade * (1 - opacity) + colour * opacity
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))


def render_attention_figure(out_path: str | Path, frames: np.ndarray, words: list[str],
                            frame_attn: np.ndarray | None, region_attn: np.ndarray | None,
                            title: str = "") -> Path:
    """Draw the attention of each generated word (:func:`draw_attention_figure`) and write it as a PNG
    (atomically); returns the path."""
    return write_png(out_path, draw_attention_figure(frames, words, frame_attn, region_attn, title=title))


def write_png(out_path: str | Path, img: Image.Image) -> Path:
    """Write a picture as a PNG, atomically; returns the path."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    out = Path(out_path)
    atomic_write_bytes(out, buf.getvalue())
    return out


def draw_attention_figure(frames: np.ndarray, words: Sequence[str], frame_attn: np.ndarray | None,
                          region_attn: np.ndarray | None, title: str = "") -> Image.Image:
    """The attention of each generated word, drawn as an RGB picture (see the module docstring).

    frames:      [N, H, W, 3] uint8 sampled frames (floats in 0..1 or 0..255 are converted)
    words:       the T generated words
    frame_attn:  [T, N] temporal attention (each row sums to 1), or None
    region_attn: [T, N, M] region attention, M = g*g cells of a row-major grid, or None

    Attention arrays with more than T rows (the step that emitted ``<eos>``) are cut to T rows;
    fewer rows, or a frame count other than N, is a ValueError.
    """
    frames = _as_uint8_frames(frames)
    n, h, w = frames.shape[:3]
    words = [str(word) for word in words]
    alpha, beta, grid = _check_attention(words, frame_attn, region_attn, n)
    has_rows = bool(words) and (alpha is not None or beta is not None)

    # geometry: the frame strip is about 1400 px wide whatever N is; pictures keep their aspect
    cell_w = int(np.clip(1400 // n, 64, 160))
    thumb = _fit_box(w, h, cell_w, cell_w)
    heat = _fit_box(w, h, int(cell_w * 1.5), int(cell_w * 1.15)) if beta is not None else (0, 0)
    row_h = max(56, heat[1] + 8)
    pad, gap, label_w = 16, 4, 150
    strip_x = pad + label_w
    heat_x = strip_x + n * (cell_w + gap) + 12
    heat_col = max(heat[0], 150) if beta is not None else 0  # room for the labels of narrow pictures
    width = heat_x + (heat_col + pad if beta is not None else pad)

    f_title, f_text = _font(22, bold=True), _font(16)
    f_word, f_small = _font(18, bold=True), _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    caption_lines = _wrap(probe, " ".join(words) if words else "(empty caption)", f_text, width - 2 * pad)
    header_h = pad + 30 + 22 * len(caption_lines) + 10
    frames_y = header_h + 20  # room for the column titles
    rows_y = frames_y + thumb[1] + 22
    legend_h = 80 if has_rows else 0
    body_h = len(words) * (row_h + gap) if has_rows else 40
    height = rows_y + body_h + legend_h

    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)

    # header
    draw.text((pad, pad), _fit(draw, title or "generated caption", f_title, width - 2 * pad), font=f_title, fill=INK)
    for i, line in enumerate(caption_lines):
        draw.text((pad, pad + 32 + 22 * i), line, font=f_text, fill=INK)

    # column titles and the sampled frames
    strip_title = "sampled frames \u2014 bars: temporal attention of each word" if alpha is not None else "sampled frames"
    draw.text((strip_x, header_h), strip_title, font=f_small, fill=MUTED)
    if beta is not None:
        draw.text((heat_x, header_h), _fit(draw, "region attention", f_small, heat_col), font=f_small, fill=MUTED)
    for i in range(n):
        x = strip_x + i * (cell_w + gap)
        img.paste(_thumb(frames[i], thumb), (x + (cell_w - thumb[0]) // 2, frames_y))
        label = str(i + 1)
        draw.text((x + (cell_w - _text_width(draw, label, f_small)) // 2, frames_y + thumb[1] + 3), label,
                  font=f_small, fill=MUTED)

    if not has_rows:
        reason = "the caption is empty" if not words else "this model has no attention (global video feature only)"
        draw.text((strip_x, rows_y + 8), f"{reason}: no attention to show", font=f_text, fill=MUTED)
    alpha_max = float(alpha.max()) if alpha is not None and alpha.size else 0.0
    for t, word in enumerate(words if has_rows else []):
        y = rows_y + t * (row_h + gap)
        # the word, right-aligned against the strip, with its position
        text = _fit(draw, word, f_word, label_w - 16)
        draw.text((strip_x - 12 - _text_width(draw, text, f_word), y + row_h // 2 - 14), text, font=f_word, fill=INK)
        draw.text((strip_x - 12 - _text_width(draw, f"#{t + 1}", f_small), y + row_h // 2 + 8), f"#{t + 1}",
                  font=f_small, fill=MUTED)
        if alpha is not None:
            focus = int(np.argmax(alpha[t]))
            for i in range(n):
                x = strip_x + i * (cell_w + gap)
                draw.rectangle((x, y, x + cell_w - 1, y + row_h - 1), fill=CELL)
                v = alpha[t, i] / alpha_max if alpha_max > 0 else 0.0
                bar_h = int(round(v * (row_h - 18)))
                if bar_h > 0:
                    colour = tuple(int(c) for c in colour_scale(np.array(0.15 + 0.7 * v)))
                    draw.rectangle((x + 6, y + row_h - 1 - bar_h, x + cell_w - 7, y + row_h - 1), fill=colour)
                if i == focus:
                    draw.rectangle((x, y, x + cell_w - 1, y + row_h - 1), outline=HIGHLIGHT, width=2)
                    draw.text((x + 4, y + 2), f"{alpha[t, i]:.2f}", font=f_small, fill=HIGHLIGHT)
        else:  # region attention without frame weights: show the frame whose map peaks highest
            focus = int(np.argmax(beta[t].max(axis=1)))
            draw.rectangle((strip_x, y, heat_x - 12 - gap, y + row_h - 1), fill=CELL)
            draw.text((strip_x + 8, y + row_h // 2 - 8), "no temporal attention in this model", font=f_small,
                      fill=MUTED)
        if beta is not None:
            hy = y + (row_h - heat[1]) // 2
            img.paste(_heatmap(frames[focus], beta[t, focus], grid, heat), (heat_x, hy))
            tag = _fit(draw, f"frame {focus + 1} \u00b7 peak {beta[t, focus].max():.2f}", f_small, heat_col - 6)
            draw.rectangle((heat_x, hy, heat_x + _text_width(draw, tag, f_small) + 6, hy + 16), fill=(0, 0, 0))
            draw.text((heat_x + 3, hy + 1), tag, font=f_small, fill=(255, 255, 255))

    if has_rows:  # legend: the colour scale and how to read it
        ly = height - legend_h + 12
        bar_w = 240
        ramp = colour_scale(np.linspace(0.15, 0.85, bar_w)[None, :].repeat(12, axis=0))
        img.paste(Image.fromarray(ramp), (strip_x, ly))
        draw.rectangle((strip_x, ly, strip_x + bar_w - 1, ly + 11), outline=GRID)
        draw.text((strip_x, ly + 15), "0", font=f_small, fill=MUTED)
        high = f"{alpha_max:.2f} (largest frame weight)" if alpha is not None else "highest region weight"
        draw.text((strip_x + bar_w + 10, ly - 2), f"\u2192 {high}", font=f_small, fill=MUTED)
        parts = []
        if alpha is not None:
            parts.append("bar = share of the word's attention on that frame (outlined: the most-attended frame)")
        if beta is not None:
            parts.append("heatmap = where in that frame the word looks")
        for k, line in enumerate(_wrap(draw, "; ".join(parts), f_small, width - strip_x - pad)):
            draw.text((strip_x, ly + 32 + 16 * k), line, font=f_small, fill=MUTED)
    return img
