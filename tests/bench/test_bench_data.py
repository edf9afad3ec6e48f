"""`fcvc bench data` end to end at tiny shapes: the JSON contract, the synthetic stores, their reuse, bad options.

Timings and memory cannot be predicted, so every derived figure (ratios, fits, targets) is checked against
the raw figures the same JSON reports, and the raw training figures against the run's own metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fcvc_pipeline.bench.data import combine_rounds
from fcvc_pipeline.captions.vocabulary import load_captions
from fcvc_pipeline.cli import main
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.workdir import read_metrics

SIZES = (12, 24)
SHAPES = {"frames": 3, "regions": 4, "frame_dim": 8, "region_dim": 6, "clip_dim": 5}
TINY = ["--frames", "3", "--regions", "4", "--frame-dim", "8", "--region-dim", "6", "--clip-dim", "5",
        "--d-model", "16", "--steps", "2", "--batch-size", "16", "--captions-per-video", "3", "--words", "40",
        "--repeats", "2", "--device", "cpu", "--min-free-gb", "0"]


def _bench(*args: str, code: int = 0) -> dict:
    result = CliRunner().invoke(main, ["bench", "data", *args, "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    data = tmp_path_factory.mktemp("bench-data")
    out = _bench("--data-dir", str(data), "--sizes", ",".join(map(str, SIZES)), "--modes", "memory",
                 "--parts", "train,growth", *TINY)
    return data, out


def _ok(row: dict) -> bool:
    return "skipped" not in row and "error" not in row


def test_stores_hold_the_asked_videos(first):
    data, out = first
    for n in SIZES:
        info = out["stores"][str(n)]
        work = Path(info["workdir"])
        assert work.parent == data and not info["reused"]
        store = FeatureStore.open(work / "features.zarr")
        ids = store.completed_ids()
        assert len(ids) == n
        for vid in (ids[0], ids[-1]):
            v = store.read_video(vid)
            assert v.frame_features.shape == (3, 8)
            assert v.region_features.shape == (3, 4, 6)
            assert v.clip_features.shape == (3, 5)
            assert v.frame_features.dtype == np.float16
            for a in (v.frame_features, v.region_features, v.clip_features):
                assert np.isfinite(a).all()
        rows = load_captions(work / "vocab")
        assert {r.video_id for r in rows} == set(ids)
        per_video = {vid: sum(r.video_id == vid for r in rows) for vid in ids}
        assert set(per_video.values()) == {3}
        splits = {r.video_id: r.split for r in rows}
        counts = {s: sum(v == s for v in splits.values()) for s in ("train", "val", "test")}
        assert counts == info["splits"] and counts["val"] >= 1 and counts["test"] >= 1
        # the bank: the train and validation videos' features as the store holds them
        one = sum(a.nbytes for a in (v.frame_features, v.region_features, v.clip_features))
        assert info["video_bytes"] == one
        assert info["bank_bytes"] == one * (counts["train"] + counts["val"])
    # the larger store extends the smaller one: same numbers for the shared videos
    small = FeatureStore.open(data / "videos-12" / "features.zarr")
    large = FeatureStore.open(data / "videos-24" / "features.zarr")
    assert out["stores"]["24"]["generation"]["linked_videos"] == 12
    for vid in small.completed_ids():
        assert np.array_equal(small.read_video(vid).region_features, large.read_video(vid).region_features)


def test_training_figures_and_ratios_agree(first):
    _, out = first
    assert out["config"]["sizes"] == list(SIZES) and out["ranks"] is None
    speed, to_bank = {}, {}
    for n in SIZES:
        entry = out["training"][str(n)]["memory"]
        assert _ok(entry), entry
        rounds = entry["rounds"]
        for row in rounds:
            assert "--max-steps" in row["command"] and row["returncode"] == 0
            assert row["steps_per_second"] == pytest.approx(row["steps"] / row["train_seconds"], rel=1e-12)
            assert row["peak_pss_bytes"] > 0 and row["ru_maxrss_bytes"] > 0 and row["peak_processes"] >= 1
            assert row["peak_pss_anon_bytes"] + row["peak_pss_file_bytes"] + row["peak_pss_shmem_bytes"] \
                == pytest.approx(row["peak_pss_bytes"], rel=0.01)
            assert 0 <= row["peak_at_seconds"] <= row["wall_seconds"] + 1
            assert not list(Path(row["run_dir"]).glob("*.pt"))  # checkpoints removed (disk)
        history = read_metrics(Path(rounds[-1]["run_dir"]))  # the last round's run
        assert rounds[-1]["steps"] == history[-1]["step"] == 2
        assert rounds[-1]["train_seconds"] == pytest.approx(sum(h["seconds"] for h in history), rel=1e-12)
        # the mode's figures: the median speed, the largest peak (that round's breakdown)
        assert entry["steps_per_second"] == pytest.approx(
            statistics.median(r["steps_per_second"] for r in rounds), rel=1e-12)
        top = rounds[entry["peak_round"]]
        assert entry["peak_pss_bytes"] == top["peak_pss_bytes"] == max(r["peak_pss_bytes"] for r in rounds)
        assert entry["peak_pss_anon_bytes"] == top["peak_pss_anon_bytes"]
        assert entry["ru_maxrss_bytes"] == max(r["ru_maxrss_bytes"] for r in rounds)
        to_bank[str(n)] = entry["peak_pss_bytes"] / out["stores"][str(n)]["bank_bytes"]
    assert out["ratios"]["memory_peak_to_bank"] == pytest.approx(to_bank, rel=1e-12)
    assert out["ratios"]["stream_to_memory_steps_per_second"] == speed  # stream not asked for
    assert out["ratios"]["memory_minus_stream_peak_to_bank"] == {}
    t = out["targets"]["memory_peak_to_bank"]
    assert t["values"] == out["ratios"]["memory_peak_to_bank"]
    assert t["met"] == all(v <= t["at_most"] for v in t["values"].values())
    assert out["targets"]["stream_peak_flat"]["met"] is None
    assert out["targets"]["two_ranks_memory"]["met"] is None


def test_growth_fits_agree_with_the_timings(first):
    _, out = first
    assert set(out["growth"]) == {str(n) for n in SIZES}
    for item, fit in out["fits"].items():
        secs = [out["growth"][str(n)][item]["seconds"] for n in SIZES]
        for n in SIZES:
            g = out["growth"][str(n)][item]
            assert g["seconds"] == min(g["all_seconds"]) and len(g["all_seconds"]) == 2
            assert g["seconds"] == pytest.approx(sum(g["parts"].values()), rel=1e-12)
        assert fit["seconds"] == secs
        slope = (secs[1] - secs[0]) / (SIZES[1] - SIZES[0])  # two points: the line through them
        assert fit["seconds_per_video"] == pytest.approx(slope, rel=1e-9, abs=1e-15)
        assert fit["projected_seconds_at_100000"] == pytest.approx(secs[0] + slope * (100_000 - SIZES[0]), rel=1e-9,
                                                                   abs=1e-9)
        k = math.log(secs[1] / secs[0]) / math.log(SIZES[1] / SIZES[0])
        assert fit["loglog_exponent"] == pytest.approx(k, rel=1e-9, abs=1e-12)
    assert set(out["growth"]["12"]["up_to_date_check"]["parts"]) == {"list_videos", "store_create", "video_status"}
    t = out["targets"]["up_to_date_check_at_100000"]
    assert t["value"] == out["fits"]["up_to_date_check"]["projected_seconds_at_100000"]
    assert t["met"] == (t["value"] <= 60)
    lin = out["targets"]["growth_linear"]
    assert lin["values"] == {k: f["loglog_exponent"] for k, f in out["fits"].items()}
    assert lin["met"] == all(v <= lin["at_most"] for v in lin["values"].values())


@pytest.mark.slow  # two torchrun launches (about 15 s)
def test_rerun_reuses_the_stores_and_two_ranks(first):
    data, out = first
    marks = {n: (data / f"videos-{n}" / "bench-data.json").stat().st_mtime_ns for n in SIZES}
    chunk = next((data / "videos-12" / "features.zarr" / "videos").rglob("c/*"))
    chunk_mtime = chunk.stat().st_mtime_ns
    again = _bench("--data-dir", str(data), "--sizes", ",".join(map(str, SIZES)), "--modes", "stream",
                   "--parts", "ranks", "--ranks-size", "12", "--loader-workers", "0", *TINY)
    for n in SIZES:
        assert again["stores"][str(n)]["reused"]
        assert again["stores"][str(n)]["generation"] == out["stores"][str(n)]["generation"]
        assert (data / f"videos-{n}" / "bench-data.json").stat().st_mtime_ns == marks[n]
    assert chunk.stat().st_mtime_ns == chunk_mtime
    assert again["training"] == {} and again["growth"] == {}
    ranks = again["ranks"]
    assert ranks["videos"] == 12
    entry = ranks["stream"]
    rows = entry["processes"]
    assert rows["1"]["command"][rows["1"]["command"].index("--nproc-per-node") + 1] == "1"
    assert rows["2"]["command"][rows["2"]["command"].index("--nproc-per-node") + 1] == "2"
    assert all(_ok(r) and r["steps"] == 2 for r in rows.values())
    assert entry["two_to_one"] == pytest.approx(rows["2"]["peak_pss_bytes"] / rows["1"]["peak_pss_bytes"], rel=1e-12)
    assert again["ratios"]["two_ranks_stream"] == entry["two_to_one"]
    assert rows["2"]["peak_processes"] >= 3  # the launcher and two ranks, summed


def test_rounds_combine_into_the_median_speed_and_the_largest_peak():
    def row(sps, peak, rss):
        return {"steps_per_second": sps, "ru_maxrss_bytes": rss, "peak_pss_bytes": peak, "peak_pss_anon_bytes": peak - 1,
                "peak_pss_file_bytes": 1, "peak_pss_shmem_bytes": 0, "peak_rss_sum_bytes": peak + 5,
                "peak_processes": 3, "peak_at_seconds": float(peak)}

    rounds = [row(1.0, 30, 7), row(3.0, 50, 6), row(2.0, 40, 9)]
    out = combine_rounds(rounds)
    assert out["steps_per_second"] == 2.0 and out["peak_round"] == 1
    assert out["peak_pss_bytes"] == 50 and out["peak_pss_anon_bytes"] == 49 and out["peak_at_seconds"] == 50.0
    assert out["ru_maxrss_bytes"] == 9 and out["rounds"] == rounds
    failed = combine_rounds([rounds[0], {"error": "exit code 1", "stderr_tail": "..."}])
    assert failed["error"] == "exit code 1" and len(failed["rounds"]) == 2


@pytest.mark.parametrize("args, says", [
    (["--sizes", "5,24"], "at least 10"),
    (["--modes", "memory,disk"], "--modes"),
    (["--parts", "train,everything"], "--parts"),
    (["--sizes", "12", "--ranks-size", "24"], "--ranks-size"),
    (["--sizes", "twelve"], "--sizes"),
    (["--rounds", "0"], "--rounds"),
])
def test_bad_options_are_usage_errors(tmp_path, args, says):
    out = _bench("--data-dir", str(tmp_path), *args, code=2)
    assert says in out["message"]
    assert not any(tmp_path.iterdir())  # nothing generated


def test_a_store_that_would_fill_the_disk_is_refused(tmp_path):
    # 1,000 videos of 15 x 4096 x 4096 float16 regions: 500 GB, more than any test machine's free disk
    out = _bench("--data-dir", str(tmp_path / "d"), "--sizes", "1000", "--regions", "4096", "--region-dim", "4096",
                 code=2)
    assert out["error"]["kind"] == "filesystem" and "GB" in out["message"] and "free" in out["message"]
    assert not (tmp_path / "d").exists()


def test_generation_writes_no_more_than_it_plans(tmp_path):
    out = _bench("--data-dir", str(tmp_path), "--sizes", "10", "--parts", "", *TINY)
    store = out["stores"]["10"]
    assert store["generation"]["written_videos"] == 10
    assert store["store_bytes"] > 0
    assert out["training"] == {} and out["growth"] == {} and out["ranks"] is None
    assert (tmp_path / "videos-10" / "videos" / "video000009.mp4").is_file()
    assert os.path.getsize(tmp_path / "videos-10" / "videos" / "video000009.mp4") == 0
