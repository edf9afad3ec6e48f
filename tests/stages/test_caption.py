"""``fcvc caption`` on video files: the TSV lines, and captions kept when the figures cannot be written."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from fcvc_pipeline.captions.synthetic import generate_sample
from fcvc_pipeline.cli import main
from fcvc_pipeline.stages.extract import ExtractConfig, run_extract
from fcvc_pipeline.stages.train import TrainConfig, run_train
from fcvc_pipeline.stages.vocab import VocabConfig, run_vocab
from tests.fs_faults import inject_errno, read_only


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A work directory with real features of six generated videos and a one-epoch model (a few seconds)."""
    root = tmp_path_factory.mktemp("caption")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generate_sample(root / "sample", n=6, size=48, frames=15, show_progress=False)
        work = root / "work"
        run_extract(ExtractConfig(inputs=(root / "sample" / "videos",), workdir=work, frames=4, frame_size=75,
                                  inception_weights="random", c3d_weights="none", device="cpu", workers=1))
        run_vocab(VocabConfig(annotations=root / "sample" / "annotations.json", workdir=work, min_count=1))
        run_train(TrainConfig(workdir=work, epochs=1, d_model=16, layers=2, select_beams=(), device="cpu"))
    finally:
        torch.set_num_threads(threads)
    return work, sorted((root / "sample" / "videos").glob("*.mp4"))


def _fcvc(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FCVC_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "fcvc_pipeline", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_names_with_newline_tab_and_backslash_stay_one_line_each(trained, tmp_path):
    work, videos = trained
    clips = tmp_path / "clips"
    clips.mkdir()
    names = ["two\nlines", "a\ttab", "back\\slash", "carriage\rreturn", "plain"]
    for name, source in zip(names, videos):
        shutil.copy(source, clips / f"{name}.mp4")
    proc = _fcvc("caption", str(clips), "--workdir", str(work), "--device", "cpu", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == len(names) + 1, proc.stdout  # one line per video, no more
    rows = [line.split("\t") for line in lines[:-1]]
    assert all(len(row) == 2 and row[1] for row in rows), rows
    assert sorted(row[0] for row in rows) == sorted(
        ["two\\nlines", "a\\ttab", "back\\\\slash", "carriage\\rreturn", "plain"])
    # --json keeps the names as they are, with the same captions
    doc = json.loads(_fcvc("caption", str(clips), "--workdir", str(work), "--device", "cpu", "--workers", "1",
                           "--json").stdout)
    escaped = {n: n.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
               for n in names}
    assert {escaped[d["video"]]: d["caption"] for d in doc} == dict(map(tuple, rows))


def test_captions_are_printed_when_the_attention_directory_is_read_only(trained, tmp_path):
    work, videos = trained
    locked = tmp_path / "locked"
    locked.mkdir()
    figs = locked / "figs"
    with read_only(locked) as real:
        if not real:
            pytest.skip("cannot make a read-only directory here (root without mount); the injected test covers it")
        plain = _fcvc("caption", str(videos[0]), str(videos[1]), "--workdir", str(work), "--device", "cpu",
                      "--workers", "1", "--attention", str(figs))
        as_json = _fcvc("caption", str(videos[0]), "--workdir", str(work), "--device", "cpu", "--workers", "1",
                        "--attention", str(figs), "--json")
    assert plain.returncode == 1, plain.stderr
    lines = plain.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [videos[0].stem, videos[1].stem]
    assert all(line.split("\t")[1] for line in lines)
    reason = os.strerror(errno.EROFS if os.geteuid() == 0 else errno.EACCES)
    assert str(figs) in plain.stderr and reason in plain.stderr and "warning" in plain.stderr
    assert "internal error" not in plain.stderr
    assert as_json.returncode == 1, as_json.stderr
    (item,) = json.loads(as_json.stdout)
    assert item["caption"] == lines[0].split("\t")[1]
    assert item["figure"] is None and reason in item["figure_error"] and str(figs) in item["figure_error"]
    assert not figs.exists()


def test_captions_are_kept_when_the_disk_fills_while_writing_figures(trained, tmp_path, monkeypatch):
    work, videos = trained
    figs = tmp_path / "figs"
    inject_errno(monkeypatch, errno.ENOSPC, under=figs)  # every figure write meets a full disk
    result = CliRunner().invoke(main, ["caption", str(videos[0]), str(videos[1]), "--workdir", str(work),
                                       "--device", "cpu", "--workers", "1", "--attention", str(figs)])
    assert result.exit_code == 1, result.output
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [videos[0].stem, videos[1].stem]
    first = figs / f"{videos[0].stem}.png"
    assert f"{first}: {os.strerror(errno.ENOSPC)}" in result.stderr  # the figure named, not a temp file
    assert str(figs) in result.stderr and "2 of 2 missing" in result.stderr
    assert not list(figs.iterdir())  # no temp file left behind
