"""``fcvc export`` and the exported captioner on real video files.

A work directory with real features of six generated videos (random Inception-V3, 75 px, 4 frames) and a
two-epoch model; the exported file, copied out of the work directory, captions video files exactly as
``fcvc caption`` does inside it. With ``--embed-backbones`` a weights file can be deleted after the export.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torchvision.models import inception_v3

from fcvc_pipeline.cli import main
from fcvc_pipeline.errors import MissingArtifactError
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.inference.captioner import Captioner
from fcvc_pipeline.inference.package import read_package
from fcvc_pipeline.stages.caption import CaptionConfig, run_caption
from fcvc_pipeline.stages.export import ExportConfig, run_export
from fcvc_pipeline.stages.score import ScoreConfig, run_score
from tests.tiny import generated_workdir

REPO = Path(__file__).resolve().parents[2]


def _workdir(root: Path, **extract) -> tuple[Path, list[Path]]:
    return generated_workdir(root, epochs=2, **extract)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A work directory with a trained, scored run (random Inception-V3: its BatchNorm statistics travel)."""
    root = tmp_path_factory.mktemp("export")
    work, videos = _workdir(root, inception_weights="random")
    scores = run_score(ScoreConfig(workdir=work, device="cpu", use_java=False)).scores
    return work, videos, scores


def _export(*args: str):
    return CliRunner().invoke(main, ["export", *args])


