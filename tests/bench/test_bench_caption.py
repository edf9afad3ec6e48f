"""`fcvc bench caption` at a small size: the JSON contract (ratios of its own medians, identical captions)."""

import pytest

from fcvc_pipeline.bench.caption import SIDES, CaptionBenchConfig, run_caption_bench

HALF_MS = 5e-4  # the report rounds seconds, and the figures it derives from them, to 3 decimals


def quotient_within_rounding(reported, numerator, denominator, numerator_rounded=False):
    """Is `reported` a 3-decimal rounding of a / b, where b (and a, when rounded) lie within half a unit of the
    figures shown? The sub-0.1 s cached sides make a fixed relative tolerance flaky."""
    spread = HALF_MS if numerator_rounded else 0.0
    low = (numerator - spread) / (denominator + HALF_MS)
    high = (numerator + spread) / max(denominator - HALF_MS, 1e-9)
    return low - HALF_MS <= reported <= high + HALF_MS


@pytest.mark.slow
def test_the_caption_bench_reports_ratios_of_its_own_timings(tmp_path, one_thread):
    out = run_caption_bench(CaptionBenchConfig(videos=2, rounds=2, video_frames=8, video_size=(64, 48), frames=3,
                                               frame_size=75, d_model=16, words=8, workers=1, workdir=tmp_path))
    assert set(out["sides"]) == set(SIDES)
    for side in SIDES:
        for n in ("1", "2"):
            row = out["sides"][side][n]
            assert len(row["all_rounds"]) == 2 and row["seconds"] > 0
            assert row["seconds_per_video"] == pytest.approx(row["seconds"] / int(n), abs=2e-3)
            assert quotient_within_rounding(row["videos_per_s"], int(n), row["seconds"]), row
    for other in ("workdir_cold", "workdir_cached"):
        for n in ("1", "2"):
            ratio = out["ratios"][f"model_to_{other}"][n]
            assert quotient_within_rounding(ratio, out["sides"]["model"][n]["seconds"],
                                            out["sides"][other][n]["seconds"], numerator_rounded=True), (other, n)
    assert out["captions_identical"] is True
    assert 0 < out["mean_caption_words"] <= 20
    memory = out["memory"]
    assert 0 < memory["rss_after_import_mb"] <= memory["peak_after_import_mb"]
    assert memory["load_peak_mb"] >= memory["rss_after_load_mb"] > 0 and memory["caption_one_peak_mb"] > 0
    assert memory["load_extra_mb"] == pytest.approx(memory["load_peak_mb"] - memory["rss_after_import_mb"], abs=0.2)
    assert memory["load_seconds"] > 0 and memory["import_seconds"] > 0
    assert out["model_file_bytes"] == (tmp_path / "captioner.fcvc").stat().st_size
    assert (tmp_path / "work" / "caption-features").is_dir()  # kept: --keep / workdir
