"""Progress when stderr is not a terminal: plain lines at a bounded rate (first, every interval, final)
with done/total, rate, ETA and the caller's postfix; tqdm when forced; nothing with FCVC_PROGRESS=0.

Each case is a real subprocess whose stderr is a pipe, as under nohup, SLURM or CI."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time

from fcvc_pipeline import progress

LOOP = """
import sys, time
from fcvc_pipeline import progress
n, pause = int(sys.argv[1]), float(sys.argv[2])
bar = progress.bar(total=n, desc="work", unit="video")
for i in range(n):
    if pause:
        time.sleep(pause)
    if i == 3:
        bar.set_postfix(failed=1, refresh=False)
    bar.update(1)
bar.close()
for _ in progress.bar(range(5), desc="iterated", unit="batch"):
    pass
print("stdout stays clean")
"""

MIDDLE = re.compile(r"^work: (\d+)/(\d+) videos \(\d+%\) after [\dhms.]+, [\d.]+ video/s, ETA [\dhms.]+(, failed=1)?$")


def run_loop(n: int, pause: float, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    environ = {k: v for k, v in os.environ.items() if k not in ("FCVC_PROGRESS", "FCVC_PROGRESS_INTERVAL")}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", LOOP, str(n), str(pause)], env={**environ, **env},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "stdout stays clean\n"
    return done, time.monotonic() - t0


def test_a_pipe_gets_plain_lines_with_done_total_rate_eta_and_the_postfix():
    done, wall = run_loop(40, 0.025, FCVC_PROGRESS_INTERVAL="0.2")
    lines = done.stderr.splitlines()
    work = [line for line in lines if line.startswith("work:")]
    assert "\r" not in done.stderr and "|" not in done.stderr  # no tqdm redraws in a log
    assert work[0] == "work: 0/40 videos (0%)"
    assert re.fullmatch(r"work: 40/40 videos \(100%\) in [\d.]+s, [\d.]+ video/s, failed=1", work[-1]), work[-1]
    middle = work[1:-1]
    assert middle, lines  # ~1 s of work, a line every 0.2 s
    for line in middle:
        assert MIDDLE.match(line), line
    counts = [int(MIDDLE.match(line).group(1)) for line in middle]
    assert counts == sorted(counts) and all(0 < c < 40 for c in counts)
    assert len(work) <= 2 + math.ceil(wall / 0.2)  # bounded by the interval
    assert lines[len(work)] == "iterated: 0/5 batches (0%)"
    assert lines[-1].startswith("iterated: 5/5 batches (100%) in ")


def test_many_items_give_a_bounded_number_of_lines():
    done, _ = run_loop(200_000, 0)  # the default interval (30 s): the first and the final line only
    work = [line for line in done.stderr.splitlines() if line.startswith("work:")]
    assert work[0] == "work: 0/200000 videos (0%)" and work[-1].startswith("work: 200000/200000 videos (100%) in ")
    assert len(work) == 2

    done, wall = run_loop(200_000, 0, FCVC_PROGRESS_INTERVAL="0.1")
    work = [line for line in done.stderr.splitlines() if line.startswith("work:")]
    assert 2 <= len(work) <= 2 + math.ceil(wall / 0.1)


def test_fcvc_progress_0_silences_and_1_forces_tqdm():
    done, _ = run_loop(50, 0, FCVC_PROGRESS="0", FCVC_PROGRESS_INTERVAL="0")
    assert done.stderr == ""
    done, _ = run_loop(50, 0, FCVC_PROGRESS="1")
    assert "work: 100%|" in done.stderr and "50/50" in done.stderr  # tqdm's bar, even into a pipe


def test_a_bar_over_nothing_says_nothing_and_durations_read_well(monkeypatch, capsys):
    monkeypatch.setenv("FCVC_PROGRESS_INTERVAL", "0")
    with progress.LineBar(total=0, desc="empty") as bar:
        bar.update(0)
    for _ in progress.LineBar([], desc="empty"):
        pass
    assert capsys.readouterr().err == ""
    assert [progress.duration(s) for s in (0.42, 42, 198, 3720)] == ["0.4s", "42s", "3m18s", "1h02m"]
