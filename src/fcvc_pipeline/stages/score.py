"""``fcvc score``: caption a split with the best checkpoint (or take a captions file) and score it.

Config -> cached? -> engine: the split is captioned by ``inference.captioner.caption_split`` (itself cached),
then scored by ``evaluation.metrics.score_captions``. References are the raw captions of the split from
``<workdir>/vocab/captions.jsonl``, never truncated. Scores are cached in a ``*.scores.json`` file
(``artifacts.read_cached``) keyed by the content of the captions file, the references, and the tokenizer
used (PTB with Java, Python without): a rerun with the same inputs reads it back. The file lies next to the
captions file when that is inside the work directory, else under ``<workdir>/scores/`` (a command writes
only into its work directory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import file_sha256, fingerprint, read_cached, write_cached
from fcvc_pipeline.captions.vocabulary import SPLITS, load_captions, references_by_video
from fcvc_pipeline.devices import check_device_spec
from fcvc_pipeline.errors import EXIT_ITEM_FAILURES, EXIT_OK, InputError, MismatchError, MissingArtifactError, require
from fcvc_pipeline.evaluation import metrics
from fcvc_pipeline.features.settings import weights_identity
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.inference.captioner import caption_split
from fcvc_pipeline.naming import safe_name
from fcvc_pipeline.workdir import DEFAULT_WORKDIR, Workdir

STAGE = "score"
VERSION = 2  # bump when the scoring changes what it produces (2: ROUGE-L of empty captions as pycocoevalcap)


@dataclass(frozen=True)
class ScoreConfig:
    workdir: Path = DEFAULT_WORKDIR
    run: str | None = None  # run under <workdir>/runs whose best checkpoint captions the split
    split: str = "test"
    captions: Path | None = None  # score this file instead of captioning the split
    beam_size: int | None = None  # None: the run's validation-chosen beam (inference/options.py)
    max_len: int | None = None  # default: the model's longest caption
    device: str = "auto"
    use_java: bool | None = None  # None: use Java when available (see metrics.score_captions)

    def problems(self) -> list[str]:
        out = []
        if self.split not in SPLITS:
            out.append(f"--split must be one of {', '.join(SPLITS)} (got {self.split!r})")
        if self.captions is not None and self.run is not None:
            out.append("--captions and --run exclude each other: --captions scores the given file as it is")
        if self.captions is not None and not Path(self.captions).is_file():
            out.append(f"--captions {self.captions}: no such file")
        if self.beam_size is not None and self.beam_size < 1:
            out.append(f"--beam-size must be at least 1 (got {self.beam_size})")
        if self.max_len is not None and self.max_len < 1:
            out.append(f"--max-len must be at least 1 (got {self.max_len})")
        device_problem = check_device_spec(self.device)
        if device_problem:
            out.append(device_problem)
        return out


@dataclass
class ScoreResult:
    scores: dict[str, Any]  # Bleu_1..4, METEOR, ROUGE_L, CIDEr, unk_count, videos, tokenizer, warnings
    captions_file: Path
    scores_file: Path
    split: str
    cached: bool
    table: str
    # the backbone weights the captioned features came from (features.settings.weights_identity);
    # None for a --captions file, whose origin fcvc cannot know
    features: dict[str, str | None] | None = None
    # videos of the split that have references but no features (not captioned, not scored: exit 1)
    missing: list[str] = field(default_factory=list)
    exit_code: int = 0

    def to_json(self) -> dict[str, Any]:
        body = {k: v for k, v in self.scores.items() if k != "warnings"}
        return body | {"captions_file": str(self.captions_file), "scores_file": str(self.scores_file),
                       "split": self.split, "cached": self.cached, "features": self.features,
                       "missing": list(self.missing),
                       "warnings": list(self.scores.get("warnings", []))}


def _scores_path(captions_file: Path, workdir: Path) -> Path:
    """Where the scores of ``captions_file`` are cached: beside it inside the work directory,
    else ``<workdir>/scores/<name>-<hash of the path>.scores.json``."""
    resolved = captions_file.resolve()
    try:
        resolved.relative_to(Path(workdir).resolve())
        return resolved.with_name(f"{resolved.stem}.scores.json")
    except ValueError:
        tag = fingerprint(str(resolved))[:10]
        return Path(workdir) / "scores" / f"{safe_name(resolved.stem)}-{tag}.scores.json"


def _match_ids(captions: dict[str, str], references: dict[str, list[str]], path: Path) -> dict[str, str]:
    """Keys that are not video ids but file paths of them (``videos/vid1.avi``) are mapped to the id
    (``vid1``) when that is unambiguous; anything else is left for the scorer to report."""
    unknown = [k for k in captions if k not in references]
    if not unknown:
        return captions
    by_stem = {k: Path(k).stem for k in unknown}
    targets = list(by_stem.values())
    if all(s in references and s not in captions for s in targets) and len(set(targets)) == len(targets):
        progress.log(f"{path}: matched {len(unknown)} caption key(s) to video ids by file name "
                     f"(e.g. {unknown[0]!r} -> {by_stem[unknown[0]]!r})")
        return {by_stem.get(k, k): c for k, c in captions.items()}
    return captions


def run_score(cfg: ScoreConfig) -> ScoreResult:
    require(cfg.problems())
    vocab_dir = Workdir(cfg.workdir).vocab
    references = references_by_video(load_captions(vocab_dir, cfg.split))
    if not references:
        raise MissingArtifactError(f"the caption table in {vocab_dir} has no '{cfg.split}' captions",
                                   hint="check the split name, or rerun `fcvc vocab` with split information")

    features = None
    if cfg.captions is not None:
        captions_file = Path(cfg.captions)
        label = captions_file.stem
    else:
        # caption_split refuses a checkpoint trained on a store with other settings than this one
        store_path = Workdir(cfg.workdir).features
        features = weights_identity(FeatureStore.open(store_path).settings) if FeatureStore.exists(store_path) else None
        captions_file = Path(caption_split(cfg.workdir, cfg.run, cfg.split, beam_size=cfg.beam_size,
                                           max_len=cfg.max_len, device=cfg.device))
        label = captions_file.parent.parent.name if captions_file.parent.name == "captions" else captions_file.stem

    captions = _match_ids(metrics.read_captions_file(captions_file), references, captions_file)
    missing: list[str] = []
    if cfg.captions is None:
        # the run captioned every video of the split that has features; the others cannot be captioned until
        # they are extracted: score what was captioned, list the rest, exit 1 (per-item failures)
        missing = sorted(set(references) - set(captions))
        if missing:
            progress.warn(f"{len(missing)} of {len(references)} '{cfg.split}' videos have no features and are not "
                          f"scored (e.g. {', '.join(missing[:3])}); run `fcvc extract` on them to score the whole split")
            references = {v: refs for v, refs in references.items() if v in captions}
    use_java = metrics.java_available() if cfg.use_java is None else cfg.use_java
    key = {"stage": STAGE, "version": VERSION, "split": cfg.split, "captions": file_sha256(captions_file),
           "references": fingerprint(references), "tokenizer": "ptb" if use_java else "python",
           "pycocoevalcap": _package_version("pycocoevalcap")}
    scores_file = _scores_path(captions_file, cfg.workdir)

    scores, cached = read_cached(scores_file, key, field="scores"), True
    if scores is None:
        cached = False
        progress.log(f"scoring {len(captions)} '{cfg.split}' captions from {captions_file}")
        try:
            scores = metrics.score_captions(captions, references, use_java=cfg.use_java)
        except MismatchError as e:
            raise InputError(captions_file, e.message,
                             hint=f"the file must caption exactly the {len(references)} '{cfg.split}' videos "
                                  f"of {vocab_dir}, keyed by video id") from None
        write_cached(scores_file, key, scores, field="scores", captions_file=str(captions_file), features=features)
    else:
        progress.log(f"scores [{cfg.split}]: up to date ({scores_file})")

    for message in scores.get("warnings", []):
        progress.warn(message)
    table = metrics.format_score_table([(label, scores)], markdown=True, features=features)
    progress.log(table)
    scored_of = f" of the split's {scores['videos'] + len(missing)}" if missing else ""
    progress.log(f"{scores['videos']} videos{scored_of} scored, tokenizer: {scores['tokenizer']}, "
                 f"scores saved to {scores_file}")
    return ScoreResult(scores=scores, captions_file=captions_file, scores_file=scores_file, split=cfg.split,
                       cached=cached, table=table, features=features, missing=missing,
                       exit_code=EXIT_ITEM_FAILURES if missing else EXIT_OK)


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"
