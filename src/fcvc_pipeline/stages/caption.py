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
from fcvc_pipeline.workdir import DEFAULT_WORKDIR, check_device_spec, resolve_device, workdir_paths
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.captions.vocabulary import Vocabulary, load_captions, load_vocabulary
from fcvc_pipeline.inference.decoding import DEFAULT_BEAM_SIZE
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


def run_beam_size(decoding: dict[str, Any] | None, beam_size: int | None = None) -> int:
    """``beam_size`` when given, else the beam size a run chose on validation (``decoding``, stored in
    best.pt and the run manifest by `fcvc train`), else DEFAULT_BEAM_SIZE (runs from before that choice)."""
    if beam_size is not None:
        return int(beam_size)
    return int((decoding or {}).get("beam_size", DEFAULT_BEAM_SIZE))


def caption_split(workdir: Path, run: str | None, split: str, *, beam_size: int | None = None,
                  max_len: int | None = None, length_penalty: float = 1.0, device: str = "auto") -> Path:
    """Caption every video of ``split`` that has features; returns the cached captions file (JSON list).

    ``beam_size`` defaults to the run's own choice (:func:`run_beam_size`), ``max_len`` to the longest
    caption the model was built for.
    """
    from fcvc_pipeline.training.checkpoint import load_checkpoint, model_from_checkpoint
    from fcvc_pipeline.training.batches import load_feature_bank
    from fcvc_pipeline.inference.captioner import caption_bank

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
    ckpt = None  # read once, and only when needed: for the run's beam size or on a cache miss
    if beam_size is None:
        ckpt = load_checkpoint(ckpt_path)
        beam_size = run_beam_size(ckpt.get("decoding"))
    key = {"checkpoint": file_sha256(ckpt_path), "features": store.content_fingerprint(), "vocab": vocab.fingerprint(),
           "videos": video_ids, "beam_size": beam_size, "max_len": max_len, "length_penalty": length_penalty}
    out = run_dir / "captions" / f"{split}-beam{beam_size}.json"
    key_file = out.with_suffix(".key.json")
    if out.is_file() and key_file.is_file() and json.loads(key_file.read_text()).get("key") == fingerprint(key):
        progress.log(f"captions [{run_dir.name}/{split}]: up to date ({out})")
        return out
    dev = resolve_device(device)
    ckpt = ckpt if ckpt is not None else load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, ckpt_path, dev)
    check_vocabulary(ckpt, vocab, ckpt_path)
    if ckpt.get("store_settings_fingerprint") != store.settings_fingerprint:
        raise MismatchError(f"{ckpt_path} was trained on features extracted with other settings than {paths['features']}")
    bank = load_feature_bank(store, video_ids, regions=model.config.uses_regions)
    progress.log(f"captioning {len(video_ids)} '{split}' videos with {run_dir.name} (beam {beam_size})")
    hyps = caption_bank(model, bank, vocab, beam_size=beam_size, max_len=max_len or model.config.max_len,
                        length_penalty=length_penalty, device=dev)
    items = [{"video": v, "caption": vocab.decode(hyps[v].tokens), "score": float(hyps[v].score)} for v in video_ids]
    atomic_write_json(out, items)
    atomic_write_json(key_file, {"key": fingerprint(key), "detail": key})
    return out


# -- fcvc caption VIDEO... -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CaptionConfig:
    inputs: tuple[Path, ...]
    workdir: Path = DEFAULT_WORKDIR
    run: str | None = None
    checkpoint: Path | None = None  # overrides run
    beam_size: int | None = None  # None: the run's validation-chosen beam (see run_beam_size)
    max_len: int | None = None  # default: the model's longest caption
    length_penalty: float = 1.0
    attention: Path | None = None  # directory for one attention figure per video
    device: str = "auto"
    workers: int | None = None

    def validate(self) -> list[str]:
        problems = []
        if not self.inputs:
            problems.append("give at least one video file or directory")
        if self.beam_size is not None and self.beam_size < 1:
            problems.append("--beam-size must be at least 1")
        if self.max_len is not None and self.max_len < 1:
            problems.append("--max-len must be at least 1")
        if self.run is not None and self.checkpoint is not None:
            problems.append("give --run or --checkpoint, not both")
        if (p := check_device_spec(self.device)) is not None:
            problems.append(p)
        return problems


