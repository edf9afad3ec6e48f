"""The whole chain on a tiny generated sample: demo, its cached rerun, and `fcvc caption` on files."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fcvc_pipeline.captions.synthetic import generate_sample
from fcvc_pipeline.cli import main
from fcvc_pipeline.errors import MismatchError
from fcvc_pipeline.inference.checkpoint import load_checkpoint
from fcvc_pipeline.stages.caption import CaptionConfig, run_caption
from fcvc_pipeline.stages.demo import DemoConfig, run_demo

TINY = dict(frames=4, frame_size=75, epochs=2, d_model=32, device="cpu", show=2)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    generate_sample(root / "sample", n=14, size=64, frames=15, show_progress=False)
    cfg = DemoConfig(workdir=root / "work", data=root / "sample", **TINY)
    first = run_demo(cfg)
    return root, cfg, first


@pytest.mark.slow
def test_demo_runs_every_stage_and_reports(demo_run):
    root, cfg, first = demo_run
    assert first.exit_code == 0
    assert first.stages["extract"]["completed"] == 14 and first.stages["extract"]["failed"] == 0
    assert not first.stages["train"]["up_to_date"]
    for key in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert key in first.scores
    assert first.constant_caption["CIDEr"] >= 0 and first.constant_caption["caption"]
    # results on random-backbone features say so: in the JSON, the scores file and the printed table
    assert first.features == {"inception": "random:0", "clip": None}
    scores_doc = json.loads(Path(first.paths["scores"]).read_text())
    assert scores_doc["features"] == first.features
    ckpt = load_checkpoint(first.paths["best_checkpoint"])
    assert ckpt["features_identity"] == first.features
    assert len(first.examples) == 2
    for ex in first.examples:
        assert ex["caption"] is not None and len(ex["references"]) == 2
        assert Path(ex["figure"]).is_file() and Path(ex["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for p in ("features", "vocab", "best_checkpoint", "captions", "scores"):
        assert Path(first.paths[p]).exists()


@pytest.mark.slow
def test_demo_second_run_reuses_every_cache(demo_run):
    root, cfg, first = demo_run
    again = run_demo(cfg)
    assert again.stages["extract"] == {"completed": 0, "up_to_date": 14, "failed": 0}
    assert again.stages["vocab"]["up_to_date"] and again.stages["train"]["up_to_date"] and again.stages["score"]["cached"]
    assert again.scores == first.scores
    assert [e["caption"] for e in again.examples] == [e["caption"] for e in first.examples]


@pytest.mark.slow
def test_caption_files_and_directory_with_a_bad_file(demo_run, tmp_path):
    root, cfg, _ = demo_run
    clips = tmp_path / "my clips"
    clips.mkdir()
    videos = sorted((root / "sample" / "videos").glob("*.mp4"))
    for v in videos[:2]:
        shutil.copy(v, clips / v.name)
    (clips / "broken.mp4").write_text("this is not a video")
    single = videos[3]
    result = CliRunner().invoke(main, ["caption", str(clips), str(single), "--workdir", str(cfg.workdir),
                                       "--device", "cpu", "--json", "--attention", str(tmp_path / "figs")])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    by_video = {d["video"]: d for d in doc}
    assert set(by_video) == {videos[0].stem, videos[1].stem, single.stem, "broken"}
    assert by_video["broken"]["caption"] is None and by_video["broken"]["error"]
    for v in (videos[0].stem, videos[1].stem, single.stem):
        assert by_video[v]["caption"] and isinstance(by_video[v]["score"], float)
        assert (tmp_path / "figs" / f"{v}.png").is_file()
    # the plain form: video<TAB>caption, one line per captioned video, from the real console entry point
    proc = subprocess.run([sys.executable, "-m", "fcvc_pipeline", "caption", str(single), "--workdir",
                           str(cfg.workdir), "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    name, caption = proc.stdout.strip().split("\t")
    assert name == single.stem and caption == by_video[single.stem]["caption"]


@pytest.mark.slow
def test_caption_refuses_features_of_other_settings(demo_run, tmp_path):
    from fcvc_pipeline.stages.extract import ExtractConfig, run_extract

    root, cfg, _ = demo_run
    work = tmp_path / "work"
    shutil.copytree(cfg.workdir, work)
    # the checkpoint records the store it was trained on; re-extracting that store differently breaks the link
    ckpt = work / "runs" / "fcvc-cf-ia" / "best.pt"
    run_extract(ExtractConfig(inputs=(root / "sample" / "videos",), workdir=work, frames=3, frame_size=75,
                              inception_weights="random", c3d_weights="none", device="cpu", force=True))
    with pytest.raises(MismatchError):
        run_caption(CaptionConfig(inputs=(next((root / "sample" / "videos").glob("*.mp4")),), workdir=work,
                                  checkpoint=ckpt, device="cpu"))


def test_every_option_is_checked_before_any_work(tmp_path):
    work = tmp_path / "work"
    r = CliRunner().invoke(main, ["demo", "--workdir", str(work), "--model", "fcvc-cfia", "--frame-size", "50",
                                  "--epochs", "0"])
    assert r.exit_code == 2
    assert "(did you mean 'fcvc-cf-ia'?)" in r.output
    assert "--frame-size must be at least 75" in r.output and "--epochs must be at least 1" in r.output
    assert not work.exists()  # nothing extracted, generated or written
    r = CliRunner().invoke(main, ["demo", "--workdir", str(work), "--model", "all"])
    assert r.exit_code == 2 and "fcvc demo trains one model" in r.output and not work.exists()
