"""``fcvc info [PATH]``: what PATH is and holds, told apart by its content:

- a feature store (the default, ``<workdir>/features.zarr``): how it was made, its videos, and whether any
  of it is damaged (below);
- a ``.fcvc`` captioner file (``fcvc export``): what that file holds (read and checked whole: a damaged or
  foreign file is exit 2 naming it);
- a run directory (``runs/<run>``, or just the run's name when no such path exists here): what ``fcvc runs``
  shows for it, its training config, the decoding chosen, and each checkpoint's digest, checked (a damaged
  checkpoint is listed, exit 1);
- a checkpoint (``best.pt``, ``last.pt``): model config, vocabulary size, epoch and step, the feature
  settings fingerprint, and the digest check (``inference.checkpoint.load_checkpoint``: a damaged file is
  exit 2 naming it).

The quick check (default) reads only metadata and ``stat``s every chunk file: it finds missing and
truncated chunks. ``--verify`` reads every byte (the Zstd checksum of each chunk and the SHA-256 of
each video), which also finds altered bytes. Damage sets the exit code to 1 and lists each video,
its file and the reason; ``fcvc extract --verify VIDEOS...`` re-extracts them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fcvc_pipeline import progress
from fcvc_pipeline.errors import EXIT_ITEM_FAILURES, EXIT_OK, FcvcError, MissingArtifactError
from fcvc_pipeline.features.store import VIDEO_LAYOUT, FeatureStore
from fcvc_pipeline.inference.checkpoint import DIGEST_KEY, decoding_of, load_checkpoint, model_from_checkpoint
from fcvc_pipeline.inference.package import package_summary, read_package
from fcvc_pipeline.workdir import CHECKPOINTS, RUN_FILES, RunSummary, Workdir, run_summary, tree_size


@dataclass
class StoreInfo:
    path: Path
    settings: dict[str, Any]
    backbones: dict[str, Any]
    complete: int = 0
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)
    being_written: list[str] = field(default_factory=list)  # claim held by a live process
    interrupted: list[str] = field(default_factory=list)  # neither complete nor failed, nobody writing
    unverifiable: int = 0  # complete, written before checksums (no digest)
    damaged: dict[str, dict[str, str]] = field(default_factory=dict)  # video -> {file, reason}
    verified: bool = False  # every byte read (--verify), not only the chunk files' sizes
    size_bytes: int = 0
    computed_with: dict[str, int] = field(default_factory=dict)  # "precision on device" -> complete videos

    @property
    def exit_code(self) -> int:
        return EXIT_ITEM_FAILURES if self.damaged else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {"kind": "feature store", "path": str(self.path), "complete": self.complete,
                "failed": self.failed, "being_written": self.being_written, "interrupted": self.interrupted,
                "unverifiable": self.unverifiable, "damaged": self.damaged, "verified": self.verified,
                "size_bytes": self.size_bytes, "computed_with": self.computed_with, "settings": self.settings,
                "backbones": self.backbones}


def store_info(path: Path, *, verify: bool = False) -> StoreInfo:
    """Inspect the store at ``path`` (a quick check of every video, or with ``verify`` a full read)."""
    store = FeatureStore.open(path)
    info = StoreInfo(path=Path(path), settings=store.settings, backbones=store.backbone_records(), verified=verify)
    done = store.completed_ids()
    info.complete = len(done)
    info.failed = store.failures()
    for vid in store.incomplete_ids():
        (info.being_written if store.claim_held(vid) else info.interrupted).append(vid)
    for vid in progress.bar(done, desc="verifying" if verify else "checking", unit="video"):
        attrs = store.video_attrs(vid) or {}
        how = f"{attrs.get('precision', 'unrecorded precision')} on {attrs.get('device', 'an unrecorded device')}"
        info.computed_with[how] = info.computed_with.get(how, 0) + 1
        if attrs.get("layout") != VIDEO_LAYOUT:
            info.unverifiable += 1
        err = store.check_video(vid, full=verify)
        if err is not None:
            info.damaged[vid] = {"file": err.path, "reason": err.reason}
    info.size_bytes = tree_size(Path(path))
    return info


@dataclass
class CaptionerInfo:
    path: Path
    size_bytes: int
    contents: dict[str, Any]  # inference.package.package_summary
    exit_code: int = EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {"kind": "captioner", "path": str(self.path), "size_bytes": self.size_bytes, **self.contents}


def captioner_info(path: Path) -> CaptionerInfo:
    """Read ``path`` as a captioner file (every check of ``Captioner.load``, nothing built) and describe it."""
    contents = package_summary(read_package(path))
    info = CaptionerInfo(path=Path(path), size_bytes=Path(path).stat().st_size, contents=contents)
    model, features, prov = contents["model"], contents["features"], contents["provenance"]
    progress.log(f"{path}: fcvc captioner (format {contents['format_version']}), {info.size_bytes / 1e6:.1f} MB")
    progress.log(f"  model: {model['name']}, {model['parameters']:,} parameters, {contents['vocabulary_size']} words, "
                 f"beam {contents['decoding'].get('beam_size')}")
    nets = ", ".join(f"{r} {b['weights']}" + (" (embedded)" if b["weights_embedded"] else "")
                     for r, b in features["backbones"].items()) or "not recorded: stored features only"
    precision = (f"computed in {features['precision']}" if features.get("precision")
                 else "precision not recorded (new videos: fp32 on CPUs, bf16 on CUDA)")
    progress.log(f"  features: {features['frames']} frames at {features['frame_size']} px, {features['dtype']}, "
                 f"{precision}; {nets}")
    progress.log(f"  from run {prov.get('run')}, fcvc {prov.get('fcvc_version')}, torch {prov.get('torch_version')}"
                 + (f"; test CIDEr {prov['test_scores'].get('CIDEr')}" if prov.get("test_scores") else ""))
    return info


# -- checkpoints -----------------------------------------------------------------------------------------
@dataclass
class CheckpointInfo:
    path: Path
    size_bytes: int
    contents: dict[str, Any]
    exit_code: int = EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {"kind": "checkpoint", "path": str(self.path), "size_bytes": self.size_bytes, **self.contents}


def _stored_digest(path: Path) -> str | None:
    """The digest written into the checkpoint (None: written before digests existed); tensors stay mapped."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an old (non-zip) file cannot be mapped: read it whole
        raw = torch.load(path, map_location="cpu", weights_only=True)
    value = raw.get(DIGEST_KEY) if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def checkpoint_contents(path: Path) -> dict[str, Any]:
    """Load ``path`` with the checkpoint loader (its digest checked), build its model (the weights must fit
    the config) and describe it. A damaged or foreign file raises the loader's InputError, naming it."""
    ckpt = load_checkpoint(path)
    digest = _stored_digest(path)
    model = model_from_checkpoint(ckpt, path)
    position, best = ckpt.get("position") or {}, ckpt.get("best") or {}
    role = "last" if position else "best"
    contents: dict[str, Any] = {
        "role": role,
        "digest": digest,
        "digest_check": "ok" if digest else "absent: written before checkpoints carried a digest, not checked",
        "model": {"name": ckpt["model_config"].get("model"),
                  "parameters": sum(p.numel() for p in model.parameters()), "config": ckpt["model_config"]},
        "vocabulary_size": len((ckpt.get("vocab") or {}).get("tokens") or ()) or ckpt["model_config"].get("vocab_size"),
        "vocab_fingerprint": ckpt.get("vocab_fingerprint"),
        "store_settings_fingerprint": ckpt.get("store_settings_fingerprint"),
        "store_path": ckpt.get("store_path"),
        "features": ckpt.get("features_identity"),
        # last.pt: the completed epochs and where in the next one it stopped; best.pt: the epoch it keeps
        "epoch": position.get("epoch") if position else best.get("epoch"),
        "batch": position.get("batch"),
        "step": position.get("step") if position else None,
        "best_val_cider": best.get("cider"),
        "train_seconds": ckpt.get("train_seconds"),
        "resumable": bool(position) and bool(ckpt.get("optimizer")),
        "decoding": decoding_of(ckpt, path).to_json() if role == "best" else None,
    }
    return contents


