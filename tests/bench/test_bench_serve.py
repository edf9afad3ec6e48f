"""`fcvc bench serve` at the tiniest size: the JSON contract, no failed request, and exit 2 without [serve]."""

import json
import sys

import pytest
from click.testing import CliRunner

from fcvc_pipeline.bench.serve import MODES, ServeBenchConfig, run_serve_bench
from fcvc_pipeline.cli import main


@pytest.mark.slow
def test_the_serve_bench_measures_both_servers_without_errors(tmp_path):
    cfg = ServeBenchConfig(clients=(1, 2), requests=4, videos=2, video_frames=8, video_size=(64, 48), frames=3,
                           frame_size=75, d_model=16, words=8, workers=1, threads=1, workdir=tmp_path)
    out = run_serve_bench(cfg)
    json.dumps(out)  # one JSON document
    assert out["errors"] == 0 and out["first_error"] is None
    assert set(out["modes"]) == set(MODES)
    for mode in MODES:
        side = out["modes"][mode]
        assert side["max_batch"] == (16 if mode == "batched" else 1)
        assert side["warmup_errors"] == 0 and side["decoder_processes"] == 1
        for n in ("1", "2"):
            row = side["clients"][n]
            assert row["requests"] == 4 and row["errors"] == 0
            assert row["requests_per_s"] == pytest.approx(4 / row["seconds"], rel=1e-2)
            assert 0 < row["latency_p50_s"] <= row["latency_p95_s"] <= row["latency_max_s"]
            assert 1 <= row["mean_batch_size"] <= (2 if mode == "batched" else 1)
            assert row["server_seconds"]["total"] > 0
        memory = side["memory"]
        for moment in ("after_warmup", "after_half", "end"):
            assert memory[moment]["rss_mb"] > 0 and memory[moment]["children"] >= 1  # the decoder process
            assert memory[moment]["children_rss_mb"] > 0
        assert memory["peak_hwm_mb"] >= memory["end"]["rss_mb"]
        assert memory["rss_growth_mb"] == pytest.approx(memory["end"]["rss_mb"] - memory["after_half"]["rss_mb"],
                                                        abs=0.11)
        assert memory["memory_stable"] is (memory["rss_growth_mb"] <= 50)
        assert memory["figure_png_bytes"] > 0
    for n in ("1", "2"):
        ratio = out["ratios"]["batched_to_unbatched_throughput"][n]
        assert ratio > 0 and ratio == pytest.approx(out["modes"]["batched"]["clients"][n]["requests_per_s"]
                                                    / out["modes"]["unbatched"]["clients"][n]["requests_per_s"],
                                                    rel=1e-2)
    assert out["headline"] == {"clients": 2, "batched_to_unbatched_throughput":
                               out["ratios"]["batched_to_unbatched_throughput"]["2"]}
    assert (tmp_path / "captioner.fcvc").stat().st_size == out["model_file_bytes"]  # kept: --workdir


def test_without_the_serve_extra_the_bench_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi raises ImportError
    result = CliRunner().invoke(main, ["bench", "serve", "--json", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "fastapi" in result.output and "pip install 'fcvc-pipeline[serve]'" in result.output
    assert not any(tmp_path.iterdir())  # nothing was made


def test_bad_options_are_usage_errors(tmp_path):
    result = CliRunner().invoke(main, ["bench", "serve", "--clients", "0", "--max-batch", "1", "--workdir",
                                       str(tmp_path)])
    assert result.exit_code == 2
    assert "--clients" in result.output and "--max-batch" in result.output
