"""``fcvc train --model all``: every model trained and scored into the paper's table."""

import json

import pytest

from fcvc_pipeline.models import ABLATION_ORDER
from fcvc_pipeline.stages.ablation import run_ablation
from fcvc_pipeline.stages.train import TrainConfig
from tests.stages.test_train import TINY
from tests.tiny import make_tiny_workdir


@pytest.mark.slow
def test_ablation_runner_writes_the_paper_table(tmp_path):
    w = make_tiny_workdir(tmp_path)
    res = run_ablation(TrainConfig(workdir=w, model="all", epochs=2, score_beam_size=2, **TINY))
    assert [r["model"] for r in res.rows] == list(ABLATION_ORDER)
    table = (w / "runs" / "ablation.md").read_text()
    for name in ABLATION_ORDER:
        assert name in table
    doc = json.loads((w / "runs" / "ablation.json").read_text())
    for row in doc["rows"]:
        assert 0.0 <= row["Bleu_4"] <= 1.0 and row["CIDEr"] >= 0.0 and row["sec_per_10M_params"] > 0
        assert (w / "runs" / row["model"] / "best.pt").is_file()


def test_ablation_with_scst_trains_each_models_scst_run_after_it(tmp_path, monkeypatch, one_thread):
    from fcvc_pipeline.stages import ablation

    monkeypatch.setattr(ablation, "ABLATION_ORDER", ("fcvc-ta", "lstm"))  # two models keep it short
    w = make_tiny_workdir(tmp_path)
    res = run_ablation(TrainConfig(workdir=w, model="all", epochs=2, scst=True, scst_samples=2, score_beam_size=1,
                                   **TINY))
    assert [r["model"] for r in res.rows] == ["fcvc-ta", "fcvc-ta + SCST", "lstm", "lstm + SCST"]
    assert [r["run"].rsplit("/", 1)[-1] for r in res.rows] == ["fcvc-ta", "fcvc-ta-scst", "lstm", "lstm-scst"]
    assert "lstm + SCST" in (w / "runs" / "ablation.md").read_text()
    from fcvc_pipeline.artifacts import read_manifest

    assert read_manifest(w / "runs" / "lstm-scst").config["scst"] is True
    assert "scst" not in read_manifest(w / "runs" / "lstm").config