@dataclass
class CaptionResult:
    items: list[dict[str, Any]]
    failed: dict[str, str] = field(default_factory=dict)  # video id -> reason
    checkpoint: str = ""
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_json(self) -> list[dict[str, Any]]:
        failed = [{"video": v, "caption": None, "error": why} for v, why in self.failed.items()]
        return self.items + failed


def _reference_store(ckpt: dict[str, Any], workdir: Path, checkpoint_path: Path) -> FeatureStore:
    """The store whose features the model was trained on: the work directory's, else the recorded one."""
    for candidate in (workdir_paths(workdir)["features"], Path(ckpt.get("store_path", ""))):
        if str(candidate) and FeatureStore.exists(candidate):
            store = FeatureStore.open(candidate)
            if store.settings_fingerprint == ckpt.get("store_settings_fingerprint"):
                return store
            raise MismatchError(
                f"{checkpoint_path} was trained on features extracted with other settings than {candidate}",
                hint="caption with the work directory the model was trained in")
    raise MissingArtifactError(f"the feature store {checkpoint_path} was trained on is gone ({ckpt.get('store_path')})",
                               hint="its settings and backbone weights are needed to compute matching features; "
                                    "pass --workdir of the training run")


def run_caption(cfg: CaptionConfig) -> CaptionResult:
    from fcvc_pipeline.training.checkpoint import load_model_from_checkpoint
    from fcvc_pipeline.training.batches import load_feature_bank
    from fcvc_pipeline.features.video import list_videos
    from fcvc_pipeline.inference.captioner import caption_bank
    from fcvc_pipeline.stages.extract import extract_like

    require(cfg.validate())
    sources = list_videos(cfg.inputs)
    ckpt_path = Path(cfg.checkpoint) if cfg.checkpoint else resolve_run(cfg.workdir, cfg.run) / "best.pt"
    dev = resolve_device(cfg.device)
    model, ckpt = load_model_from_checkpoint(ckpt_path, dev)
    vocab = Vocabulary.from_json(ckpt["vocab"])
    ref = _reference_store(ckpt, cfg.workdir, ckpt_path)
    out_store = Path(cfg.workdir) / "caption-features" / f"{ref.settings_fingerprint[:16]}.zarr"
    progress.log(f"caption: {len(sources)} video(s) with {ckpt_path} (features like {ref.path})")
    extracted = extract_like(ref.path, [s.path for s in sources], out_store, device=cfg.device, workers=cfg.workers)
    store = FeatureStore.open(out_store)
    failed = dict(extracted.failed)
    done = [s for s in sources if s.video_id not in failed and store.is_complete(s.video_id)]
    for s in sources:
        if s.video_id not in failed and not store.is_complete(s.video_id):
            failed[s.video_id] = "no features were written"
    items: list[dict[str, Any]] = []
    figures: dict[str, str] = {}
    if done:
        bank = load_feature_bank(store, [s.video_id for s in done], regions=model.config.uses_regions)
        hyps = caption_bank(model, bank, vocab, beam_size=run_beam_size(ckpt.get("decoding"), cfg.beam_size),
                            max_len=cfg.max_len or model.config.max_len, length_penalty=cfg.length_penalty, device=dev)
        for s in done:
            h = hyps[s.video_id]
            items.append({"video": s.video_id, "path": str(s.path), "caption": vocab.decode(h.tokens),
                          "score": float(h.score)})
        if cfg.attention is not None:
            figures = _attention_figures(cfg.attention, done, hyps, vocab, ref.settings)
    for v, why in failed.items():
        progress.warn(f"{v}: {why}")
    return CaptionResult(items=items, failed=failed, checkpoint=str(ckpt_path), figures=figures)


def _attention_figures(out_dir: Path, sources, hyps, vocab: Vocabulary, settings: dict[str, Any]) -> dict[str, str]:
    """One PNG per video: sampled frames, per-word temporal attention, per-word region heatmap."""
    from fcvc_pipeline.features.video import decode_video
    from fcvc_pipeline.naming import safe_name
    from fcvc_pipeline.stages.extract import decode_plan
    from fcvc_pipeline.inference.figures import render_attention_figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = decode_plan({**settings, "clip": None})
    figures = {}
    for s in sources:
        h = hyps[s.video_id]
        words = vocab.decode_tokens(h.tokens)
        frames = decode_video(s.path, plan).frames
        path = render_attention_figure(out_dir / f"{safe_name(s.video_id)}.png", frames, words,
                                       h.frame_attn, h.region_attn, title=s.video_id)
        figures[s.video_id] = str(path)
        progress.log(f"attention figure: {path}")
    return figures
