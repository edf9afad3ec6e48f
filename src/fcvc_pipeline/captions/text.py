"""Caption text: reading annotation files as UTF-8, normalisation for training, clean-up of evaluation
references, length statistics.

Two views of every caption exist and must not be confused:

- the **reference** (:func:`clean_reference`) is the caption as the annotator wrote it. Scoring
  tokenises it with pycocoevalcap's PTB tokenizer, so it is kept verbatim except for whitespace:
  line breaks, tabs and other control characters inside a caption become one space (that tokenizer
  reads one caption per line, so a newline inside a caption would shift every later caption) and
  surrounding whitespace is removed;
- the **training tokens** (:func:`normalize_caption`) are lowercased, stripped of punctuation and
  split on whitespace. Apostrophes join their word (``man's`` -> ``mans``, ``don't`` -> ``dont``);
  every other punctuation mark or symbol separates words (``black-and-white`` -> ``black and
  white``). Letters of any script and digits are kept. Unicode is NFKC-normalised first, so
  full-width letters and ligatures become their plain forms.
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

from fcvc_pipeline.errors import InputError

# Apostrophe-like characters that join the letters around them instead of splitting the word.
_APOSTROPHES = frozenset("'\u2019\u2018\u02bc`\u00b4")
_BREAKING_WS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\s]+")


def _char_class(ch: str) -> str:
    """'keep', 'drop' (apostrophes) or 'space' (punctuation, symbols, separators, control chars)."""
    if ch in _APOSTROPHES:
        return "drop"
    cat = unicodedata.category(ch)
    if cat[0] in "PSZC":  # punctuation, symbols, separators, control/format/unassigned
        return "space"
    return "keep"


class _Translation(dict):
    """A ``str.translate`` table filled on first sight of each character (captions reuse few of them)."""

    def __missing__(self, code: int) -> int | str | None:
        kind = _char_class(chr(code))
        value = None if kind == "drop" else " " if kind == "space" else code
        self[code] = value
        return value


_TABLE = _Translation()


def normalize_caption(text: str) -> list[str]:
    """Training tokens of one caption: lowercase, punctuation stripped, whitespace-split."""
    return unicodedata.normalize("NFKC", text).lower().translate(_TABLE).split()


def clean_reference(text: str) -> str:
    """The evaluation reference: verbatim, but one line (runs of whitespace/control chars -> one space)."""
    return _BREAKING_WS.sub(" ", text).strip()


def is_blank(text: str | None) -> bool:
    """True for a missing, empty or whitespace-only caption (nothing to learn from or score against)."""
    return text is None or clean_reference(text) == ""


def truncate(tokens: Sequence[str], max_len: int) -> tuple[str, ...]:
    """The first ``max_len`` tokens (a training target never exceeds it; references are never cut)."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1 (got {max_len})")
    return tuple(tokens[:max_len])


def percentiles(values: Iterable[int], qs: Sequence[int] = (50, 90, 95, 99)) -> dict[str, int]:
    """Nearest-rank percentiles of integer values (``{"p50": .., "p90": .., ..., "max": ..}``).

    Nearest rank keeps the result one of the observed lengths, so it is exact and deterministic.
    An empty input gives zeros.
    """
    ordered = sorted(values)
    if not ordered:
        return {**{f"p{q}": 0 for q in qs}, "max": 0}
    n = len(ordered)
    out = {f"p{q}": ordered[max(0, math.ceil(q / 100 * n) - 1)] for q in qs}
    out["max"] = ordered[-1]
    return out


def read_text(path: str | Path) -> str:
    """A file's text as UTF-8 (a BOM is allowed); a non-UTF-8 file is an error naming the line and byte."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a folder, expected an annotation file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(path, f"not UTF-8 text (invalid byte 0x{data[e.start]:02x} at offset {e.start})",
                         line=line, hint="convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None
