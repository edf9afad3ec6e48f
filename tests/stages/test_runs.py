"""`fcvc runs`: one line per run (done, interrupted, running), with epochs, CIDEr, decoding, parameters and size;
no runs is exit 0 with a message; FCVC_WORKDIR stands in for --workdir."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from fcvc_pipeline.stages.runs import format_runs, run_runs
from fcvc_pipeline.stages.score import ScoreConfig, run_score
from fcvc_pipeline.workdir import RUNNING_WINDOW_S, read_metrics, run_summary
from tests.tiny import generated_workdir

CLI = [sys.executable, "-m", "fcvc_pipeline", "runs"]


def fcvc_runs(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FCVC_WORKDIR"} | {"OMP_NUM_THREADS": "1", "FCVC_PROGRESS": "0"}
    return subprocess.run(CLI + list(args), capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A real tiny trained and scored run, an interrupted copy of it (last.pt, no manifest, written an hour
    ago) and a running one (the same, written now)."""
    root = tmp_path_factory.mktemp("runs")
    work, _ = generated_workdir(root, epochs=2, inception_weights="random")
    run_score(ScoreConfig(workdir=work, use_java=False))
    done = work / "runs" / "fcvc-cf-ia"
    for name, age in (("stopped", 3600.0), ("training", 1.0)):
        run = work / "runs" / name
        run.mkdir()
        for f in ("config.json", "last.pt"):
            shutil.copy2(done / f, run / f)
        (run / "metrics.jsonl").write_text((done / "metrics.jsonl").read_text().splitlines()[0] + "\n")
        then = time.time() - age
        for f in run.iterdir():
            os.utime(f, (then, then))
    (work / "runs" / "ablation.md").write_text("| a table, not a run |\n")
    return work


def test_runs_lists_done_interrupted_and_running_runs(work):
    proc = fcvc_runs("--workdir", str(work), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    by_name = {r["name"]: r for r in doc["runs"]}
    assert list(by_name) == ["fcvc-cf-ia", "stopped", "training"]  # sorted; ablation.md is no run

    done = by_name["fcvc-cf-ia"]
    manifest = json.loads((work / "runs" / "fcvc-cf-ia" / "manifest.json").read_text())["outputs"]
    scores = json.loads((work / "runs" / "fcvc-cf-ia" / "captions" / "test-beam5.scores.json").read_text())
    assert done["status"] == "done" and done["model"] == "fcvc-cf-ia"
    assert (done["epochs_done"], done["epochs_planned"]) == (2, 2)
    assert (done["best_val_cider"], done["best_epoch"]) == (manifest["best_val_cider"], manifest["best_epoch"])
    assert done["beam_size"] == 5 and done["decoding"] == manifest["decoding"]
    assert (done["test_cider"], done["test_beam"]) == (scores["scores"]["CIDEr"], 5)
    assert done["parameters"] == manifest["parameters"] and done["checkpoints"] == ["best.pt", "last.pt"]
    assert done["size_bytes"] > (work / "runs" / "fcvc-cf-ia" / "best.pt").stat().st_size

    stopped = by_name["stopped"]
    assert stopped["status"] == "interrupted" and "--resume" in stopped["note"]
    assert (stopped["epochs_done"], stopped["epochs_planned"]) == (1, 2) and stopped["checkpoints"] == ["last.pt"]
    assert stopped["parameters"] == manifest["parameters"]  # from the epoch records, no checkpoint loaded
    assert stopped["test_cider"] is None and stopped["decoding"] is None
    assert by_name["training"]["status"] == "running"

    table = fcvc_runs("--workdir", str(work))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["RUN", "MODEL", "STATUS"] and len(lines) == 4
    assert lines[1].split()[:4] == ["fcvc-cf-ia", "fcvc-cf-ia", "done", "2/2"]
    assert f"{100 * scores['scores']['CIDEr']:.1f}" in lines[1]
    assert lines[2].split()[:4] == ["stopped", "fcvc-cf-ia", "interrupted", "1/2"]


def test_running_turns_interrupted_once_nothing_is_written(work):
    run = work / "runs" / "training"
    later = max(f.stat().st_mtime for f in run.iterdir()) + RUNNING_WINDOW_S + 1
    assert run_summary(run).status == "running"
    assert run_summary(run, now=later).status == "interrupted"


def test_a_done_run_that_stopped_early_says_why(work, tmp_path):
    run = tmp_path / "early"
    shutil.copytree(work / "runs" / "fcvc-cf-ia", run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"]["epochs"], manifest["config"]["patience"] = 30, 1
    (run / "manifest.json").write_text(json.dumps(manifest))
    s = run_summary(run)
    assert (s.status, s.epochs_done, s.epochs_planned) == ("done", 2, 30)
    assert s.note == "stopped early: no better validation CIDEr for 1 epochs"
    assert len(read_metrics(run)) == 2


def test_runs_is_a_command():
    listed = subprocess.run([sys.executable, "-m", "fcvc_pipeline", "--help"], capture_output=True, text=True)
    assert "fcvc runs" in listed.stdout and "\n  runs " in listed.stdout


def test_no_runs_is_exit_0_and_a_missing_workdir_exit_2(tmp_path):
    empty = fcvc_runs("--workdir", str(tmp_path), "--json")
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout)["runs"] == [] and f"no runs in {tmp_path / 'runs'}" in empty.stderr
    assert run_runs(tmp_path).runs == [] and format_runs([]).startswith("RUN")
    missing = fcvc_runs("--workdir", str(tmp_path / "typo"), "--json")
    assert missing.returncode == 2
    doc = json.loads(missing.stdout)
    assert doc["error"]["kind"] == "missing" and str(tmp_path / "typo") in doc["error"]["message"]


def test_fcvc_workdir_is_the_default_workdir(work, tmp_path):
    proc = subprocess.run(CLI + ["--json"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "FCVC_WORKDIR": str(work), "FCVC_PROGRESS": "0"})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["workdir"] == str(work) and len(doc["runs"]) == 3
    given = subprocess.run(CLI + ["--json", "--workdir", str(tmp_path)], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120, env={**os.environ, "FCVC_WORKDIR": str(work)})
    assert json.loads(given.stdout)["runs"] == []  # --workdir wins over the variable
