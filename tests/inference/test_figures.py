"""The attention figure: a valid PNG whose pixels follow the attention it is given."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcvc_pipeline.inference.figures import colour_scale, render_attention_figure

N, H, W, G = 15, 36, 48, 8
WORDS = ["a", "man", "is", "playing", "guitar"]


def _frames(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(N, H, W, 3), dtype=np.uint8)


def _alpha(peaks: list[int]) -> np.ndarray:
    a = np.full((len(peaks), N), 0.01)
    for t, p in enumerate(peaks):
        a[t, p] = 1.0
    return a / a.sum(axis=1, keepdims=True)


def _beta(cells: list[int]) -> np.ndarray:
    b = np.full((len(cells), N, G * G), 0.001)
    for t, c in enumerate(cells):
        b[t, :, c] = 1.0
    return b / b.sum(axis=2, keepdims=True)


def _load(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _diff_box(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int, int]:
    """(count, x0, y0, x1, y1) of the pixels that differ."""
    ys, xs = np.nonzero(np.abs(a - b).sum(axis=2))
    assert len(xs), "the figures are identical"
    return len(xs), xs.min(), ys.min(), xs.max(), ys.max()


def test_writes_a_png_of_sensible_size(tmp_path):
    out = render_attention_figure(tmp_path / "sub" / "fig.png", _frames(), WORDS, _alpha([0, 3, 6, 9, 12]),
                                  _beta([0, 9, 18, 27, 36]), title="vid1")
    assert out == tmp_path / "sub" / "fig.png" and out.is_file()
    pixels = _load(out)
    h, w = pixels.shape[:2]
    assert 800 <= w <= 4000 and (len(WORDS) + 1) * 40 <= h <= 4000
    assert pixels.std() > 20  # not a blank canvas


def test_pixels_follow_the_temporal_attention(tmp_path):
    frames, beta = _frames(), _beta([10] * len(WORDS))
    a = _load(render_attention_figure(tmp_path / "a.png", frames, WORDS, _alpha([1, 1, 1, 1, 1]), beta))
    b = _load(render_attention_figure(tmp_path / "b.png", frames, WORDS, _alpha([13, 1, 1, 1, 1]), beta))
    assert a.shape == b.shape
    count, x0, y0, x1, y1 = _diff_box(a, b)
    # only the first word's row changes: its bars (in the frame strip) and its heatmap (another frame)
    assert count > 500
    c = _load(render_attention_figure(tmp_path / "c.png", frames, WORDS, _alpha([1, 1, 1, 1, 13]), beta))
    _, _, cy0, _, _ = _diff_box(a, c)
    assert cy0 > y1  # moving the last word's attention changes pixels below the first word's row


def test_pixels_follow_the_region_attention_only_in_the_heatmap_column(tmp_path):
    frames, alpha = _frames(), _alpha([2, 4, 6, 8, 10])
    a = _load(render_attention_figure(tmp_path / "a.png", frames, WORDS, alpha, _beta([0, 0, 0, 0, 0])))
    b = _load(render_attention_figure(tmp_path / "b.png", frames, WORDS, alpha, _beta([63, 0, 0, 0, 0])))
    count, x0, _, _, _ = _diff_box(a, b)
    assert count > 200 and x0 > 0.8 * a.shape[1]  # right of the frame strip: the heatmap column


def test_models_without_attention_and_empty_captions(tmp_path):
    frames = _frames().astype(np.float32) / 255.0  # float frames in 0..1 are accepted
    plain = _load(render_attention_figure(tmp_path / "plain.png", frames, WORDS, None, None, title="lstm"))
    full = _load(render_attention_figure(tmp_path / "full.png", _frames(), WORDS, _alpha([0] * 5), _beta([0] * 5)))
    assert plain.shape[0] < full.shape[0]  # no per-word rows to draw
    regions_only = _load(render_attention_figure(tmp_path / "r.png", _frames(), WORDS, None, _beta([5] * 5)))
    assert regions_only.shape[0] > plain.shape[0]
    empty = render_attention_figure(tmp_path / "empty.png", _frames(), [], np.zeros((0, N)), np.zeros((0, N, 64)))
    assert _load(empty).shape[1] > 800
    # attention with one more row than words (the <eos> step) draws like the first T rows
    extra = render_attention_figure(tmp_path / "extra.png", _frames(), WORDS, _alpha([0, 1, 2, 3, 4, 5]),
                                    _beta([0, 1, 2, 3, 4, 5]))
    exact = render_attention_figure(tmp_path / "exact.png", _frames(), WORDS, _alpha([0, 1, 2, 3, 4]),
                                    _beta([0, 1, 2, 3, 4]))
    assert np.array_equal(_load(extra), _load(exact))


@pytest.mark.parametrize("kwargs, message", [
    ({"frames": np.zeros((N, H, W), np.uint8)}, "frames must have shape"),
    ({"frame_attn": np.ones((3, N)) / N}, "frame_attn must have shape"),
    ({"frame_attn": np.ones((5, N - 2)) / N}, "frame_attn must have shape"),
    ({"region_attn": np.ones((5, N, 60)) / 60}, "not a square grid"),
    ({"region_attn": np.ones((5, N - 1, 64)) / 64}, "region_attn must have shape"),
])
def test_bad_shapes_are_clear_errors(tmp_path, kwargs, message):
    args = {"frames": _frames(), "words": WORDS, "frame_attn": _alpha([0] * 5), "region_attn": _beta([0] * 5)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        render_attention_figure(tmp_path / "x.png", **args)


def test_colour_scale_is_ordered_dark_to_light():
    rgb = colour_scale(np.linspace(0, 1, 9)).astype(float)
    luminance = rgb @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(luminance) > 0)
    assert colour_scale(np.array([np.nan, -1.0, 2.0])).shape == (3, 3)
