"""The captioner reads a run's decoding back whole: beam size *and* length penalty, overridable per call."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from fcvc_pipeline.cli import main
from fcvc_pipeline.features import bank as bank_module
from fcvc_pipeline.features.bank import load_feature_bank
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.inference import captioner as captioner_module
from fcvc_pipeline.inference.captioner import Captioner, caption_split
from fcvc_pipeline.inference.checkpoint import load_checkpoint, save_checkpoint
from fcvc_pipeline.inference.options import DecodingOptions
from fcvc_pipeline.stages.train import TrainConfig, run_train
from tests.inference.test_checkpoint import _overwrite_inside_largest_tensor
from tests.stages.test_train import TINY
from tests.tiny import make_tiny_workdir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    w = make_tiny_workdir(tmp_path_factory.mktemp("captioner"))
    res = run_train(TrainConfig(workdir=w, model="fcvc-ta", epochs=2, select_beams=(), **TINY))
    return w, res


def _key(out):
    return json.loads(out.with_suffix(".key.json").read_text())["key"]


def test_stored_length_penalty_and_beam_are_used_and_overridable(trained):
    w, res = trained
    best = res.run / "best.pt"
    ckpt = load_checkpoint(best)
    assert DecodingOptions.from_json(ckpt["decoding"]) == DecodingOptions()  # no choice made: beam 5
    save_checkpoint(best, {**ckpt, "decoding": DecodingOptions(beam_size=3, length_penalty=0.0).to_json()})

    captioner = Captioner.from_checkpoint(best)
    assert captioner.options.beam_size == 3 and captioner.options.length_penalty == 0.0

    out = caption_split(w, res.run.name, "val", device="cpu")
    assert out.name == "val-beam3.json" and _key(out)["length_penalty"] == 0.0
    over = caption_split(w, res.run.name, "val", length_penalty=2.0, beam_size=2, device="cpu")
    assert over.name == "val-beam2.json" and _key(over)["length_penalty"] == 2.0 and _key(over)["beam_size"] == 2


def test_length_penalty_reaches_the_search(trained, monkeypatch):
    """The options given are the ones the beam search gets (a spy on generate)."""
    w, res = trained
    captioner = Captioner.from_checkpoint(res.run / "best.pt")
    store = FeatureStore.open(w / "features.zarr")
    bank = load_feature_bank(store, store.completed_ids()[:3], regions=False)
    seen = []
    real = captioner_module.generate

    def spy(model, videos, **kw):
        seen.append(kw)
        return real(model, videos, **kw)

    monkeypatch.setattr(captioner_module, "generate", spy)
    with torch.no_grad():
        captioner.caption_bank(bank, DecodingOptions(beam_size=2, length_penalty=0.7))
    assert seen and seen[0]["length_penalty"] == 0.7 and seen[0]["beam_size"] == 2


def test_score_refuses_a_damaged_best_checkpoint_with_exit_2(trained, tmp_path):
    """The reported failure: 16 bytes overwritten in three places of best.pt used to score garbage, exit 0."""
    w, res = trained
    copy = tmp_path / "w"
    shutil.copytree(w, copy)
    best = copy / "runs" / res.run.name / "best.pt"
    _overwrite_inside_largest_tensor(best)
    out = CliRunner().invoke(main, ["score", "--workdir", str(copy), "--run", res.run.name, "--device", "cpu"])
    assert out.exit_code == 2, out.output
    assert str(best) in out.output and "damaged checkpoint" in out.output


def test_score_scores_the_videos_with_features_and_lists_the_missing_with_exit_1(trained, tmp_path):
    """One test video whose extraction failed no longer blocks the whole split (exit 2 before)."""
    w, res = trained
    copy = tmp_path / "w"
    shutil.copytree(w, copy)
    test_ids = sorted({json.loads(line)["video_id"] for line in (copy / "vocab" / "captions.jsonl").read_text().splitlines()
                       if json.loads(line)["split"] == "test"})
    assert len(test_ids) >= 2
    FeatureStore.open(copy / "features.zarr", mode="a").discard_video(test_ids[0])
    out = CliRunner().invoke(main, ["score", "--workdir", str(copy), "--run", res.run.name, "--device", "cpu",
                                    "--json"])
    assert out.exit_code == 1, out.output
    doc = json.loads(out.output[out.output.index("{"):])
    assert doc["missing"] == [test_ids[0]] and doc["videos"] == len(test_ids) - 1
    assert f"1 of {len(test_ids)} 'test' videos have no features" in out.output


def test_a_split_larger_than_the_memory_budget_is_captioned_streamed(trained, monkeypatch, capsys):
    """Over the budget the split's features are read 32 videos at a time: the same captions, nothing held."""
    w, res = trained
    loaded = json.loads(caption_split(w, res.run.name, "test", beam_size=2, device="cpu").read_text())
    shutil.rmtree(res.run / "captions")
    monkeypatch.setattr(bank_module, "parse_budget", lambda text: 0)
    monkeypatch.setattr(captioner_module, "load_feature_bank",
                        lambda *a, **k: pytest.fail("a split over the budget must not be loaded whole"))
    capsys.readouterr()
    streamed = json.loads(caption_split(w, res.run.name, "test", beam_size=2, device="cpu").read_text())
    assert "features: streamed from" in capsys.readouterr().err
    assert streamed == loaded
