import re

from fcvc_pipeline.naming import is_safe, safe_name, short_id, tsv_field


def test_safe_ids_are_unchanged():
    assert safe_name("vid12_3.5-x") == "vid12_3.5-x"
    assert is_safe("-_6Tl7pN1oM_1_10")


def test_unsafe_ids_become_one_safe_component():
    for vid in ["../etc/passwd", "a/b", "..", ".", "x\x00y", "été video", "a\\b", "%2F"]:
        name = safe_name(vid)
        assert "/" not in name and "\\" not in name and name not in (".", "..")
        assert not name.startswith(".") and name.isascii() and name.isprintable()


def test_mapping_is_injective_and_bounded():
    ids = ["a/b", "a%2Fb", "a_b", "a b", "a" * 500, "a" * 501]
    names = [safe_name(v) for v in ids]
    assert len(set(names)) == len(ids)
    assert all(len(n) <= 120 for n in names)


def test_tsv_field_escapes_what_would_split_a_row_and_can_be_read_back():
    raw = "a\tb\nc\rd\\e \\t f"
    field = tsv_field(raw)
    assert field == "a\\tb\\nc\\rd\\\\e \\\\t f"
    assert "\t" not in field and "\n" not in field and "\r" not in field
    unescape = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}
    assert re.sub(r"\\(.)", lambda m: unescape[m.group(1)], field) == raw
    assert tsv_field("plain id-1.mp4 é") == "plain id-1.mp4 é"


def test_short_id_cuts_long_ids_and_says_how_long_they_were():
    assert short_id("v1") == "'v1'"
    assert short_id("x" * 80, limit=82) == repr("x" * 80)
    shown = short_id("x" * 5000)
    assert shown == "'" + "x" * 77 + "\u2026' (5000 characters)"
    assert len(shown.split(" (")[0]) == 80
    newlines = short_id("\n" * 300, limit=20)
    assert len(newlines.split(" (")[0]) <= 20 and newlines.endswith("\u2026' (300 characters)")
    assert short_id(list(range(100)), limit=20).endswith("\u2026 (390 characters)")
