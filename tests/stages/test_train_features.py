"""`fcvc train --features memory|stream|auto`: streamed features (DataLoader workers reading each batch from
the store) train exactly what the in-memory bank trains, resume bit for bit after a kill, and under torchrun
the in-memory bank is one memory-mapped copy per machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fcvc_pipeline.inference.checkpoint import load_checkpoint
from tests.tiny import make_tiny_workdir

ARGS = ["--model", "fcvc-cf-ia", "--epochs", "3", "--checkpoint-every", "2", "--d-model", "32", "--layers", "2",
        "--batch-size", "6", "--device", "cpu", "--lr", "0.003", "--select-beams", ""]
CMD = [sys.executable, "-m", "fcvc_pipeline", "train"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(workdir, *extra, env=None):
    return subprocess.run(CMD + ["--workdir", str(workdir), *ARGS, *extra], capture_output=True, text=True,
                          env=env or ENV)


def _records(run_dir):
    return [{k: v for k, v in json.loads(x).items() if "seconds" not in k and "sec_per" not in k}
            for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same_weights(a, b):
    a, b = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    return all(torch.equal(a[k][n], b[k][n]) for k in ("state_dict", "ema_state_dict") for n in a[k])


def test_streamed_features_train_what_memory_trains_and_resume_after_a_kill(tmp_path):
    make_tiny_workdir(tmp_path)
    memory = _run(tmp_path, "--run", "memory", "--features", "memory")
    assert memory.returncode == 0, memory.stderr
    assert "features: memory (--features memory" in memory.stderr
    killed = _run(tmp_path, "--run", "stream", "--features", "stream", "--loader-workers", "2",
                  env={**ENV, "FCVC_FAULT_KILL_AT_STEP": "9"})
    assert killed.returncode == -9, killed.stderr
    assert load_checkpoint(tmp_path / "runs" / "stream" / "last.pt")["position"]["batch"] > 0
    resumed = _run(tmp_path, "--run", "stream", "--features", "stream", "--loader-workers", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "features: stream" in resumed.stderr
    runs = tmp_path / "runs"
    assert _records(runs / "memory") == _records(runs / "stream")
    assert _same_weights(runs / "memory", runs / "stream")
    # the streamed run read every batch in worker processes and left none behind
    assert subprocess.run(["pgrep", "-f", "--", f"--workdir {tmp_path}"], capture_output=True).returncode == 1


def test_auto_streams_when_the_bank_exceeds_the_budget(tmp_path):
    make_tiny_workdir(tmp_path)
    small = _run(tmp_path, "--run", "a", "--features", "auto", "--memory-budget", "1KB", "--epochs", "1",
                 "--loader-workers", "0")
    assert small.returncode == 0, small.stderr
    assert "features: stream (the" in small.stderr and "exceeds the memory budget of" in small.stderr
    roomy = _run(tmp_path, "--run", "b", "--memory-budget", "1GiB", "--epochs", "1")
    assert roomy.returncode == 0, roomy.stderr
    assert "features: memory (the" in roomy.stderr and "fits the memory budget" in roomy.stderr
    assert _records(tmp_path / "runs" / "a") == _records(tmp_path / "runs" / "b")
    bad = _run(tmp_path, "--run", "c", "--memory-budget", "lots")
    assert bad.returncode == 2 and "--memory-budget must be a size" in bad.stderr


@pytest.mark.slow
def test_two_ranks_map_one_in_memory_bank(tmp_path):
    make_tiny_workdir(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29537",
           "-m", "fcvc_pipeline", "train", "--workdir", str(tmp_path), "--model", "fcvc-ta", "--epochs", "2",
           "--d-model", "32", "--layers", "2", "--batch-size", "4", "--device", "cpu", "--features", "memory",
           "--select-beams", "", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "FCVC_BANK_CACHE": str(tmp_path / "bc")},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["epochs"] == 2
    folders = list((tmp_path / "bc").iterdir())
    assert len(folders) == 1 and (folders[0] / "done.json").is_file()
    assert {p.name for p in folders[0].glob("*.npy")} == {"frames.npy", "clips.npy"}  # fcvc-ta reads no regions


@pytest.mark.slow
def test_two_nodes_on_a_shared_work_directory(tmp_path):
    """The multi-node recipe of docs/scale.md, both "nodes" on this machine: one torchrun per node, c10d
    rendezvous, one process each, the work directory shared; rank 0 alone writes the run."""
    make_tiny_workdir(tmp_path)

    def node(rank):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:29541",
               "--rdzv-id", "fcvc-test", "-m", "fcvc_pipeline", "train", "--workdir", str(tmp_path), "--model",
               "fcvc-ta", "--epochs", "2", "--d-model", "32", "--layers", "2", "--batch-size", "4", "--device",
               "cpu", "--features", "stream", "--select-beams", "", "--json"]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)

    nodes = [node(0), node(1)]
    outs = [p.communicate(timeout=600) for p in nodes]
    for p, (out, err) in zip(nodes, outs):
        assert p.returncode == 0, err[-3000:]
    docs = [json.loads(out) for out, _ in outs if out.strip()]
    assert len(docs) == 1 and docs[0]["epochs"] == 2  # one JSON document: global rank 0's
    assert len((tmp_path / "runs" / "fcvc-ta" / "metrics.jsonl").read_text().splitlines()) == 2
