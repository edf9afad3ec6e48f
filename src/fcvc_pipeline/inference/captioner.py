"""Captioning with a trained model: the one "caption these videos" used by every stage.

- :func:`caption_bank`: hypotheses for rows of an in-memory :class:`FeatureBank` (batched beam search).
- :func:`caption_and_score`: the same, decoded to text and scored against references (validation after
  each epoch, the end-of-training beam choice).
- :class:`Captioner`: a model, its vocabulary and its decoding options, loaded from a checkpoint
  (:meth:`Captioner.from_checkpoint`) or from a self-contained ``.fcvc`` file written by ``fcvc export``
  (:meth:`Captioner.load`, which also brings the feature settings and networks: ``caption`` then takes
  video files and computes their features in memory). ``fcvc caption`` uses it in both forms (``--model``
  and ``--run``). Results are :class:`Caption` values; ``attention_figure`` draws one.
- :func:`caption_split`: caption every video of a split of the work directory's store with a run's
  ``best.pt``, cached per (checkpoint, features, vocabulary, decoding) — what ``fcvc score`` and the
  ablation score.

This module is the Python API (``from fcvc_pipeline import Captioner``): it must not import the command
line (Click, ``fcvc_pipeline.commands``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import numpy as np
import torch
from PIL import Image

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import atomic_write_json, file_sha256, read_cached, write_cached
from fcvc_pipeline.captions.vocabulary import Vocabulary, load_captions, load_vocabulary
from fcvc_pipeline.devices import CAPTION_PRECISIONS, require_precision_spec, resolve_device
from fcvc_pipeline.errors import InputError, MismatchError, MissingArtifactError, require
from fcvc_pipeline.evaluation.metrics import score_captions
from fcvc_pipeline.features.bank import (
    FeatureBank,
    StoreBank,
    load_feature_bank,
    plan_features,
)
from fcvc_pipeline.features.extraction import VideoResult, extract_in_memory
from fcvc_pipeline.features.networks import Backbones
from fcvc_pipeline.features.settings import decode_plan
from fcvc_pipeline.features.store import FeatureStore, VideoFeatures
from fcvc_pipeline.features.video import DecodeError, VideoSource, decode_video, list_videos_in_order
from fcvc_pipeline.inference.checkpoint import decoding_of, load_checkpoint, model_from_checkpoint, vocabulary_of
from fcvc_pipeline.inference.decoding import Hypothesis, generate
from fcvc_pipeline.inference.figures import draw_attention_figure, write_png
from fcvc_pipeline.inference.options import DecodingOptions
from fcvc_pipeline.inference.package import FeatureRecipe, build_backbones, check_extractable, read_package
from fcvc_pipeline.models import CaptionModel
from fcvc_pipeline.workdir import Workdir

# What caption_features takes for one video: arrays by the store's names (frame_features [N, frame_dim],
# clip_features [N, clip_dim], region_features [N, M, region_dim]), or a store's VideoFeatures.
VideoArrays = Union[Mapping[str, Any], VideoFeatures]
# How Captioner.caption gets the features of video files: the sources in, one VideoResult per source out, in
# the same order (extract_in_memory by default; fcvc caption --run keeps them in caption-features/).
FeatureSource = Callable[[list[VideoSource]], Iterable[VideoResult]]
CAPTION_GROUP = 32  # videos per beam search (and the most features Captioner.caption holds at once)


@torch.inference_mode()
def caption_bank(model: CaptionModel, bank: FeatureBank | StoreBank, options: DecodingOptions, *,
                 rows: Sequence[int] | None = None, batch_videos: int = 32,
                 device: torch.device | str = "cpu") -> dict[str, Hypothesis]:
    """video id -> :class:`Hypothesis` for the bank rows given (all by default)."""
    was_training = model.training
    model.eval()
    rows = list(range(len(bank.video_ids))) if rows is None else list(rows)
    max_len = options.max_len or model.config.max_len
    out: dict[str, Hypothesis] = {}
    try:
        for start in range(0, len(rows), batch_videos):
            chunk = torch.tensor(rows[start:start + batch_videos], dtype=torch.long)
            videos = bank.batch(chunk).to(device)
            hyps = generate(model, videos, beam_size=options.beam_size, max_len=max_len,
                            length_penalty=options.length_penalty)
            for r, h in zip(chunk.tolist(), hyps):
                out[bank.video_ids[r]] = h
    finally:
        model.train(was_training)
    return out


def caption_and_score(model: CaptionModel, bank: FeatureBank | StoreBank, vocab: Vocabulary,
                      references: Mapping[str, Sequence[str]], options: DecodingOptions, *,
                      metrics: tuple[str, ...], device: torch.device | str = "cpu"
                      ) -> tuple[dict[str, str], dict[str, Any]]:
    """(video id -> caption, scores) for the videos of ``references`` (which must all be in ``bank``)."""
    index = bank.index()
    hyps = caption_bank(model, bank, options, rows=[index[v] for v in sorted(references)], device=device)
    captions = {v: vocab.decode(h.tokens) for v, h in hyps.items()}
    return captions, score_captions(captions, references, metrics=metrics)


@dataclass
class Caption:
    """The caption of one video, or why there is none (``error``; the other videos are still captioned)."""

    video: str  # the video id (a file's name without its extension, or the key it was given under)
    text: str | None  # the caption; None when the video failed
    score: float | None = None  # total log-probability of the words and the closing <eos>
    words: list[str] = field(default_factory=list)
    frame_attention: np.ndarray | None = None  # [len(words), N]: each word's weights over the N frames
    region_attention: np.ndarray | None = None  # [len(words), N, M]: over the M grid cells of each frame
    error: str | None = None
    path: Path | None = None  # the video file, when captioned from one
    normalized_score: float | None = None  # the length-penalised score the beam search ranked by
    truncated: bool = False  # stopped at the longest caption allowed, not by the model

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"video": self.video, "caption": self.text, "score": self.score}
        if self.path is not None:
            out["path"] = str(self.path)
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class Captioner:
    """A trained model with what it needs to caption: its vocabulary and its decoding options.

    Loaded from a ``.fcvc`` file (:meth:`load`) it also knows how its features are computed
    (``extraction``: the feature settings and networks), so :meth:`caption` takes video files; loaded
    from a checkpoint (:meth:`from_checkpoint`) it captions features (:meth:`caption_features`,
    :meth:`caption_bank`), and video files when given the recipe of its training store (``fcvc caption
    --run`` does that).
    """

    model: CaptionModel
    vocab: Vocabulary
    options: DecodingOptions
    checkpoint: dict[str, Any]  # the checkpoint's entries (for a .fcvc file: the same keys, without weights)
    path: Path
    device: torch.device
    extraction: FeatureRecipe | None = None  # how the features of a new video are computed (.fcvc files)
    provenance: dict[str, Any] = field(default_factory=dict)  # run, training config, scores, versions
    # the feature networks' precision for new videos: recorded (the training features', the default) | auto |
    # fp32 | bf16 (devices.resolve_feature_precision)
    feature_precision: str = "recorded"
    _networks: dict[tuple, Backbones] = field(default_factory=dict, repr=False)  # built by backbones()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", *,
                        checkpoint: dict[str, Any] | None = None,
                        extraction: FeatureRecipe | None = None, precision: str = "recorded") -> Captioner:
        """Load ``path`` (or use the already loaded ``checkpoint`` of it). ``extraction``: the recipe of the
        store it was trained on (``recipe_from_store``), so that :meth:`caption` takes video files.
        ``precision``: as for :meth:`load`."""
        require_precision_spec(precision, CAPTION_PRECISIONS)
        path = Path(path)
        dev = torch.device(device)
        ckpt = checkpoint if checkpoint is not None else load_checkpoint(path)
        if extraction is not None and extraction.settings_fingerprint != ckpt.get("store_settings_fingerprint"):
            raise MismatchError(f"{path} was trained on features extracted with other settings than the recipe given")
        return cls(model=model_from_checkpoint(ckpt, path, dev), vocab=vocabulary_of(ckpt),
                   options=decoding_of(ckpt, path), checkpoint=ckpt, path=path, device=dev, extraction=extraction,
                   feature_precision=precision)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto", *, precision: str = "recorded"
             ) -> Captioner:
        """Load a ``.fcvc`` captioner file (``fcvc export``); ``device``: auto | cpu | cuda | cuda:N.

        ``precision``: the feature networks' for new videos: ``recorded`` (default) is the precision the
        training features were computed in, as the file records it (for a file that does not: fp32 on CPUs,
        bf16 on CUDA, the rule such files were made under); ``auto``, ``fp32`` or ``bf16`` override it
        (``fcvc extract --precision``).

        The file is checked whole before anything is built (format, version, digest): a damaged,
        truncated or foreign file is an :class:`~fcvc_pipeline.errors.InputError` naming it, and nothing
        in it is executed.
        """
        require_precision_spec(precision, CAPTION_PRECISIONS)
        path = Path(path)
        package = read_package(path)
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        entries = {"model_config": package.model_config.to_json(), "vocab": package.vocab.to_json(),
                   "vocab_fingerprint": package.vocab.fingerprint(), "decoding": package.decoding.to_json(),
                   "store_settings_fingerprint": package.features.settings_fingerprint}
        model = model_from_checkpoint({**entries, "state_dict": package.state_dict}, path, dev)
        return cls(model=model, vocab=package.vocab, options=package.decoding, checkpoint=entries, path=path,
                   device=dev, extraction=package.features, provenance=package.provenance,
                   feature_precision=precision)

    def caption_bank(self, bank: FeatureBank | StoreBank, options: DecodingOptions | None = None,
                     rows: Sequence[int] | None = None) -> dict[str, Hypothesis]:
        return caption_bank(self.model, bank, options or self.options, rows=rows, device=self.device)

    def text(self, hypothesis: Hypothesis) -> str:
        return self.vocab.decode(hypothesis.tokens)

    def decoding(self, *, beam_size: int | None = None, max_len: int | None = None,
                 length_penalty: float | None = None) -> DecodingOptions:
        """The stored decoding options with each argument that is not None in its place (checked)."""
        options = self.options.override(beam_size=beam_size, max_len=max_len, length_penalty=length_penalty)
        require(options.problems())
        return options

    # -- captions as values ----------------------------------------------------------------------------
    def _caption(self, video: str, h: Hypothesis, path: Path | None = None) -> Caption:
        words = self.vocab.decode_tokens(h.tokens)
        cut = lambda a: None if a is None else np.asarray(a)[:len(words)]  # noqa: E731
        return Caption(video=video, text=" ".join(words), score=float(h.score), words=words,
                       frame_attention=cut(h.frame_attn), region_attention=cut(h.region_attn), path=path,
                       normalized_score=float(h.normalized_score), truncated=bool(h.truncated))

    def caption_features(self, features: FeatureBank | Mapping[str, VideoArrays], *,
                         beam_size: int | None = None, max_len: int | None = None,
                         length_penalty: float | None = None) -> list[Caption]:
        """Caption features a user already has: one :class:`Caption` per video, in the order given.

        ``features`` is a :class:`~fcvc_pipeline.features.bank.FeatureBank`, or a mapping of video id to
        that video's arrays under the store's names -- ``frame_features`` [N, frame_dim],
        ``clip_features`` [N, clip_dim] (when the model uses clip features), ``region_features``
        [N, M, region_dim] (when it uses regions) -- or to a store's ``VideoFeatures``. A video whose
        arrays do not have the shapes the model was trained on gets a Caption with ``error`` set; the
        others are still captioned. Decoding: the stored options, each argument that is not None
        replacing its own.
        """
        options = self.decoding(beam_size=beam_size, max_len=max_len, length_penalty=length_penalty)
        if isinstance(features, FeatureBank):
            self._check_bank(features)
            hyps = self.caption_bank(features, options)
            return [self._caption(v, hyps[v]) for v in features.video_ids]
        if not isinstance(features, Mapping):
            raise TypeError(f"features must be a FeatureBank or a mapping of video id to arrays, "
                            f"not {type(features).__name__}")
        good: dict[str, dict[str, np.ndarray]] = {}
        errors: dict[str, str] = {}
        for video, item in features.items():
            arrays, problem = self._video_arrays(item)
            if problem is not None:
                errors[str(video)] = problem
            else:
                good[str(video)] = arrays
        hyps: dict[str, Hypothesis] = {}
        if good:
            hyps = self.caption_bank(_bank(good), options)
        return [self._caption(v, hyps[v]) if v in hyps else Caption(video=v, text=None, error=errors[v])
                for v in map(str, features)]

    def _expected(self) -> dict[str, tuple[int, ...]]:
        cfg = self.model.config
        shapes = {"frame_features": (cfg.num_frames, cfg.frame_dim)}
        if cfg.clip_dim > 0:
            shapes["clip_features"] = (cfg.num_frames, cfg.clip_dim)
        if cfg.uses_regions:
            shapes["region_features"] = (cfg.num_frames, cfg.num_regions, cfg.region_dim)
        return shapes

    def _video_arrays(self, item: VideoArrays) -> tuple[dict[str, np.ndarray], str | None]:
        if isinstance(item, VideoFeatures):
            item = {"frame_features": item.frame_features, "clip_features": item.clip_features,
                    "region_features": item.region_features}
        if not isinstance(item, Mapping):
            return {}, f"expected a mapping of array name to array, got {type(item).__name__}"
        out: dict[str, np.ndarray] = {}
        for name, shape in self._expected().items():
            value = item.get(name)
            if value is None:
                return {}, f"no {name} (the model needs {name} of shape {list(shape)})"
            if isinstance(value, torch.Tensor):
                value = value.detach().to("cpu").numpy()
            array = np.asarray(value)
            if array.dtype.kind not in "fiu":
                return {}, f"{name} has dtype {array.dtype}, not numbers"
            if tuple(array.shape) != shape:
                return {}, f"{name} has shape {list(array.shape)}, the model expects {list(shape)}"
            array = array.astype(np.float32)
            if not np.isfinite(array).all():
                return {}, f"{name} holds NaN or infinite values"
            out[name] = array
        return out, None

    def _check_bank(self, bank: FeatureBank | StoreBank) -> None:
        arrays = bank.video_shapes()
        for name, shape in self._expected().items():
            have = arrays[name]
            if have is None or tuple(have) != shape:
                have = "none" if have is None else list(have)
                raise MismatchError(f"the feature bank's {name} per video: {have}; the model expects {list(shape)}")

    def caption(self, videos: Sequence[str | Path] | str | Path, *, beam_size: int | None = None,
                max_len: int | None = None, length_penalty: float | None = None, workers: int | None = None,
                weights_paths: Mapping[str, str | Path] | None = None,
                feature_source: FeatureSource | None = None) -> list[Caption]:
        """Caption video files (or folders, or list files, as ``fcvc caption`` takes them).

        One :class:`Caption` per video, in the order the inputs were given (a folder's videos by name, a
        list file's in its order); two files with one name in different folders are both captioned,
        their ids made unique by their parent folders (``a/clip``, ``b/clip``:
        :func:`~fcvc_pipeline.features.video.unique_ids`). A video that cannot be decoded gets ``error``
        set; the others are still captioned.

        Features are computed in memory (nothing is written anywhere) with the settings and the very same
        networks the model was trained on: rebuilt from the recipe (``extraction``), each checked against
        its recorded hash. ``weights_paths`` ({"inception"|"clip": path}) points at a weights file that was
        not embedded and is not at its recorded path; a changed file is a :class:`MismatchError`.
        ``feature_source`` replaces the in-memory computation (``fcvc caption --run`` passes one that keeps
        the features in the work directory's ``caption-features/`` store).
        """
        self.decoding(beam_size=beam_size, max_len=max_len, length_penalty=length_penalty)  # checked before the work
        if feature_source is None:
            self._check_can_extract()
        inputs = [videos] if isinstance(videos, (str, os.PathLike)) else list(videos)
        sources = list_videos_in_order(inputs)
        if feature_source is None:
            feature_source = self.in_memory_features(workers=workers, weights_paths=weights_paths)
        out: dict[str, Caption] = {}
        group: dict[str, dict[str, np.ndarray]] = {}
        paths = {s.video_id: s.path for s in sources}

        def flush() -> None:
            for c in self.caption_features(group, beam_size=beam_size, max_len=max_len,
                                           length_penalty=length_penalty):
                out[c.video] = c
            group.clear()

        # captioned in groups of CAPTION_GROUP videos in input order, as they come: whatever the source, the
        # same videos give the same groups (so the same numbers), and only one group's features are held
        for result in feature_source(sources):
            vid = result.source.video_id
            if result.arrays is None:
                out[vid] = Caption(video=vid, text=None, error=result.error or "no features were computed")
                continue
            group[vid] = result.arrays
            if len(group) >= CAPTION_GROUP:
                flush()
        if group:
            flush()
        captions = []
        for s in sources:
            c = out.get(s.video_id) or Caption(video=s.video_id, text=None, error="no features were computed")
            c.path = paths[s.video_id]
            captions.append(c)
        return captions

    def in_memory_features(self, *, workers: int | None = None,
                           weights_paths: Mapping[str, str | Path] | None = None) -> FeatureSource:
        """The default ``feature_source`` of :meth:`caption`: the recipe's networks on this captioner's
        device (built on first use and kept), :func:`~fcvc_pipeline.features.extraction.extract_in_memory`."""
        recipe = self._check_can_extract()
        backbones = self.backbones(weights_paths)
        settings = dict(recipe.settings)
        return lambda sources: extract_in_memory(settings, backbones, sources, workers=workers)

    def _check_can_extract(self) -> FeatureRecipe:
        if self.extraction is None:
            raise MismatchError(f"{self.path}: this captioner was loaded from a checkpoint, which does not carry "
                                f"its feature settings and networks",
                                hint="use `fcvc caption --workdir` of its training run, or `fcvc export` it and "
                                     "load the .fcvc file")
        check_extractable(self.extraction)
        return self.extraction

    def backbones(self, weights_paths: Mapping[str, str | Path] | None = None) -> Backbones:
        """The feature networks of the recipe on this captioner's device, rebuilt and checked once."""
        recipe = self._check_can_extract()
        key = (self.feature_precision,) + tuple(sorted((k, str(v)) for k, v in (weights_paths or {}).items()))
        cached = self._networks.get(key)
        if cached is None:
            cached = self._networks[key] = build_backbones(recipe, self.device, weights_paths=weights_paths,
                                                           where=str(self.path), precision=self.feature_precision)
        return cached

    def attention_figure(self, caption: Caption, frames: np.ndarray | None = None) -> Image.Image:
        """The attention figure of ``caption`` (a PIL image; ``.save("x.png")`` writes it).

        The frames shown are ``frames`` ([N, H, W, 3]) when given, else those sampled from the caption's
        video file with the model's extraction settings, else grey placeholders (a caption of features
        alone): the per-word frame weights and region heatmaps are drawn either way.
        """
        if caption.error is not None or caption.text is None:
            raise MismatchError(f"{caption.video}: no caption to draw ({caption.error})")
        title = caption.video
        if frames is None and caption.path is not None and self.extraction is not None:
            plan = decode_plan({**self.extraction.settings, "clip": None})
            try:
                frames = decode_video(caption.path, plan).frames
            except DecodeError as e:
                raise InputError(caption.path, f"cannot decode the frames for the figure: {e}") from None
        if frames is None:
            size = int((self.extraction.settings.get("frame_size") if self.extraction else None) or 96)
            frames = np.full((self.model.config.num_frames, size, size, 3), 200, dtype=np.uint8)
            title += " (features only: no frames to show)"
        return draw_attention_figure(frames, caption.words, caption.frame_attention, caption.region_attention,
                                     title=title)

    def save_attention_figure(self, caption: Caption, path: str | Path, frames: np.ndarray | None = None) -> Path:
        """Write :meth:`attention_figure` of ``caption`` to ``path`` as a PNG (atomically); returns the path."""
        return write_png(path, self.attention_figure(caption, frames))


def _bank(arrays: Mapping[str, Mapping[str, np.ndarray]]) -> FeatureBank:
    first = next(iter(arrays.values()))
    stack = lambda name: torch.from_numpy(np.stack([a[name] for a in arrays.values()])) if name in first else None  # noqa: E731
    return FeatureBank(video_ids=list(arrays), frames=stack("frame_features"), clips=stack("clip_features"),
                       regions=stack("region_features"))


def check_vocabulary(ckpt: dict[str, Any], vocab: Vocabulary, checkpoint_path: Path) -> None:
    if ckpt.get("vocab_fingerprint") != vocab.fingerprint():
        raise MismatchError(f"{checkpoint_path} was trained with another vocabulary than the one in the work directory",
                            hint="rerun `fcvc vocab` with the original annotations, or retrain")


def split_features(store: FeatureStore, store_path: Path, video_ids: list[str], *,
                   regions: bool) -> FeatureBank | StoreBank:
    """A split's features: loaded at once (every damaged video listed before any captioning) when they fit the
    default memory budget, else streamed 32 videos at a time (memory bounded whatever the split's size; a
    damaged video stops captioning when it is reached)."""
    mode, why, layout = plan_features(store, video_ids, regions=regions)
    if mode == "stream":
        progress.log(f"features: streamed from {store_path} ({why})")
        return StoreBank(store_path, video_ids, regions=regions, layout=layout)
    return load_feature_bank(store, video_ids, regions=regions, layout=layout)


def caption_split(workdir: Path, run: str | None, split: str, *, beam_size: int | None = None,
                  max_len: int | None = None, length_penalty: float | None = None,
                  device: str = "auto") -> Path:
    """Caption every video of ``split`` that has features; returns the cached captions file (JSON list).

    Decoding: the run's stored :class:`DecodingOptions` with each argument that is not None in its place.
    """
    w = Workdir(workdir)
    run_dir = w.resolve_run(run)
    ckpt_path = run_dir / "best.pt"
    vocab = load_vocabulary(w.vocab)
    store = FeatureStore.open(w.features)
    rows = load_captions(w.vocab, split=split)
    if not rows:
        raise MissingArtifactError(f"the caption table has no '{split}' split", hint="splits are train, val and test")
    have = set(store.completed_ids())
    video_ids = sorted({r.video_id for r in rows} & have)
    if not video_ids:
        raise MismatchError(f"no '{split}' video has features in {w.features}", hint="run `fcvc extract` on them")
    ckpt = load_checkpoint(ckpt_path)
    options = decoding_of(ckpt, ckpt_path).override(beam_size=beam_size, max_len=max_len,
                                                    length_penalty=length_penalty)
    key = {"checkpoint": file_sha256(ckpt_path), "features": store.content_fingerprint(video_ids), "vocab": vocab.fingerprint(),
           "videos": video_ids, **options.search_key()}
    out = run_dir / "captions" / f"{split}-beam{options.beam_size}.json"
    key_file = out.with_suffix(".key.json")
    if out.is_file() and read_cached(key_file, key) == file_sha256(out):
        progress.log(f"captions [{run_dir.name}/{split}]: up to date ({out})")
        return out
    check_vocabulary(ckpt, vocab, ckpt_path)
    if ckpt.get("store_settings_fingerprint") != store.settings_fingerprint:
        raise MismatchError(f"{ckpt_path} was trained on features extracted with other settings than {w.features}")
    captioner = Captioner.from_checkpoint(ckpt_path, resolve_device(device), checkpoint=ckpt)
    bank = split_features(store, w.features, video_ids, regions=captioner.model.config.uses_regions)
    progress.log(f"captioning {len(video_ids)} '{split}' videos with {run_dir.name} (beam {options.beam_size})")
    hyps = captioner.caption_bank(bank, options)
    items = [{"video": v, "caption": vocab.decode(hyps[v].tokens), "score": float(hyps[v].score)} for v in video_ids]
    atomic_write_json(out, items)
    write_cached(key_file, key, file_sha256(out))
    return out
