"""A tiny, learnable work directory (feature store + vocabulary) for trainer/caption/score tests.

Each video is one of 3 colours x 2 actions; its frame features encode the colour (a fixed direction)
and the action (a rising or falling ramp over time), so a model can learn to caption it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fcvc_pipeline.artifacts import Manifest, write_manifest
from fcvc_pipeline.captions.synthetic import generate_sample
from fcvc_pipeline.captions.vocabulary import SPECIALS, CaptionRow, Vocabulary, save_vocab_dir
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.stages.extract import ExtractConfig, run_extract
from fcvc_pipeline.stages.train import TrainConfig, run_train
from fcvc_pipeline.stages.vocab import VocabConfig, run_vocab

COLOURS = ("red", "green", "blue")
ACTIONS = ("rises", "falls")
TEMPLATES = ("a {c} dot {a}", "the {c} dot {a}", "a {c} spot {a} slowly")


def make_tiny_workdir(root: Path, *, frames: int = 4, grid: int = 2, frame_dim: int = 16, clip_dim: int = 8,
                      region_dim: int = 16, copies: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    colour_dirs = rng.normal(size=(len(COLOURS), frame_dim)).astype(np.float32)
    store = FeatureStore.create(root / "features.zarr", {"frames": frames, "dtype": "float32", "tiny": True})
    rows: list[CaptionRow] = []
    vid = 0
    for copy in range(copies):
        for ci, colour in enumerate(COLOURS):
            for ai, action in enumerate(ACTIONS):
                video_id = f"v{vid:03d}"
                vid += 1
                ramp = np.linspace(-1, 1, frames, dtype=np.float32) * (1 if ai == 0 else -1)
                f = colour_dirs[ci][None, :] + ramp[:, None] + 0.1 * rng.normal(size=(frames, frame_dim))
                regions = np.repeat(f[:, None, :region_dim], grid * grid, axis=1) + 0.1 * rng.normal(
                    size=(frames, grid * grid, region_dim))
                clips = np.tile(ramp[:, None], (1, clip_dim)) + 0.1 * rng.normal(size=(frames, clip_dim))
                store.write_video(video_id, {
                    "frame_indices": np.arange(frames, dtype=np.int32),
                    "frame_features": f.astype(np.float32),
                    "region_features": regions.astype(np.float32),
                    "clip_features": clips.astype(np.float32),
                }, {"source": f"{video_id}.mp4"})
                split = "train" if copy < copies - 1 else ("val" if ci != 1 else "test")
                for t in TEMPLATES:
                    text = t.format(c=colour, a=action)
                    rows.append(CaptionRow(video_id, split, text.capitalize() + ".", tuple(text.split())))
    words = sorted({w for r in rows for w in r.tokens})
    vocab = Vocabulary(tokens=SPECIALS + tuple(words), min_count=1, max_len=8)
    save_vocab_dir(root / "vocab", vocab, rows)
    write_manifest(root / "vocab", Manifest("vocab", 1, {"tiny": True}, {"annotations": "tiny"}))
    return root


def generated_workdir(root: Path, *, epochs: int, **extract) -> tuple[Path, list[Path]]:
    """A work directory with real features of six generated videos and a tiny trained run (a few seconds).

    ``extract`` overrides options of ``ExtractConfig`` (e.g. ``inception_weights``); returns the work
    directory and the videos.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generate_sample(root / "sample", n=6, size=48, frames=15, show_progress=False)
        work = root / "work"
        run_extract(ExtractConfig(inputs=(root / "sample" / "videos",), workdir=work, frames=4, frame_size=75,
                                  **{"c3d_weights": "none", "device": "cpu", "workers": 1, **extract}))
        run_vocab(VocabConfig(annotations=root / "sample" / "annotations.json", workdir=work, min_count=1))
        run_train(TrainConfig(workdir=work, epochs=epochs, d_model=16, layers=2, select_beams=(), device="cpu"))
    finally:
        torch.set_num_threads(threads)
    return work, sorted((root / "sample" / "videos").glob("*.mp4"))
