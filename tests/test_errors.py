"""Full disks, read-only directories and refused writes are errors a person can act on: exit 2, naming the
path and the reason, with ``--json`` still printing its error document."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fcvc_pipeline.artifacts import atomic_write_json
from fcvc_pipeline.cli import main
from fcvc_pipeline.commands.common import run_and_exit
from fcvc_pipeline.errors import (
    EXIT_INTERNAL,
    EXIT_USAGE,
    ConfigError,
    FcvcError,
    FilesystemError,
    InputError,
    MismatchError,
    MissingArtifactError,
    StoppedBySignal,
    filesystem_error,
)
from tests.fs_faults import inject_errno, is_root, read_only, small_disk


def _annotations(path: Path, videos: int = 4, captions: int = 3) -> Path:
    lines = ["video_id,caption,split"]
    for v in range(videos):
        split = "train" if v < videos - 1 else "test"
        lines += [f"vid{v:05d},a dog number {v} runs after ball {c} in the park,{split}" for c in range(captions)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _fcvc(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FCVC_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "fcvc_pipeline", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _assert_refused(code: int, stdout: str, stderr: str, path: Path, reason: str) -> None:
    assert code == EXIT_USAGE, stderr
    doc = json.loads(stdout)
    assert set(doc) == {"error", "message", "exit_code"} and doc["exit_code"] == EXIT_USAGE
    error = doc["error"]
    assert error["kind"] == "filesystem" and error["message"] == doc["message"] and error["hint"]
    assert str(path) in error["message"] and reason in error["message"] and error["path"].startswith(str(path))
    assert f"error: {doc['message']}" in stderr and f"hint: {error['hint']}" in stderr
    assert "internal error" not in stderr and "Traceback" not in stderr


# -- the error itself --------------------------------------------------------------------------------------
def test_filesystem_error_names_both_paths_and_the_reason():
    e = FilesystemError.from_oserror(OSError(errno.EACCES, "x", "/a/tmp", None, "/a/b"))
    assert e.message == f"/a/tmp -> /a/b: {os.strerror(errno.EACCES)}" and e.exit_code == EXIT_USAGE
    assert "permissions" in e.hint
    nameless = FilesystemError.from_oserror(OSError(errno.ENOSPC, "No space"))
    assert os.strerror(errno.ENOSPC) in nameless.message and "free space" in nameless.hint


def test_wrapped_filesystem_errors_are_found_and_other_oserrors_stay_bugs():
    try:
        try:
            raise OSError(errno.EROFS, "ro", "/data/store/x")
        except OSError as inner:
            raise RuntimeError("the library's own wrapper") from inner
    except RuntimeError as outer:
        found = filesystem_error(outer)
    assert found is not None and found.path == "/data/store/x" and found.errno == errno.EROFS
    assert filesystem_error(OSError(errno.ECONNREFUSED, "refused")) is None
    assert filesystem_error(ValueError("no")) is None


def test_a_bug_with_json_prints_an_error_document(capsys):
    def bug():
        raise KeyError("oops")

    with pytest.raises(SystemExit) as e:
        run_and_exit(bug, json_out=True, verbose=False)
    assert e.value.code == EXIT_INTERNAL
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_code"] == EXIT_INTERNAL and doc["error"]["kind"] == "internal" and "KeyError" in doc["message"]
    assert "rerun with -v" in doc["error"]["hint"]


def test_every_expected_error_names_its_kind():
    assert [e.to_json()["kind"] for e in (
        ConfigError("c"), InputError("f.csv", "bad", line=3), MissingArtifactError("m"), MismatchError("x"),
        FilesystemError.from_oserror(OSError(errno.ENOSPC, "full", "/d/f")), StoppedBySignal(2, "s"), FcvcError("e"),
    )] == ["config", "input", "missing", "mismatch", "filesystem", "interrupted", "error"]
    assert InputError("f.csv", "bad", line=3).to_json() == {"kind": "input", "message": "f.csv:3: bad", "hint": None,
                                                           "path": "f.csv", "line": 3}
    assert FilesystemError.from_oserror(OSError(errno.ENOSPC, "full", "/d/f")).to_json()["errno"] == "ENOSPC"
    assert StoppedBySignal(2, "s").to_json()["signal"] == "SIGINT" and StoppedBySignal(2, "s").exit_code == 130


# -- the write site names the artifact --------------------------------------------------------------------
def test_a_failed_write_names_the_artifact_not_its_temp_file(tmp_path, monkeypatch):
    inject_errno(monkeypatch, errno.ENOSPC, under=tmp_path)
    target = tmp_path / "out" / "scores.json"
    with pytest.raises(OSError) as e:
        atomic_write_json(target, {"CIDEr": 1.0})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert list(target.parent.iterdir()) == []  # the temp file is gone


def test_a_failed_rename_names_the_artifact(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), src, None, dst)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError) as e:
        atomic_write_json(tmp_path / "m.json", {})
    assert e.value.filename == str(tmp_path / "m.json") and e.value.filename2 is None


# -- commands, in a real process ---------------------------------------------------------------------------
def test_vocab_into_a_read_only_directory_is_exit_2_naming_the_path(tmp_path, monkeypatch):
    ann = _annotations(tmp_path / "ann.csv")
    locked = tmp_path / "locked"
    locked.mkdir()
    workdir = locked / "work"
    with read_only(locked) as real:
        if real:
            proc = _fcvc("vocab", str(ann), "--min-count", "1", "--workdir", str(workdir), "--json")
            code, out, err = proc.returncode, proc.stdout, proc.stderr
    if not real:  # root without the right to mount: the same errno, injected where the files are written
        inject_errno(monkeypatch, errno.EROFS, under=tmp_path)
        res = CliRunner().invoke(main, ["vocab", str(ann), "--min-count", "1", "--workdir", str(workdir), "--json"])
        code, out, err = res.exit_code, res.stdout, res.stderr
    reason = os.strerror(errno.EACCES if real and not is_root() else errno.EROFS)
    _assert_refused(code, out, err, workdir, reason)


def test_up_to_date_work_in_a_read_only_workdir_succeeds(tmp_path):
    ann = _annotations(tmp_path / "ann.csv")
    workdir = tmp_path / "work"
    first = _fcvc("vocab", str(ann), "--min-count", "1", "--workdir", str(workdir), "--json")
    assert first.returncode == 0, first.stderr
    with read_only(workdir) as real:
        if not real:
            pytest.skip("cannot make a read-only directory here")
        again = _fcvc("vocab", str(ann), "--min-count", "1", "--workdir", str(workdir), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["up_to_date"] is True


def test_vocab_on_a_full_disk_is_exit_2_naming_the_file(tmp_path, monkeypatch):
    ann = _annotations(tmp_path / "ann.csv", videos=400, captions=5)  # ~90 kB of captions.jsonl
    disk = tmp_path / "disk"
    workdir = disk / "work"
    with small_disk(disk, kilobytes=64) as real:
        if real:
            proc = _fcvc("vocab", str(ann), "--min-count", "1", "--workdir", str(workdir), "--json")
            code, out, err = proc.returncode, proc.stdout, proc.stderr
            left = sorted(p.name for p in (workdir / "vocab").iterdir())
    if not real:  # an ordinary user cannot mount a small disk: the errno the kernel would give, injected
        inject_errno(monkeypatch, errno.ENOSPC, under=tmp_path)
        res = CliRunner().invoke(main, ["vocab", str(ann), "--min-count", "1", "--workdir", str(workdir), "--json"])
        code, out, err = res.exit_code, res.stdout, res.stderr
        left = sorted(p.name for p in (workdir / "vocab").iterdir())
    _assert_refused(code, out, err, workdir / "vocab", os.strerror(errno.ENOSPC))
    message = json.loads(out)["error"]["message"]
    assert message.split(":")[0] in {str(workdir / "vocab" / n) for n in ("vocab.json", "captions.jsonl")}
    assert "free space" in err
    assert not [n for n in left if n.endswith(".tmp")] and "manifest.json" not in left
