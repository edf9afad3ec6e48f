"""The work directory: every path a stage reads or writes, in one place.

``--workdir DIR`` (default ``./fcvc-work``) holds every artifact; a command writes nowhere else unless an
option names another place (``fcvc extract --store``, ``fcvc caption --attention``, ``fcvc score
--captions`` reads a file from anywhere). The layout:

==========================  ============================  ==============================================
path                        written by                    what
==========================  ============================  ==============================================
``features.zarr/``          ``fcvc extract``              per-video features (features/store.py)
``vocab/``                  ``fcvc vocab``                vocabulary, caption table, manifest
``runs/<run>/``             ``fcvc train``                config, metrics, checkpoints, manifest
``runs/<run>/captions/``    ``fcvc score`` / ablation     cached captions of a split (+ their scores)
``runs/ablation.{md,json}`` ``fcvc train --model all``    the paper-style table
``caption-features/``       ``fcvc caption``              a cache of captioned files' features (not --model)
``scores/``                 ``fcvc score --captions F``   scores of a captions file outside the workdir
``demo/``                   ``fcvc demo``                 the constant-caption floor, attention figures
==========================  ============================  ==============================================

``FCVC_WORKDIR`` replaces the default of ``--workdir`` for every command.

A run directory (``runs/<run>/``) holds ``config.json`` (written when training starts), ``metrics.jsonl``
(one line per epoch), ``last.pt`` (the resume state), ``best.pt`` and, written last, ``manifest.json``.
:func:`run_summary` reads what ``fcvc runs`` and ``fcvc info runs/<run>`` show from those files alone (no
checkpoint is loaded): a manifest means done; without one the run is running while its files keep being
written, else interrupted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcvc_pipeline.artifacts import file_sha256, read_manifest
from fcvc_pipeline.errors import ConfigError, MissingArtifactError

DEFAULT_WORKDIR = Path("fcvc-work")
WORKDIR_ENV = "FCVC_WORKDIR"  # the default of --workdir when set
DEFAULT_RUN = "fcvc-cf-ia"  # the run `fcvc caption` / `fcvc score` pick when several exist (= models.DEFAULT_MODEL;
# a leaf cannot import the models room, and tests/test_layout.py checks the two agree)


@dataclass(frozen=True)
class Workdir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def features(self) -> Path:
        return self.root / "features.zarr"

    @property
    def vocab(self) -> Path:
        return self.root / "vocab"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def caption_features(self) -> Path:
        return self.root / "caption-features"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    @property
    def demo(self) -> Path:
        return self.root / "demo"

    def run(self, name: str) -> Path:
        return self.runs / name

    def run_dirs(self) -> list[Path]:
        """Every folder under ``runs/`` (trained, interrupted or running), sorted by name."""
        if not self.runs.is_dir():
            return []
        return sorted(p for p in self.runs.iterdir() if p.is_dir())

    def trained_runs(self) -> list[Path]:
        """Run directories that hold a ``best.pt``, sorted by name."""
        if not self.runs.is_dir():
            return []
        return sorted(p for p in self.runs.glob("*") if (p / "best.pt").is_file())

    def resolve_run(self, name: str | None) -> Path:
        """The run directory to use: the one named, else ``fcvc-cf-ia``, else the only run there is."""
        have = self.trained_runs()
        if name is not None:
            d = self.run(name)
            if not (d / "best.pt").is_file():
                names = ", ".join(p.name for p in have)
                raise MissingArtifactError(f"no trained run '{name}' in {self.runs}" + (f" (runs: {names})" if have else ""),
                                           hint="train it with `fcvc train --run NAME`")
            return d
        if (self.run(DEFAULT_RUN) / "best.pt").is_file():
            return self.run(DEFAULT_RUN)
        if len(have) == 1:
            return have[0]
        if not have:
            raise MissingArtifactError(f"no trained run in {self.runs}", hint="run `fcvc train` first")
        raise ConfigError(f"several runs in {self.runs} ({', '.join(p.name for p in have)}): pick one with --run NAME")


# -- what a run directory says about itself ----------------------------------------------------------------
RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "manifest.json")
CHECKPOINTS = ("best.pt", "last.pt")
# A run without a manifest counts as running while one of its files was written within this many seconds
# (or three of its epochs, when those take longer): fcvc keeps no lock, so a run killed a moment ago looks
# the same until then.
RUNNING_WINDOW_S = 600.0


@dataclass
class RunSummary:
    """One run as ``fcvc runs`` lists it (JSON: :meth:`to_json`)."""

    name: str
    path: Path
    status: str  # done | running | interrupted | damaged | empty
    note: str | None = None  # why that status, or what to do
    model: str | None = None
    epochs_done: int = 0
    epochs_planned: int | None = None
    best_val_cider: float | None = None
    best_epoch: int | None = None
    decoding: dict[str, Any] | None = None  # the run's choice (best.pt and the manifest), done runs only
    test_cider: float | None = None  # from `fcvc score` (runs/<run>/captions/test-beamN.scores.json)
    test_beam: int | None = None
    test_cider_by_beam: dict[str, float] = field(default_factory=dict)
    parameters: int | None = None
    size_bytes: int = 0
    updated: float | None = None  # newest write to the run's files (seconds since the epoch)
    checkpoints: list[str] = field(default_factory=list)

    @property
    def beam_size(self) -> int | None:
        return (self.decoding or {}).get("beam_size")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "model": self.model, "status": self.status,
                "note": self.note, "epochs_done": self.epochs_done, "epochs_planned": self.epochs_planned,
                "best_val_cider": self.best_val_cider, "best_epoch": self.best_epoch, "beam_size": self.beam_size,
                "decoding": self.decoding, "test_cider": self.test_cider, "test_beam": self.test_beam,
                "test_cider_by_beam": self.test_cider_by_beam, "parameters": self.parameters,
                "size_bytes": self.size_bytes, "updated": self.updated, "checkpoints": self.checkpoints}


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records of ``metrics.jsonl`` (a damaged line is skipped: this is a report, not a resume)."""
    try:
        text = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            out.append(record)
    return out


