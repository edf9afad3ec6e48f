"""`fcvc extract` on real read-only and full filesystems.

Each case runs the command in a private mount namespace (``unshare --mount``): a read-only bind mount of
the work directory, or a size-limited tmpfs that fills up mid-run. Skipped where the machine does not
allow mounts (not root, no unshare); tests/test_errors.py covers the same paths with injected errnos.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys

import pytest

from fcvc_pipeline.features.store import FeatureStore
from tests.fs_faults import can_unshare_mounts
from tests.stages.test_extract import TINY_CLI, make_corpus

pytestmark = pytest.mark.skipif(not can_unshare_mounts(), reason="mounts need root and unshare")

EXTRACT = [sys.executable, "-m", "fcvc_pipeline", "extract", *TINY_CLI]


def in_namespace(setup: str, args: list[str]) -> subprocess.CompletedProcess:
    script = f"{setup} && exec {shlex.join(args)}"
    return subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True)


def test_an_up_to_date_extract_works_in_a_read_only_workdir_and_new_work_is_refused_naming_it(tmp_path):
    videos, work = tmp_path / "videos", tmp_path / "work"
    make_corpus(videos, 3)
    first = subprocess.run(EXTRACT + ["--workdir", str(work), str(videos)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    # the user's own lock file, left by the first run, is gone: nothing may need creating
    (work / "features.zarr.lock").unlink()
    read_only = f"mount --bind {shlex.quote(str(work))} {shlex.quote(str(work))} && " \
                f"mount -o remount,bind,ro {shlex.quote(str(work))}"
    again = in_namespace(read_only, EXTRACT + ["--workdir", str(work), "--json", str(videos)])
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["up_to_date"] == 3

    make_corpus(tmp_path / "more", 4)
    shutil.copy(tmp_path / "more" / "clip03.mp4", videos / "clip03.mp4")
    refused = in_namespace(read_only, EXTRACT + ["--workdir", str(work), "--json", str(videos)])
    assert refused.returncode == 2, refused.stderr
    assert "Read-only file system" in refused.stderr and str(work) in refused.stderr
    assert "internal error" not in refused.stderr
    assert json.loads(refused.stdout)["exit_code"] == 2
    assert FeatureStore.open(work / "features.zarr").completed_ids() == ["clip00", "clip01", "clip02"]


def test_a_full_disk_stops_extraction_naming_the_path_and_keeps_every_finished_video(tmp_path):
    videos, disk = tmp_path / "videos", tmp_path / "disk"
    make_corpus(videos, 10)
    disk.mkdir()
    out = tmp_path / "out.json"
    # 480 KiB: the store (~200 KiB in tmpfs pages) and a few videos fit (~84 KiB each), the rest do not
    setup = f"mount -t tmpfs -o size=480k tmpfs {shlex.quote(str(disk))}"
    full = in_namespace(setup, ["sh", "-c", f"{shlex.join(EXTRACT + ['--workdir', str(disk / 'w'), '--json', str(videos)])}"
                                            f" > {shlex.quote(str(out))}; rc=$?; cp -r {shlex.quote(str(disk / 'w'))} "
                                            f"{shlex.quote(str(tmp_path / 'copy'))}; exit $rc"])
    assert full.returncode == 2, full.stderr
    assert "No space left on device" in full.stderr and "the failing call did not name the file" not in full.stderr
    assert f"{disk / 'w' / 'features.zarr'}/" in full.stderr  # the path written, not only the store
    assert "internal error" not in full.stderr
    assert json.loads(out.read_text())["exit_code"] == 2
    store = FeatureStore.open(tmp_path / "copy" / "features.zarr")
    done = store.completed_ids()
    assert 0 < len(done) < 10
    for vid in done:  # whatever was finished is whole
        assert store.check_video(vid, full=True) is None, vid
