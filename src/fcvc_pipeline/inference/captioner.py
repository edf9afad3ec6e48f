"""Captioning with a trained model: the one "caption these videos" used by every stage.

- :func:`caption_bank`: hypotheses for rows of an in-memory :class:`FeatureBank` (batched beam search).
- :func:`caption_and_score`: the same, decoded to text and scored against references (validation after
  each epoch, the end-of-training beam choice).
- :class:`Captioner`: a model, its vocabulary and its decoding options, loaded from a checkpoint.
- :func:`caption_split`: caption every video of a split of the work directory's store with a run's
  ``best.pt``, cached per (checkpoint, features, vocabulary, decoding) — what ``fcvc score`` and the
  ablation score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import atomic_write_json, file_sha256, read_cached, write_cached
from fcvc_pipeline.captions.vocabulary import Vocabulary, load_captions, load_vocabulary
from fcvc_pipeline.devices import resolve_device
from fcvc_pipeline.errors import MismatchError, MissingArtifactError
from fcvc_pipeline.evaluation.metrics import score_captions
from fcvc_pipeline.features.bank import FeatureBank, load_feature_bank
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.inference.checkpoint import decoding_of, load_checkpoint, model_from_checkpoint, vocabulary_of
from fcvc_pipeline.inference.decoding import Hypothesis, generate
from fcvc_pipeline.inference.options import DecodingOptions
from fcvc_pipeline.models import CaptionModel
from fcvc_pipeline.workdir import Workdir


@torch.inference_mode()
def caption_bank(model: CaptionModel, bank: FeatureBank, options: DecodingOptions, *,
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


def caption_and_score(model: CaptionModel, bank: FeatureBank, vocab: Vocabulary,
                      references: Mapping[str, Sequence[str]], options: DecodingOptions, *,
                      metrics: tuple[str, ...], device: torch.device | str = "cpu"
                      ) -> tuple[dict[str, str], dict[str, Any]]:
    """(video id -> caption, scores) for the videos of ``references`` (which must all be in ``bank``)."""
    index = bank.index()
    hyps = caption_bank(model, bank, options, rows=[index[v] for v in sorted(references)], device=device)
    captions = {v: vocab.decode(h.tokens) for v, h in hyps.items()}
    return captions, score_captions(captions, references, metrics=metrics)


@dataclass
class Captioner:
    """A trained model with what it needs to caption: its vocabulary and its decoding options."""

    model: CaptionModel
    vocab: Vocabulary
    options: DecodingOptions
    checkpoint: dict[str, Any]
    path: Path
    device: torch.device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", *,
                        checkpoint: dict[str, Any] | None = None) -> Captioner:
        """Load ``path`` (or use the already loaded ``checkpoint`` of it)."""
        path = Path(path)
        dev = torch.device(device)
        ckpt = checkpoint if checkpoint is not None else load_checkpoint(path)
        return cls(model=model_from_checkpoint(ckpt, path, dev), vocab=vocabulary_of(ckpt),
                   options=decoding_of(ckpt, path), checkpoint=ckpt, path=path, device=dev)

    def caption_bank(self, bank: FeatureBank, options: DecodingOptions | None = None,
                     rows: Sequence[int] | None = None) -> dict[str, Hypothesis]:
        return caption_bank(self.model, bank, options or self.options, rows=rows, device=self.device)

    def text(self, hypothesis: Hypothesis) -> str:
        return self.vocab.decode(hypothesis.tokens)


def check_vocabulary(ckpt: dict[str, Any], vocab: Vocabulary, checkpoint_path: Path) -> None:
    if ckpt.get("vocab_fingerprint") != vocab.fingerprint():
        raise MismatchError(f"{checkpoint_path} was trained with another vocabulary than the one in the work directory",
                            hint="rerun `fcvc vocab` with the original annotations, or retrain")


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
    bank = load_feature_bank(store, video_ids, regions=captioner.model.config.uses_regions)
    progress.log(f"captioning {len(video_ids)} '{split}' videos with {run_dir.name} (beam {options.beam_size})")
    hyps = captioner.caption_bank(bank, options)
    items = [{"video": v, "caption": vocab.decode(hyps[v].tokens), "score": float(hyps[v].score)} for v in video_ids]
    atomic_write_json(out, items)
    write_cached(key_file, key, file_sha256(out))
    return out
