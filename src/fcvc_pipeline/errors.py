"""Errors a user can act on.

Expected failures raise :class:`FcvcError` (or a subclass); the CLI prints its message without a
traceback and exits with :attr:`FcvcError.exit_code`. Anything else is a bug and keeps its traceback
under ``-v``.
"""

from __future__ import annotations

from pathlib import Path

# Exit codes shared by every command (README: "Shared conventions").
EXIT_OK = 0
EXIT_ITEM_FAILURES = 1  # the stage finished but some items (videos, files) failed; they are listed
EXIT_USAGE = 2  # bad usage, configuration or input: nothing (more) was done
EXIT_INTERNAL = 3  # an unexpected exception: a bug, shown with -v


class FcvcError(Exception):
    """An expected error with a message a person can act on."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(FcvcError):
    """One or more configuration problems, reported together."""

    def __init__(self, problems: list[str] | str, *, hint: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = "invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message, hint=hint)


class InputError(FcvcError):
    """A bad input file: names the file and, where known, the line or position."""

    def __init__(self, path: str | Path, reason: str, *, line: int | None = None, hint: str | None = None):
        self.path = str(path)
        self.reason = reason
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}", hint=hint)


class MissingArtifactError(FcvcError):
    """A stage needs the output of an earlier stage that is not there yet."""


class MismatchError(FcvcError):
    """Artifacts that do not belong together (store vs vocabulary, checkpoint vs features, ...)."""


def require(problems: list[str], *, hint: str | None = None) -> None:
    """Raise one :class:`ConfigError` listing every collected problem, if there are any."""
    if problems:
        raise ConfigError(problems, hint=hint)


class StoppedBySignal(FcvcError):
    """A long stage stopped on SIGTERM or SIGINT after keeping its work; exit 128 + the signal (143, 130)."""

    def __init__(self, signum: int, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.signum = signum
        self.exit_code = 128 + signum
