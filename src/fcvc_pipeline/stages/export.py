"""``fcvc export -o captioner.fcvc``: a trained run as one self-contained file that leaves the work directory.

Config -> checks -> up to date? -> write. The checks: the checkpoint loads (its digest included), the feature
store it was trained on is found (the work directory's, else the path the checkpoint recorded) with the
settings fingerprint the checkpoint recorded, and every network that store recorded can be described (and,
with ``--embed-backbones``, rebuilt from the weights that go into the file, to the recorded hash). What the
file holds and how it is read: ``inference/package.py``. An existing output with the same export key (the
checkpoint's content, the store's settings and network records, the embedding choice, the provenance that
would be written) is up to date; an existing file that is not an fcvc captioner is never overwritten
without ``--force``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision

from fcvc_pipeline import __version__, progress
from fcvc_pipeline.artifacts import file_sha256, fingerprint, read_manifest
from fcvc_pipeline.errors import ConfigError, FcvcError, MismatchError, require
from fcvc_pipeline.features.backbones import hub_state, imagenet_inception_state, load_state_file
from fcvc_pipeline.features.networks import load_from_record
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.inference.checkpoint import decoding_of, load_checkpoint, vocabulary_of
from fcvc_pipeline.inference.options import DecodingOptions
from fcvc_pipeline.inference.package import (
    PACKAGE_VERSION,
    CaptionerPackage,
    FeatureRecipe,
    package_summary,
    read_package,
    recipe_from_store,
    training_store,
    write_package,
)
from fcvc_pipeline.models import ModelConfig
from fcvc_pipeline.workdir import DEFAULT_WORKDIR, Workdir

STAGE_VERSION = 1
EMBEDDABLE = ("path", "imagenet", "hub")  # random networks travel as seed + BatchNorm statistics


@dataclass(frozen=True)
class ExportConfig:
    output: Path
    workdir: Path = DEFAULT_WORKDIR
    run: str | None = None  # default: fcvc-cf-ia, or the only run
    checkpoint: Path | None = None  # instead of a run's best.pt
    embed_backbones: bool = False  # put the weights of file/imagenet/hub networks into the file too
    force: bool = False  # overwrite an output that is not an fcvc captioner file

    def problems(self) -> list[str]:
        out = []
        if self.run is not None and self.checkpoint is not None:
            out.append("give --run or --checkpoint, not both")
        if Path(self.output).is_dir():
            out.append(f"-o {self.output} is a directory; give a file name such as captioner.fcvc")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            out.append(f"--checkpoint {self.checkpoint}: no such file")
        return out


@dataclass
class ExportResult:
    path: Path
    size_bytes: int
    contents: dict[str, Any]  # inference.package.package_summary: model, vocabulary, decoding, features, provenance
    up_to_date: bool = False
    warnings: list[str] = field(default_factory=list)
    exit_code: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "size_bytes": self.size_bytes, "up_to_date": self.up_to_date,
                **self.contents, "warnings": list(self.warnings)}


def run_export(cfg: ExportConfig) -> ExportResult:
    require(cfg.problems())
    w = Workdir(cfg.workdir)
    if cfg.checkpoint is not None:
        ckpt_path = Path(cfg.checkpoint)
        run_dir = ckpt_path.parent if (ckpt_path.parent / "config.json").is_file() else None
    else:
        run_dir = w.resolve_run(cfg.run)
        ckpt_path = run_dir / "best.pt"
    ckpt = load_checkpoint(ckpt_path)
    model_config = ModelConfig.from_json(ckpt["model_config"])
    vocab = vocabulary_of(ckpt)
    decoding = decoding_of(ckpt, ckpt_path)
    store = training_store(ckpt, cfg.workdir, ckpt_path)
    recipe = recipe_from_store(store)
    warnings = []
    if not recipe.can_extract:
        warnings.append(f"{store.path} does not record its feature networks "
                        f"({', '.join(recipe.missing_networks()) or 'no extraction settings'}): the exported "
                        f"captioner can caption features only, not video files")
    mixed = {p: n for p, n in recipe.precision_counts.items() if n}
    if len(mixed) > 1:
        warnings.append(f"{store.path} mixes feature precisions ({', '.join(f'{n} {p}' for p, n in sorted(mixed.items()))}): "
                        f"the captioner computes new videos' features in {recipe.precision}, the most "
                        f"common (fcvc caption --precision overrides it)")
    for message in warnings:
        progress.warn(message)
    if cfg.embed_backbones:
        recipe = _embed(store, recipe)
    checkpoint_sha = file_sha256(ckpt_path)
    provenance = _provenance(ckpt, ckpt_path, checkpoint_sha, run_dir, store, decoding)
    key = fingerprint({"stage": "export", "version": STAGE_VERSION, "format": PACKAGE_VERSION,
                       "checkpoint": checkpoint_sha, "settings": recipe.settings_fingerprint,
                       "records": {r: b.record for r, b in recipe.backbones.items()},
                       "embedded": sorted(r for r, b in recipe.backbones.items() if b.weights is not None),
                       "precision": [recipe.precision, recipe.precision_counts],
                       "provenance": {k: v for k, v in provenance.items() if k != "exported_from"}})
    provenance["export_key"] = key
    package = CaptionerPackage(model_config=model_config, state_dict=ckpt["state_dict"], vocab=vocab,
                               decoding=decoding, features=recipe, provenance=provenance)
    out = Path(cfg.output)
    result = ExportResult(path=out, size_bytes=0, contents=package_summary(package), warnings=warnings)
    if _up_to_date(out, key, force=cfg.force):
        result.size_bytes, result.up_to_date = out.stat().st_size, True
        progress.log(f"export: up to date ({out})")
        return result
    result.size_bytes = write_package(out, package)
    model = result.contents["model"]
    progress.log(f"export: {out} ({result.size_bytes / 1e6:.1f} MB): {model['name']}, {model['parameters']:,} "
                 f"parameters, {len(vocab)} words, beam {decoding.beam_size}, features "
                 f"{', '.join(f'{r}={b.identity}' for r, b in recipe.backbones.items()) or 'not reproducible'}"
                 f"{f' in {recipe.precision}' if recipe.precision else ''}")
    return result


def _up_to_date(out: Path, key: str, *, force: bool) -> bool:
    """True when ``out`` already is this export; refuses to overwrite a file that is not a captioner."""
    if not out.exists():
        return False
    try:
        existing = read_package(out)
    except FcvcError as e:
        if force:
            return False
        raise ConfigError(f"-o {out} exists and is not an fcvc captioner file that can be replaced "
                          f"({e.message})", hint="choose another name, or --force to overwrite it") from None
    return existing.provenance.get("export_key") == key and not force


def _embed(store: FeatureStore, recipe: FeatureRecipe) -> FeatureRecipe:
    """The recipe with the weights each file/imagenet/hub network was built from; every network is first
    rebuilt from the store's record (which checks the file's sha256 and the final state's hash)."""
    for role, b in recipe.backbones.items():
        kind = b.record.get("kind")
        if kind not in EMBEDDABLE:
            continue
        load_from_record(store, role, b.record)  # the same network the features came from, or an error
        if kind == "path":
            path = Path(b.record["path"])
            if file_sha256(path) != b.record.get("file_sha256"):  # replaced since the check above
                raise MismatchError(f"{path}: the weights file changed while it was being exported")
            b.weights = load_state_file(path)
        elif kind == "imagenet":
            b.weights = imagenet_inception_state()[0]
        else:
            b.weights = hub_state(str(b.record.get("model")))[0]
        progress.log(f"export: embedding the {role} weights ({b.identity}, "
                     f"{sum(t.numel() for t in b.weights.values()):,} values)")
    return recipe


