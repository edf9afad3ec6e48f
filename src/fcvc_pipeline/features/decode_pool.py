"""Decode videos in worker processes, each under a per-video timeout.

A hung or crashing decoder costs that one video, never the run: the worker is killed and replaced,
and a video whose decord attempt hung or crashed is retried once with PyAV. Workers are plain
subprocesses (``python -c ...``) talking over a socket pair with pickled messages, not
``multiprocessing`` children: nothing re-imports the caller's ``__main__`` module, and a worker dies
with its parent (PR_SET_PDEATHSIG) even when the parent is killed with -9.

Stopping is the parent's decision: workers ignore SIGINT and SIGTERM (a terminal's Ctrl-C and a
cluster scheduler reach every process of the job, and a worker that died of them would turn the video
it was decoding into a failure). :meth:`DecodePool.imap` takes a ``stop`` callable and ends soon after
it turns true; the workers are then killed or told to exit.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from fcvc_pipeline.features.video import DecodedVideo, DecodeError, DecodePlan, decode_threads, first_line


def _resolve(spec: str) -> Callable[..., Any]:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _quiet_native_logs() -> None:
    """FFmpeg and decord write warnings straight to fd 2; a worker reports its errors as messages."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        pass
    try:
        import av.logging  # noqa: PLC0415 -- only the worker process silences FFmpeg

        av.logging.set_level(av.logging.PANIC)
    except Exception:
        pass


def worker_main(fd: int, decode_fn: str, quiet: bool) -> None:
    """Entry point of a decode worker process: decode each (task_id, path, plan) it is sent."""
    _die_with_parent()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stopping is the parent's business (module docstring)
        signal.signal(sig, signal.SIG_IGN)
    conn = Connection(fd)
    fn = _resolve(decode_fn)
    if quiet:
        _quiet_native_logs()
    conn.send(("ready", -1, os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, path, plan = msg
        try:
            result = fn(path, plan, on_stage=lambda s: conn.send(("stage", task_id, s)))
            conn.send(("ok", task_id, result))
        except DecodeError as e:
            conn.send(("error", task_id, str(e)))
        except Exception as e:  # a decoder bug: still one video's failure, not the run's
            conn.send(("error", task_id, f"{type(e).__name__}: {first_line(e)}"))


@dataclass
class _Task:
    task_id: int
    item: Any
    path: Path
    plan: DecodePlan
    retried: bool = False


class WorkerStartError(RuntimeError):
    """A decode worker could not start (broken environment): the run cannot continue."""


def _scratch_file():
    """An anonymous file for a worker's stderr: in memory (``memfd``) where the system has it, so decoding
    needs no writable temporary directory (``fcvc caption --model`` on a read-only file system)."""
    if hasattr(os, "memfd_create"):
        try:
            return os.fdopen(os.memfd_create("fcvc-decode-stderr", os.MFD_CLOEXEC), "w+b")
        except OSError:
            pass
    return tempfile.TemporaryFile()


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class _Slot:
    """One worker process and what it is doing."""

    def __init__(self, decode_fn: str, quiet: bool, threads: int, start_timeout: float = 60.0):
        parent, child = socket.socketpair()
        self._err = _scratch_file()
        env = dict(os.environ)
        # numpy and PIL in the worker: math libraries' thread pools stay at the decoder's share of the cores
        for name in _THREAD_VARIABLES:
            env[name] = str(threads)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        code = ("import sys; from fcvc_pipeline.features.decode_pool import worker_main; "
                "worker_main(int(sys.argv[1]), sys.argv[2], sys.argv[3] == '1')")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(child.fileno()), decode_fn, "1" if quiet else "0"],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err,
            env=env, close_fds=True)
        child.close()
        self.conn = Connection(parent.detach())
        self.task: _Task | None = None
        self.stage = ""
        self.started = 0.0
        self.deadline = 0.0
        if not self.conn.poll(start_timeout):
            self.kill()
            raise WorkerStartError(f"a decode worker did not start within {start_timeout:g} s")
        try:
            self.conn.recv()  # ("ready", -1, pid)
        except (EOFError, OSError):
            self.proc.wait(timeout=5)
            self._err.seek(0)
            tail = self._err.read().decode("utf-8", "replace").strip().splitlines()[-5:]
            self.kill()
            raise WorkerStartError("a decode worker failed to start: " + " | ".join(tail)) from None

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass
        self.conn.close()
        self._err.close()

    def stop(self) -> None:
        """Ask an idle worker to exit; kill it if it does not."""
        try:
            self.conn.send(None)
            self.proc.wait(timeout=2)
        except Exception:
            pass
        self.kill()


@dataclass
class DecodeOutcome:
    item: Any  # what the caller passed in
    video: DecodedVideo | None
    error: str | None  # one line, when video is None
    seconds: float = 0.0


_DONE = object()
# An item source may yield IDLE to say "nothing to decode right now": the pool keeps collecting the videos
# being decoded and asks again (a long-lived pool fed from a queue, as ``fcvc serve`` runs it).
IDLE = object()


