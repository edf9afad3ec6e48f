"""`fcvc bench checksums` at a small size: the JSON contract (ratios derived from the reported timings)."""

import pytest

from fcvc_pipeline.bench.checksums import TARGET, ChecksumBenchConfig, run_checksum_bench


@pytest.mark.slow
def test_the_checksum_bench_reports_ratios_of_its_own_timings(tmp_path):
    out = run_checksum_bench(ChecksumBenchConfig(videos=2, rounds=2, frames=3, train_steps=1, workdir=tmp_path))
    s, r = out["seconds_per_video"], out["ratios"]
    for key in ("write_checksummed", "write_plain", "read_checksummed", "read_plain", "backbone_forward",
                "train_epoch_share"):
        assert s[key] > 0, key
    assert len(out["all_rounds"]["read_plain"]) == 2
    assert r["extract_throughput_cost"] == pytest.approx((s["write_checksummed"] - s["write_plain"])
                                                         / s["backbone_forward"], abs=2e-3)
    assert r["train_epoch_cost"] == pytest.approx((s["read_checksummed"] - s["read_plain"])
                                                  / s["train_epoch_share"], abs=2e-3)
    assert out["target"]["cost_at_most"] == TARGET
    assert out["target"]["met"] == (r["extract_throughput_cost"] <= TARGET and r["train_epoch_cost"] <= TARGET)
    assert {p.name for p in tmp_path.glob("*.zarr")} == {"checksummed0.zarr", "checksummed1.zarr",
                                                         "plain0.zarr", "plain1.zarr"}
