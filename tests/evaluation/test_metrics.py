"""Scoring: equality with pycocoevalcap, the no-Java path, sanitising, tables and caption files."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
from pathlib import Path

import pytest

from fcvc_pipeline.errors import ConfigError, InputError, MismatchError
from fcvc_pipeline.evaluation import metrics
from fcvc_pipeline.evaluation.metrics import (
    count_unk,
    format_score_table,
    java_available,
    ptb_tokenize,
    python_tokenize,
    read_captions_file,
    sanitize_caption,
    score_captions,
)

HAVE_JAVA = java_available()
needs_java = pytest.mark.skipif(not HAVE_JAVA, reason="needs a Java runtime (pycocoevalcap's PTB tokenizer / METEOR)")

# Ten "videos", each with a few references, and hypotheses of mixed quality.
REFERENCES = {
    "vid1": ["A man is playing a guitar.", "A person plays the guitar.", "a man plays an acoustic guitar"],
    "vid2": ["A cat is eating food.", "A kitten eats from a bowl.", "the cat is eating"],
    "vid3": ["A woman is slicing an onion.", "Someone cuts an onion with a knife.", "a lady is chopping onions"],
    "vid4": ["Two men are fighting.", "Two guys are wrestling on the floor."],
    "vid5": ["A dog is running in the snow.", "A puppy runs through snow.", "the dog is playing in snow"],
    "vid6": ["A girl is riding a horse.", "A woman rides a brown horse."],
    "vid7": ["A man is doing push-ups.", "A man exercises on the floor.", "someone is doing pushups"],
    "vid8": ["A panda is eating bamboo.", "The panda bear eats bamboo leaves."],
    "vid9": ["A band is playing on stage.", "Musicians perform a song on stage."],
    "vid10": ["A baby is laughing.", "An infant laughs at the camera.", "a baby laughs"],
}
HYPOTHESES = {
    "vid1": "a man is playing a guitar",
    "vid2": "a cat is eating",
    "vid3": "a woman is cutting an onion",
    "vid4": "two men are fighting",
    "vid5": "a dog is running",
    "vid6": "a man is riding a horse",
    "vid7": "a man is doing <unk>",
    "vid8": "a panda is eating",
    "vid9": "a man is playing a guitar",
    "vid10": "a baby is laughing",
}


def _pycocoevalcap_direct(captions, references):
    """The reference computation: pycocoevalcap's own classes, used as their README shows."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({v: [{"caption": r} for r in refs] for v, refs in references.items()})
    res = tok.tokenize({v: [{"caption": captions[v]}] for v in references})
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    for n in range(4):
        out[f"Bleu_{n + 1}"] = bleu[n]
    out["METEOR"], _ = Meteor().compute_score(gts, res)
    out["ROUGE_L"], _ = Rouge().compute_score(gts, res)
    out["CIDEr"], _ = Cider().compute_score(gts, res)
    return out


@needs_java
def test_scores_equal_pycocoevalcap_and_python_path_agrees_on_clean_captions():
    ours = score_captions(HYPOTHESES, REFERENCES)
    direct = _pycocoevalcap_direct(HYPOTHESES, REFERENCES)
    for key in metrics.SCORE_KEYS:
        assert ours[key] == pytest.approx(direct[key], rel=1e-12, abs=1e-12), key
    assert ours["tokenizer"] == "ptb"
    assert ours["videos"] == 10 and ours["unk_count"] == 1
    assert ours["warnings"] == []
    assert 0.0 < ours["METEOR"] < 1.0 and ours["CIDEr"] > 0.5  # sane, not degenerate

    # Without Java: BLEU/ROUGE-L/CIDEr from the Python tokenizer, identical on these plain captions
    # (the tokenizer agrees with PTB on them); METEOR marked unavailable.
    fallback = score_captions(HYPOTHESES, REFERENCES, use_java=False)
    assert fallback["tokenizer"] == "python" and fallback["METEOR"] is None
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert fallback[key] == pytest.approx(ours[key], rel=1e-12), key
    assert any("Java" in w for w in fallback["warnings"])


