import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fcvc_pipeline.captions.synthetic import build_annotations, plan_sample, write_captions
from fcvc_pipeline.captions.vocabulary import SPECIALS, load_captions, load_vocabulary
from fcvc_pipeline.cli import main
from fcvc_pipeline.errors import ConfigError, InputError
from fcvc_pipeline.stages.vocab import VocabConfig, build_vocabulary, run_vocab

ROWS = [
    ("v1", "train", "A man is playing a guitar."),
    ("v1", "train", "A man plays the guitar loudly on a stage tonight"),
    ("v2", "train", "A woman is slicing an onion."),
    ("v2", "train", "a woman cuts an onion"),
    ("v3", "validate", "A man plays a banjo."),
    ("v4", "test", "A cat is sleeping on a bed!"),
    ("v4", "test", "   "),
]


def jsonl(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps({"video_id": v, "split": s, "caption": c}) + "\n" for v, s, c in rows),
                    encoding="utf-8")
    return path


def test_build_vocabulary_order_and_min_count():
    v = build_vocabulary([["b", "a", "c"], ["a", "b"], ["a", "z"]], min_count=2, max_len=5)
    assert v.tokens == SPECIALS + ("a", "b")  # counts 3, 2; "c" and "z" (1) fall below min_count
    v = build_vocabulary([["b", "a"], ["c"]], min_count=1, max_len=5)
    assert v.tokens == SPECIALS + ("a", "b", "c")  # equal counts: alphabetical


def test_run_vocab_writes_table_and_vocabulary(tmp_path):
    ann = jsonl(tmp_path / "a.jsonl")
    res = run_vocab(VocabConfig(annotations=ann, workdir=tmp_path / "w", min_count=2, max_len=6))
    out = tmp_path / "w" / "vocab"
    vocab = load_vocabulary(out)
    rows = load_captions(out)
    assert (out / "manifest.json").is_file()
    # train words seen >= 2 times: a(5) man(2) is(2) guitar(2) woman(2) an(2) onion(2)
    assert vocab.tokens == SPECIALS + ("a", "an", "guitar", "is", "man", "onion", "woman")
    assert vocab.min_count == 2 and vocab.max_len == 6
    assert [r.split for r in rows] == ["train"] * 4 + ["val", "test"]
    long = rows[1]
    assert long.caption == "A man plays the guitar loudly on a stage tonight"  # reference untouched
    assert long.tokens == ("a", "man", "plays", "the", "guitar", "loudly")  # target cut to max_len
    assert rows[5].tokens == ("a", "cat", "is", "sleeping", "on", "a")
    s = res.stats
    assert s["splits"]["train"] == {"videos": 2, "captions": 4, "tokens": 23, "unk_rate": round(6 / 23, 6)}
    assert s["splits"]["val"]["videos"] == 1 and s["splits"]["test"]["captions"] == 1
    assert s["skipped"]["empty_captions"] == 1
    assert s["caption_length"]["max"] == 10 and s["caption_length"]["truncated"] == 2  # 10 and 7 words
    unk_total = sum(1 for r in rows for t in r.tokens if vocab.id(t) == vocab.unk_id)
    assert s["unk_rate"] == round(unk_total / sum(len(r.tokens) for r in rows), 6)
    assert res.vocab_size == len(vocab) and not res.up_to_date


