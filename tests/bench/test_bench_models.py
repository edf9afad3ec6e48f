"""`fcvc bench decode` and `fcvc bench train` end to end at shrunken shapes (the JSON contract).

Timings cannot be predicted, so the figures derived from them are checked against the raw timings the same
JSON reports, and everything that does not depend on time (parameter counts, caption lengths, the region
mode) against the same models rebuilt here.
"""

import json
import statistics

import pytest
import torch
from click.testing import CliRunner

from fcvc_pipeline.bench.model_inputs import Shapes, random_videos
from fcvc_pipeline.cli import main
from fcvc_pipeline.inference.decoding import generate
from fcvc_pipeline.models import build_model

SMALL = ["--vocab", "50", "--frames", "3", "--regions", "4", "--frame-dim", "8", "--clip-dim", "4",
         "--region-dim", "8", "--d-model", "16"]


def _shapes(max_len: int) -> Shapes:
    """The Shapes that SMALL asks for."""
    return Shapes(vocab=50, frames=3, regions=4, frame_dim=8, clip_dim=4, region_dim=8, d_model=16, max_len=max_len)


def _run(args):
    result = CliRunner().invoke(main, ["bench", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_bench_decode_json():
    out = _run(["decode", "--videos", "3", "--beam", "2", "--max-len", "4",
                "--modes", "incremental,prefix_recompute,full_recompute", *SMALL])
    modes = ("incremental", "prefix_recompute", "full_recompute")
    assert set(out["seconds"]) == set(out["cpu_seconds"]) == set(modes)
    assert all(out["seconds"][m] > 0 for m in modes)
    # every ratio is the named pair of measured times (not inverted, not another mode's)
    for m in ("prefix_recompute", "full_recompute"):
        assert out["ratios"][f"{m}_over_incremental"] == pytest.approx(
            out["seconds"][m] / out["seconds"]["incremental"], rel=1e-9)
        assert out["cpu_ratios"][f"{m}_over_incremental"] == pytest.approx(
            out["cpu_seconds"][m] / out["cpu_seconds"]["incremental"], rel=1e-9)
    for m in modes:
        assert out["captions_per_second"][m] == pytest.approx(3 / out["seconds"][m], rel=1e-9)
    assert out["target"]["full_recompute_over_incremental_at_least"] == 3.0
    assert out["target"]["met"] == (out["ratios"]["full_recompute_over_incremental"] >= 3.0)
    assert out["same_captions"] == {"prefix_recompute": 1.0, "full_recompute": 1.0}

    # the same model and videos rebuilt here (seed 0): its size and its captions' mean length
    shapes = _shapes(4)
    torch.manual_seed(0)
    model = build_model(shapes.model_config("fcvc-cf-ia")).eval()
    hyps = generate(model, random_videos(shapes, 3, torch.device("cpu"), seed=0), beam_size=2, max_len=4)
    assert out["parameters"] == model.num_parameters()
    assert out["mean_tokens"] == pytest.approx(sum(len(h.tokens) for h in hyps) / 3)


def test_bench_train_json():
    out = _run(["train", "--models", "fcvc-final,fcvc", "--captions", "4", "--captions-per-video", "2",
                "--steps", "3", "--warmup", "0", "--max-len", "6", *SMALL])
    rows = out["models"]
    assert list(rows) == ["lstm", "fcvc-cf-ia", "fcvc"]  # the baseline is always timed
    assert all(len(row["step_seconds_all"]) == 3 for row in rows.values())  # one step per round each
    assert out["config"]["videos"] == 2
    shapes = _shapes(6)
    per_10m = {}
    for name, row in rows.items():
        # the parameter count of the model as built here, not whatever the bench's own model reports
        params = build_model(shapes.model_config(name)).num_parameters()
        assert row["parameters"] == params, name
        median = statistics.median(row["step_seconds_all"])  # the median over rounds, not the mean or the last
        assert row["seconds_per_step"] == pytest.approx(median, rel=1e-12), name
        per_10m[name] = median / (params / 1e7)
        assert row["seconds_per_step_per_10M_params"] == pytest.approx(per_10m[name], rel=1e-9), name
    for name, row in rows.items():  # every ratio against the lstm row's figures
        assert row["per_10M_ratio_to_lstm"] == pytest.approx(per_10m[name] / per_10m["lstm"], rel=1e-9), name
        assert row["step_ratio_to_lstm"] == pytest.approx(
            statistics.median(row["step_seconds_all"]) / statistics.median(rows["lstm"]["step_seconds_all"]),
            rel=1e-9), name
    assert out["target"]["met"] == (rows["fcvc-cf-ia"]["per_10M_ratio_to_lstm"] <= 1.0)

    # the region mode reported is the one the model's training forward really uses on this batch shape:
    # "project" runs the region projection over all N*M regions of each video, "fold" over each step's
    # weighted sum of raw regions
    torch.manual_seed(0)
    model = build_model(shapes.model_config("fcvc-cf-ia")).train()
    steps = out["config"]["caption_steps"]
    calls = []
    model.region_proj.register_forward_hook(lambda mod, args, res: calls.append(tuple(args[0].shape)))
    tokens = torch.ones(4, steps, dtype=torch.long)
    model(random_videos(shapes, 2, torch.device("cpu")), tokens, torch.tensor([0, 0, 1, 1]))
    used = {(2, 3 * 4, 8): "project", (4, steps, 8): "fold"}.get(calls[0], calls[0])
    assert rows["fcvc-cf-ia"]["region_mode"] == used
    assert "region_mode" not in rows["fcvc"] and "region_mode" not in rows["lstm"]


def test_bench_train_rejects_a_bad_batch():
    result = CliRunner().invoke(main, ["bench", "train", "--captions", "5", "--captions-per-video", "2", *SMALL])
    assert result.exit_code == 2 and "multiple" in result.output


def test_bench_train_scst_json():
    out = _run(["train", "--scst", "--captions", "6", "--scst-samples", "3", "--corpus-videos", "5",
                "--captions-per-video", "4", "--steps", "3", "--warmup", "0", "--max-len", "6",
                "--scst-baseline", "greedy", *SMALL])
    assert out["config"]["videos"] == 2 and out["config"]["samples"] == 3 and out["config"]["corpus_videos"] == 5
    assert list(out["models"]) == ["fcvc-cf-ia"]  # the default model of the SCST bench
    row = out["models"]["fcvc-cf-ia"]
    assert row["parameters"] == build_model(_shapes(6).model_config("fcvc-cf-ia")).num_parameters()
    every = row["seconds_all"]
    assert set(every) == {"sample", "reward", "greedy", "forward_backward", "pycocoevalcap_reward"}
    assert all(len(v) == 3 for v in every.values())
    med = {p: statistics.median(v) for p, v in every.items()}
    assert row["seconds"] == pytest.approx(med, rel=1e-12)
    step = med["sample"] + med["reward"] + med["greedy"] + med["forward_backward"]
    assert row["step_seconds"] == pytest.approx(step, rel=1e-9)
    assert row["reward_to_forward_backward"] == pytest.approx(med["reward"] / med["forward_backward"], rel=1e-9)
    assert row["reward_share_of_step"] == pytest.approx(med["reward"] / step, rel=1e-9)
    assert row["pycocoevalcap_to_reward"] == pytest.approx(med["pycocoevalcap_reward"] / med["reward"], rel=1e-9)
    assert 0 < row["mean_sample_length"] <= 6
