"""What every command shares: ``--workdir``, ``--json``, ``-v``, the error/exit-code mapping, one JSON
document on stdout whatever ends the command, and shell completion of model and run names."""

from __future__ import annotations

import errno
import importlib
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn

import click
from click.shell_completion import CompletionItem

from fcvc_pipeline import progress
from fcvc_pipeline.errors import EXIT_INTERNAL, EXIT_OK, EXIT_SIGINT, FcvcError, filesystem_error
from fcvc_pipeline.naming import did_you_mean
from fcvc_pipeline.workdir import DEFAULT_WORKDIR, WORKDIR_ENV, Workdir

# The names `--model` completes to. A copy of models.variants (MODEL_NAMES, then MODEL_ALIASES): importing
# the models room loads torch, seconds per <TAB>. tests/test_cli.py checks that the two agree.
MODEL_CHOICES: tuple[str, ...] = ("fcvc-cf-ia", "fcvc", "fcvc-ta", "fcvc-ia", "fcvc-all", "lstm", "fcvc-final")

INTERRUPTED_HINT = "finished items are kept; rerun the same command to resume"


def common_options(f: Callable) -> Callable:
    """Add ``--workdir``, ``--json`` and ``-v`` to a command (passed as workdir, json_out, verbose)."""
    f = click.option("-v", "--verbose", is_flag=True, help="More detail; tracebacks for errors.")(f)
    f = click.option("--json", "json_out", is_flag=True,
                     help="Print one machine-readable JSON document on stdout (an error document on failure).")(f)
    f = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORKDIR,
                     envvar=WORKDIR_ENV, show_envvar=True, show_default=True,
                     help="Where every artifact is written.")(f)
    return f


def to_jsonable(result: Any) -> Any:
    if hasattr(result, "to_json"):
        return result.to_json()
    return result


# -- the one JSON document ---------------------------------------------------------------------------------
class _Document:
    """Whether this invocation has printed its ``--json`` document (reset by :meth:`LazyGroup.main` and by
    :func:`run_and_exit`), so that an interrupt after a stage's document adds no second one."""

    printed = False


def emit_json(doc: Any, *, indent: int | None = 2) -> None:
    """Print ``doc`` as this invocation's JSON document on stdout."""
    click.echo(json.dumps(doc, indent=indent, sort_keys=False, default=str))
    _Document.printed = True


def error_document(kind: str, message: str, code: int, *, hint: str | None = None,
                   **details: Any) -> dict[str, Any]:
    """``{"error": {"kind", "message", "hint", ...}, "message", "exit_code"}`` (README: "Shared conventions").

    The top-level ``message`` repeats ``error.message`` for readers of the old layout's string.
    """
    return {"error": {"kind": kind, "message": message, "hint": hint, **details}, "message": message,
            "exit_code": code}


def _exit_with_document(doc: dict[str, Any], json_out: bool) -> NoReturn:
    if json_out and not _Document.printed:
        emit_json(doc, indent=None)
    sys.exit(doc["exit_code"])


def exit_on_error(error: BaseException, *, json_out: bool, verbose: bool) -> NoReturn:
    """Say what went wrong on stderr, print the error document with ``--json``, exit with its code.

    An :class:`FcvcError` (or an OSError a person can act on: ``errors.FILESYSTEM_HINTS``) prints its message
    and hint, exit 2 (130/143 for a stopped stage); a KeyboardInterrupt is exit 130; anything else is a bug:
    exit 3, the traceback behind ``-v``.
    """
    if isinstance(error, KeyboardInterrupt):
        click.echo(f"interrupted: {INTERRUPTED_HINT}", err=True)
        _exit_with_document(error_document("interrupted", "interrupted (SIGINT)", EXIT_SIGINT,
                                           hint=INTERRUPTED_HINT, signal="SIGINT"), json_out)
    expected = error if isinstance(error, FcvcError) else filesystem_error(error)
    if verbose:
        traceback.print_exception(type(error), error, error.__traceback__)
    if expected is not None:
        click.echo(f"error: {expected}", err=True)
        body = expected.to_json()
        doc = error_document(body.pop("kind"), body.pop("message"), expected.exit_code, **body)
        _exit_with_document(doc, json_out)
    # a bug: say so plainly, keep the traceback behind -v
    message = f"internal error: {type(error).__name__}: {error}"
    if not verbose:
        click.echo(f"{message} (rerun with -v for the traceback)", err=True)
    _exit_with_document(error_document("internal", message, EXIT_INTERNAL,
                                       hint="a bug in fcvc: rerun with -v for the traceback and report it"),
                        json_out)


