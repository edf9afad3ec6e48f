"""Errors a user can act on.

Expected failures raise :class:`FcvcError` (or a subclass); the CLI prints its message without a
traceback and exits with :attr:`FcvcError.exit_code`. Anything else is a bug and keeps its traceback
under ``-v``.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from typing import Any

# Exit codes shared by every command (README: "Shared conventions").
EXIT_OK = 0
EXIT_ITEM_FAILURES = 1  # the stage finished but some items (videos, files) failed; they are listed
EXIT_USAGE = 2  # bad usage, configuration or input: nothing (more) was done
EXIT_INTERNAL = 3  # an unexpected exception: a bug, shown with -v
EXIT_SIGINT = 130  # stopped by Ctrl-C (SIGINT): 128 + the signal, as shells report it (SIGTERM: 143)


class FcvcError(Exception):
    """An expected error with a message a person can act on.

    ``kind`` names the class of problem in ``--json`` error documents (README: "Shared conventions"):
    config, input, missing, mismatch, filesystem, interrupted, or ``error`` for any other expected error.
    """

    exit_code = EXIT_USAGE
    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"

    def to_json(self) -> dict[str, Any]:
        """The ``error`` object of a ``--json`` error document: kind, message, hint (+ what a subclass knows)."""
        return {"kind": self.kind, "message": self.message, "hint": self.hint}


class ConfigError(FcvcError):
    """One or more configuration problems, reported together."""

    kind = "config"

    def __init__(self, problems: list[str] | str, *, hint: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = "invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message, hint=hint)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "problems": list(self.problems)}


class InputError(FcvcError):
    """A bad input file: names the file and, where known, the line or position."""

    kind = "input"

    def __init__(self, path: str | Path, reason: str, *, line: int | None = None, hint: str | None = None):
        self.path = str(path)
        self.reason = reason
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}", hint=hint)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "path": self.path, "line": self.line}


class MissingArtifactError(FcvcError):
    """A stage needs the output of an earlier stage that is not there yet."""

    kind = "missing"


class MismatchError(FcvcError):
    """Artifacts that do not belong together (store vs vocabulary, checkpoint vs features, ...)."""

    kind = "mismatch"


def require(problems: list[str], *, hint: str | None = None) -> None:
    """Raise one :class:`ConfigError` listing every collected problem, if there are any."""
    if problems:
        raise ConfigError(problems, hint=hint)


class StoppedBySignal(FcvcError):
    """A long stage stopped on SIGTERM or SIGINT after keeping its work; exit 128 + the signal (143, 130)."""

    kind = "interrupted"

    def __init__(self, signum: int, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.signum = signum
        self.exit_code = 128 + signum

    def to_json(self) -> dict[str, Any]:
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = str(self.signum)
        return {**super().to_json(), "signal": name}


# What a person can do about each errno that means "the disk, its mount or its permissions said no" (not
# a bug in fcvc). A missing file (ENOENT) is not here: the stages check their inputs and name them.
_FREE_SPACE = ("free space on that disk (or raise the quota), or point --workdir (or the option that named "
               "this path) at a disk with room; then rerun the same command")
_ELSEWHERE = "point --workdir (or the option that named this path) at a directory you can write to"
FILESYSTEM_HINTS: dict[int, str] = {
    errno.ENOSPC: _FREE_SPACE,
    errno.EFBIG: "the file grew past what this filesystem (or `ulimit -f`) allows: " + _ELSEWHERE,
    errno.EROFS: "the filesystem is mounted read-only: " + _ELSEWHERE,
    errno.EACCES: "check the permissions of the path (`ls -ld`), or " + _ELSEWHERE,
    errno.EPERM: "check the permissions and owner of the path (`ls -ld`), or " + _ELSEWHERE,
    errno.ENAMETOOLONG: "the name is longer than the filesystem allows: choose a shorter path",
    errno.ENOTDIR: "a part of the path is a file where a directory is needed: choose another path or move it",
    errno.EISDIR: "a directory stands where a file is needed: choose another path or move it",
    errno.EEXIST: "a file stands where a directory is needed: choose another path or move it",
    errno.EIO: "the device reported a read or write failure: check the disk (`dmesg`) before rerunning",
}
if hasattr(errno, "EDQUOT"):  # not on every platform
    FILESYSTEM_HINTS[errno.EDQUOT] = _FREE_SPACE


class FilesystemError(FcvcError):
    """The operating system refused a read or write: full disk, quota, read-only mount, permissions.

    Built from the :class:`OSError` by :meth:`from_oserror`; the message names the path (both paths of a
    rename) and the system's reason, the hint what to do.
    """

    kind = "filesystem"

    def __init__(self, path: str | None, reason: str, *, errno_code: int, path2: str | None = None,
                 hint: str | None = None):
        self.path = path
        self.path2 = path2
        self.reason = reason
        self.errno = errno_code
        if path and path2:
            message = f"{path} -> {path2}: {reason}"
        elif path:
            message = f"{path}: {reason}"
        else:  # the library that failed did not say which file; the reason still tells what went wrong
            message = f"{reason} (the failing call did not name the file)"
        super().__init__(message, hint=hint)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "path": self.path, "path2": self.path2,
                "errno": errno.errorcode.get(self.errno, self.errno) if self.errno else None}

    @classmethod
    def from_oserror(cls, error: OSError) -> FilesystemError:
        code = error.errno
        reason = os.strerror(code) if code is not None else (error.strerror or str(error))
        return cls(_as_path(error.filename), reason, errno_code=code if code is not None else 0,
                   path2=_as_path(error.filename2), hint=FILESYSTEM_HINTS.get(code))


def _as_path(name: object) -> str | None:
    if name is None:
        return None
    if isinstance(name, (str, bytes, os.PathLike)):
        return os.fsdecode(name)
    return str(name)  # a file descriptor


def filesystem_error(error: BaseException) -> FilesystemError | None:
    """The :class:`FilesystemError` behind ``error``, if it is (or was caused by) such an OSError, else None.

    Libraries (zarr, torch, PIL) sometimes wrap the OSError in their own exception; its cause chain is
    followed, a few links deep.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FILESYSTEM_HINTS:
            return FilesystemError.from_oserror(current)
        current = current.__cause__ or current.__context__
    return None
