"""``fcvc score``: references from the caption table, captions files, caching, the CLI contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fcvc_pipeline.captions.vocabulary import SPECIALS, CaptionRow, Vocabulary, save_vocab_dir
from fcvc_pipeline.cli import main
from fcvc_pipeline.evaluation import metrics
from fcvc_pipeline.stages import score as score_stage
from fcvc_pipeline.stages.score import ScoreConfig, run_score

TEST_REFS = {
    "vidA": ["A man is playing a guitar.", "A person plays the guitar."],
    "vidB": ["A cat is eating food.", "A kitten eats from a bowl."],
    "vidC": ["A woman is slicing an onion.", "Someone cuts an onion."],
    "vidD": ["Two men are fighting.", "Two guys are wrestling."],
}
CAPTIONS = [
    {"video": "vidA", "caption": "a man is playing a guitar", "score": -1.2},
    {"video": "vidB", "caption": "a cat is eating", "score": -2.0},
    {"video": "vidC", "caption": "a woman is cutting <unk>", "score": -3.1},
    {"video": "vidD", "caption": "two men are fighting", "score": -0.9},
]


def _make_workdir(root: Path, refs: dict[str, list[str]] = TEST_REFS) -> Path:
    workdir = root / "work"
    rows = [CaptionRow("vidT", "train", "a dog runs", ("a", "dog", "runs"))]
    for video, captions in refs.items():
        rows += [CaptionRow(video, "test", c, tuple(c.lower().split())) for c in captions]
    save_vocab_dir(workdir / "vocab", Vocabulary(tokens=SPECIALS + ("a", "dog", "runs")), rows)
    return workdir


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


@pytest.fixture
def no_java(monkeypatch):
    monkeypatch.setenv("FCVC_NO_JAVA", "1")


def test_cli_json_scores_a_captions_file_without_java_and_caches(tmp_path, no_java, monkeypatch):
    workdir = _make_workdir(tmp_path)
    captions = _write(tmp_path / "mine.json", CAPTIONS)
    runner = CliRunner()
    res = runner.invoke(main, ["score", "--workdir", str(workdir), "--captions", str(captions), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    expected = metrics.score_captions({c["video"]: c["caption"] for c in CAPTIONS}, TEST_REFS, use_java=False)
    for key in metrics.SCORE_KEYS:
        assert doc[key] == expected[key], key
    assert doc["METEOR"] is None and doc["tokenizer"] == "python"
    assert doc["unk_count"] == 1 and doc["videos"] == 4 and doc["cached"] is False
    assert doc["captions_file"] == str(captions)
    # the table is on stderr, x100, and a person is told plainly that Java is missing
    assert "| mine" in res.stderr and f"{expected['Bleu_4'] * 100:.1f}" in res.stderr and "n/a" in res.stderr
    assert "Java" in res.stderr and "METEOR" in res.stderr
    # the scores were saved inside the work directory (the captions file lies outside it)
    scores_file = Path(doc["scores_file"])
    assert scores_file.is_file() and workdir.resolve() in scores_file.resolve().parents

    # a rerun with the same inputs reads the saved scores back, without scoring again
    def must_not_score(*args, **kwargs):
        raise AssertionError("scores should have been read from the cache")

    monkeypatch.setattr(metrics, "score_captions", must_not_score)
    res = runner.invoke(main, ["score", "--workdir", str(workdir), "--captions", str(captions), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["cached"] is True and "up to date" in res.stderr
    monkeypatch.undo()
    monkeypatch.setenv("FCVC_NO_JAVA", "1")

    # changed captions are scored again
    changed = [dict(c, caption="a dog runs") for c in CAPTIONS]
    _write(captions, changed)
    res = runner.invoke(main, ["score", "--workdir", str(workdir), "--captions", str(captions), "--json"])
    doc2 = json.loads(res.stdout)
    assert doc2["cached"] is False and doc2["Bleu_1"] < doc["Bleu_1"]


@pytest.mark.skipif(not metrics.java_available(), reason="needs Java for PTB + METEOR")
def test_score_with_java_prints_the_paper_table(tmp_path):
    workdir = _make_workdir(tmp_path)
    captions = _write(tmp_path / "mine.json", CAPTIONS)
    res = CliRunner().invoke(main, ["score", "--workdir", str(workdir), "--captions", str(captions), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["tokenizer"] == "ptb" and 0.0 < doc["METEOR"] < 1.0
    header, _, row = [line for line in res.stderr.splitlines() if line.startswith("|")][:3]
    assert [c.strip() for c in header.strip("|").split("|")][:9] == [
        "model", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "#unk"]
    cells = [c.strip() for c in row.strip("|").split("|")]
    keys = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]
    assert cells[1:8] == [f"{doc[k] * 100:.1f}" for k in keys] and cells[8] == "1"


def test_without_captions_it_captions_the_split_with_the_run(tmp_path, no_java, monkeypatch):
    workdir = _make_workdir(tmp_path)
    calls = []

    def fake_caption_split(workdir_arg, run, split, *, beam_size=5, max_len=20, device="auto"):
        calls.append((Path(workdir_arg), run, split, beam_size, max_len, device))
        out = Path(workdir_arg) / "runs" / run / "captions" / f"{split}-beam{beam_size}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        return _write(out, CAPTIONS)

    monkeypatch.setattr(score_stage, "caption_split", fake_caption_split)
    result = run_score(ScoreConfig(workdir=workdir, run="fcvc-ta", beam_size=3, max_len=12, device="cpu"))
    assert calls == [(workdir, "fcvc-ta", "test", 3, 12, "cpu")]
    assert result.captions_file == workdir / "runs" / "fcvc-ta" / "captions" / "test-beam3.json"
    # saved next to the captions file, and labelled with the run's name in the table
    assert result.scores_file == result.captions_file.resolve().with_name("test-beam3.scores.json")
    assert result.scores_file.is_file() and "| fcvc-ta" in result.table
    assert result.to_json()["videos"] == 4


def test_caption_keys_given_as_video_paths_are_matched_by_file_name(tmp_path, no_java):
    workdir = _make_workdir(tmp_path)
    items = [dict(c, video=f"videos/{c['video']}.avi") for c in CAPTIONS]
    result = run_score(ScoreConfig(workdir=workdir, captions=_write(tmp_path / "paths.json", items)))
    assert result.scores["videos"] == 4


def test_fewer_than_two_videos_warns(tmp_path, no_java):
    workdir = _make_workdir(tmp_path, {"vidA": TEST_REFS["vidA"]})
    res = CliRunner().invoke(main, ["score", "--workdir", str(workdir), "--captions",
                                    str(_write(tmp_path / "one.json", CAPTIONS[:1]))])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.stderr and "CIDEr" in res.stderr and "1 video" in res.stderr


@pytest.mark.parametrize("setup, args, message", [
    ("partial", [], "have no caption: 'vidC', 'vidD'"),
    ("extra", [], "'vidZ'"),
    ("garbage", [], "invalid JSON"),
    ("ok", ["--run", "lstm"], "--captions and --run exclude each other"),
    ("ok", ["--split", "nope"], "Invalid value for '--split'"),
    ("missing", [], "no such file"),
    ("novocab", [], "no caption table"),
])
def test_errors_are_clear_and_exit_2(tmp_path, no_java, setup, args, message):
    workdir = _make_workdir(tmp_path) if setup != "novocab" else tmp_path / "empty-work"
    path = tmp_path / "captions.json"
    if setup == "partial":
        _write(path, CAPTIONS[:2])
    elif setup == "extra":
        _write(path, CAPTIONS + [{"video": "vidZ", "caption": "a zebra"}])
    elif setup == "garbage":
        path.write_text("{not json")
    elif setup in ("ok", "novocab"):
        _write(path, CAPTIONS)
    res = CliRunner().invoke(main, ["score", "--workdir", str(workdir), "--captions", str(path), *args])
    assert res.exit_code == 2, res.output
    assert message in res.stderr or message in res.output
    assert "Traceback" not in res.output
    if setup in ("partial", "extra"):
        assert str(path) in res.stderr  # the message names the file


def test_score_config_collects_every_problem(tmp_path):
    cfg = ScoreConfig(workdir=tmp_path, split="dev", beam_size=0, max_len=0, device="gpu")
    problems = cfg.problems()
    assert len(problems) == 4 and any("--split" in p for p in problems)
    assert score_stage._scores_path(tmp_path / "a" / "x.json", tmp_path) == (tmp_path / "a" / "x.scores.json").resolve()