def checkpoint_info(path: Path) -> CheckpointInfo:
    info = CheckpointInfo(path=Path(path), size_bytes=Path(path).stat().st_size, contents=checkpoint_contents(path))
    c = info.contents
    progress.log(f"{path}: fcvc checkpoint ({c['role']}.pt), {info.size_bytes / 2**20:.1f} MiB, digest "
                 + ("checked: ok" if c["digest"] else "absent (not checked)"))
    progress.log(f"  model: {c['model']['name']}, {c['model']['parameters']:,} parameters, "
                 f"{c['vocabulary_size']} words")
    if c["role"] == "last":
        progress.log(f"  position: {c['epoch']} epochs done, batch {c['batch']} of the next, step {c['step']}"
                     f"{'' if c['resumable'] else ' (no optimizer state: not resumable)'}")
    else:
        progress.log(f"  keeps epoch {c['epoch']} (validation CIDEr {_x100(c['best_val_cider'])}), decoding: beam "
                     f"{(c['decoding'] or {}).get('beam_size')}")
    progress.log(f"  features: store settings {str(c['store_settings_fingerprint'])[:16]}, {c['store_path']}")
    return info


# -- run directories --------------------------------------------------------------------------------------
@dataclass
class RunInfo:
    summary: RunSummary
    config: dict[str, Any] | None
    checkpoints: dict[str, dict[str, Any]]  # best.pt / last.pt -> digest, check, epoch, step ... or damage

    @property
    def exit_code(self) -> int:
        return EXIT_ITEM_FAILURES if any("damaged" in c for c in self.checkpoints.values()) else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {"kind": "run", **self.summary.to_json(), "config": self.config, "checkpoint_files": self.checkpoints}


