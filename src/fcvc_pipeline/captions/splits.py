"""Split rules: split names, the MSVD standard split, and ``--split-file``.

Split names are normalised to ``train`` / ``val`` / ``test``: MSR-VTT's ``validate`` and the usual
spellings (``validation``, ``valid``, ``dev``, ``training``, ``testing``) map onto them, and
``restval`` (Karpathy-style files) counts as ``train``.

**MSVD standard split.** Sort the 1,970 clip names (``<youtubeid>_<start>_<end>``) by code point
(ASCII order); clips 1-1200 are train, 1201-1300 val, 1301-1970 test. The rule needs exactly the
1,970 clips of ``YouTubeClips``: they come from the corpus CSV when it names exactly 1,970 clips, or
from ``--split-file`` given as the clip folder or a list of clip names.

**Split file** (``--split-file F``), one of:

- a directory: the video files in it (by extension) are a clip list; their names without extension
  are the clip ids (for the MSVD corpus: pass the ``YouTubeClips/`` folder);
- a text file, one entry per line (blank lines and ``#`` comments ignored): ``video_id split``
  (separated by a comma, a tab or spaces) gives explicit splits; a bare ``video_id`` per line is a
  clip list (MSVD only). Mixing both kinds is an error naming the line;
- a JSON file: ``{"train": [ids], "val": [ids], "test": [ids]}``, ``{"video_id": "split", ...}``,
  or a list of clip names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from fcvc_pipeline.artifacts import file_fingerprint, fingerprint
from fcvc_pipeline.captions.text import read_text
from fcvc_pipeline.errors import InputError
from fcvc_pipeline.naming import short_id

MSVD_CLIPS = 1970
MSVD_COUNTS = (("train", 1200), ("val", 100), ("test", 670))

_SPLIT_ALIASES = {
    "train": "train", "training": "train", "restval": "train",
    "val": "val", "valid": "val", "validate": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}
VIDEO_EXTENSIONS = frozenset({".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
                              ".3gp", ".ts"})


def normalize_split(name: Any) -> str | None:
    """``train``/``val``/``test`` for a known split name (any case), else None."""
    if not isinstance(name, str):
        return None
    return _SPLIT_ALIASES.get(name.strip().lower())


def msvd_standard_split(clips: Iterable[str]) -> dict[str, str]:
    """clip id -> split by the standard 1200/100/670 rule over the ASCII-sorted clip names."""
    names = sorted(set(clips))
    if len(names) != MSVD_CLIPS:
        raise ValueError(f"the MSVD standard split is defined on {MSVD_CLIPS} clips, got {len(names)}")
    out: dict[str, str] = {}
    start = 0
    for split, count in MSVD_COUNTS:
        for name in names[start:start + count]:
            out[name] = split
        start += count
    return out


@dataclass(frozen=True)
class SplitSpec:
    """What a split file says: explicit splits, or a clip list for the MSVD rule (exactly one is set)."""

    path: Path
    mapping: Mapping[str, str] | None = None
    clip_list: tuple[str, ...] | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "splits" if self.mapping is not None else "clip list"


def _set_split(mapping: dict[str, str], vid: str, split: str, path: Path, where: int | str | None) -> None:
    old = mapping.get(vid)
    if old is not None and old != split:
        line = where if isinstance(where, int) else None
        at = f" ({where})" if isinstance(where, str) else ""
        raise InputError(path, f"video {short_id(vid)} is given two splits ({old} and {split}){at}", line=line)
    mapping[vid] = split


def _split_value(path: Path, value: Any, where: int | str) -> str:
    split = normalize_split(value)
    if split is None:
        line = where if isinstance(where, int) else None
        at = f" at {where}" if isinstance(where, str) else ""
        raise InputError(path, f"unknown split {short_id(value)}{at} (expected train, val/validate or test)", line=line)
    return split


def _read_dir(path: Path) -> SplitSpec:
    names = sorted(p.stem for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not names:
        raise InputError(path, "the split folder holds no video files",
                         hint=f"expected files ending in {', '.join(sorted(VIDEO_EXTENSIONS))}")
    return SplitSpec(path, clip_list=tuple(names), fingerprint={"clips": fingerprint(names), "count": len(names)})


def _read_json(path: Path, raw: Any) -> SplitSpec:
    fp = file_fingerprint(path)
    if isinstance(raw, list):
        if not all(isinstance(x, str) and x.strip() for x in raw):
            raise InputError(path, "a JSON clip list must hold only non-empty strings")
        return SplitSpec(path, clip_list=tuple(x.strip() for x in raw), fingerprint=fp)
    if not isinstance(raw, dict):
        raise InputError(path, "a JSON split file must be an object or a list of clip names")
    mapping: dict[str, str] = {}
    if raw and all(isinstance(v, list) for v in raw.values()):  # {"train": [...], ...}
        for key, ids in raw.items():
            split = _split_value(path, key, f"key {short_id(key)}")
            for i, vid in enumerate(ids):
                if not isinstance(vid, (str, int)) or str(vid).strip() == "":
                    raise InputError(path, f"{key}[{i}]: a video id must be a non-empty string")
                _set_split(mapping, str(vid).strip(), split, path, f"{key}[{i}]")
    else:  # {"video_id": "split", ...}
        for vid, value in raw.items():
            where = f"key {short_id(vid)}"
            _set_split(mapping, vid.strip(), _split_value(path, value, where), path, where)
    if not mapping:
        raise InputError(path, "the split file names no videos")
    return SplitSpec(path, mapping=mapping, fingerprint=fp)


def _read_text(path: Path, text: str) -> SplitSpec:
    mapping: dict[str, str] = {}
    clips: list[str] = []
    first_kind: tuple[str, int] | None = None
    for n, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        parts = [p.strip() for p in re.split(r"[,\t]", body)] if re.search(r"[,\t]", body) else body.rsplit(None, 1)
        kind = "splits" if len(parts) == 2 else "clip list" if len(parts) == 1 else "bad"
        if kind == "bad":
            raise InputError(path, f"expected 'video_id split' or a bare video id, got {len(parts)} fields", line=n)
        if first_kind is None:
            first_kind = (kind, n)
        elif kind != first_kind[0]:
            raise InputError(path, f"this line is a {kind} entry but line {first_kind[1]} was a {first_kind[0]} "
                                   "entry; use one kind per file", line=n)
        if kind == "splits":
            _set_split(mapping, parts[0], _split_value(path, parts[1], n), path, n)
        else:
            clips.append(parts[0])
    fp = file_fingerprint(path)
    if first_kind is None:
        raise InputError(path, "the split file is empty")
    if first_kind[0] == "splits":
        return SplitSpec(path, mapping=mapping, fingerprint=fp)
    return SplitSpec(path, clip_list=tuple(clips), fingerprint=fp)


def read_split_file(path: str | Path) -> SplitSpec:
    """Parse ``--split-file`` (a folder of clips, a text file or a JSON file); errors name the line."""

    path = Path(path)
    if path.is_dir():
        return _read_dir(path)
    text = read_text(path)
    if text.lstrip().startswith(("{", "[")):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno) from None
        return _read_json(path, raw)
    return _read_text(path, text)


def split_file_fingerprint(path: str | Path) -> dict[str, Any]:
    """What decides a split file's content: the file's hash, or a folder's sorted video names."""
    path = Path(path)
    if path.is_dir():
        return _read_dir(path).fingerprint
    return file_fingerprint(path)
