"""``fcvc caption VIDEO...``: caption any video files, end to end, with one :class:`Captioner`.

Two ways to name the model, one captioning path (:meth:`Captioner.caption`: inputs in the order given,
ids made unique, groups of videos beam-searched alike):

- ``--model FILE.fcvc`` (``fcvc export``): :meth:`Captioner.load`; the features are computed in memory
  with the networks the file describes. No work directory is read or written, nothing is cached: it works
  from any directory and on a read-only file system.
- ``--run NAME`` / ``--checkpoint FILE`` in a work directory: the checkpoint plus the recipe of the
  feature store it was trained on (its settings and network records). The features of the video files are
  kept in ``<workdir>/caption-features/<settings>.zarr`` (``features.extraction.extract_like`` against
  the training store), so captioning a file again (another run, another beam size) reads them back. The
  cache is keyed by each file's absolute path and checked against its size and modification time; it is
  never pruned and may be deleted at any time. When it cannot be written (a read-only or full work
  directory) the features are computed in memory instead, with a warning.

Captioning a split of the work directory's store (for scoring) is ``inference.captioner.caption_split``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import append_synced_text
from fcvc_pipeline.devices import (
    CAPTION_PRECISIONS,
    check_device_spec,
    check_precision_spec,
    resolve_device,
    resolve_feature_precision,
)
from fcvc_pipeline.errors import FilesystemError, InputError, filesystem_error, require
from fcvc_pipeline.features.extraction import VideoResult, extract_like
from fcvc_pipeline.features.store import DamagedVideoError, FeatureStore
from fcvc_pipeline.features.video import VIDEO_EXTENSIONS, VideoSource, list_videos_in_order
from fcvc_pipeline.inference.captioner import Caption, Captioner, FeatureSource
from fcvc_pipeline.inference.package import ROLES, recipe_from_store, training_store
from fcvc_pipeline.naming import safe_name
from fcvc_pipeline.workdir import DEFAULT_WORKDIR, Workdir


@dataclass(frozen=True)
class CaptionConfig:
    inputs: tuple[Path, ...]
    workdir: Path | None = None  # None: ./fcvc-work (for --run / --checkpoint); --model reads none
    run: str | None = None
    checkpoint: Path | None = None  # overrides run
    model: Path | None = None  # a .fcvc captioner file: no work directory
    backbone_weights: tuple[tuple[str, Path], ...] = ()  # (role, path): a weights file not at its recorded path
    # decoding: None keeps what the run stored (inference/options.py; the beam size chosen on validation)
    beam_size: int | None = None
    max_len: int | None = None  # default: the model's longest caption
    length_penalty: float | None = None
    attention: Path | None = None  # directory for one attention figure per video
    device: str = "auto"
    workers: int | None = None
    # the feature networks' precision: recorded (the training features', devices.resolve_feature_precision) |
    # auto | fp32 | bf16
    precision: str = "recorded"
    # JSON Lines file the captions are appended to, OUTPUT_CHUNK videos at a time; videos already in it are
    # skipped, so an interrupted run over thousands of videos goes on where it stopped
    output: Path | None = None

    def validate(self) -> list[str]:
        problems = []
        if self.output is not None and self.attention is not None:
            problems.append("--attention does not go with --output (figures for a large folder: caption it in parts)")
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
        if self.model is not None:
            if self.run is not None or self.checkpoint is not None:
                problems.append("give --model or --run/--checkpoint, not both")
            if self.workdir is not None:
                problems.append("--model FILE.fcvc reads no work directory: drop --workdir")
        roles = [role for role, _ in self.backbone_weights]
        for role in sorted(set(roles)):
            if role not in ROLES:
                problems.append(f"--backbone-weights {role}=...: unknown network {role!r} (one of {', '.join(ROLES)})")
            elif roles.count(role) > 1:
                problems.append(f"--backbone-weights {role}=... is given {roles.count(role)} times")
        if (p := check_device_spec(self.device)) is not None:
            problems.append(p)
        if (p := check_precision_spec(self.precision, CAPTION_PRECISIONS)) is not None:
            problems.append(p)
        return problems


@dataclass
class CaptionResult:
    captions: list[Caption]  # one per input video, in the order given
    checkpoint: str = ""  # the checkpoint or captioner file used
    figures: dict[str, str] = field(default_factory=dict)  # video id -> attention figure written
    figure_error: str | None = None  # why the --attention figures (all or the rest) were not written
    output: dict[str, Any] | None = None  # with --output: the file and the counts (the captions are in the file)

    @property
    def items(self) -> list[dict[str, Any]]:
        """The captioned videos: {"video", "caption", "score", "path"}, in input order."""
        return [c.to_json() for c in self.captions if c.ok]

    @property
    def failed(self) -> dict[str, str]:
        """video id -> why it has no caption."""
        return {c.video: str(c.error) for c in self.captions if not c.ok}

    @property
    def exit_code(self) -> int:
        if self.output is not None:
            return 1 if self.output["failed_now"] else 0
        return 1 if self.failed or self.figure_error else 0

    def to_json(self) -> list[dict[str, Any]] | dict[str, Any]:
        """One entry per input video, in the order given (a failed one with ``caption`` null and ``error``);
        with ``--output``, what was written where."""
        if self.output is not None:
            return self.output
        out = []
        for c in self.captions:
            item = c.to_json()
            if c.ok and (self.figures or self.figure_error):  # --attention: where each figure is, or why not
                figure = self.figures.get(c.video)
                item["figure"] = figure
                if figure is None:
                    item["figure_error"] = self.figure_error
            out.append(item)
        return out


def run_caption(cfg: CaptionConfig) -> CaptionResult:
    require(cfg.validate())
    if not list_videos_in_order(cfg.inputs):  # checked before a model is loaded; raises for missing paths
        names = ", ".join(str(p) for p in cfg.inputs)
        raise InputError(names, f"no videos found (folders are searched for files ending in "
                                f"{', '.join(sorted(VIDEO_EXTENSIONS))})",
                         hint="name the video files themselves, or a .txt list of their paths")
    device = resolve_device(cfg.device)
    weights = dict(cfg.backbone_weights)
    source: FeatureSource | None = None
    if cfg.model is not None:
        captioner = Captioner.load(cfg.model, device, precision=cfg.precision)
        progress.log(f"caption: {len(cfg.inputs)} input(s) with {cfg.model} (features computed in memory)")
    else:
        workdir = cfg.workdir or DEFAULT_WORKDIR
        w = Workdir(workdir)
        ckpt_path = Path(cfg.checkpoint) if cfg.checkpoint else w.resolve_run(cfg.run) / "best.pt"
        captioner = Captioner.from_checkpoint(ckpt_path, device, precision=cfg.precision)
        ref = training_store(captioner.checkpoint, workdir, ckpt_path)
        captioner.extraction = recipe_from_store(ref)
        precision = resolve_feature_precision(cfg.precision, captioner.extraction.precision, device)
        # one cache per precision, so a cached video is never reused at another precision than asked for
        # (fp32 keeps the name caches had before the precision was part of it)
        cache = w.caption_features / f"{ref.settings_fingerprint[:16]}{'' if precision == 'fp32' else '-' + precision}.zarr"
        source = _cached_features(captioner, ref, cache, device=str(device), workers=cfg.workers, weights=weights,
                                  precision=precision)
        progress.log(f"caption: {len(cfg.inputs)} input(s) with {ckpt_path} (features like {ref.path}, kept in {cache})")
    if cfg.output is not None:
        return _caption_into_file(cfg, captioner, weights, source)
    captions = captioner.caption(cfg.inputs, beam_size=cfg.beam_size, max_len=cfg.max_len,
                                 length_penalty=cfg.length_penalty, workers=cfg.workers, weights_paths=weights,
                                 feature_source=source)
    result = CaptionResult(captions=captions, checkpoint=str(cfg.model or captioner.path))
    done = [c for c in captions if c.ok]
    if cfg.attention is not None and done:
        result.figures, refused = _attention_figures(captioner, cfg.attention, done)
        if refused is not None:  # the captions are computed: keep them, say which figures are missing
            result.figure_error = refused.message
            progress.warn(f"attention figures not written into {cfg.attention} "
                          f"({len(done) - len(result.figures)} of {len(done)} missing): {refused}")
    for c in captions:
        if not c.ok:
            progress.warn(f"{c.path or c.video}: {c.error}")
    return result


OUTPUT_CHUNK = 64  # videos captioned, then appended to --output and synced, at a time


def _caption_into_file(cfg: CaptionConfig, captioner: Captioner, weights: dict[str, Path],
                       source: FeatureSource | None) -> CaptionResult:
    """``--output FILE``: caption the inputs not yet in FILE, OUTPUT_CHUNK at a time, appending each chunk's
    lines (one JSON object per video, failures with their ``error``) and syncing them before the next. Memory
    holds one chunk, whatever the number of videos; a rerun skips every video whose path FILE has."""
    assert cfg.output is not None
    sources = list_videos_in_order(cfg.inputs)
    done = read_output_lines(cfg.output)
    todo = [s for s in sources if str(s.path) not in done]
    progress.log(f"caption: {len(sources)} videos, {len(sources) - len(todo)} already in {cfg.output}, "
                 f"{len(todo)} to caption")
    captioned = failed = 0
    bar = progress.bar(total=len(sources), desc="captioning", unit="video")
    bar.update(len(sources) - len(todo))
    try:
        for start in range(0, len(todo), OUTPUT_CHUNK):
            chunk = todo[start:start + OUTPUT_CHUNK]
            captions = captioner.caption([s.path for s in chunk], beam_size=cfg.beam_size, max_len=cfg.max_len,
                                         length_penalty=cfg.length_penalty, workers=cfg.workers,
                                         weights_paths=weights, feature_source=source)
            lines = []
            for s, c in zip(chunk, captions):
                item = {**c.to_json(), "video": s.video_id, "path": str(s.path)}  # ids of the whole input list
                lines.append(json.dumps(item, ensure_ascii=False) + "\n")
                if c.ok:
                    captioned += 1
                else:
                    failed += 1
                    progress.warn(f"{s.path}: {c.error}")
            append_synced_text(cfg.output, "".join(lines))
            bar.update(len(chunk))
    finally:
        bar.close()
    return CaptionResult(captions=[], checkpoint=str(cfg.model or captioner.path), output={
        "output": str(cfg.output), "videos": len(sources), "already_done": len(sources) - len(todo),
        "captioned_now": captioned, "failed_now": failed})


def read_output_lines(path: Path) -> set[str]:
    """The video paths an ``--output`` file already holds. A last line cut short (a run killed while writing)
    is removed from the file; any other unreadable line is an error naming the file and the line."""
    if not path.exists():
        return set()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(path, f"cannot read it: {e.strerror or e}") from None
    if raw and not raw.endswith(b"\n"):  # a torn last line: drop it, its video is captioned again
        cut = raw.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        raw = raw[:cut]
    done = set()
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            done.add(str(item["path"]))
        except (ValueError, KeyError, TypeError):
            raise InputError(path, "not an `fcvc caption --output` file (each line must be a JSON object with a "
                                   "\"path\")", line=n, hint="name a new file, or the file an earlier run wrote") from None
    return done


def cache_key(source: VideoSource) -> str:
    """The id a video file's features have in ``caption-features/``: its stem and a hash of its absolute
    path, so two files with one name never share an entry and a file keeps its entry across calls."""
    digest = hashlib.sha256(os.path.abspath(source.path).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{Path(source.path).stem}~{digest}"


def _cached_features(captioner: Captioner, ref: FeatureStore, cache: Path, *, device: str, workers: int | None,
                     weights: Mapping[str, Path], precision: str) -> FeatureSource:
    """The videos' features through the cache store (extracted there when missing or changed on disk);
    in memory, with a warning, when the cache cannot be written."""

    def compute(sources: list[VideoSource]) -> Iterator[VideoResult]:
        keyed = [VideoSource(cache_key(s), s.path) for s in sources]
        try:
            extracted = extract_like(ref.path, keyed, cache, device=device, workers=workers,
                                     weights_paths=dict(weights), precision=precision)
        except Exception as e:  # a refused write may come wrapped by zarr: filesystem_error follows the causes
            refused = e if isinstance(e, FilesystemError) else filesystem_error(e)
            if refused is None:
                raise
            progress.warn(f"the feature cache {cache} cannot be written ({refused.message}); computing the "
                          f"features in memory instead")
            yield from captioner.in_memory_features(workers=workers, weights_paths=weights)(sources)
            return
        store = FeatureStore.open(cache)
        for source, key in zip(sources, keyed):
            if key.video_id in extracted.failed:
                yield VideoResult(source, None, extracted.failed[key.video_id])
            elif not store.is_complete(key.video_id):
                yield VideoResult(source, None, "no features were written")
            else:
                try:
                    f = store.read_video(key.video_id)
                except DamagedVideoError as e:
                    yield VideoResult(source, None, str(e))
                    continue
                yield VideoResult(source, {"frame_features": f.frame_features, "clip_features": f.clip_features,
                                           "region_features": f.region_features})

    return compute


def _attention_figures(captioner: Captioner, out_dir: Path,
                       captions: list[Caption]) -> tuple[dict[str, str], FilesystemError | None]:
    """One PNG per video: sampled frames, per-word temporal attention, per-word region heatmap.

    Returns the figures written and, when the directory refused a write (read-only, full, not ours), that
    refusal: the figures after it are not attempted, since they would meet the same disk.
    """
    out_dir = Path(out_dir)
    figures: dict[str, str] = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for c in captions:
            path = captioner.save_attention_figure(c, out_dir / f"{safe_name(c.video)}.png")
            figures[c.video] = str(path)
            progress.log(f"attention figure: {path}")
    except OSError as e:
        refused = filesystem_error(e)
        if refused is None:
            raise
        return figures, refused
    return figures, None