def looks_like_run(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in RUN_FILES)


def run_dir_info(path: Path) -> RunInfo:
    """One run in full: its summary, config.json, and each checkpoint loaded and its digest checked."""
    summary = run_summary(path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    checkpoints: dict[str, dict[str, Any]] = {}
    for name in CHECKPOINTS:
        f = path / name
        if not f.is_file():
            continue
        try:
            c = checkpoint_contents(f)
        except FcvcError as e:
            checkpoints[name] = {"size_bytes": f.stat().st_size, "damaged": e.message}
            continue
        checkpoints[name] = {"size_bytes": f.stat().st_size, "digest": c["digest"], "digest_check": c["digest_check"],
                             "epoch": c["epoch"], "step": c["step"]}
        if name == "best.pt" and summary.decoding is None:
            summary.decoding = c["decoding"]  # an unfinished run: what best.pt would decode with
    info = RunInfo(summary=summary, config=config if isinstance(config, dict) else None, checkpoints=checkpoints)
    report_run(info)
    return info


def report_run(info: RunInfo) -> None:
    s = info.summary
    progress.log(f"{s.path}: run '{s.name}', {s.model or 'model unknown'}, {s.status}"
                 + (f" ({s.note})" if s.note else ""))
    planned = f"/{s.epochs_planned}" if s.epochs_planned is not None else ""
    progress.log(f"  epochs: {s.epochs_done}{planned}; best validation CIDEr {_x100(s.best_val_cider)}"
                 + (f" at epoch {s.best_epoch}" if s.best_epoch is not None else "")
                 + (f"; test CIDEr {_x100(s.test_cider)} (beam {s.test_beam})" if s.test_cider is not None else ""))
    if s.decoding:
        chosen = " chosen on validation" if s.decoding.get("chosen_on") == "val" else ""
        progress.log(f"  decoding: beam {s.decoding.get('beam_size')}{chosen}"
                     + (" (validation CIDEr by beam: " + ", ".join(f"{b}: {_x100(c)}" for b, c in
                                                                    s.decoding["val_cider_by_beam"].items()) + ")"
                        if s.decoding.get("val_cider_by_beam") else ""))
    params = f"{s.parameters:,} parameters, " if s.parameters is not None else ""
    progress.log(f"  {params}{s.size_bytes / 2**20:.1f} MiB on disk")
    train = (info.config or {}).get("train") or {}
    if train:
        keys = ("epochs", "batch_size", "lr", "seed", "d_model", "layers", "ema_decay", "label_smoothing", "precision")
        progress.log("  config: " + ", ".join(f"{k} {train[k]}" for k in keys if train.get(k) is not None))
    for name, c in info.checkpoints.items():
        if "damaged" in c:
            progress.log(f"  {name}: DAMAGED: {c['damaged']}")
        else:
            where = f"epoch {c['epoch']}" + (f", step {c['step']}" if c["step"] is not None else "")
            check = "digest ok" if c["digest"] else "no digest (not checked)"
            progress.log(f"  {name}: {where}, {check} {c['digest'] or ''}".rstrip())


def _x100(x: float | None) -> str:
    """CIDEr as fcvc's tables print it: x100, one decimal."""
    return "n/a" if x is None else f"{100 * x:.1f}"


# -- what PATH is -----------------------------------------------------------------------------------------
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def _is_checkpoint_file(path: Path) -> bool:
    if path.suffix == ".fcvc":
        return False
    if path.suffix in _CHECKPOINT_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"  # torch.save's zip container
    except OSError:
        return False


def run_info(target: Path | None, workdir: Path, *,
             verify: bool = False) -> StoreInfo | CaptionerInfo | CheckpointInfo | RunInfo:
    path = Path(target) if target is not None else Workdir(workdir).features
    if target is not None and not path.exists() and len(path.parts) == 1 and looks_like_run(Workdir(workdir).run(path.name)):
        path = Workdir(workdir).run(path.name)  # a run's name
    if path.is_file():
        return checkpoint_info(path) if _is_checkpoint_file(path) else captioner_info(path)
    if FeatureStore.exists(path):
        info = store_info(path, verify=verify)
        report(info)
        return info
    if looks_like_run(path):
        return run_dir_info(path)
    if not path.exists():
        raise MissingArtifactError(f"{path}: no such file or folder",
                                   hint="give a feature store, a run directory (runs/NAME), a checkpoint "
                                        "(best.pt, last.pt) or a captioner file (.fcvc); `fcvc runs` lists the runs")
    raise MissingArtifactError(f"{path} is not a feature store (no zarr.json with fcvc's attributes) nor a run "
                               f"directory (no {', '.join(RUN_FILES)})",
                               hint="point at <workdir>/features.zarr or <workdir>/runs/NAME, or run `fcvc extract` "
                                    "first")


def report(info: StoreInfo) -> None:
    s = info.settings
    clip = s.get("clip") or {}
    progress.log(f"{info.path}: feature store, {info.size_bytes / 2**20:.1f} MiB")
    progress.log(f"  settings: {s.get('frames')} frames at {s.get('frame_size')} px, {s.get('dtype')}, "
                 f"inception {(s.get('inception') or {}).get('weights')}, "
                 f"clip {clip.get('model', 'none')} {clip.get('weights', '')}".rstrip())
    progress.log(f"  videos: {info.complete} complete, {len(info.failed)} failed, "
                 f"{len(info.being_written)} being written, {len(info.interrupted)} interrupted")
    if info.computed_with:
        progress.log("  computed with: " + ", ".join(f"{how} ({n})" for how, n in sorted(info.computed_with.items()))
                     + ("  -- a MIX: the features of one store come from different numerics"
                        if len(info.computed_with) > 1 else ""))
    if info.unverifiable:
        progress.log(f"  {info.unverifiable} videos were written before checksums: only missing chunks are "
                     f"detected in them (re-extract with --force to checksum them)")
    for vid, f in sorted(info.failed.items()):
        progress.log(f"  failed: {vid!r}: {f.get('path')}: {f.get('stage')}: {f.get('error')}")
    how = "every byte read" if info.verified else "chunk files checked; --verify reads every byte"
    if info.damaged:
        progress.log(f"  DAMAGED: {len(info.damaged)} videos ({how}); `fcvc extract --verify VIDEOS...` "
                     f"re-extracts them:")
        for vid, d in sorted(info.damaged.items()):
            progress.log(f"    {vid!r}: {d['file']}: {d['reason']}")
    else:
        progress.log(f"  no damage found ({how})")
