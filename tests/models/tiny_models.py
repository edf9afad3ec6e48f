"""Tiny model configs and random batches for the model, loss and decoding tests (d=32, 2 heads, vocab 20,
4 frames, 4 regions)."""

from __future__ import annotations

import torch

from fcvc_pipeline.models import ModelConfig, VideoBatch

VOCAB, FRAMES, REGIONS, FRAME_DIM, CLIP_DIM, REGION_DIM, MAX_LEN = 20, 4, 4, 12, 6, 10, 8


def tiny_config(model: str, **overrides) -> ModelConfig:
    base = dict(model=model, vocab_size=VOCAB, frame_dim=FRAME_DIM, clip_dim=CLIP_DIM, region_dim=REGION_DIM,
                num_regions=REGIONS, num_frames=FRAMES, d_model=32, layers=4, kernel_size=3, heads=2,
                dropout=0.0, max_len=MAX_LEN)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_videos(num_videos: int, *, seed: int = 0, clips: bool = True, regions: bool = True) -> VideoBatch:
    g = torch.Generator().manual_seed(seed)
    return VideoBatch(
        frames=torch.randn(num_videos, FRAMES, FRAME_DIM, generator=g),
        clips=torch.randn(num_videos, FRAMES, CLIP_DIM, generator=g) if clips else None,
        regions=torch.randn(num_videos, FRAMES, REGIONS, REGION_DIM, generator=g) if regions else None,
    )


def tiny_captions(rows: int, steps: int, *, seed: int = 0, lengths: list[int] | None = None):
    """(inputs, targets) [rows, steps]: <bos> w.. / w.. <eos>, padded after each caption's length."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(3, VOCAB, (rows, steps), generator=g)
    inputs = torch.zeros(rows, steps, dtype=torch.long)
    targets = torch.zeros(rows, steps, dtype=torch.long)
    for r in range(rows):
        n = lengths[r] if lengths is not None else steps - 1  # words in the caption
        inputs[r, 0] = 1
        inputs[r, 1:n + 1] = words[r, :n]
        targets[r, :n] = words[r, :n]
        targets[r, n] = 2
    return inputs, targets


def assert_causal(m, videos: VideoBatch, inputs: torch.Tensor) -> None:
    """Changing token t+1 leaves every output at steps <= t unchanged (logits and attention weights) and
    does change the logits at step t+1."""
    base = m(videos, inputs)
    for t in range(inputs.shape[1] - 1):
        changed = inputs.clone()
        changed[:, t + 1] = (changed[:, t + 1] - 3 + 5) % (VOCAB - 3) + 3  # another real word
        out = m(videos, changed)
        torch.testing.assert_close(out.logits[:, : t + 1], base.logits[:, : t + 1], atol=1e-6, rtol=1e-6)
        for a, b in ((out.frame_attn, base.frame_attn), (out.region_attn, base.region_attn)):
            if a is not None:
                torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(out.logits[:, t + 1], base.logits[:, t + 1])