def test_export_json_says_what_the_file_holds_and_a_rerun_is_up_to_date(trained, tmp_path):
    work, _, scores = trained
    out = tmp_path / "model.fcvc"
    res = _export("--workdir", str(work), "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["path"] == str(out) and doc["size_bytes"] == out.stat().st_size and doc["up_to_date"] is False
    assert doc["model"]["name"] == "fcvc-cf-ia" and doc["model"]["parameters"] > 0
    features = doc["features"]
    assert features["frames"] == 4 and features["frame_size"] == 75 and features["can_caption_videos"] is True
    inc = features["backbones"]["inception"]
    assert inc["weights"] == "random:0" and inc["batchnorm_embedded"] and not inc["weights_embedded"]
    assert "clip" not in features["backbones"]
    test = doc["provenance"]["test_scores"]
    assert test["CIDEr"] == scores["CIDEr"] and test["beam_size"] == 5 and test["split"] == "test"
    assert doc["provenance"]["run"] == "fcvc-cf-ia" and doc["provenance"]["torch_version"] == torch.__version__
    assert doc["decoding"]["beam_size"] == 5

    before = out.stat().st_mtime_ns
    again = _export("--workdir", str(work), "-o", str(out), "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["up_to_date"] is True and out.stat().st_mtime_ns == before
    assert "up to date" in again.stderr


def test_an_existing_file_that_is_not_a_captioner_is_not_overwritten(trained, tmp_path):
    work, _, _ = trained
    out = tmp_path / "notes.fcvc"
    out.write_text("my notes\n")
    res = _export("--workdir", str(work), "-o", str(out))
    assert res.exit_code == 2 and str(out) in res.stderr and "--force" in res.stderr
    assert out.read_text() == "my notes\n"
    forced = _export("--workdir", str(work), "-o", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert read_package(out).model_config.model == "fcvc-cf-ia"


def test_usage_errors_exit_2(trained, tmp_path):
    work, _, _ = trained
    best = work / "runs" / "fcvc-cf-ia" / "best.pt"
    both = _export("--workdir", str(work), "--run", "fcvc-cf-ia", "--checkpoint", str(best), "-o", str(tmp_path / "x"))
    assert both.exit_code == 2 and "not both" in both.stderr
    no_run = _export("--workdir", str(work), "--run", "nope", "-o", str(tmp_path / "x"))
    assert no_run.exit_code == 2 and "no trained run 'nope'" in no_run.stderr
    not_pt = tmp_path / "best.pt"
    not_pt.write_text("hello")
    bad = _export("--workdir", str(work), "--checkpoint", str(not_pt), "-o", str(tmp_path / "x"))
    assert bad.exit_code == 2 and str(not_pt) in bad.stderr
    assert not (tmp_path / "x").exists()


def test_the_exported_file_captions_videos_like_fcvc_caption_in_the_workdir(trained, tmp_path, one_thread):
    work, videos, _ = trained
    out = tmp_path / "made" / "model.fcvc"
    run_export(ExportConfig(output=out, workdir=work))
    moved = tmp_path / "elsewhere" / "model.fcvc"
    moved.parent.mkdir()
    shutil.move(out, moved)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")

    cap = Captioner.load(moved, device="cpu")
    order = [videos[2], broken, videos[0], videos[1]]
    captions = cap.caption(order, workers=1)
    assert [c.path for c in captions] == order  # the order the files were given
    assert captions[1].error and captions[1].text is None and captions[1].video == "broken"
    expected = run_caption(CaptionConfig(inputs=tuple(videos[:3]), workdir=work, device="cpu", workers=1))
    assert {c.video: c.text for c in captions if c.ok} == {i["video"]: i["caption"] for i in expected.items}
    assert {c.video: c.score for c in captions if c.ok} == pytest.approx({i["video"]: i["score"]
                                                                        for i in expected.items})
    # the features were computed in a temporary directory, now gone; nothing was written beside the file
    assert sorted(p.name for p in moved.parent.iterdir()) == ["model.fcvc"]

    # the training store's features give the captions of the same videos computed in the same batches (the
    # whole corpus in its order: a forward batch of another size may round a few float16 values the other way)
    store = FeatureStore.open(work / "features.zarr")
    corpus = cap.caption(videos, workers=1)
    stored = cap.caption_features({c.video: store.read_video(c.video) for c in corpus})
    assert [c.text for c in stored] == [c.text for c in corpus] and all(c.ok for c in corpus)

    img = cap.attention_figure(captions[0])
    assert img.mode == "RGB" and img.size[0] > 400
    beam1 = cap.caption([videos[0]], beam_size=1, workers=1)
    assert beam1[0].ok and beam1[0].video == videos[0].stem


def test_the_api_page_example_runs(trained, tmp_path):
    """The first Python block of docs/api.md, run as written next to an exported file and a videos/ folder."""
    work, videos, _ = trained
    run_export(ExportConfig(output=tmp_path / "captioner.fcvc", workdir=work))
    (tmp_path / "videos").mkdir()
    for v in videos[:2]:
        shutil.copy(v, tmp_path / "videos" / v.name)
    shutil.copy(videos[2], tmp_path / "a.mp4")
    text = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FCVC_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "a:" in proc.stdout and (tmp_path / "a-attention.png").is_file()


def test_the_api_does_not_load_the_command_line():
    code = ("import sys\nimport fcvc_pipeline\nassert 'torch' not in sys.modules, 'import fcvc_pipeline loads torch'\n"
            "from fcvc_pipeline import Caption, Captioner\n"
            "bad = sorted(m for m in sys.modules if m == 'click' or m.startswith('click.')"
            " or m == 'fcvc_pipeline.cli' or m.startswith('fcvc_pipeline.commands'))\n"
            "assert not bad, bad\nprint(Captioner.load.__doc__ is not None, Caption.__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "Caption"]


@pytest.mark.slow
def test_embedded_weights_file_travels_with_the_captioner(tmp_path_factory, tmp_path, one_thread):
    """A network from a weights file: identified by its sha256, or embedded with --embed-backbones."""
    root = tmp_path_factory.mktemp("embed")
    weights = root / "inception.pth"
    torch.manual_seed(3)
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    work, videos = _workdir(root, inception_weights=str(weights))
    expected = run_caption(CaptionConfig(inputs=tuple(videos[:2]), workdir=work, device="cpu", workers=1))
    expected = {i["video"]: i["caption"] for i in expected.items}

    embedded, by_hash = tmp_path / "embedded.fcvc", tmp_path / "by-hash.fcvc"
    doc = run_export(ExportConfig(output=embedded, workdir=work, embed_backbones=True)).to_json()
    inc = doc["features"]["backbones"]["inception"]
    assert inc["kind"] == "path" and inc["weights"].startswith("sha256:") and inc["weights_embedded"]
    run_export(ExportConfig(output=by_hash, workdir=work))
    assert embedded.stat().st_size > by_hash.stat().st_size + 50_000_000  # Inception-V3's 27M values

    gone = root / "moved.pth"
    weights.rename(gone)  # the file the features were made with is no longer where it was
    captions = Captioner.load(embedded, device="cpu").caption(videos[:2], workers=1)
    assert {c.video: c.text for c in captions} == expected

    plain = Captioner.load(by_hash, device="cpu")
    with pytest.raises(MissingArtifactError, match="is gone") as e:
        plain.caption(videos[:1], workers=1)
    assert str(weights) in str(e.value)
    again = plain.caption(videos[:2], workers=1, weights_paths={"inception": gone})
    assert {c.video: c.text for c in again} == expected
    # the command line: a missing file names the option, which then points at the moved file
    cli = lambda *args: CliRunner().invoke(main, ["caption", *map(str, videos[:2]), "--model", str(by_hash),  # noqa: E731
                                                  "--device", "cpu", "--workers", "1", "--json", *args])
    missing = cli()
    assert missing.exit_code == 2 and "--backbone-weights inception=PATH" in missing.stderr
    pointed = cli("--backbone-weights", f"inception={gone}")
    assert pointed.exit_code == 0, pointed.output
    assert {d["video"]: d["caption"] for d in json.loads(pointed.stdout)} == expected
