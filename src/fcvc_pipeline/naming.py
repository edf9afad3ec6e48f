"""Video ids come from file names and annotation files: never trust them as paths or store keys.

:func:`safe_name` maps any id to a name that is one path component, printable ASCII, not special
(``.``/``..``), not a name the Zarr store reserves for itself (``zarr.json``), and at most 120
characters; the mapping is injective (distinct ids never collide) and ids that are already safe map to
themselves. :func:`tsv_field` makes an id safe for one column of a tab-separated line, and
:func:`short_id` shortens an id for a message a person reads. :func:`did_you_mean` suggests the closest
of some known names for a misspelled one.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from typing import Iterable

_SAFE = re.compile(r"[A-Za-z0-9_\-.]")
_MAX = 120
_RESERVED = {"zarr.json"}  # the metadata file of the group that holds the videos


def safe_name(video_id: str) -> str:
    if not isinstance(video_id, str) or video_id == "":
        raise ValueError("a video id must be a non-empty string")
    out = []
    for i, ch in enumerate(video_id):
        if _SAFE.fullmatch(ch) and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
    name = "".join(out)
    if name in _RESERVED:  # escape its dot: "%" never survives as itself, so this cannot collide
        name = name.replace(".", "%2E")
    if len(name) > _MAX:
        digest = hashlib.sha256(video_id.encode("utf-8")).hexdigest()[:16]
        name = f"{name[:_MAX - 18]}~{digest}"
    return name


def is_safe(video_id: str) -> bool:
    return safe_name(video_id) == video_id


# Backslash first, so that the escapes written for the others are not escaped again.
_TSV_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))


def tsv_field(text: str) -> str:
    r"""``text`` for one column of a tab-separated line: a backslash, tab, newline or carriage return becomes
    the two characters ``\\``, ``\t``, ``\n`` or ``\r`` (the escapes of PostgreSQL's text COPY format), so no
    column can split a row or a line; every other character is kept as it is."""
    for raw, escaped in _TSV_ESCAPES:
        text = text.replace(raw, escaped)
    return text


def short_id(text: object, limit: int = 80) -> str:
    """``repr(text)`` for a message a person reads, at most ``limit`` characters of it.

    A longer id keeps its start, quoted, with an ellipsis before the closing quote and its length after
    it: ``short_id("x" * 5000, 12)`` is ``'xxxxxxxxx…' (5000 characters)``.
    """
    shown = repr(text)
    if len(shown) <= limit:
        return shown
    if not isinstance(text, str):  # a number or list read from a JSON file: cut its repr
        return f"{shown[:limit - 1]}\u2026 ({len(shown)} characters)"
    keep = max(1, limit - 3)
    while keep > 1 and len(repr(text[:keep])) > limit - 1:  # escapes (\n, \x00) take several characters
        keep -= 1
    head = repr(text[:keep])
    return f"{head[:-1]}\u2026{head[-1]} ({len(text)} characters)"


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to ``value``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value).strip().lower(), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
