"""``fcvc runs``: one line per run under ``<workdir>/runs``: model, status, epochs, best validation CIDEr,
test CIDEr (when ``fcvc score`` scored it), the decoding chosen, parameters and size on disk.

CIDEr is printed x100 with one decimal, as in every fcvc table (``--json``: the raw values). Everything
comes from each run's JSON files (``workdir.run_summary``): no checkpoint is loaded, so the
listing is instant. ``fcvc info runs/<run>`` shows one run in full and checks its checkpoints' digests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcvc_pipeline import progress
from fcvc_pipeline.errors import EXIT_OK, MissingArtifactError
from fcvc_pipeline.workdir import WORKDIR_ENV, RunSummary, Workdir, run_summary

COLUMNS = ("RUN", "MODEL", "STATUS", "EPOCHS", "BEST VAL CIDEr", "TEST CIDEr", "BEAM", "PARAMS", "SIZE")


@dataclass
class RunsResult:
    workdir: Path
    runs: list[RunSummary] = field(default_factory=list)
    exit_code: int = EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {"workdir": str(self.workdir), "runs_dir": str(Workdir(self.workdir).runs),
                "runs": [r.to_json() for r in self.runs]}


def run_runs(workdir: Path) -> RunsResult:
    """Summarise every run folder under ``<workdir>/runs``; none is exit 0 with a message (and ``[]``)."""
    w = Workdir(workdir)
    if not w.root.is_dir():
        raise MissingArtifactError(f"no work directory at {w.root}",
                                   hint=f"point --workdir (or {WORKDIR_ENV}) at the directory `fcvc train` wrote to")
    result = RunsResult(workdir=w.root, runs=[run_summary(d) for d in w.run_dirs()])
    if not result.runs:
        progress.log(f"no runs in {w.runs}" + ("" if w.runs.is_dir() else " (the folder does not exist)")
                     + ": `fcvc train` makes one")
    return result


def cider_x100(value: float | None, epoch: int | None = None) -> str:
    """CIDEr as fcvc's tables print it: x100, one decimal (JSON keeps the raw value)."""
    if value is None:
        return "-"
    return f"{100 * value:.1f}" + (f" (ep {epoch})" if epoch is not None else "")


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def table_rows(runs: list[RunSummary]) -> list[tuple[str, ...]]:
    rows = []
    for r in runs:
        epochs = f"{r.epochs_done}/{r.epochs_planned}" if r.epochs_planned is not None else str(r.epochs_done)
        test = cider_x100(r.test_cider) + (f" (beam {r.test_beam})" if r.test_cider is not None
                                       and r.test_beam != r.beam_size else "")
        rows.append((r.name, r.model or "-", r.status, epochs, cider_x100(r.best_val_cider, r.best_epoch), test,
                     str(r.beam_size) if r.beam_size is not None else "-", _count(r.parameters), _size(r.size_bytes)))
    return rows


def format_runs(runs: list[RunSummary]) -> str:
    """The listing as aligned columns, a header first (what ``fcvc runs`` prints on stdout)."""
    rows = [COLUMNS, *table_rows(runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
