"""``fcvc caption VIDEO...``: caption any video files, end to end.

Features are extracted with exactly the settings and backbone weights of the features the model was trained
on (``features.extraction.extract_like`` against the training store) into
``<workdir>/caption-features/``, then captioned by the run's :class:`~fcvc_pipeline.inference.captioner.Captioner`
with its stored decoding options (command-line options override them). Captioning a split of the work
directory's store (for scoring) is ``inference.captioner.caption_split``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcvc_pipeline import progress
from fcvc_pipeline.captions.vocabulary import Vocabulary
from fcvc_pipeline.devices import check_device_spec, resolve_device
from fcvc_pipeline.errors import FilesystemError, MismatchError, MissingArtifactError, filesystem_error, require
from fcvc_pipeline.features.bank import load_feature_bank
from fcvc_pipeline.features.extraction import extract_like
from fcvc_pipeline.features.settings import decode_plan
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.features.video import decode_video, list_videos
from fcvc_pipeline.inference.captioner import Captioner
from fcvc_pipeline.inference.figures import render_attention_figure
from fcvc_pipeline.naming import safe_name
from fcvc_pipeline.workdir import DEFAULT_WORKDIR, Workdir


@dataclass(frozen=True)
class CaptionConfig:
    inputs: tuple[Path, ...]
    workdir: Path = DEFAULT_WORKDIR
    run: str | None = None
    checkpoint: Path | None = None  # overrides run
    # decoding: None keeps what the run stored (inference/options.py; the beam size chosen on validation)
    beam_size: int | None = None
    max_len: int | None = None  # default: the model's longest caption
    length_penalty: float | None = None
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
        if self.length_penalty is not None and self.length_penalty < 0:
            problems.append(f"length_penalty must be >= 0 (got {self.length_penalty})")
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
    figures: dict[str, str] = field(default_factory=dict)  # video id -> attention figure written
    figure_error: str | None = None  # why the --attention figures (all or the rest) were not written

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.figure_error else 0

    def to_json(self) -> list[dict[str, Any]]:
        items = self.items
        if self.figures or self.figure_error:  # --attention was given: say where each figure is, or why not
            items = []
            for item in self.items:
                figure = self.figures.get(item["video"])
                items.append({**item, "figure": figure}
                             | ({"figure_error": self.figure_error} if figure is None else {}))
        failed = [{"video": v, "caption": None, "error": why} for v, why in self.failed.items()]
        return items + failed


def _reference_store(ckpt: dict[str, Any], workdir: Path, checkpoint_path: Path) -> FeatureStore:
    """The store whose features the model was trained on: the work directory's, else the recorded one."""
    for candidate in (Workdir(workdir).features, Path(ckpt.get("store_path", ""))):
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
    require(cfg.validate())
    w = Workdir(cfg.workdir)
    sources = list_videos(cfg.inputs)
    ckpt_path = Path(cfg.checkpoint) if cfg.checkpoint else w.resolve_run(cfg.run) / "best.pt"
    captioner = Captioner.from_checkpoint(ckpt_path, resolve_device(cfg.device))
    options = captioner.options.override(beam_size=cfg.beam_size, max_len=cfg.max_len,
                                         length_penalty=cfg.length_penalty)
    ref = _reference_store(captioner.checkpoint, cfg.workdir, ckpt_path)
    out_store = w.caption_features / f"{ref.settings_fingerprint[:16]}.zarr"
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
    figure_error: str | None = None
    if done:
        bank = load_feature_bank(store, [s.video_id for s in done], regions=captioner.model.config.uses_regions)
        hyps = captioner.caption_bank(bank, options)
        for s in done:
            h = hyps[s.video_id]
            items.append({"video": s.video_id, "path": str(s.path), "caption": captioner.text(h),
                          "score": float(h.score)})
        if cfg.attention is not None:
            figures, refused = _attention_figures(cfg.attention, done, hyps, captioner.vocab, ref.settings)
            if refused is not None:  # the captions are computed: keep them, say which figures are missing
                figure_error = refused.message
                progress.warn(f"attention figures not written into {cfg.attention} "
                              f"({len(done) - len(figures)} of {len(done)} missing): {refused}")
    for v, why in failed.items():
        progress.warn(f"{v}: {why}")
    return CaptionResult(items=items, failed=failed, checkpoint=str(ckpt_path), figures=figures,
                         figure_error=figure_error)


def _attention_figures(out_dir: Path, sources, hyps, vocab: Vocabulary,
                       settings: dict[str, Any]) -> tuple[dict[str, str], FilesystemError | None]:
    """One PNG per video: sampled frames, per-word temporal attention, per-word region heatmap.

    Returns the figures written and, when the directory refused a write (read-only, full, not ours), that
    refusal: the figures after it are not attempted, since they would meet the same disk.
    """
    out_dir = Path(out_dir)
    plan = decode_plan({**settings, "clip": None})
    figures: dict[str, str] = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for s in sources:
            h = hyps[s.video_id]
            words = vocab.decode_tokens(h.tokens)
            frames = decode_video(s.path, plan).frames
            path = render_attention_figure(out_dir / f"{safe_name(s.video_id)}.png", frames, words,
                                           h.frame_attn, h.region_attn, title=s.video_id)
            figures[s.video_id] = str(path)
            progress.log(f"attention figure: {path}")
    except OSError as e:
        refused = filesystem_error(e)
        if refused is None:
            raise
        return figures, refused
    return figures, None
