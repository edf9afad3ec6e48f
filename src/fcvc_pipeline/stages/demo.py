"""``fcvc demo``: extract -> vocab -> train -> score -> caption on the bundled sample set.

The settings are chosen to finish in minutes on a 2-core CPU with no network: a seeded random
Inception-V3 with re-estimated BatchNorm statistics (no pretrained weights offline) on 15 frames of
171x171 (a 4x4 region grid; the paper's 299x299 gives 8x8 at 3.5x the cost, and scored no better on
this set), no C3D clips (77 GFLOPs each would dominate on a CPU), and a narrower FCVC-CF&IA (d = 256,
dropout 0.3) than the paper's d = 512.
Every stage caches its artifacts, so a second run only re-reads them. The closing report compares the
model with the best constant caption (the quality floor) and captions a few test videos from their
files, end to end, with an attention figure each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import read_cached, read_manifest, write_cached
from fcvc_pipeline.captions.synthetic import bundled_sample_dir, generate_sample, is_sample_dir
from fcvc_pipeline.captions.vocabulary import load_captions, references_by_video
from fcvc_pipeline.errors import MissingArtifactError, require
from fcvc_pipeline.evaluation.baselines import best_constant_caption
from fcvc_pipeline.features.backbones import INCEPTION_MIN_SIZE
from fcvc_pipeline.models import DEFAULT_MODEL
from fcvc_pipeline.stages.caption import CaptionConfig, run_caption
from fcvc_pipeline.stages.extract import ExtractConfig, run_extract
from fcvc_pipeline.stages.score import ScoreConfig, run_score
from fcvc_pipeline.stages.train import TrainConfig, run_train
from fcvc_pipeline.stages.vocab import VocabConfig, run_vocab
from fcvc_pipeline.training.config import ALL_MODELS
from fcvc_pipeline.workdir import DEFAULT_WORKDIR, Workdir


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = DEFAULT_WORKDIR
    data: Path | None = None  # a sample directory (videos/ + annotations.json); default: the bundled one
    model: str = DEFAULT_MODEL
    frames: int = 15
    frame_size: int = 171  # 4x4 regions; 299 (8x8) costs 3.5x more on a CPU and scored no better here
    epochs: int = 30
    d_model: int = 256
    dropout: float = 0.3
    batch_size: int = 64
    lr: float = 1e-3
    patience: int = 8
    show: int = 3  # test videos captioned from their files at the end
    device: str = "auto"


@dataclass
class DemoResult:
    scores: dict[str, Any]
    constant_caption: dict[str, Any]
    examples: list[dict[str, Any]]
    seconds: dict[str, float]
    paths: dict[str, str]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # what each stage did (or reused)
    exit_code: int = 0

    features: dict[str, str | None] | None = None  # the backbone weights identity of the features

    def to_json(self) -> dict[str, Any]:
        return {"scores": self.scores, "features": self.features, "constant_caption": self.constant_caption, "examples": self.examples,
                "seconds": self.seconds, "paths": self.paths, "stages": self.stages}


def _sample_dir(cfg: DemoConfig) -> Path:
    if cfg.data is not None:
        if not (Path(cfg.data) / "annotations.json").is_file():
            raise MissingArtifactError(f"{cfg.data} is not a sample directory (no annotations.json)",
                                       hint="omit --data to use the bundled sample set")
        return Path(cfg.data)
    found = bundled_sample_dir()
    if found is not None:
        return found
    target = Path(cfg.workdir) / "sample-data"
    if not is_sample_dir(target):
        progress.log(f"the bundled sample set is not at hand: generating it into {target}")
        generate_sample(target)
    return target


def _constant_caption(workdir: Path) -> dict[str, Any]:
    """The best constant caption on the test split (cached against the caption table)."""
    w = Workdir(workdir)
    vocab_dir = w.vocab
    manifest = read_manifest(vocab_dir)
    key = {"vocab": manifest.fingerprint() if manifest else None}
    cache = w.demo / "constant-caption.json"
    cached = read_cached(cache, key, field="result")
    if cached is not None:
        return cached
    rows = load_captions(vocab_dir)
    refs = references_by_video(r for r in rows if r.split == "test")
    caption, cider = best_constant_caption([r.caption for r in rows if r.split == "train"], refs)
    result = {"caption": caption, "CIDEr": cider}
    write_cached(cache, key, result, field="result")
    return result


def train_config(cfg: DemoConfig) -> TrainConfig:
    return TrainConfig(workdir=Path(cfg.workdir), model=cfg.model, epochs=cfg.epochs, d_model=cfg.d_model,
                       dropout=cfg.dropout, batch_size=cfg.batch_size, lr=cfg.lr, patience=cfg.patience,
                       device=cfg.device)


def check(cfg: DemoConfig) -> None:
    """Every option, before any work: a misspelled model must not wait for ten minutes of extraction."""
    problems = train_config(cfg).validate()
    if cfg.model == ALL_MODELS:
        problems.append("fcvc demo trains one model; for every model of the ablation run `fcvc train --model all` "
                        "in the demo's work directory afterwards")
    if cfg.frames < 1:
        problems.append(f"--frames must be at least 1 (got {cfg.frames})")
    if cfg.frame_size < INCEPTION_MIN_SIZE:
        problems.append(f"--frame-size must be at least {INCEPTION_MIN_SIZE} for Inception-V3 (got {cfg.frame_size})")
    if cfg.data is not None and not (Path(cfg.data) / "annotations.json").is_file():
        problems.append(f"--data {cfg.data}: not a sample directory (no annotations.json); omit --data to use "
                        f"the bundled sample set")
    require(sorted(set(problems), key=problems.index))


def run_demo(cfg: DemoConfig) -> DemoResult:
    check(cfg)
    w = Path(cfg.workdir)
    wd = Workdir(w)
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    def stage(name: str, fn):
        progress.log(f"\n== {name} ==")
        t0 = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - t0, 2)
        return out

    data = _sample_dir(cfg)
    extract = stage("extract", lambda: run_extract(ExtractConfig(
        inputs=(data / "videos",), workdir=w, frames=cfg.frames, frame_size=cfg.frame_size,
        inception_weights="random", c3d_weights="none", device=cfg.device)))
    vocab = stage("vocab", lambda: run_vocab(VocabConfig(annotations=data / "annotations.json", workdir=w, min_count=1)))
    trained = stage("train", lambda: run_train(train_config(cfg)))
    scored = stage("score", lambda: run_score(ScoreConfig(workdir=w, run=trained.run.name, split="test",
                                                           device=cfg.device)))
    constant = stage("constant caption", lambda: _constant_caption(w))

    rows = load_captions(wd.vocab, split="test")
    refs = references_by_video(rows)
    show = sorted(refs)[: cfg.show]
    files = [data / "videos" / f"{v}.mp4" for v in show]
    captioned = stage("caption", lambda: run_caption(CaptionConfig(
        inputs=tuple(f for f in files if f.is_file()), workdir=w, run=trained.run.name,
        attention=wd.demo / "attention", device=cfg.device)))
    seconds["total"] = round(time.perf_counter() - t_all, 2)

    examples = [{"video": it["video"], "caption": it["caption"], "references": refs.get(it["video"], [])[:2],
                 "figure": captioned.figures.get(it["video"])} for it in captioned.items]
    ratio = scored.scores["CIDEr"] / constant["CIDEr"] if constant["CIDEr"] > 0 else None
    progress.log("\n== results (test split) ==")
    progress.log(scored.table)
    progress.log(f"best constant caption: \"{constant['caption']}\" CIDEr {100 * constant['CIDEr']:.1f}; "
                 f"{cfg.model}: CIDEr {100 * scored.scores['CIDEr']:.1f}"
                 + (f" ({ratio:.1f}x the constant caption)" if ratio else ""))
    for ex in examples:
        progress.log(f"\n{ex['video']}\n  fcvc:       {ex['caption']}")
        for r in ex["references"]:
            progress.log(f"  reference:  {r}")
    out_paths = {"workdir": str(w), "sample": str(data), "features": str(wd.features),
                 "vocab": str(wd.vocab), "run": str(trained.run), "best_checkpoint": str(trained.best_checkpoint),
                 "captions": str(scored.captions_file), "scores": str(scored.scores_file),
                 "attention_figures": str(wd.demo / "attention")}
    progress.log("\n== artifacts ==")
    for k, v in out_paths.items():
        progress.log(f"  {k:18s} {v}")
    progress.log(f"\ndemo finished in {seconds['total']:.0f}s (" + ", ".join(
        f"{k} {v:.0f}s" for k, v in seconds.items() if k != "total") + ")")
    return DemoResult(scores={k: v for k, v in scored.scores.items() if k != "warnings"}, features=scored.features,
                      constant_caption={**constant, "ratio": ratio}, examples=examples, seconds=seconds,
                      paths=out_paths, exit_code=max(extract.exit_code, captioned.exit_code),
                      stages={"extract": {"completed": extract.completed, "up_to_date": extract.up_to_date,
                                          "failed": len(extract.failed)},
                              "vocab": {"up_to_date": vocab.up_to_date},
                              "train": {"up_to_date": trained.up_to_date, "epochs": trained.epochs},
                              "score": {"cached": scored.cached}})