def test_no_java_on_path_scores_bleu_rouge_cider_and_marks_meteor(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no java anywhere
    assert java_available() is False
    out = score_captions(HYPOTHESES, REFERENCES)
    assert out["METEOR"] is None and out["tokenizer"] == "python"
    assert 0.0 < out["Bleu_4"] <= out["Bleu_1"] <= 1.0
    assert 0.0 < out["ROUGE_L"] <= 1.0 and out["CIDEr"] > 0.0
    assert any("Java is not available" in w and "METEOR" in w for w in out["warnings"])
    # perfect captions score (almost) 1 in BLEU: the fallback is a real scorer, not a stub
    perfect = score_captions({v: refs[0] for v, refs in REFERENCES.items()}, REFERENCES)
    assert perfect["Bleu_4"] > 0.99 and perfect["Bleu_4"] > out["Bleu_4"]
    with pytest.raises(ConfigError, match="Java was required"):
        score_captions(HYPOTHESES, REFERENCES, use_java=True)


def test_java_available_rejects_a_broken_java_and_honours_FCVC_NO_JAVA(monkeypatch, tmp_path):
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'no Java runtime is installed' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert java_available() is False
    monkeypatch.undo()
    monkeypatch.setenv("FCVC_NO_JAVA", "1")
    assert java_available() is False


def test_sanitize_caption():
    assert sanitize_caption("  a man\nis\r\nplaying\t a\x00guitar \u2028 now\u200b ") == "a man is playing a guitar now"
    assert sanitize_caption("caf\u00e9 \u65e5\u672c") == "caf\u00e9 \u65e5\u672c"  # letters are kept
    assert sanitize_caption("lone \ud800 surrogate") == "lone surrogate"
    assert sanitize_caption("\n\t ") == ""
    with pytest.raises(TypeError):
        sanitize_caption(None)  # type: ignore[arg-type]


def test_count_unk():
    assert count_unk(["a <unk> is <unk>", "no unknowns", "<unk>", "not<unk> <UNK>"]) == 3
    assert count_unk([]) == 0


@needs_java
def test_nasty_captions_never_break_the_tokenizer_or_meteor():
    refs = {
        "a": ["A man\nis playing ||| a guitar.", "A person plays guitar"],
        "b": ["A cat is eating.", "..."],  # a reference that tokenises to nothing
        "c": ["Un caf\u00e9 est l\u00e0 \U0001F3B8", "a dog runs"],
        "d": ["a man\r\nrides a horse", "a rider on a horse"],
        "e": ["two men fight", "men are wrestling"],
    }
    hyps = {
        "a": "a man is playing\n a guitar ||| yes",
        "b": "",  # empty caption (scored as pycocoevalcap scores it, see the ROUGE-L tests below)
        "c": "caf\u00e9 \U0001F3B8 dog\t runs",
        "d": "a man\rrides a horse",  # a bare CR: a line break for Java's readLine
        "e": "!!! ... ,",  # only punctuation
    }
    out = score_captions(hyps, refs)
    assert out["warnings"] == []
    assert isinstance(out["METEOR"], float) and 0.0 < out["METEOR"] < 1.0
    assert 0.0 < out["ROUGE_L"] < 1.0 and out["CIDEr"] >= 0.0 and out["Bleu_1"] > 0.0
    # Line breaks inside a caption (\n, \r, U+2028) must not shift captions against each other in the
    # tokenizer's line-per-caption protocol: pycocoevalcap's own wrapper does shift them.
    assert ptb_tokenize(["a man\rrides a horse", "x\u2028y", "one"]) == ["a man rides a horse", "x y", "one"]
    # ... so the nasty captions score exactly like their hand-cleaned versions.
    clean_hyps = {"a": "a man is playing a guitar ||| yes", "b": "", "c": "caf\u00e9 dog runs",
                  "d": "a man rides a horse", "e": hyps["e"]}
    clean_refs = {"a": ["A man is playing ||| a guitar.", "A person plays guitar"], "b": ["A cat is eating.", ""],
                  "c": ["Un caf\u00e9 est l\u00e0", "a dog runs"], "d": ["a man rides a horse", "a rider on a horse"],
                  "e": refs["e"]}
    clean = score_captions(clean_hyps, clean_refs, metrics=("bleu", "rouge", "cider"))
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert out[key] == pytest.approx(clean[key], rel=1e-12), key


# ROUGE-L on empty captions: video -> (caption, references, pycocoevalcap's ROUGE-L for that video).
# pycocoevalcap splits with split(" "), so an empty caption is the one token "": it matches an empty
# reference (1.0) and nothing else (0.0); there is no division by zero. The numbers were observed
# with pycocoevalcap 1.2's Rouge.calc_score.
ROUGE_EDGE_CASES = {
    "empty_caption": ("", ["A cat is eating.", "the cat eats"], 0.0),
    "empty_reference_only": ("a cat is eating", [""], 0.0),
    "empty_and_real_reference": ("a cat is eating", ["...", "A cat eats."], 0.5865384615384615),
    "both_empty": ("", [""], 1.0),
    "empty_caption_one_empty_reference": ("", ["A cat is eating.", "..."], 1.0),
    "punctuation_caption": (". , ... !", ["A dog runs.", "a dog is running"], 0.0),  # tokenises to ""
    "punctuation_caption_and_reference": ("-- ; :", ["A dog runs.", "\"...\""], 1.0),
}
ROUGE_MIXED_CAPTIONS = HYPOTHESES | {v: c for v, (c, _, _) in ROUGE_EDGE_CASES.items()}
ROUGE_MIXED_REFERENCES = REFERENCES | {v: list(r) for v, (_, r, _) in ROUGE_EDGE_CASES.items()}


def _pycocoevalcap_rouge(captions, references, tokenize):
    """pycocoevalcap's Rouge().compute_score on captions tokenised by ``tokenize``, in fcvc's video order."""
    from pycocoevalcap.rouge.rouge import Rouge

    vids = sorted(captions)
    gts = {v: tokenize(list(references[v])) for v in vids}
    res = {v: tokenize([captions[v]]) for v in vids}
    average, per_video = Rouge().compute_score(gts, res)
    return float(average), dict(zip(vids, per_video.tolist()))


def test_rouge_l_is_pycocoevalcap_compute_score_on_tokenised_input():
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {"a": ["a cat is eating", "the cat eats"], "b": [""], "c": ["a dog runs", ""], "d": [""],
           "e": ["a man plays a guitar", "a person plays guitar"], "f": ["two men fight"]}
    res = {"a": [""], "b": [""], "c": [""], "d": ["a dog"], "e": ["a man is playing a guitar"],
           "f": ["two men are fighting"]}
    expected, per_video = Rouge().compute_score(gts, res)
    assert per_video.tolist()[:4] == [0.0, 1.0, 1.0, 0.0]  # empty vs empty matches, nothing else does
    assert metrics._rouge_l(gts, res) == float(expected)  # exact: same arithmetic, same np.mean
    for v in gts:  # and one video at a time
        assert metrics._rouge_l({v: gts[v]}, {v: res[v]}) == Rouge().compute_score({v: gts[v]}, {v: res[v]})[0], v


@pytest.mark.parametrize("case", sorted(ROUGE_EDGE_CASES))
def test_rouge_l_edge_cases_equal_pycocoevalcap(case):
    caption, refs, score = ROUGE_EDGE_CASES[case]
    # the edge case alone, then with ordinary videos around it
    for captions, references in (({case: caption}, {case: refs}),
                                 (HYPOTHESES | {case: caption}, REFERENCES | {case: refs})):
        ours = score_captions(captions, references, use_java=False, metrics=("rouge",))["ROUGE_L"]
        direct, per_video = _pycocoevalcap_rouge(captions, references, python_tokenize)
        assert per_video[case] == score
        assert ours == direct, (case, len(captions))


def test_rouge_l_mixed_set_equals_pycocoevalcap():
    ours = score_captions(ROUGE_MIXED_CAPTIONS, ROUGE_MIXED_REFERENCES, use_java=False, metrics=("rouge",))
    direct, per_video = _pycocoevalcap_rouge(ROUGE_MIXED_CAPTIONS, ROUGE_MIXED_REFERENCES, python_tokenize)
    assert {v: per_video[v] for v in ROUGE_EDGE_CASES} == {v: s for v, (_, _, s) in ROUGE_EDGE_CASES.items()}
    assert ours["ROUGE_L"] == direct


@needs_java
def test_rouge_l_mixed_set_equals_pycocoevalcap_with_its_ptb_tokenizer():
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ours = score_captions(ROUGE_MIXED_CAPTIONS, ROUGE_MIXED_REFERENCES, metrics=("rouge",))
    assert ours["tokenizer"] == "ptb"
    tok = PTBTokenizer()  # pycocoevalcap end to end, as its README shows
    gts = tok.tokenize({v: [{"caption": r} for r in refs] for v, refs in ROUGE_MIXED_REFERENCES.items()})
    res = tok.tokenize({v: [{"caption": c}] for v, c in ROUGE_MIXED_CAPTIONS.items()})
    direct, _ = Rouge().compute_score(gts, res)
    assert ours["ROUGE_L"] == pytest.approx(float(direct), rel=1e-12, abs=1e-12)


def test_metric_subset_starts_no_meteor(monkeypatch):
    def no_meteor(*args, **kwargs):
        raise AssertionError("METEOR must not run when it is not asked for")

    monkeypatch.setattr(metrics, "_run_meteor", no_meteor)
    out = score_captions(HYPOTHESES, REFERENCES, metrics=("bleu", "cider"), use_java=False)
    assert out["METEOR"] is None and out["ROUGE_L"] is None
    assert out["Bleu_4"] > 0 and out["CIDEr"] > 0
    with pytest.raises(ConfigError, match="unknown metric"):
        score_captions(HYPOTHESES, REFERENCES, metrics=("bleu", "spice"), use_java=False)


def test_fewer_than_two_videos_warns_about_cider():
    out = score_captions({"vid1": HYPOTHESES["vid1"]}, {"vid1": REFERENCES["vid1"]}, use_java=False,
                         metrics=("bleu", "cider"))
    assert out["CIDEr"] == 0.0 and out["videos"] == 1
    assert any("CIDEr" in w and "1 video" in w for w in out["warnings"])


def test_caption_and_reference_sets_must_match():
    refs = dict(REFERENCES)
    with pytest.raises(MismatchError, match="'ghost'"):
        score_captions(HYPOTHESES | {"ghost": "a ghost"}, refs, use_java=False)
    partial = {v: HYPOTHESES[v] for v in ("vid1", "vid2")}
    with pytest.raises(MismatchError, match=r"8 video\(s\) with references have no caption: 'vid3', 'vid4'"):
        score_captions(partial, refs, use_java=False)
    with pytest.raises(MismatchError, match="no captions"):
        score_captions({}, refs, use_java=False)


# Typical caption sentences (MSVD style) with the constructs the Python tokenizer has to handle.
TOKENIZER_CORPUS = [
    "A man is slicing an onion.", "a woman is peeling potato's", "Someone's cutting carrots",
    "the man is riding a motor-cycle", "A girl is putting on make-up.", "A man & woman are dancing",
    "The man's playing the piano.", "A woman is adding ingredients to a bowl, then mixing.",
    "The chef flips the pancake; it lands perfectly.", "Someone is frying eggs in a pan...",
    "A MAN IS RIDING A HORSE", "Two girls are singing \"happy birthday\".", "A monkey is pulling a dog's tail.",
    "The woman is chopping garlic/onions", "A person is folding a paper (origami)", "The boy is 5 years old",
    "A car is driving at 100 mph", "The toddler isn't eating his food", "a player scores a goal!!!",
    "the kitten plays with its owner's hand", "A woman puts a 'sticker' on a box", "It's a cartoon.",
    "They're dancing at 10:30 pm.", "Two dogs play tug-of-war with a rope.", "A woman is cooking rice - with vegetables",
    "He's got a guitar, and he's playing it.", "A man rides a bicycle on one wheel?", "A man plays the drums -- loudly.",
    "Dr. Smith is operating on a patient", "A man is doing 50 push-ups.", "children aren't playing",
    "we'll see what they've done", "She'd like a cup of tea.", "A woman can't cook; she won't.",
    "Mr. Smith went to the U.S. at 5 p.m. yesterday.", "The cat [small] {big} jumps 1,000 times...",
    "a boy ' s toy. The dogs' bones.", "rock'n'roll e-mail o'clock 9/11 #1 @home x*y a+b 1990s '90s",
    "a man cannot dunk, he's gonna try", "he said:\"yes\"", "caf\u00e9 \u00fc\u00f1 \u65e5\u672c", "someone is slicing a tomato!?",
]


def test_python_tokenizer_on_known_cases():
    got = python_tokenize(["A woman can't cook; she won't.", "The cat (small) jumps 1,000 times...",
                           "Dr. Smith's dog -- \"Rex\" -- runs at 5 p.m.", "a man cannot dunk \U0001F3C0"])
    assert got == ["a woman ca n't cook she wo n't", "the cat -lrb- small -rrb- jumps 1,000 times",
                   "dr. smith 's dog rex runs at 5 p.m.", "a man can not dunk"]


@needs_java
def test_ptb_tokenize_equals_pycocoevalcap_and_python_fallback_agrees():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    java = ptb_tokenize(TOKENIZER_CORPUS)
    direct = PTBTokenizer().tokenize({str(i): [{"caption": s}] for i, s in enumerate(TOKENIZER_CORPUS)})
    assert java == [direct[str(i)][0] for i in range(len(TOKENIZER_CORPUS))]
    fallback = python_tokenize(TOKENIZER_CORPUS)
    differ = [(s, j, p) for s, j, p in zip(TOKENIZER_CORPUS, java, fallback) if j != p]
    assert differ == []


def _fake_java(tmp_path: Path, meteor_body: str, real: str) -> None:
    """A `java` wrapper that runs the real Java except for METEOR (`-jar`), which does ``meteor_body``."""
    fake = tmp_path / "java"
    fake.write_text(f"#!/bin/sh\ncase \"$*\" in\n  *-jar*) {meteor_body} ;;\n  *) exec {real} \"$@\" ;;\nesac\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)


@needs_java
def test_a_dying_or_hung_meteor_becomes_a_warning_not_a_crash(monkeypatch, tmp_path):
    import shutil

    real = shutil.which("java")
    _fake_java(tmp_path, "echo 'Error occurred during initialization of VM' >&2; exit 1", real)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    out = score_captions(HYPOTHESES, REFERENCES)
    assert out["METEOR"] is None and out["Bleu_4"] > 0 and out["tokenizer"] == "ptb"
    assert any("METEOR" in w and "initialization of VM" in w for w in out["warnings"])

    _fake_java(tmp_path, "exec sleep 30", real)
    monkeypatch.setattr(metrics, "METEOR_TIMEOUT_S", 1.0)
    out = score_captions(HYPOTHESES, REFERENCES, metrics=("meteor",))
    assert out["METEOR"] is None and any("did not answer within 1 s" in w for w in out["warnings"])


def test_format_score_table():
    rows = [("FCVC-CF&IA", {"Bleu_1": 0.835, "Bleu_2": 0.728, "Bleu_3": 0.633, "Bleu_4": 0.531, "METEOR": 0.348,
                            "ROUGE_L": 0.718, "CIDEr": 0.798, "unk_count": 0, "videos": 670, "tokenizer": "ptb",
                            "warnings": [], "sec_per_10M_params": 253.0}),
            ("LSTM", {"Bleu_1": 0.8, "Bleu_2": 0.7, "Bleu_3": 0.5, "Bleu_4": 0.434, "METEOR": None,
                      "ROUGE_L": 0.686, "CIDEr": 0.441, "unk_count": 116})]
    table = format_score_table(rows)
    lines = table.splitlines()
    assert len(lines) == 4
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["model", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "#unk",
                      "sec_per_10M_params"]
    assert set(lines[1]) <= {"|", "-", ":"}
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    assert first == ["FCVC-CF&IA", "83.5", "72.8", "63.3", "53.1", "34.8", "71.8", "79.8", "0", "253.0"]
    second = [c.strip() for c in lines[3].strip("|").split("|")]
    assert second[5] == "n/a" and second[8] == "116" and second[9] == "n/a"
    plain = format_score_table(rows, markdown=False)
    assert "|" not in plain and "53.1" in plain and len(plain.splitlines()) == 4


def test_read_captions_file_forms(tmp_path):
    items = [{"video": "v1", "caption": "a man", "score": -1.5}, {"video": "v2", "caption": "a cat"}]
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(items))
    as_dict = tmp_path / "dict.json"
    as_dict.write_text(json.dumps({"v1": "a man", "v2": "a cat"}))
    as_jsonl = tmp_path / "items.jsonl"
    as_jsonl.write_text("\n".join(json.dumps(i) for i in items) + "\n\n")
    one_line = tmp_path / "one.jsonl"
    one_line.write_text(json.dumps({"video_id": "v1", "caption": "a man"}) + "\n")
    expected = {"v1": "a man", "v2": "a cat"}
    assert read_captions_file(as_list) == expected
    assert read_captions_file(as_dict) == expected
    assert read_captions_file(as_jsonl) == expected
    assert read_captions_file(one_line) == {"v1": "a man"}
    with_failure = tmp_path / "failed.json"
    with_failure.write_text(json.dumps(items + [{"video": "v3", "error": "cannot decode"}]))
    assert read_captions_file(with_failure) == expected


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ("not json at all", "invalid JSON"),
    ('["a man", "a cat"]', "item 0: expected an object"),
    ('[{"video": "v1"}]', "item 0: video 'v1' has a missing or non-string \"caption\""),
    ('[{"caption": "a man"}]', "item 0: missing or non-string \"video\""),
    ('[{"video": "v1", "caption": "a"}, {"video": "v1", "caption": "b"}]', "'v1' appears twice"),
    ('{"v1": ["a man"]}', "video 'v1': the caption must be a string"),
    ('{"video": "v1", "caption": "a"}\n{"video": "v2", "caption": ', "invalid JSON Lines"),
    ("42", "expected a JSON list or object"),
    ("[]", "no captions"),
])
def test_read_captions_file_errors(tmp_path, content, message):
    path = tmp_path / "captions.json"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        read_captions_file(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_read_captions_file_missing_and_jsonl_line_number(tmp_path):
    with pytest.raises(InputError, match="no such captions file"):
        read_captions_file(tmp_path / "nope.json")
    path = tmp_path / "bad.jsonl"
    path.write_text('{"video": "v1", "caption": "a"}\n{"video": "v2", "caption": "b"}\n{oops}\n')
    with pytest.raises(InputError) as err:
        read_captions_file(path)
    assert err.value.line == 3


def test_the_table_says_which_backbone_weights_the_features_came_from():
    scores = {"Bleu_4": 0.5, "METEOR": 0.3, "ROUGE_L": 0.6, "CIDEr": 1.2, "unk_count": 0}
    plain = metrics.format_score_table([("m", scores)])
    assert "features:" not in plain  # unknown origin (a --captions file): nothing claimed
    random = metrics.format_score_table([("m", scores)], features={"inception": "random:0", "clip": None})
    assert random.startswith(plain)
    assert "Inception-V3 random:0, clips none" in random and "RANDOM backbone weights" in random
    pretrained = metrics.format_score_table([("m", scores)], features={"inception": "imagenet", "clip": "sha256:ab"})
    assert "Inception-V3 imagenet, clips sha256:ab" in pretrained and "RANDOM" not in pretrained
    assert "RANDOM" in metrics.features_note({"inception": "imagenet", "clip": "random:3"})
