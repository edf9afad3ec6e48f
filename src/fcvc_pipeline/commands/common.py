"""What every command shares: ``--workdir``, ``--json``, ``-v``, and the error/exit-code mapping."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click

from fcvc_pipeline import progress
from fcvc_pipeline.errors import EXIT_INTERNAL, EXIT_OK, FcvcError, filesystem_error
from fcvc_pipeline.workdir import DEFAULT_WORKDIR


def common_options(f: Callable) -> Callable:
    """Add ``--workdir``, ``--json`` and ``-v`` to a command (passed as workdir, json_out, verbose)."""
    f = click.option("-v", "--verbose", is_flag=True, help="More detail; tracebacks for errors.")(f)
    f = click.option("--json", "json_out", is_flag=True,
                     help="Print one machine-readable JSON document on stdout.")(f)
    f = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORKDIR,
                     show_default=True, help="Where every artifact is written.")(f)
    return f


def to_jsonable(result: Any) -> Any:
    if hasattr(result, "to_json"):
        return result.to_json()
    return result


def run_and_exit(fn: Callable[[], Any], *, json_out: bool, verbose: bool) -> None:
    """Run a stage; print its JSON on stdout when asked; exit 0/1/2 (3 for a bug).

    The stage result may expose ``exit_code`` (1 when some items failed) and ``to_json()``. An OSError
    that says the disk is full, read-only or not ours to write (``errors.FILESYSTEM_HINTS``) is not a bug:
    it becomes a :class:`~fcvc_pipeline.errors.FilesystemError` (exit 2) naming the path and the reason.
    With ``--json`` every failure prints ``{"error": message, "exit_code": code}`` on stdout.
    """
    progress.configure(verbose=verbose)
    try:
        result = fn()
    except KeyboardInterrupt:
        click.echo("interrupted: finished items are kept; rerun the same command to resume", err=True)
        sys.exit(130)
    except Exception as e:
        expected = e if isinstance(e, FcvcError) else filesystem_error(e)
        if verbose:
            traceback.print_exc()
        if expected is not None:
            click.echo(f"error: {expected}", err=True)
            _exit_with_error(expected.message, expected.exit_code, json_out)
        # a bug: say so plainly, keep the traceback behind -v
        if not verbose:
            click.echo(f"internal error: {type(e).__name__}: {e} (rerun with -v for the traceback)", err=True)
        _exit_with_error(f"internal error: {type(e).__name__}: {e}", EXIT_INTERNAL, json_out)
    if json_out:
        click.echo(json.dumps(to_jsonable(result), indent=2, sort_keys=False, default=str))
    sys.exit(getattr(result, "exit_code", EXIT_OK))


def _exit_with_error(message: str, code: int, json_out: bool) -> None:
    if json_out:
        click.echo(json.dumps({"error": message, "exit_code": code}))
    sys.exit(code)


def parse_int_list(text: str, option: str) -> tuple[int, ...]:
    """'1,3,5' -> (1, 3, 5); '' -> (); anything else is a usage error naming the option."""
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option) from None


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def __init__(self, *args, registry: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.registry = registry

    def list_commands(self, ctx):
        names = []
        for name, target in self.registry.items():
            if importlib.util.find_spec(target.split(":")[0]) is not None:
                names.append(name)
        return sorted(names)

    def get_command(self, ctx, name):
        target = self.registry.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as e:
            if e.name == module:
                return None
            raise