class DecodePool:
    """Decode videos in ``workers`` processes, each video under a ``timeout`` (seconds).

    :meth:`imap` takes items with a ``path`` attribute (or ``path_of(item)``) and yields a
    :class:`DecodeOutcome` per item in completion order, keeping at most ``prefetch`` decoded videos
    waiting for the consumer. With ``stop`` (a callable), it also ends, within about 0.1 s, once
    ``stop()`` is true; items handed out but not yielded are then abandoned (their workers killed).
    A worker that crashes or exceeds the timeout is killed and replaced; when that happened inside
    decord (``plan.decoder == "auto"``), the video is retried once with PyAV.
    An item iterator may yield :data:`IDLE` when it has nothing for now (it should wait a little before
    doing so); the pool then goes on collecting and asks again, so a pool can serve a queue for its life.
    ``decode_fn`` names the decoding function as ``"module:function"`` with the signature of
    :func:`decode_video` (tests substitute hanging or crashing ones).
    """

    def __init__(self, plan: DecodePlan, *, workers: int = 2, timeout: float = 120.0, prefetch: int | None = None,
                 decode_fn: str = "fcvc_pipeline.features.video:decode_video", quiet: bool = True):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.plan = plan
        self.workers = workers
        self.timeout = float(timeout)
        self.prefetch = prefetch if prefetch is not None else 2 * workers
        self.decode_fn = decode_fn
        self.quiet = quiet
        self.threads = decode_threads()  # checked here, in the parent, so a bad value fails before any worker
        self._stop = threading.Event()

    # -- consumer side ------------------------------------------------------------------------
    def imap(self, items: Iterable[Any], *, path_of: Callable[[Any], Path] = lambda it: it.path,
             stop: Callable[[], bool] | None = None) -> Iterator[DecodeOutcome]:
        out: queue.Queue = queue.Queue()
        room = threading.Semaphore(self.prefetch)
        thread = threading.Thread(target=self._schedule, args=(iter(items), path_of, out, room),
                                  name="fcvc-decode", daemon=True)
        self._stop.clear()
        thread.start()
        try:
            while True:
                if stop is None:
                    msg = out.get()
                else:
                    try:
                        msg = out.get(timeout=0.1)
                    except queue.Empty:
                        if stop():
                            return
                        continue
                if msg is _DONE:
                    break
                if isinstance(msg, BaseException):
                    raise msg
                room.release()
                yield msg
        finally:
            self._stop.set()
            room.release()  # wake the scheduler if it waits for room
            thread.join(timeout=30)

    # -- scheduler thread ---------------------------------------------------------------------
    def _schedule(self, items: Iterator[Any], path_of, out: queue.Queue, room: threading.Semaphore) -> None:
        slots: list[_Slot] = []
        retry: deque[_Task] = deque()
        next_id = 0
        exhausted = False
        try:
            slots = [_Slot(self.decode_fn, self.quiet, self.threads) for _ in range(self.workers)]
            while not self._stop.is_set():
                # hand out work: one task per idle worker, while the consumer has room
                for slot in slots:
                    if slot.task is not None or self._stop.is_set():
                        continue
                    if retry:
                        task = retry.popleft()
                    elif exhausted:
                        continue
                    else:
                        if not room.acquire(timeout=0.05) or self._stop.is_set():
                            break
                        item = next(items, _DONE)
                        if item is _DONE:
                            exhausted = True
                            room.release()
                            continue
                        if item is IDLE:
                            room.release()
                            break
                        task = _Task(next_id, item, Path(path_of(item)), self.plan)
                        next_id += 1
                    slot.task, slot.stage = task, ""
                    slot.started = time.monotonic()
                    slot.deadline = slot.started + self.timeout
                    slot.conn.send((task.task_id, str(task.path), task.plan))
                busy = [s for s in slots if s.task is not None]
                if not busy:
                    if exhausted and not retry:
                        break
                    continue
                wait_for = max(0.0, min(s.deadline for s in busy) - time.monotonic())
                wait([s.conn for s in busy], timeout=min(wait_for, 0.2))
                for i, slot in enumerate(slots):
                    if slot.task is not None:
                        slots[i] = self._poll(slot, retry, out)
        except BaseException as e:  # hand the error to the consumer thread
            out.put(e)
        finally:
            for slot in slots:
                if slot.task is None:
                    slot.stop()
                else:
                    slot.kill()
            out.put(_DONE)

    def _poll(self, slot: _Slot, retry: deque, out: queue.Queue) -> _Slot:
        """Collect what ``slot`` has to say; returns the slot (or its replacement)."""
        task = slot.task
        assert task is not None
        try:
            while slot.conn.poll():
                kind, task_id, payload = slot.conn.recv()
                if task_id != task.task_id:
                    continue
                if kind == "stage":
                    slot.stage = payload
                    continue
                slot.task = None
                seconds = time.monotonic() - slot.started
                if kind == "ok":
                    out.put(DecodeOutcome(task.item, payload, None, seconds))
                else:
                    out.put(DecodeOutcome(task.item, None, payload, seconds))
                return slot
        except (EOFError, OSError):
            return self._replace(slot, retry, out, self._death_reason(slot))
        if slot.proc.poll() is not None:
            return self._replace(slot, retry, out, self._death_reason(slot))
        if time.monotonic() > slot.deadline:
            return self._replace(slot, retry, out, f"decoding timed out after {self.timeout:g} s")
        return slot

    @staticmethod
    def _death_reason(slot: _Slot) -> str:
        try:
            code = slot.proc.wait(timeout=5)
        except Exception:
            code = None
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the decoder process crashed ({name})"
        return f"the decoder process exited unexpectedly (exit code {code})"

    def _replace(self, slot: _Slot, retry: deque, out: queue.Queue, reason: str) -> _Slot:
        task = slot.task
        assert task is not None
        culprit = slot.stage or "decoder start"
        seconds = time.monotonic() - slot.started
        slot.kill()
        fresh = _Slot(self.decode_fn, self.quiet, self.threads)
        if culprit == "decord" and task.plan.decoder == "auto" and not task.retried:
            retry.append(replace(task, plan=replace(task.plan, decoder="pyav"), retried=True))
        else:
            out.put(DecodeOutcome(task.item, None, f"{reason} (in {culprit})", seconds))
        return fresh
