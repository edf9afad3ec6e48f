"""``fcvc caption`` on video files: the TSV lines, captions kept when the figures cannot be written, the
order of the inputs, two files with one name, the feature cache of a work directory, and ``--model FILE``
(an exported captioner) giving the work directory's captions from anywhere, on a read-only file system too."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fcvc_pipeline.cli import main
from fcvc_pipeline.errors import InputError
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.features.video import VideoSource
from fcvc_pipeline.inference.package import read_package, write_package
from fcvc_pipeline.stages.caption import cache_key
from fcvc_pipeline.stages.export import ExportConfig, run_export
from tests.fs_faults import can_unshare_mounts, inject_errno, read_only, run_on_read_only_root
from tests.tiny import generated_workdir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A work directory with real features of six generated videos and a one-epoch model (a few seconds)."""
    root = tmp_path_factory.mktemp("caption")
    return generated_workdir(root, epochs=1, inception_weights="random")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "FCVC_PROGRESS": "0"}


def _fcvc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fcvc_pipeline", *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    work, _ = trained
    out = tmp_path_factory.mktemp("model") / "captioner.fcvc"
    run_export(ExportConfig(output=out, workdir=work))
    return out


def _fresh_copies(videos: list[Path], folder: Path) -> list[Path]:
    """Copies at paths no other test captioned (the work directory's feature cache is keyed by path)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for v in videos:
        shutil.copy(v, folder / v.name)
        out.append(folder / v.name)
    return out


CPU = ("--device", "cpu", "--workers", "1")


def test_names_with_newline_tab_and_backslash_stay_one_line_each(trained, tmp_path):
    work, videos = trained
    clips = tmp_path / "clips"
    clips.mkdir()
    names = ["two\nlines", "a\ttab", "back\\slash", "carriage\rreturn", "plain"]
    for name, source in zip(names, videos):
        shutil.copy(source, clips / f"{name}.mp4")
    proc = _fcvc("caption", str(clips), "--workdir", str(work), "--device", "cpu", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == len(names) + 1, proc.stdout  # one line per video, no more
    rows = [line.split("\t") for line in lines[:-1]]
    assert all(len(row) == 2 and row[1] for row in rows), rows
    assert sorted(row[0] for row in rows) == sorted(
        ["two\\nlines", "a\\ttab", "back\\\\slash", "carriage\\rreturn", "plain"])
    # --json keeps the names as they are, with the same captions
    doc = json.loads(_fcvc("caption", str(clips), "--workdir", str(work), "--device", "cpu", "--workers", "1",
                           "--json").stdout)
    escaped = {n: n.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
               for n in names}
    assert {escaped[d["video"]]: d["caption"] for d in doc} == dict(map(tuple, rows))


def test_captions_are_printed_when_the_attention_directory_is_read_only(trained, tmp_path):
    work, videos = trained
    locked = tmp_path / "locked"
    locked.mkdir()
    figs = locked / "figs"
    with read_only(locked) as real:
        if not real:
            pytest.skip("cannot make a read-only directory here (root without mount); the injected test covers it")
        plain = _fcvc("caption", str(videos[0]), str(videos[1]), "--workdir", str(work), "--device", "cpu",
                      "--workers", "1", "--attention", str(figs))
        as_json = _fcvc("caption", str(videos[0]), "--workdir", str(work), "--device", "cpu", "--workers", "1",
                        "--attention", str(figs), "--json")
    assert plain.returncode == 1, plain.stderr
    lines = plain.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [videos[0].stem, videos[1].stem]
    assert all(line.split("\t")[1] for line in lines)
    reason = os.strerror(errno.EROFS if os.geteuid() == 0 else errno.EACCES)
    assert str(figs) in plain.stderr and reason in plain.stderr and "warning" in plain.stderr
    assert "internal error" not in plain.stderr
    assert as_json.returncode == 1, as_json.stderr
    (item,) = json.loads(as_json.stdout)
    assert item["caption"] == lines[0].split("\t")[1]
    assert item["figure"] is None and reason in item["figure_error"] and str(figs) in item["figure_error"]
    assert not figs.exists()


def test_captions_are_kept_when_the_disk_fills_while_writing_figures(trained, tmp_path, monkeypatch):
    work, videos = trained
    figs = tmp_path / "figs"
    inject_errno(monkeypatch, errno.ENOSPC, under=figs)  # every figure write meets a full disk
    result = CliRunner().invoke(main, ["caption", str(videos[0]), str(videos[1]), "--workdir", str(work),
                                       "--device", "cpu", "--workers", "1", "--attention", str(figs)])
    assert result.exit_code == 1, result.output
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [videos[0].stem, videos[1].stem]
    first = figs / f"{videos[0].stem}.png"
    assert f"{first}: {os.strerror(errno.ENOSPC)}" in result.stderr  # the figure named, not a temp file
    assert str(figs) in result.stderr and "2 of 2 missing" in result.stderr
    assert not list(figs.iterdir())  # no temp file left behind


def test_model_file_gives_the_work_directory_captions_from_anywhere_in_the_order_given(trained, exported,
                                                                                       tmp_path):
    work, videos = trained
    clips = _fresh_copies([videos[3], videos[0], videos[4]], tmp_path / "in")
    broken = tmp_path / "in" / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    order = [clips[0], broken, clips[1], clips[2]]
    inside = _fcvc("caption", *order, "--workdir", work, *CPU, "--json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outside = _fcvc("caption", *order, "--model", exported, *CPU, "--json", cwd=elsewhere)
    assert inside.returncode == 1 and outside.returncode == 1, (inside.stderr, outside.stderr)  # one failed
    a, b = json.loads(inside.stdout), json.loads(outside.stdout)
    assert [d["path"] for d in b] == [str(p) for p in order]  # in the order given, the failure in its place
    assert [d["video"] for d in b] == [videos[3].stem, "broken", videos[0].stem, videos[4].stem]
    assert b[1]["caption"] is None and b[1]["error"].startswith("decode: ")
    assert all(d["caption"] for d in b if d["video"] != "broken")
    assert a == b  # the same captions, to the token, and the same scores
    assert list(elsewhere.iterdir()) == []  # nothing written where it ran
    assert "features computed in memory" in outside.stderr

    tsv = _fcvc("caption", clips[2], clips[0], "--model", exported, *CPU, cwd=elsewhere)
    assert tsv.returncode == 0, tsv.stderr
    assert tsv.stdout.splitlines() == [f"{d['video']}\t{d['caption']}" for d in (b[3], b[0])]


@pytest.mark.skipif(not can_unshare_mounts(), reason="a read-only root file system needs root and unshare")
def test_model_file_captions_on_a_read_only_file_system(trained, exported, tmp_path):
    work, videos = trained
    clips = _fresh_copies(videos[1:3], tmp_path / "in")
    inside = _fcvc("caption", *clips, "--workdir", work, *CPU, "--json")
    assert inside.returncode == 0, inside.stderr
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    home = tmp_path / "home"  # no cache directory, and nowhere to make one
    home.mkdir()
    env = {**_env(), "HOME": str(home)}
    env.pop("XDG_CACHE_HOME", None)
    env.pop("TMPDIR", None)
    proc = run_on_read_only_root([sys.executable, "-m", "fcvc_pipeline", "caption", *map(str, clips), "--model",
                                  str(exported), *CPU, "--json"], cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(inside.stdout)
    assert "Read-only" not in proc.stderr and "warning" not in proc.stderr
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == []


def test_two_files_with_one_name_are_both_captioned(trained, exported, tmp_path):
    work, videos = trained
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(videos[1], tmp_path / "a" / "clip.mp4")
    shutil.copy(videos[2], tmp_path / "b" / "clip.mp4")
    docs = []
    for how in (["--workdir", work], ["--model", exported, "--attention", tmp_path / "figs"]):
        proc = _fcvc("caption", tmp_path / "b", tmp_path / "a" / "clip.mp4", *how, *CPU, "--json")
        assert proc.returncode == 0, proc.stderr
        docs.append(json.loads(proc.stdout))
    assert [d.pop("figure") for d in docs[1]] == [str(tmp_path / "figs" / f"{d}%2Fclip.png") for d in "ba"]
    assert all((tmp_path / "figs" / f"{d}%2Fclip.png").is_file() for d in "ab")
    assert docs[0] == docs[1]
    assert [(d["video"], d["path"]) for d in docs[0]] == [("b/clip", str(tmp_path / "b" / "clip.mp4")),
                                                          ("a/clip", str(tmp_path / "a" / "clip.mp4"))]
    # each file has its own entry in the work directory's feature cache
    (cache,) = (work / "caption-features").glob("*.zarr")
    done = set(FeatureStore.open(cache).completed_ids())
    assert {cache_key(VideoSource("clip", tmp_path / d / "clip.mp4")) for d in "ab"} <= done


def test_the_work_directory_cache_is_reused_and_a_read_only_one_is_bypassed(trained, tmp_path):
    work, videos = trained
    (clip,) = _fresh_copies(videos[5:6], tmp_path / "in")
    first = _fcvc("caption", clip, "--workdir", work, *CPU, "--json")
    again = _fcvc("caption", clip, "--workdir", work, *CPU, "--json")
    assert first.returncode == 0 and again.returncode == 0, (first.stderr, again.stderr)
    assert "extracting 1 videos" in first.stderr and "up to date" in again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)
    (other,) = _fresh_copies(videos[4:5], tmp_path / "other")
    expected = _fcvc("caption", other, "--workdir", work, *CPU, "--json")
    (other2,) = _fresh_copies(videos[4:5], tmp_path / "other2")
    with read_only(work) as real:
        if not real:
            pytest.skip("cannot make a read-only directory here")
        locked = _fcvc("caption", other2, "--workdir", work, *CPU, "--json")
    assert locked.returncode == 0, locked.stderr
    assert "cannot be written" in locked.stderr and "in memory instead" in locked.stderr
    (got,), (want,) = json.loads(locked.stdout), json.loads(expected.stdout)
    assert (got["video"], got["caption"], got["score"]) == (want["video"], want["caption"], want["score"])


def test_a_missing_or_changed_weights_file_is_an_error_naming_the_option(exported, trained, tmp_path):
    _, videos = trained
    package = read_package(exported)
    inception = package.features.backbones["inception"]
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"the weights the features were made with")
    inception.record = {**inception.record, "kind": "path", "path": str(weights),
                        "file_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    model = tmp_path / "file-backed.fcvc"
    write_package(model, package)
    weights.unlink()
    missing = _fcvc("caption", videos[0], "--model", model, *CPU, "--json")
    assert missing.returncode == 2, missing.stderr
    assert "--backbone-weights inception=PATH" in missing.stderr and str(weights) in missing.stderr
    assert json.loads(missing.stdout)["exit_code"] == 2
    other = tmp_path / "other.pth"
    other.write_bytes(b"other weights")
    changed = _fcvc("caption", videos[0], "--model", model, "--backbone-weights", f"inception={other}", *CPU)
    assert changed.returncode == 2, changed.stderr
    assert "not the inception weights file" in changed.stderr and str(other) in changed.stderr
    assert "internal error" not in missing.stderr + changed.stderr


@pytest.mark.parametrize("args, words", [
    (["--run", "fcvc-cf-ia"], "--model or --run/--checkpoint, not both"),
    (["--workdir", "somewhere"], "reads no work directory"),
    (["--backbone-weights", "inception"], "ROLE=PATH"),
    (["--backbone-weights", "resnet=x.pth"], "unknown network 'resnet'"),
])
def test_model_usage_errors_exit_2(exported, trained, args, words):
    _, videos = trained
    res = CliRunner().invoke(main, ["caption", str(videos[0]), "--model", str(exported), *args])
    assert res.exit_code == 2, res.output
    assert words in res.output


def test_no_videos_and_urls_are_errors_before_a_model_is_loaded(tmp_path):
    empty = tmp_path / "novids"
    empty.mkdir()
    (empty / "notes.txt.bak").write_text("not a video")
    missing_model = tmp_path / "never-read.fcvc"
    r = CliRunner().invoke(main, ["caption", str(empty), "--model", str(missing_model)])
    assert r.exit_code == 2 and f"{empty}: no videos found" in r.output and ".mp4" in r.output
    assert "never-read.fcvc" not in r.output  # refused before the model file is opened
    r = CliRunner().invoke(main, ["caption", "https://example.com/clip.mp4", "--model", str(missing_model)])
    assert r.exit_code == 2 and "https://example.com/clip.mp4: URLs are not supported" in r.output


def test_output_file_is_appended_in_chunks_and_a_stopped_run_goes_on_where_it_stopped(trained, exported, tmp_path,
                                                                                      monkeypatch):
    """--output FILE: chunks appended and synced one by one; a run stopped midway (Ctrl-C in the second
    chunk) keeps the first chunk, a torn last line is dropped, and the rerun captions only the rest: each
    video once, the captions of a one-shot run, the ids of the whole input list."""
    from fcvc_pipeline.inference.captioner import Captioner
    from fcvc_pipeline.stages import caption as caption_stage
    from fcvc_pipeline.stages.caption import CaptionConfig, run_caption

    _, videos = trained
    clips = _fresh_copies(videos, tmp_path / "in")
    broken = tmp_path / "in" / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    out = tmp_path / "captions.jsonl"
    cfg = CaptionConfig(inputs=(tmp_path / "in",), model=exported, device="cpu", workers=1, output=out)
    printed = {c.to_json()["path"]: c.to_json() for c in
               run_caption(CaptionConfig(inputs=(tmp_path / "in",), model=exported, device="cpu", workers=1)).captions}
    monkeypatch.setattr(caption_stage, "OUTPUT_CHUNK", 3)
    # the reference: the same chunks uninterrupted (beam search batches videos, and floats depend on the batch)
    whole = tmp_path / "whole.jsonl"
    run_caption(dataclasses.replace(cfg, output=whole))
    one_shot = {d["path"]: d for d in map(json.loads, whole.read_text().splitlines())}
    assert {p: d["video"] for p, d in one_shot.items()} == {p: d["video"] for p, d in printed.items()}
    real, calls = Captioner.caption, []

    def stop_in_second_chunk(self, *args, **kwargs):
        calls.append(len(args[0]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Captioner, "caption", stop_in_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_caption(cfg)
    first = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(first) == 3 and calls == [3, 3]
    with open(out, "a") as f:
        f.write('{"video": "half a line')  # a write cut short by a kill
    monkeypatch.setattr(Captioner, "caption", real)
    res = run_caption(cfg)
    assert first[0]["video"] == "broken" and first[0]["caption"] is None and first[0]["error"].startswith("decode")
    assert res.output == {"output": str(out), "videos": len(clips) + 1, "already_done": 3,
                          "captioned_now": len(clips) + 1 - 3, "failed_now": 0}
    assert res.exit_code == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(d["path"] for d in lines) == sorted(one_shot)  # every video once
    assert {d["path"]: d for d in lines} == one_shot  # the uninterrupted run's captions, scores and ids
    again = run_caption(cfg)
    assert again.output["already_done"] == len(clips) + 1 and again.output["captioned_now"] == 0
    out.write_text("this is not json\n")
    with pytest.raises(InputError, match=r"captions.jsonl:1: not an `fcvc caption --output` file"):
        run_caption(cfg)