def test_rerun_is_up_to_date_and_changes_rerun(tmp_path, capsys):
    ann = jsonl(tmp_path / "a.jsonl")
    cfg = VocabConfig(annotations=ann, workdir=tmp_path / "w", min_count=1)
    first = run_vocab(cfg)
    vocab_file = tmp_path / "w" / "vocab" / "vocab.json"
    mtime = vocab_file.stat().st_mtime_ns
    capsys.readouterr()
    again = run_vocab(cfg)
    assert again.up_to_date and "up to date" in capsys.readouterr().err
    assert vocab_file.stat().st_mtime_ns == mtime
    assert again.to_json()["splits"] == first.to_json()["splits"]
    assert list(again.to_json()["splits"]) == ["train", "val", "test"]

    changed = run_vocab(VocabConfig(annotations=ann, workdir=tmp_path / "w", min_count=2))
    assert not changed.up_to_date and "min_count' changed (1 -> 2)" in capsys.readouterr().err
    jsonl(ann, ROWS + [("v9", "train", "new words arrive")])
    assert not run_vocab(VocabConfig(annotations=ann, workdir=tmp_path / "w", min_count=2)).up_to_date
    assert "input 'annotations' changed" in capsys.readouterr().err
    assert not run_vocab(VocabConfig(annotations=ann, workdir=tmp_path / "w", min_count=2, force=True)).up_to_date
    (tmp_path / "w" / "vocab" / "captions.jsonl").unlink()
    assert not run_vocab(VocabConfig(annotations=ann, workdir=tmp_path / "w", min_count=2)).up_to_date


def test_output_is_deterministic(tmp_path):
    ann = jsonl(tmp_path / "a.jsonl")
    for name in ("w1", "w2"):
        run_vocab(VocabConfig(annotations=ann, workdir=tmp_path / name))
    for f in ("vocab.json", "captions.jsonl"):
        assert (tmp_path / "w1" / "vocab" / f).read_bytes() == (tmp_path / "w2" / "vocab" / f).read_bytes()


def test_config_problems_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as e:
        run_vocab(VocabConfig(annotations=tmp_path / "x", min_count=0, max_len=0, format="xml"))
    assert len(e.value.problems) == 3
    with pytest.raises(InputError, match="no such file"):
        run_vocab(VocabConfig(annotations=tmp_path / "x.json", workdir=tmp_path / "w"))


def test_unsafe_ids_never_build_paths(tmp_path):
    work = tmp_path / "w"
    ann = jsonl(tmp_path / "a.jsonl", [("../../escape", "train", "a b"), ("/abs/x", "train", "c"),
                                       ("..", "test", "d")])
    before = {p for p in tmp_path.rglob("*")}
    res = run_vocab(VocabConfig(annotations=ann, workdir=work, min_count=1))
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(work in p.parents or p == work for p in created)
    assert res.stats["unsafe_ids"]["count"] == 3
    assert {r.video_id for r in load_captions(work / "vocab")} == {"../../escape", "/abs/x", ".."}


def test_feature_store_cross_check(tmp_path, capsys):
    from fcvc_pipeline.features.store import FeatureStore

    work = tmp_path / "w"
    store = FeatureStore.create(work / "features.zarr", {"frames": 15, "dtype": "float32"})
    for vid in ("v1", "v2", "orphan_a", "orphan_b"):
        store.write_video(vid, {"frame_indices": np.arange(15, dtype=np.int32),
                                "frame_features": np.zeros((15, 4), np.float32)}, {"source": f"{vid}.mp4"})
    res = run_vocab(VocabConfig(annotations=jsonl(tmp_path / "a.jsonl"), workdir=work))
    f = res.features
    assert f["featured_videos"] == 4
    assert f["annotated_without_features"] == {"count": 2, "first": ["v3", "v4"]}
    assert f["featured_without_captions"] == {"count": 2, "first": ["orphan_a", "orphan_b"]}
    err = capsys.readouterr().err
    assert "2 annotated videos have no features yet: 'v3', 'v4'" in err
    # the check is redone on an up-to-date rerun (the store may have grown in between)
    store.write_video("v3", {"frame_indices": np.arange(15, dtype=np.int32),
                             "frame_features": np.zeros((15, 4), np.float32)}, {})
    again = run_vocab(VocabConfig(annotations=jsonl(tmp_path / "a.jsonl"), workdir=work))
    assert again.up_to_date and again.features["annotated_without_features"]["first"] == ["v4"]