def tree_size(path: Path) -> int:
    """Bytes of every file under ``path`` (files that vanish while counted are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _test_scores(run_dir: Path) -> dict[str, float]:
    """beam size -> test CIDEr, from the score caches `fcvc score` writes beside the run's test captions
    (``captions/test-beamN.scores.json``), each only while it is of the captions file beside it and newer
    than ``best.pt`` (a run extended after it was scored has other weights; hashing best.pt would cost
    a listing seconds)."""
    out: dict[str, float] = {}
    best = _mtime(run_dir / "best.pt")
    for f in sorted((run_dir / "captions").glob("test-beam*.scores.json")):
        if best is not None and (_mtime(f) or 0.0) < best:
            continue
        beam = f.name.removeprefix("test-beam").removesuffix(".scores.json")
        raw = _read_json_file(f)
        if not beam.isdigit() or not isinstance(raw, dict) or not isinstance(raw.get("scores"), dict):
            continue
        cider, made_of = raw["scores"].get("CIDEr"), (raw.get("key") or {}).get("captions")
        try:
            current = file_sha256(f.with_name(f"test-beam{beam}.json"))
        except OSError:
            continue
        if isinstance(cider, (int, float)) and made_of == current:
            out[beam] = float(cider)
    return out


def _parameters_from_metrics(history: list[dict[str, Any]]) -> int | None:
    """The trainer logs seconds and seconds per 10M parameters per epoch: their ratio is the count."""
    for r in history:
        seconds, per = r.get("seconds"), r.get("sec_per_10M_params")
        if isinstance(seconds, (int, float)) and isinstance(per, (int, float)) and seconds > 0 and per > 0:
            return round(seconds * 1e7 / per)
    return None


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_summary(run_dir: str | Path, *, now: float | None = None) -> RunSummary:
    """What ``run_dir`` holds, from its JSON files and the checkpoints' presence (none is loaded)."""
    run_dir = Path(run_dir)
    now = time.time() if now is None else now
    manifest = read_manifest(run_dir)
    if manifest is not None and manifest.stage != "train":
        manifest = None
    config = _read_json_file(run_dir / "config.json")
    config = config if isinstance(config, dict) else {}
    train_cfg = config.get("train") if isinstance(config.get("train"), dict) else {}
    model_cfg = config.get("model") if isinstance(config.get("model"), dict) else {}
    history = read_metrics(run_dir)
    out = manifest.outputs if manifest is not None else {}
    planned = (manifest.config if manifest is not None else {}).get("epochs", train_cfg.get("epochs"))
    s = RunSummary(name=run_dir.name, path=run_dir, status="empty",
                   model=(manifest.config.get("model") if manifest is not None else None)
                   or train_cfg.get("model") or model_cfg.get("model"),
                   epochs_planned=planned if isinstance(planned, int) else None,
                   checkpoints=[c for c in CHECKPOINTS if (run_dir / c).is_file()],
                   size_bytes=tree_size(run_dir))
    s.epochs_done = out.get("epochs", len(history)) if manifest is not None else len(history)
    scored = [(r["val_cider"], r["epoch"]) for r in history if isinstance(r.get("val_cider"), (int, float))]
    if manifest is not None and "best_val_cider" in out:
        s.best_val_cider, s.best_epoch = out.get("best_val_cider"), out.get("best_epoch")
    elif scored:  # best.pt follows the first epoch with the highest validation CIDEr
        best = max(scored, key=lambda c: c[0])
        s.best_val_cider, s.best_epoch = best[0], next(e for c, e in scored if c == best[0])
    s.parameters = out.get("parameters") if isinstance(out.get("parameters"), int) else _parameters_from_metrics(history)
    times = [t for t in (_mtime(run_dir / f) for f in RUN_FILES) if t is not None]
    s.updated = max(times) if times else None

    if manifest is not None:
        s.decoding = out.get("decoding") if isinstance(out.get("decoding"), dict) else None
        if "best.pt" not in s.checkpoints:
            s.status, s.note = "damaged", "manifest.json says done but best.pt is missing: retrain with --force"
        else:
            s.status = "done"
            s.note = _why_it_ended(s, manifest.config, history)
        s.test_cider_by_beam = _test_scores(run_dir)
        if s.test_cider_by_beam:
            beam = str(s.beam_size) if str(s.beam_size) in s.test_cider_by_beam else None
            if beam is None:  # scored only with another --beam-size: the newest of those
                beam = max(s.test_cider_by_beam,
                           key=lambda b: _mtime(run_dir / "captions" / f"test-beam{b}.scores.json") or 0.0)
            s.test_beam, s.test_cider = int(beam), s.test_cider_by_beam[beam]
        return s
    if s.updated is None:
        s.note = "no config.json, metrics or checkpoint: not a training run (or one that never started)"
        return s
    seconds = [r["seconds"] for r in history if isinstance(r.get("seconds"), (int, float))]
    window = max(RUNNING_WINDOW_S, 3 * sum(seconds) / len(seconds)) if seconds else RUNNING_WINDOW_S
    age = now - s.updated
    resume = (f"`fcvc train --config {s.path / 'config.json'} --resume` (the run's own settings) continues it"
              if (s.path / "config.json").is_file() else
              f"`fcvc train --model {s.model or 'MODEL'} --run {s.name} --resume` (with the run's other options) "
              f"continues it")
    if age < window:
        s.status = "running"
        s.note = (f"no manifest yet, files written {_age(age)} ago (a run counts as running until "
                  f"{_age(window)} without a write; {resume} if it was stopped)")
    elif "last.pt" in s.checkpoints:
        s.status, s.note = "interrupted", f"stopped {_age(age)} ago; {resume}"
    else:
        s.status = "interrupted"
        s.note = f"stopped {_age(age)} ago before its first checkpoint: `fcvc train --run {s.name}` starts it over"
    return s


def _why_it_ended(s: RunSummary, config: dict[str, Any], history: list[dict[str, Any]]) -> str | None:
    if s.epochs_planned is None or s.epochs_done >= s.epochs_planned:
        return None
    max_steps, patience = config.get("max_steps"), config.get("patience")
    last_step = history[-1].get("step") if history else None
    if isinstance(max_steps, int) and isinstance(last_step, int) and last_step >= max_steps:
        return f"stopped at --max-steps {max_steps}"
    if isinstance(patience, int) and s.best_epoch is not None and s.epochs_done - s.best_epoch >= patience:
        return f"stopped early: no better validation CIDEr for {patience} epochs"
    return None
