"""Directories that really refuse writes, for the tests of full disks and read-only outputs.

- :func:`read_only` makes an existing directory refuse writes: ``chmod`` when the tests run as an
  ordinary user (EACCES), a read-only bind mount when they run as root (root ignores the mode bits; EROFS).
- :func:`small_disk` mounts a tiny tmpfs (root only), so that writing more than it holds fails with ENOSPC.

Either yields False when this machine cannot do it (root without the right to mount, no ``mount``):
the caller then injects the same errno at the write site instead (``inject_errno``).

:func:`run_on_read_only_root` runs a command on a read-only root file system (root with ``unshare``;
check :func:`can_unshare_mounts` first, and skip where it is False).
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from fcvc_pipeline import artifacts


def _mount(*args: str) -> bool:
    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@contextmanager
def read_only(path: Path) -> Iterator[bool]:
    """Make the directory tree at ``path`` refuse writes while inside the block; yields whether it could."""
    path = Path(path)
    if not is_root():
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
        try:
            yield True
        finally:
            for p, mode in modes.items():
                p.chmod(stat.S_IMODE(mode))
        return
    if not (_mount("--bind", str(path), str(path)) and _mount("-o", "remount,ro,bind", str(path))):
        _umount(path)
        yield False
        return
    try:
        yield True
    finally:
        _umount(path)


@contextmanager
def small_disk(path: Path, kilobytes: int = 64) -> Iterator[bool]:
    """A tmpfs of ``kilobytes`` mounted at ``path`` (created empty); yields whether it could be mounted."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not is_root() or not _mount("-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(path)):
        yield False
        return
    try:
        yield True
    finally:
        _umount(path)


def inject_errno(monkeypatch: pytest.MonkeyPatch, code: int, *, under: Path) -> None:
    """Make every artifact write below ``under`` fail in ``fsync`` with ``code``, as a full disk does when the
    data reach it: an OSError that names no file (the write site must add the path)."""
    real_fsync = os.fsync
    real_mkstemp = artifacts.tempfile.mkstemp
    our_fds: set[int] = set()

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        if Path(name).resolve().is_relative_to(Path(under).resolve()):
            our_fds.add(fd)
        return fd, name

    def fsync(fd):
        if fd in our_fds:
            our_fds.discard(fd)
            raise OSError(code, os.strerror(code))
        return real_fsync(fd)

    monkeypatch.setattr(artifacts.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(artifacts.os, "fsync", fsync)


def can_unshare_mounts() -> bool:
    """Whether this machine lets a process mount in a private mount namespace (root with ``unshare``)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount --bind / / && mount -o remount,ro,bind /"],
                           capture_output=True)
    return probe.returncode == 0


def run_on_read_only_root(args: list[str], *, cwd: Path, env: dict[str, str],
                          timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``args`` in a private mount namespace (``unshare --mount``) whose root file system is a read-only
    bind mount of itself: the working directory, the home directory, /tmp and /var/tmp refuse every write
    (EROFS), as on a read-only system image; nothing changes outside the namespace."""
    script = f"mount --bind / / && mount -o remount,ro,bind / && cd {shlex.quote(str(cwd))} && exec {shlex.join(args)}"
    return subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=timeout)
