"""``fcvc vocab``: annotations -> normalised tokens -> vocabulary + split-aware caption table.

Writes ``<workdir>/vocab/{vocab.json, captions.jsonl, manifest.json}`` (format: captions/vocabulary.py).
The vocabulary is counted over the training targets only (train split, after truncation to
``max_len``): words seen fewer than ``min_count`` times there map to ``<unk>``; the order is the four
specials, then by decreasing count, ties alphabetical, so equal inputs give byte-equal files.
Every row keeps its raw caption (the evaluation reference, never truncated) next to its tokens.
A caption with no word at all after normalisation (``"..."``) is skipped and counted.

The manifest holds the annotation file's content hash, the split file's fingerprint and the
config (format, min_count, max_len); a rerun with the same ones says ``up to date`` and only
refreshes the feature-store cross-check, which is cheap and may change between runs.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import (
    MANIFEST_NAME,
    Manifest,
    check_manifest,
    file_fingerprint,
    read_manifest,
    write_manifest,
)
from fcvc_pipeline.captions.annotations import FORMATS, Annotations, load_annotations
from fcvc_pipeline.captions.splits import split_file_fingerprint
from fcvc_pipeline.captions.text import normalize_caption, percentiles, truncate
from fcvc_pipeline.captions.vocabulary import (
    CAPTIONS_FILE,
    SPECIALS,
    SPLITS,
    VOCAB_FILE,
    CaptionRow,
    Vocabulary,
    save_vocab_dir,
)
from fcvc_pipeline.errors import ConfigError, FcvcError, InputError, require
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.naming import short_id
from fcvc_pipeline.workdir import DEFAULT_WORKDIR, Workdir

STAGE = "vocab"
STAGE_VERSION = 1
FIRST_IDS = 5  # how many example ids a report shows


@dataclass(frozen=True)
class VocabConfig:
    annotations: Path
    workdir: Path = DEFAULT_WORKDIR
    format: str = "auto"  # auto | msvd-csv | msrvtt-json | coco-json | csv | jsonl
    min_count: int = 2  # training words seen fewer times become <unk>
    max_len: int = 20  # training targets are cut to this many tokens (references never are)
    split_file: Path | None = None
    force: bool = False  # rebuild even when up to date

    def problems(self) -> list[str]:
        out = []
        if self.format != "auto" and self.format not in FORMATS:
            out.append(f"--format must be auto or one of {', '.join(FORMATS)} (got {self.format!r})")
        if self.min_count < 1:
            out.append(f"--min-count must be >= 1 (got {self.min_count})")
        if self.max_len < 1:
            out.append(f"--max-len must be >= 1 (got {self.max_len})")
        return out

    def manifest_config(self) -> dict[str, Any]:
        return {"format": self.format, "min_count": self.min_count, "max_len": self.max_len}


@dataclass
class VocabResult:
    output_dir: Path
    up_to_date: bool
    stats: dict[str, Any]
    features: dict[str, Any] | None = None
    exit_code: int = 0
    seconds: float = 0.0

    @property
    def vocab_size(self) -> int:
        return int(self.stats["vocab_size"])

    def to_json(self) -> dict[str, Any]:
        splits = {s: self.stats["splits"][s] for s in SPLITS if s in self.stats["splits"]}
        return {"vocab_size": self.stats["vocab_size"], "splits": splits,
                "unk_rate": self.stats["unk_rate"], **{k: v for k, v in self.stats.items()
                                                       if k not in ("vocab_size", "splits", "unk_rate")},
                "features": self.features, "output_dir": str(self.output_dir), "up_to_date": self.up_to_date,
                "seconds": round(self.seconds, 3), "exit_code": self.exit_code}


def build_vocabulary(train_targets: Sequence[Sequence[str]], *, min_count: int, max_len: int) -> Vocabulary:
    """Specials, then every word seen >= ``min_count`` times, by decreasing count, ties alphabetical."""
    counts = Counter(tok for target in train_targets for tok in target)
    for special in SPECIALS:
        counts.pop(special, None)  # a literal "<unk>" in a caption cannot survive normalisation; be sure
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return Vocabulary(tokens=SPECIALS + tuple(words), min_count=min_count, max_len=max_len)


def _sample(ids: Sequence[str]) -> dict[str, Any]:
    return {"count": len(ids), "first": list(ids[:FIRST_IDS])}


def build_table(ann: Annotations, *, min_count: int, max_len: int) -> tuple[Vocabulary, list[CaptionRow], dict]:
    """Normalise every caption, build the vocabulary from the train split, and gather the statistics."""
    rows: list[CaptionRow] = []
    lengths: list[int] = []
    no_words = 0
    for cap in ann.captions:
        tokens = normalize_caption(cap.caption)
        if not tokens:
            no_words += 1
            continue
        lengths.append(len(tokens))
        rows.append(CaptionRow(cap.video_id, ann.splits[cap.video_id], cap.caption, truncate(tokens, max_len)))
    if not any(r.split == "train" for r in rows):
        raise ConfigError(f"{ann.path}: no training captions after the split rules "
                          f"(splits found: {sorted({r.split for r in rows}) or 'none'})",
                          hint="check the split column or --split-file (MSR-VTT ships its test split in a "
                               "separate test_videodatainfo.json: merge its videos and sentences into the "
                               "train_val file)")
    vocab = build_vocabulary([r.tokens for r in rows if r.split == "train"], min_count=min_count, max_len=max_len)

    known = set(vocab.tokens)
    videos: dict[str, set[str]] = {s: set() for s in SPLITS}
    n_caps, n_tok, n_unk = Counter(), Counter(), Counter()
    for r in rows:  # one pass: large corpora have ~200k rows
        videos[r.split].add(r.video_id)
        n_caps[r.split] += 1
        n_tok[r.split] += len(r.tokens)
        n_unk[r.split] += sum(1 for t in r.tokens if t not in known)
    per_split = {s: {"videos": len(videos[s]), "captions": n_caps[s], "tokens": n_tok[s],
                     "unk_rate": round(n_unk[s] / n_tok[s], 6) if n_tok[s] else 0.0} for s in SPLITS}
    total_tokens, total_unk = sum(n_tok.values()), sum(n_unk.values())
    counts = ann.counts
    stats = {
        "vocab_size": len(vocab),
        "splits": per_split,
        "unk_rate": round(total_unk / total_tokens, 6) if total_tokens else 0.0,
        "format": ann.format,
        "split_source": ann.split_source,
        "min_count": min_count,
        "max_len": max_len,
        "caption_length": {**percentiles(lengths), "truncated": sum(1 for n in lengths if n > max_len)},
        "skipped": {"empty_captions": counts["empty_captions"], "no_word_captions": no_words,
                    "too_long_captions": counts["too_long_captions"],
                    "non_english_captions": counts["non_english_captions"]},
        "duplicates": {"video_entries_merged": counts["duplicate_video_entries"],
                       "identical_captions_kept": counts["duplicate_captions"]},
        "videos_without_captions": _sample(ann.videos_without_captions),
        "unsplit_videos": _sample(ann.unsplit_videos),
        "unsafe_ids": _sample(ann.unsafe_ids),
    }
    return vocab, rows, stats


def feature_report(workdir: Path, annotated: set[str]) -> dict[str, Any] | None:
    """Annotated videos without features and featured videos without captions, when a store exists."""
    path = Workdir(workdir).features
    if not FeatureStore.exists(path):
        return None
    try:
        featured = set(FeatureStore.open(path).completed_ids())
    except FcvcError as e:
        progress.warn(f"cannot read the feature store for the cross-check: {e}")
        return {"store": str(path), "error": e.message}
    return {"store": str(path), "featured_videos": len(featured),
            "annotated_without_features": _sample(sorted(annotated - featured)),
            "featured_without_captions": _sample(sorted(featured - annotated))}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _ids(sample: dict[str, Any]) -> str:
    more = ", ..." if sample["count"] > len(sample["first"]) else ""
    return ", ".join(short_id(i) for i in sample["first"]) + more


def log_stats(stats: dict[str, Any], features: dict[str, Any] | None) -> None:
    """The human summary on stderr."""
    progress.log(f"vocabulary: {stats['vocab_size']} tokens (min count {stats['min_count']}), "
                 f"<unk> rate {_pct(stats['unk_rate'])} of all caption tokens")
    for split in SPLITS:
        s = stats["splits"][split]
        progress.log(f"  {split:<5} {s['videos']:>7} videos {s['captions']:>9} captions   "
                     f"<unk> {_pct(s['unk_rate'])}")
    L = stats["caption_length"]
    progress.log(f"caption length (words): p50 {L['p50']}, p90 {L['p90']}, p95 {L['p95']}, p99 {L['p99']}, "
                 f"max {L['max']}; {L['truncated']} training targets cut to {stats['max_len']}")
    skipped = {k: v for k, v in stats["skipped"].items() if v}
    if skipped:
        progress.log("skipped: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items()))
    dup = stats["duplicates"]
    if dup["video_entries_merged"] or dup["identical_captions_kept"]:
        progress.log(f"duplicates: {dup['video_entries_merged']} repeated video entries merged, "
                     f"{dup['identical_captions_kept']} identical captions of one video kept")
    for split in ("val", "test"):
        if not stats["splits"][split]["captions"]:
            progress.warn(f"the {split} split is empty" + (": `fcvc score` will have nothing to score"
                                                          if split == "test" else ""))
    if stats["videos_without_captions"]["count"]:
        s = stats["videos_without_captions"]
        progress.warn(f"{s['count']} listed videos have no usable caption and are left out: {_ids(s)}")
    if stats["unsplit_videos"]["count"]:
        s = stats["unsplit_videos"]
        progress.warn(f"{s['count']} captioned videos have no split and are left out: {_ids(s)}")
    if stats["unsafe_ids"]["count"]:
        s = stats["unsafe_ids"]
        progress.warn(f"{s['count']} video ids are not plain file names ({_ids(s)}); they stay the caption "
                      "table keys and are mapped with safe_name wherever a name is needed. Feature-store ids "
                      "come from video file names without extension: check that the ids match them")
    if features is not None and "error" not in features:
        a, f = features["annotated_without_features"], features["featured_without_captions"]
        progress.log(f"feature store {features['store']}: {features['featured_videos']} videos")
        if a["count"]:
            progress.warn(f"{a['count']} annotated videos have no features yet: {_ids(a)}")
        if f["count"]:
            progress.warn(f"{f['count']} videos with features have no caption: {_ids(f)}")


def _expected_manifest(cfg: VocabConfig) -> Manifest:
    split_fp = split_file_fingerprint(cfg.split_file) if cfg.split_file is not None else None
    return Manifest(stage=STAGE, version=STAGE_VERSION, config=cfg.manifest_config(),
                    inputs={"annotations": file_fingerprint(cfg.annotations), "split_file": split_fp})


def run_vocab(cfg: VocabConfig) -> VocabResult:
    """Build (or confirm up to date) ``<workdir>/vocab`` from ``cfg.annotations``."""
    start = time.perf_counter()
    require(cfg.problems())
    ann_path = Path(cfg.annotations)
    if not ann_path.is_file():
        raise InputError(ann_path, "no such file" if not ann_path.exists() else "not a file")
    if cfg.split_file is not None and not Path(cfg.split_file).exists():
        raise InputError(cfg.split_file, "no such file or folder (--split-file)")
    out_dir = Workdir(cfg.workdir).vocab
    expected = _expected_manifest(cfg)

    fresh = check_manifest(out_dir, expected)
    outputs_present = (out_dir / VOCAB_FILE).is_file() and (out_dir / CAPTIONS_FILE).is_file()
    old = read_manifest(out_dir) if fresh.up_to_date and outputs_present and not cfg.force else None
    if old is not None and isinstance(old.outputs.get("stats"), dict):
        stats = old.outputs["stats"]
        progress.log(f"vocab: up to date ({out_dir})")
        features = feature_report(Path(cfg.workdir), set(old.outputs.get("annotated_ids", [])))
        log_stats(stats, features)
        return VocabResult(out_dir, True, stats, features, seconds=time.perf_counter() - start)
    reason = "--force" if cfg.force and fresh.up_to_date else (
        fresh.reason if not fresh.up_to_date else "output files are missing")
    progress.log(f"vocab: running because {reason}")

    ann = load_annotations(ann_path, cfg.format, cfg.split_file)
    vocab, rows, stats = build_table(ann, min_count=cfg.min_count, max_len=cfg.max_len)
    annotated = sorted({r.video_id for r in rows})

    # The old manifest goes first: a crash between here and the new manifest leaves "not up to date".
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    save_vocab_dir(out_dir, vocab, rows)
    expected.outputs = {"stats": stats, "vocab_fingerprint": vocab.fingerprint(), "annotated_ids": annotated}
    write_manifest(out_dir, expected)

    features = feature_report(Path(cfg.workdir), set(annotated))
    log_stats(stats, features)
    progress.log(f"wrote {out_dir / VOCAB_FILE} and {out_dir / CAPTIONS_FILE}")
    return VocabResult(out_dir, False, stats, features, seconds=time.perf_counter() - start)
