"""Captioning with a trained run: a split of the feature store (for scoring) or new video files.

``caption_split`` captions the videos of one split from the features the model was trained on, and caches
the result per (checkpoint, features, vocabulary, beam settings). ``run_caption`` (``fcvc caption``)
extracts features of any video files with exactly the settings and backbone weights of the training
features, then captions them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import atomic_write_json, file_sha256, fingerprint
from fcvc_pipeline.config import DEFAULT_WORKDIR, check_device_spec, resolve_device, workdir_paths
from fcvc_pipeline.data.feature_store import FeatureStore
from fcvc_pipeline.data.vocabulary import Vocabulary, load_captions, load_vocabulary
from fcvc_pipeline.errors import ConfigError, MismatchError, MissingArtifactError, require

DEFAULT_RUN = "fcvc-cf-ia"


def resolve_run(workdir: Path, run: str | None) -> Path:
    """The run directory to use: the one named, else ``fcvc-cf-ia``, else the only run there is."""
    runs = workdir_paths(workdir)["runs"]
    if run is not None:
        d = runs / run
        if not (d / "best.pt").is_file():
            have = sorted(p.name for p in runs.glob("*") if (p / "best.pt").is_file()) if runs.is_dir() else []
            raise MissingArtifactError(f"no trained run '{run}' in {runs}" + (f" (runs: {', '.join(have)})" if have else ""),
                                       hint="train it with `fcvc train --run NAME`")
        return d
    candidates = sorted(p for p in runs.glob("*") if (p / "best.pt").is_file()) if runs.is_dir() else []
    if (runs / DEFAULT_RUN / "best.pt").is_file():
        return runs / DEFAULT_RUN
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise MissingArtifactError(f"no trained run in {runs}", hint="run `fcvc train` first")
    raise ConfigError(f"several runs in {runs} ({', '.join(p.name for p in candidates)}): pick one with --run NAME")


def check_vocabulary(ckpt: dict[str, Any], vocab: Vocabulary, checkpoint_path: Path) -> None:
    if ckpt.get("vocab_fingerprint") != vocab.fingerprint():
        raise MismatchError(f"{checkpoint_path} was trained with another vocabulary than the one in the work directory",
                            hint="rerun `fcvc vocab` with the original annotations, or retrain")


def caption_split(workdir: Path, run: str | None, split: str, *, beam_size: int = 5, max_len: int | None = None,
                  length_penalty: float = 1.0, device: str = "auto") -> Path:
    """Caption every video of ``split`` that has features; returns the cached captions file (JSON list).

    ``max_len`` defaults to the longest caption the model was built for.
    """
    import torch

    from fcvc_pipeline.checkpoint import load_model_from_checkpoint
    from fcvc_pipeline.data.dataset import load_feature_bank
    from fcvc_pipeline.inference import caption_bank

    paths = workdir_paths(workdir)
    run_dir = resolve_run(workdir, run)
    ckpt_path = run_dir / "best.pt"
    vocab = load_vocabulary(paths["vocab"])
    store = FeatureStore.open(paths["features"])
    rows = load_captions(paths["vocab"], split=split)
    if not rows:
        raise MissingArtifactError(f"the caption table has no '{split}' split", hint="splits are train, val and test")
    have = set(store.completed_ids())
    video_ids = sorted({r.video_id for r in rows} & have)
    if not video_ids:
        raise MismatchError(f"no '{split}' video has features in {paths['features']}", hint="run `fcvc extract` on them")
    key = {"checkpoint": file_sha256(ckpt_path), "features": store.content_fingerprint(), "vocab": vocab.fingerprint(),
           "videos": video_ids, "beam_size": beam_size, "max_len": max_len, "length_penalty": length_penalty}
    out = run_dir / "captions" / f"{split}-beam{beam_size}.json"
    key_file = out.with_suffix(".key.json")
    if out.is_file() and key_file.is_file() and json.loads(key_file.read_text()).get("key") == fingerprint(key):
        progress.log(f"captions [{run_dir.name}/{split}]: up to date ({out})")
        return out
    dev = resolve_device(device)
    model, ckpt = load_model_from_checkpoint(ckpt_path, dev)
    check_vocabulary(ckpt, vocab, ckpt_path)
    if ckpt.get("store_settings_fingerprint") != store.settings_fingerprint:
        raise MismatchError(f"{ckpt_path} was trained on features extracted with other settings than {paths['features']}")
    bank = load_feature_bank(store, video_ids, regions=model.config.uses_regions)
    progress.log(f"captioning {len(video_ids)} '{split}' videos with {run_dir.name} (beam {beam_size})")
    with torch.inference_mode():
        hyps = caption_bank(model, bank, vocab, beam_size=beam_size, max_len=max_len or model.config.max_len,
                            length_penalty=length_penalty,
                            device=dev)
    items = [{"video": v, "caption": vocab.decode(hyps[v].tokens), "score": float(hyps[v].score)} for v in video_ids]
    atomic_write_json(out, items)
    atomic_write_json(key_file, {"key": fingerprint(key), "detail": key})
    return out