def _provenance(ckpt: dict[str, Any], ckpt_path: Path, checkpoint_sha: str, run_dir: Path | None,
                store: FeatureStore, decoding: DecodingOptions) -> dict[str, Any]:
    train_config = None
    training = None
    if run_dir is not None:
        try:
            train_config = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("train")
        except (OSError, ValueError, AttributeError):
            train_config = None
        manifest = read_manifest(run_dir)
        if manifest is not None:
            outputs = manifest.outputs
            training = {k: outputs.get(k) for k in ("best_val_cider", "best_epoch", "epochs", "seconds_per_epoch",
                                                    "parameters")}
    return {"run": run_dir.name if run_dir else None, "checkpoint": {"name": ckpt_path.name, "sha256": checkpoint_sha},
            "train_config": train_config, "training": training,
            "test_scores": _test_scores(run_dir, checkpoint_sha, decoding) if run_dir else None,
            "store_settings_fingerprint": ckpt.get("store_settings_fingerprint"),
            "vocabulary_fingerprint": ckpt.get("vocab_fingerprint"),
            "exported_from": {"checkpoint": str(ckpt_path.resolve()), "store": str(store.path.resolve())},
            "fcvc_version": __version__, "torch_version": torch.__version__,
            "torchvision_version": torchvision.__version__}


def _test_scores(run_dir: Path, checkpoint_sha: str, decoding: DecodingOptions) -> dict[str, Any] | None:
    """The scores ``fcvc score`` cached for the run's test split, when they are of this very checkpoint
    decoded with the run's options (else None: a score of another model must not travel with this one)."""
    captions = run_dir / "captions" / f"test-beam{decoding.beam_size}.json"
    try:
        key = json.loads(captions.with_suffix(".key.json").read_text(encoding="utf-8"))
        scores = json.loads(captions.with_name(f"{captions.stem}.scores.json").read_text(encoding="utf-8"))
        captions_sha = file_sha256(captions)
    except (OSError, ValueError):
        return None
    if not isinstance(key, dict) or not isinstance(scores, dict) or not isinstance(key.get("key"), dict):
        return None
    made = key["key"]
    if made.get("checkpoint") != checkpoint_sha or key.get("value") != captions_sha:
        return None
    if any(made.get(k) != v for k, v in decoding.search_key().items()):
        return None
    if (scores.get("key") or {}).get("captions") != captions_sha or not isinstance(scores.get("scores"), dict):
        return None
    return {"split": "test", **decoding.search_key(),
            **{k: v for k, v in scores["scores"].items() if k != "warnings"}}

