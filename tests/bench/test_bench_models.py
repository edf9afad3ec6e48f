"""`fcvc bench decode` and `fcvc bench train` end to end at shrunken shapes (the JSON contract)."""

import json

from click.testing import CliRunner

from fcvc_pipeline.cli import main

SMALL = ["--vocab", "50", "--frames", "3", "--regions", "4", "--frame-dim", "8", "--clip-dim", "4",
         "--region-dim", "8", "--d-model", "16"]


def _run(args):
    result = CliRunner().invoke(main, ["bench", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_bench_decode_json():
    out = _run(["decode", "--videos", "3", "--beam", "2", "--max-len", "4",
                "--modes", "incremental,prefix_recompute,full_recompute", *SMALL])
    assert set(out["seconds"]) == {"incremental", "prefix_recompute", "full_recompute"}
    assert out["ratios"]["full_recompute_over_incremental"] > 0
    assert out["same_captions"] == {"prefix_recompute": 1.0, "full_recompute": 1.0}
    assert 0 <= out["mean_tokens"] <= 4 and out["parameters"] > 0
    assert out["target"]["full_recompute_over_incremental_at_least"] == 3.0


def test_bench_train_json():
    out = _run(["train", "--models", "fcvc-final,fcvc", "--captions", "4", "--captions-per-video", "2",
                "--steps", "3", "--warmup", "0", "--max-len", "6", *SMALL])
    assert all(len(row["step_seconds_all"]) == 3 for row in out["models"].values())  # one step per round each
    assert list(out["models"]) == ["lstm", "fcvc-cf-ia", "fcvc"]  # the baseline is always timed
    assert out["models"]["lstm"]["per_10M_ratio_to_lstm"] == 1.0
    cf = out["models"]["fcvc-cf-ia"]
    assert cf["seconds_per_step_per_10M_params"] == cf["seconds_per_step"] / (cf["parameters"] / 1e7)
    assert cf["region_mode"] in ("project", "fold")
    assert out["config"]["videos"] == 2


def test_bench_train_rejects_a_bad_batch():
    result = CliRunner().invoke(main, ["bench", "train", "--captions", "5", "--captions-per-video", "2", *SMALL])
    assert result.exit_code == 2 and "multiple" in result.output