def run_and_exit(fn: Callable[[], Any], *, json_out: bool, verbose: bool) -> None:
    """Run a stage; print its JSON on stdout when asked; exit 0/1/2 (3 for a bug, 130 for Ctrl-C).

    The stage result may expose ``exit_code`` (1 when some items failed) and ``to_json()``. An OSError
    that says the disk is full, read-only or not ours to write (``errors.FILESYSTEM_HINTS``) is not a bug:
    it becomes a :class:`~fcvc_pipeline.errors.FilesystemError` (exit 2) naming the path and the reason.
    With ``--json`` every failure prints the error document of :func:`error_document` on stdout.
    """
    progress.configure(verbose=verbose)
    _Document.printed = False  # nothing printed yet: the stage's document is the invocation's
    try:
        result = fn()
    except (Exception, KeyboardInterrupt) as e:
        exit_on_error(e, json_out=json_out, verbose=verbose)
    if json_out:
        emit_json(to_jsonable(result))
    sys.exit(getattr(result, "exit_code", EXIT_OK))


def parse_int_list(text: str, option: str) -> tuple[int, ...]:
    """'1,3,5' -> (1, 3, 5); '' -> (); anything else is a usage error naming the option."""
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option) from None


# -- shell completion (README: "Shell completion") -----------------------------------------------------------
def complete_model(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``--model`` of a model variant: the variant names and aliases (validation stays the stage's)."""
    return [CompletionItem(name) for name in MODEL_CHOICES if name.startswith(incomplete)]


def complete_model_or_all(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``fcvc train --model``: the variants, and ``all`` (the ablation)."""
    return [CompletionItem(name) for name in (*MODEL_CHOICES, "all") if name.startswith(incomplete)]


def complete_run(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``--run``: the run folders under the work directory's ``runs/`` (``--workdir`` when it comes first on
    the line, else ``FCVC_WORKDIR``, else ``./fcvc-work``)."""
    workdir = ctx.params.get("workdir") or os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR
    try:
        names = sorted(p.name for p in Workdir(Path(workdir)).runs.iterdir() if p.is_dir())
    except OSError:
        return []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


class Choice(click.Choice):
    """``click.Choice`` whose refusal of a misspelled value adds "did you mean ..." (every command uses it)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as e:
            hint = did_you_mean(str(value), [str(c) for c in self.choices])
            if not hint:
                raise
            raise click.BadParameter(f"{e.message}{hint}", ctx=ctx, param=param) from None


def wants_json(args: list[str]) -> bool:
    """``--json`` anywhere on the command line (also where Click refuses it, e.g. before the command)."""
    return "--json" in args


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, and that ends every invocation the same way.

    :meth:`main` (what the ``fcvc`` script and ``python -m fcvc_pipeline`` call) runs Click with its own
    error handling off and maps whatever ends the command to an exit code: a usage error (bad option,
    missing argument) 2, Ctrl-C 130, a bug outside the stage 3; with ``--json`` anywhere on the command
    line, each of them also prints the error document (:func:`error_document`) on stdout, so stdout is
    always exactly one JSON document. A stage's own result or error document (``run_and_exit``) is never
    followed by a second one.
    """

    def __init__(self, *args, registry: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.registry = registry

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:  # the caller handles Click's exceptions itself
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        json_out, verbose = wants_json(argv), "-v" in argv or "--verbose" in argv
        _Document.printed = False
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:  # usage errors (exit 2) and Click's other refusals (exit 1)
            e.show()
            kind = "usage" if isinstance(e, click.UsageError) else "input" if isinstance(e, click.FileError) else "error"
            ctx = getattr(e, "ctx", None)
            hint = f"see `{ctx.command_path} --help`" if ctx is not None else "see `fcvc --help`"
            _exit_with_document(error_document(kind, e.format_message(), e.exit_code, hint=hint), json_out)
        except click.Abort as e:  # Click turns Ctrl-C into Abort; EOF at a prompt too
            if isinstance(e.__cause__, KeyboardInterrupt):
                exit_on_error(e.__cause__, json_out=json_out, verbose=verbose)
            click.echo("Aborted!", err=True)
            _exit_with_document(error_document("aborted", "aborted", 1), json_out)
        except KeyboardInterrupt as e:
            exit_on_error(e, json_out=json_out, verbose=verbose)
        except OSError as e:
            if e.errno != errno.EPIPE:
                exit_on_error(e, json_out=json_out, verbose=verbose)
            _silence_stdout()  # the reader of stdout went away (`| head`): nothing more can reach it
            sys.exit(1)
        except Exception as e:  # a bug outside the stage (importing a command, a Click callback)
            exit_on_error(e, json_out=json_out, verbose=verbose)
        sys.exit(rv if type(rv) is int else EXIT_OK)  # --help, --version, or a command that returned

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


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file behind stdout (a test runner's capture)
        pass
