import pytest

from fcvc_pipeline.captions.text import clean_reference, is_blank, normalize_caption, percentiles, truncate


@pytest.mark.parametrize("raw, tokens", [
    ("A man is playing a guitar.", ["a", "man", "is", "playing", "a", "guitar"]),
    ("The man's GUITAR!!", ["the", "mans", "guitar"]),
    ("don\u2019t stop", ["dont", "stop"]),
    ("a black-and-white cat", ["a", "black", "and", "white", "cat"]),
    ("two\tdogs\nrun,fast", ["two", "dogs", "run", "fast"]),
    ("  spaced   out  ", ["spaced", "out"]),
    ("3 kids & 2 dogs", ["3", "kids", "2", "dogs"]),
    ("Caf\u00e9 \u201cquoted\u201d", ["caf\u00e9", "quoted"]),
    ("\uff21\uff22\uff23 full width", ["abc", "full", "width"]),
    ("...!?", []),
    ("", []),
])
def test_normalize_caption(raw, tokens):
    assert normalize_caption(raw) == tokens


def test_normalize_drops_control_characters_between_words():
    assert normalize_caption("a\x00b\x1fc") == ["a", "b", "c"]


def test_clean_reference_keeps_text_but_puts_it_on_one_line():
    assert clean_reference("  A man's Guitar, loud!\n") == "A man's Guitar, loud!"
    assert clean_reference("two\r\nlines\tand\x0bcontrols") == "two lines and controls"
    assert clean_reference("x\u2028y") == "x y"


def test_is_blank():
    assert is_blank(None) and is_blank("") and is_blank("  \t\n ")
    assert not is_blank(" a ")


def test_truncate_only_shortens():
    assert truncate(["a", "b", "c"], 2) == ("a", "b")
    assert truncate(["a"], 5) == ("a",)
    with pytest.raises(ValueError):
        truncate(["a"], 0)


def test_percentiles_nearest_rank():
    p = percentiles(range(1, 101))
    assert p == {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p95": 7, "p99": 7, "max": 7}
    assert percentiles([3, 1, 2], qs=(50,)) == {"p50": 2, "max": 3}
    assert percentiles([]) == {"p50": 0, "p90": 0, "p95": 0, "p99": 0, "max": 0}
