"""Human output: messages and progress bars go to stderr; stdout is kept for ``--json``."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

import click
from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = False
_verbose = False


def configure(*, verbose: bool = False, quiet: bool = False) -> None:
    global _quiet, _verbose
    _verbose, _quiet = verbose, quiet


def is_verbose() -> bool:
    return _verbose


def log(message: str) -> None:
    """One line for a person, on stderr."""
    if not _quiet:
        click.echo(message, err=True)


def debug(message: str) -> None:
    if _verbose and not _quiet:
        click.echo(message, err=True)


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


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
