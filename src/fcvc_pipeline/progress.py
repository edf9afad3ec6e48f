"""Human output: messages and progress bars go to stderr; stdout is kept for ``--json``.

Plain writes to ``sys.stderr`` (looked up at each call, so a test runner's capture sees them), not
``click.echo``: the Python API (``from fcvc_pipeline import Captioner``) logs through here too and must
not load the command-line toolkit.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = False
_verbose = False


def configure(*, verbose: bool = False, quiet: bool = False) -> None:
    global _quiet, _verbose
    _verbose, _quiet = verbose, quiet


def is_verbose() -> bool:
    return _verbose


def _emit(message: str) -> None:
    stream = sys.stderr
    if stream is None:  # pythonw and some embedded interpreters have no stderr
        return
    stream.write(f"{message}\n")
    stream.flush()


def log(message: str) -> None:
    """One line for a person, on stderr."""
    if not _quiet:
        _emit(message)


def debug(message: str) -> None:
    if _verbose and not _quiet:
        _emit(message)


def warn(message: str) -> None:
    _emit(f"warning: {message}")


def _bars_enabled() -> bool | None:
    # tqdm's ``disable=None`` hides the bar when stderr is not a terminal (CI logs stay readable);
    # FCVC_PROGRESS=1 forces it on, FCVC_PROGRESS=0 off.
    flag = os.environ.get("FCVC_PROGRESS")
    if _quiet or flag == "0":
        return True
    if flag == "1":
        return False
    return None


def bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"):
    """A tqdm progress bar on stderr (shown on a terminal, hidden in logs unless FCVC_PROGRESS=1)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=_bars_enabled(),
                dynamic_ncols=True, leave=True)