def test_cli_json_output(tmp_path):
    ann = jsonl(tmp_path / "a.jsonl")
    r = CliRunner().invoke(main, ["vocab", str(ann), "--workdir", str(tmp_path / "w"), "--min-count", "1",
                                  "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["vocab_size"] == len(load_vocabulary(tmp_path / "w" / "vocab"))
    assert doc["splits"]["train"]["videos"] == 2 and doc["splits"]["train"]["captions"] == 4
    assert doc["splits"]["val"] == {"videos": 1, "captions": 1, "tokens": 5, "unk_rate": 0.2}  # "banjo"
    assert 0 < doc["unk_rate"] < 1 and doc["up_to_date"] is False
    r = CliRunner().invoke(main, ["vocab", str(ann), "--workdir", str(tmp_path / "w"), "--min-count", "1",
                                  "--json"])
    assert json.loads(r.stdout)["up_to_date"] is True


def test_cli_bad_input_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"videos": [\n  {"video_id": }\n]}', encoding="utf-8")
    r = CliRunner().invoke(main, ["vocab", str(bad), "--workdir", str(tmp_path / "w")])
    assert r.exit_code == 2
    assert "bad.json:2" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "w" / "vocab" / "vocab.json").exists()
    r = CliRunner().invoke(main, ["vocab", str(tmp_path / "none.csv"), "--workdir", str(tmp_path / "w")])
    assert r.exit_code == 2 and "no such file" in r.stderr


def test_sample_set_annotations_make_a_closed_vocabulary(tmp_path):
    specs = plan_sample(60, seed=2)
    doc = build_annotations(specs, write_captions(specs, seed=2), n=60, seed=2, size=64, frames=30, fps=12)
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(doc), encoding="utf-8")
    res = run_vocab(VocabConfig(annotations=ann, workdir=tmp_path / "w", min_count=1))
    splits = res.to_json()["splits"]
    assert res.stats["format"] == "msrvtt-json"
    assert {k: v["videos"] for k, v in splits.items()} == {
        "train": sum(s.split == "train" for s in specs), "val": sum(s.split == "validate" for s in specs),
        "test": sum(s.split == "test" for s in specs)}
    assert splits["val"]["unk_rate"] == 0 and splits["test"]["unk_rate"] == 0
    assert res.stats["caption_length"]["truncated"] == 0


def test_no_training_split_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no training captions"):
        run_vocab(VocabConfig(annotations=jsonl(tmp_path / "a.jsonl", [("v", "test", "a b")]),
                              workdir=tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "vocab" / "manifest.json")


def test_empty_test_split_is_reported(tmp_path, capsys):
    run_vocab(VocabConfig(annotations=jsonl(tmp_path / "a.jsonl", ROWS[:5]), workdir=tmp_path / "w"))
    err = capsys.readouterr().err
    assert "the test split is empty" in err and "val split is empty" not in err


def test_a_very_long_id_is_shortened_in_messages_but_kept_whole_in_json(tmp_path):
    long_id = "clip-" + "x" * 4995  # a 5,000-character id: unsafe as a file name, so vocab warns about it
    ann = jsonl(tmp_path / "a.jsonl", [("v1", "train", "a dog runs"), (long_id, "train", "a cat sits"),
                                       ("v2", "test", "a dog sits")])
    r = CliRunner().invoke(main, ["vocab", str(ann), "--workdir", str(tmp_path / "w"), "--min-count", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert long_id not in r.stderr and max(len(line) for line in r.stderr.splitlines()) < 400
    assert "'clip-xxx" in r.stderr and "\u2026' (5000 characters)" in r.stderr
    assert json.loads(r.stdout)["unsafe_ids"]["first"] == [long_id]
    # an error about the id shortens it too
    clash = jsonl(tmp_path / "b.jsonl", [(long_id, "train", "a cat sits"), (long_id, "test", "a cat sits")])
    r = CliRunner().invoke(main, ["vocab", str(clash), "--workdir", str(tmp_path / "w2")])
    assert r.exit_code == 2 and long_id not in r.stderr and "(5000 characters)" in r.stderr
