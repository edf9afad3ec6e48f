"""Human output: messages and progress bars go to stderr; stdout is kept for ``--json``.

Plain writes to ``sys.stderr`` (looked up at each call, so a test runner's capture sees them), not
``click.echo``: the Python API (``from fcvc_pipeline import Captioner``) logs through here too and must
not load the command-line toolkit.

Progress (:func:`bar`) depends on where stderr goes:

- a terminal: a tqdm bar, redrawn in place;
- anything else (``2>log``, nohup, SLURM, CI): plain lines, one when the bar starts, then at most one
  every 30 seconds, and a final one when it ends, e.g.
  ``extract: 120/500 videos (24%) after 1m02s, 1.92 video/s, ETA 3m18s, failed=2`` and
  ``extract: 500/500 videos (100%) in 4m20s, 1.92 video/s, failed=2``. The rate is the average since
  the bar started; the ETA assumes it holds; what the caller reports with ``set_postfix`` (extraction:
  ``failed``, training: ``loss``) ends the line. A bar over nothing prints nothing.

``FCVC_PROGRESS=1`` forces the tqdm bar (even into a log), ``FCVC_PROGRESS=0`` silences progress (not
messages or warnings); ``FCVC_PROGRESS_INTERVAL=SECONDS`` replaces the 30 seconds between plain lines.
``configure(quiet=True)`` silences messages and progress alike.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

DEFAULT_INTERVAL = 30.0  # seconds between two plain progress lines (FCVC_PROGRESS_INTERVAL)
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")

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


def _mode() -> str:
    """"off", "tqdm" (a terminal, or FCVC_PROGRESS=1) or "lines" (stderr is a file or a pipe)."""
    flag = os.environ.get("FCVC_PROGRESS", "").strip().lower()
    if _quiet or flag in _OFF or sys.stderr is None:
        return "off"
    if flag in _ON:
        return "tqdm"
    try:
        return "tqdm" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):  # a stand-in stream without isatty, or a closed one
        return "lines"


def _interval() -> float:
    text = os.environ.get("FCVC_PROGRESS_INTERVAL", "")
    try:
        return max(0.0, float(text)) if text.strip() else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


def bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"):
    """A progress bar on stderr: tqdm on a terminal, plain rate-limited lines elsewhere, nothing with
    ``FCVC_PROGRESS=0`` (see the module docstring). Used like tqdm: iterate over it, or ``update(n)``,
    ``set_postfix(...)`` and ``close()`` (or ``with``)."""
    mode = _mode()
    if mode == "lines":
        return LineBar(iterable, total=total, desc=desc, unit=unit, interval=_interval())
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=mode == "off",
                dynamic_ncols=True, leave=True)


def _plural(unit: str) -> str:
    if unit in ("it", "B") or unit.endswith("s"):
        return unit
    return unit + ("es" if unit.endswith(("ch", "sh", "x")) else "s")


def duration(seconds: float) -> str:
    """``0.4s``, ``42s``, ``3m18s``, ``1h02m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LineBar:
    """tqdm's interface (the part fcvc uses), printing a plain line at a bounded rate (module docstring).

    Thread-safe: the extraction loop's writer thread updates the bar its main thread also updates.
    """

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", interval: float = DEFAULT_INTERVAL):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.interval = interval
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.closed = False
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last_line = self._start
        self._silent = total == 0  # a bar over nothing says nothing
        if not self._silent:
            _emit(self._line(final=False))

    # -- tqdm's interface ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress bar was made without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> "LineBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            now = time.monotonic()
            if self.closed or self._silent or now - self._last_line < self.interval:
                return
            if self.total and self.n >= self.total:
                return  # the final line (close) says it
            self._last_line = now
            line = self._line(final=False, now=now)
        _emit(line)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        with self._lock:
            self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """tqdm redraws here; a log gets its lines at the bounded rate only."""

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            line = None if self._silent else self._line(final=True)
        if line is not None:
            _emit(line)

    # -- the line ------------------------------------------------------------------------------
    def _line(self, *, final: bool, now: float | None = None) -> str:
        elapsed = (now if now is not None else time.monotonic()) - self._start
        units = _plural(self.unit)
        if self.total:
            text = f"{self.n}/{self.total} {units} ({100 * self.n // self.total}%)"
        else:
            text = f"{self.n} {units}"
        if final:
            text += f" in {duration(elapsed)}"
        elif self.n:
            text += f" after {duration(elapsed)}"
        parts = [text]
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.n and rate > 0:
            parts.append(f"{rate:.2f} {self.unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{self.unit}")
            if not final and self.total and self.n < self.total:
                parts.append(f"ETA {duration((self.total - self.n) / rate)}")
        parts.extend(f"{k}={v}" for k, v in self.postfix.items())
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)
