"""Annotation files: format detection, one reader per format, and the split rules applied to them.

Formats (``--format``):

- ``msvd-csv``: the MSVD corpus CSV (``VideoID,Start,End,...,Language,Description``). Only rows whose
  ``Language`` is English are kept; the clip id is ``<VideoID>_<Start>_<End>``. Splits follow the
  MSVD standard rule (:mod:`fcvc_pipeline.captions.splits`); clips with no English caption are reported.
- ``msrvtt-json``: MSR-VTT ``videodatainfo.json``: ``videos[{video_id, split}]`` and
  ``sentences[{video_id, caption}]``.
- ``coco-json``: ``annotations[{image_id | video_id, caption}]`` with an optional ``images`` (or
  ``videos``) list of ``{id, file_name?, split?}``; a video is named by its file name without folder
  and extension when one is given, else by its id.
- ``csv``: ``video_id,caption[,split]`` with a header row (``video``/``id`` and ``sentence``/``text``
  are accepted as column names) or without one (2 or 3 columns by position); tab-separated works too.
  A first row of column-like names (no split name among them, and either a known column name or a first
  cell unlike the ids below it) is a header: when it lacks a video id or caption column, the error says so
  and lists the known column names, instead of reading the names as data.
- ``jsonl``: one JSON object per line with ``video_id``, ``caption`` and optionally ``split``; a JSON
  array of the same objects is read the same way.

``auto`` looks at the content: JSON objects are told apart by their keys, CSV files by their header;
when nothing fits, the error lists each format tried and why it did not fit. A binary file (a video, an
image, an archive: told by its first bytes or a NUL byte) is refused as what it is, before any decoding.

Video ids are untrusted. An id is stripped of surrounding whitespace; an empty id, or one holding a
control character (newline, NUL, ...), is refused with an error naming the file and line or position.
Any other id is accepted and stays the key of the caption table, even when it holds path separators,
``..`` or spaces: nothing in this stage builds a path from an id, and wherever a file or group name is
needed later (the feature store), :func:`fcvc_pipeline.naming.safe_name` maps it to one safe path
component. Such ids are reported so that a user who put file paths in the id column notices.

Captions: empty or whitespace-only captions are skipped and counted; captions over
:data:`MAX_CAPTION_CHARS` characters are skipped and counted (they are not sentences); identical
(video, caption) pairs are kept (the benchmarks score against every reference) and counted. A video
listed twice with the same split is merged; listed with two different splits, it is an error.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterator

from fcvc_pipeline.captions.splits import MSVD_CLIPS, SplitSpec, msvd_standard_split, normalize_split, read_split_file
from fcvc_pipeline.captions.text import clean_reference, read_text
from fcvc_pipeline.errors import ConfigError, InputError
from fcvc_pipeline.naming import is_safe, short_id

FORMATS = ("msvd-csv", "msrvtt-json", "coco-json", "csv", "jsonl")
MAX_CAPTION_CHARS = 10_000

_VIDEO_COLS = ("video_id", "videoid", "video", "vid", "id")
_CAPTION_COLS = ("caption", "sentence", "description", "text")
_MSVD_COLS = ("videoid", "start", "end", "language", "description")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # Unicode category Cc, plus line/paragraph separators


@dataclass(frozen=True)
class Caption:
    video_id: str
    caption: str  # the reference: verbatim text on one line (see data.text.clean_reference)
    where: str  # "line 12" or "sentences[3]": where it came from, for messages


@dataclass
class Annotations:
    """Captions with a split for every video that has one; everything dropped is counted."""

    path: Path
    format: str
    captions: list[Caption]  # only videos with a split, in file order
    splits: dict[str, str]  # video id -> train | val | test, for every video in ``captions``
    split_source: str  # "file", "msvd-standard", "split-file", "split-file+msvd-standard"
    counts: Counter = field(default_factory=Counter)  # skipped / merged items, by reason
    videos_without_captions: list[str] = field(default_factory=list)  # listed, but no usable caption
    unsplit_videos: list[str] = field(default_factory=list)  # captioned, but no split: dropped
    unsafe_ids: list[str] = field(default_factory=list)  # ids that are not plain file names


def _json_error(path: Path, e: json.JSONDecodeError) -> InputError:
    return InputError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno)


# -- ids and captions ----------------------------------------------------------------------------

def _video_id(path: Path, value: Any, where: str, line: int | None = None) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(path, f"{where}: video id must be a string or integer, got {type(value).__name__}",
                         line=line)
    vid = str(value).strip()
    if not vid:
        raise InputError(path, f"{where}: empty video id", line=line)
    bad = _CONTROL.search(vid)
    if bad:
        raise InputError(path, f"{where}: video id {short_id(vid)} contains a control character "
                               f"(U+{ord(bad.group()):04X})", line=line,
                         hint="video ids must be printable; fix the id in the file")
    return vid


class _Collector:
    """Accumulates captions and per-video splits while a reader walks a file."""

    def __init__(self, path: Path):
        self.path = path
        self.captions: list[Caption] = []
        self.splits: dict[str, str] = {}
        self.split_where: dict[str, str] = {}
        self.listed: dict[str, None] = {}  # every video the file names, in order
        self.counts: Counter = Counter()
        self._seen_pairs: set[tuple[str, str]] = set()

    def video(self, vid: str, split: str | None, where: str, line: int | None = None) -> None:
        self.listed.setdefault(vid, None)
        if split is None:
            return
        old = self.splits.get(vid)
        if old is None:
            self.splits[vid], self.split_where[vid] = split, where
        elif old != split:
            here = "here" if line is not None else f"at {where}"
            raise InputError(self.path, f"video {short_id(vid)} is listed as {split} {here} but as {old} at "
                                        f"{self.split_where[vid]}", line=line)

    def caption(self, vid: str, text: Any, where: str, line: int | None = None) -> None:
        self.listed.setdefault(vid, None)
        if text is not None and not isinstance(text, str):
            at = "" if line is not None else f"{where}: "
            raise InputError(self.path, f"{at}caption must be text, got {type(text).__name__}", line=line)
        if text is None:
            self.counts["empty_captions"] += 1
            return
        if len(text) > MAX_CAPTION_CHARS:
            self.counts["too_long_captions"] += 1
            return
        ref = clean_reference(text)
        if not ref:
            self.counts["empty_captions"] += 1
            return
        if (vid, ref) in self._seen_pairs:
            self.counts["duplicate_captions"] += 1  # kept: benchmarks score against every reference
        self._seen_pairs.add((vid, ref))
        self.captions.append(Caption(vid, ref, where))


# -- CSV -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    old = csv.field_size_limit()
    csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each non-empty record; a malformed record is an error naming its line."""
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first and "," not in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    with _csv_field_limit(min(sys.maxsize, 2**31 - 1)):
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise InputError(path, f"malformed CSV record starting at line {start}: {e}",
                                 line=reader.line_num) from None
            if row and any(cell.strip() for cell in row):
                yield start, row


def _column_name(cell: str) -> str:
    """'Video ID' -> 'video_id': how a header cell is compared with the names fcvc knows."""
    return re.sub(r"[\s\-]+", "_", cell.strip().lower())


def _header_index(header: list[str], names: tuple[str, ...]) -> int | None:
    low = [_column_name(h) for h in header]
    for name in names:
        if name in low:
            return low.index(name)
    return None


_KNOWN_COLUMNS = (*_VIDEO_COLS, *_CAPTION_COLS, "split")
_NAME_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*(?: [A-Za-z0-9_.\-]+){0,2}")  # up to three words
_KNOWN_COLUMNS_TEXT = ("video_id (or videoid, video, vid, id), caption (or sentence, description, text) and, "
                       "optionally, split")


def _shape(cell: str) -> tuple[bool, bool]:
    return any(ch.isdigit() for ch in cell), any(ch.isspace() for ch in cell.strip())


def _reads_as_header(header: list[str], body: list[list[str]]) -> bool:
    """The first row names columns: every cell is a short name (no split name, not a number), and one of
    them is a column fcvc knows or the first cell looks unlike the video ids of the rows below it."""
    cells = [c.strip() for c in header]
    if not cells or not all(c and len(c) <= 40 and _NAME_LIKE.fullmatch(c) and normalize_split(c) is None
                            for c in cells):
        return False
    if any(_column_name(c) in _KNOWN_COLUMNS for c in cells):
        return True
    ids = [row[0].strip() for row in body[:50] if row and row[0].strip()]
    if not ids:
        return False
    shapes = Counter(_shape(v) for v in ids)
    return _shape(cells[0]) != shapes.most_common(1)[0][0]


def _header_problem(header: list[str]) -> str | None:
    """Why a header row cannot be read as ``csv`` (None: it names a video id and a caption column)."""
    vi, ci = _header_index(header, _VIDEO_COLS), _header_index(header, _CAPTION_COLS)
    if vi is not None and ci is not None:
        return None
    lacks = " and no ".join(n for n, i in (("video id column", vi), ("caption column", ci)) if i is None)
    unknown = [c.strip() for c in header if _column_name(c) not in _KNOWN_COLUMNS]
    return (f"line 1 reads as a header (columns: {', '.join(c.strip() for c in header)}) but has no {lacks}; "
            f"the columns fcvc knows are {_KNOWN_COLUMNS_TEXT}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""))


_HEADER_HINT = "rename the columns in line 1 (e.g. video_id,caption,split), or delete line 1 if it is data"


def _clip_bound(value: str) -> str:
    """MSVD start/end seconds as written in clip names: '5', and '5.0' -> '5'."""
    v = value.strip()
    head, dot, tail = v.partition(".")
    if dot and head.isdigit() and tail.strip("0") == "":
        return head
    return v


def _read_msvd(path: Path, text: str, col: _Collector) -> list[str]:
    rows = _csv_rows(path, text)
    try:
        _, header = next(rows)
    except StopIteration:
        raise InputError(path, "the file is empty") from None
    idx = {name: _header_index(header, (name,)) for name in _MSVD_COLS}
    missing = [n for n, i in idx.items() if i is None]
    if missing:
        raise InputError(path, f"not an MSVD corpus CSV: missing column(s) {', '.join(missing)}", line=1)
    width = len(header)
    clips: dict[str, None] = {}
    for line, row in rows:
        if len(row) != width:
            raise InputError(path, f"expected {width} fields like the header, found {len(row)}", line=line,
                             hint="quote fields that contain commas")
        vid = _video_id(path, row[idx["videoid"]], "VideoID", line)
        clip = _video_id(path, f"{vid}_{_clip_bound(row[idx['start']])}_{_clip_bound(row[idx['end']])}",
                         "clip id", line)
        clips.setdefault(clip, None)
        col.listed.setdefault(clip, None)
        if row[idx["language"]].strip().lower() != "english":
            col.counts["non_english_captions"] += 1
            continue
        col.caption(clip, row[idx["description"]], f"line {line}", line)
    return list(clips)


def _read_plain_csv(path: Path, text: str, col: _Collector) -> None:
    rows = list(_csv_rows(path, text))
    if not rows:
        raise InputError(path, "the file is empty")
    header = rows[0][1]
    vi, ci = _header_index(header, _VIDEO_COLS), _header_index(header, _CAPTION_COLS)
    if vi is not None and ci is not None:
        si = _header_index(header, ("split",))
        width, body = len(header), rows[1:]
    elif _reads_as_header(header, [r for _, r in rows[1:]]):
        raise InputError(path, _header_problem(header) or "unreadable header", line=1, hint=_HEADER_HINT)
    else:  # no header: video_id, caption[, split] by position
        width = len(header)
        if width not in (2, 3):
            raise InputError(path, "expected a header naming video_id and caption columns, or rows of "
                                   f"2-3 fields (video_id, caption[, split]); found {width} fields", line=1)
        vi, ci, si, body = 0, 1, (2 if width == 3 else None), rows
    for line, row in body:
        if len(row) != width:
            raise InputError(path, f"expected {width} fields, found {len(row)}", line=line,
                             hint="quote captions that contain commas")
        vid = _video_id(path, row[vi], "video id", line)
        split = None
        if si is not None and row[si].strip():
            split = normalize_split(row[si])
            if split is None:
                raise InputError(path, f"unknown split {short_id(row[si])} (expected train, val/validate or test)",
                                 line=line)
        col.video(vid, split, f"line {line}", line)
        col.caption(vid, row[ci], f"line {line}", line)


# -- JSON ------------------------------------------------------------------------------------------

def _pick(entry: dict, names: tuple[str, ...]) -> Any:
    for name in names:
        if name in entry:
            return entry[name]
    return None


def _json_array_items(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line, item) of each element of a top-level JSON array, decoded one by one so errors name a line."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    i = ws.match(text, text.index("[") + 1).end()
    if text.startswith("]", i):
        return
    while True:
        try:
            item, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise _json_error(path, e) from None
        yield text.count("\n", 0, i) + 1, item
        i = ws.match(text, end).end()
        if text.startswith("]", i):
            return
        if not text.startswith(",", i):
            line = text.count("\n", 0, i) + 1
            raise InputError(path, f"invalid JSON: expected ',' or ']' after an array element "
                                   f"(column {i - text.rfind(chr(10), 0, i)})", line=line)
        i = ws.match(text, i + 1).end()


def _jsonl_items(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line, object) of a JSON-lines file, or of a JSON array of the same objects."""
    if text.lstrip().startswith("["):
        yield from _json_array_items(path, text)
        return
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            yield line, json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=line) from None


def _read_jsonl(path: Path, text: str, col: _Collector) -> None:
    any_row = False
    for line, obj in _jsonl_items(path, text):
        if not isinstance(obj, dict):
            raise InputError(path, "each line (or array element) must be a JSON object", line=line)
        vid_raw, cap = _pick(obj, _VIDEO_COLS), _pick(obj, _CAPTION_COLS)
        if vid_raw is None or not any(k in obj for k in _CAPTION_COLS):
            raise InputError(path, "each object needs 'video_id' and 'caption'", line=line)
        vid = _video_id(path, vid_raw, "video_id", line)
        split = None
        if obj.get("split") not in (None, ""):
            split = normalize_split(obj["split"])
            if split is None:
                raise InputError(path, f"unknown split {short_id(obj['split'])}", line=line)
        col.video(vid, split, f"line {line}", line)
        col.caption(vid, cap, f"line {line}", line)
        any_row = True
    if not any_row:
        raise InputError(path, "the file holds no captions")


def _entries(path: Path, obj: dict, key: str) -> list[dict]:
    items = obj.get(key)
    if not isinstance(items, list):
        raise InputError(path, f"'{key}' must be a list, found {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(path, f"{key}[{i}] must be an object, found {type(item).__name__}")
    return items


def _split_of(path: Path, entry: dict, where: str) -> str | None:
    value = entry.get("split")
    if value in (None, ""):
        return None
    split = normalize_split(value)
    if split is None:
        raise InputError(path, f"{where}: unknown split {short_id(value)} (expected train, validate/val or test)")
    return split


def _read_msrvtt(path: Path, obj: dict, col: _Collector) -> None:
    seen: set[str] = set()
    for i, v in enumerate(_entries(path, obj, "videos")):
        where = f"videos[{i}]"
        if "video_id" not in v:
            raise InputError(path, f"{where}: missing 'video_id'")
        vid = _video_id(path, v["video_id"], where)
        if vid in seen:
            col.counts["duplicate_video_entries"] += 1  # merged (a conflicting split raises below)
        seen.add(vid)
        col.video(vid, _split_of(path, v, where), where)
    for i, s in enumerate(_entries(path, obj, "sentences")):
        where = f"sentences[{i}]"
        if "video_id" not in s or "caption" not in s:
            raise InputError(path, f"{where}: needs 'video_id' and 'caption'")
        col.caption(_video_id(path, s["video_id"], where), s["caption"], where)


def _coco_name(entry: dict) -> Any:
    name = entry.get("file_name")
    if isinstance(name, str) and name.strip():
        base = PureWindowsPath(PurePosixPath(name.strip()).name).name
        return base.rsplit(".", 1)[0] if "." in base[1:] else base
    return entry.get("id")


def _read_coco(path: Path, obj: dict, col: _Collector) -> None:
    names: dict[str, str] = {}
    list_key = "images" if "images" in obj else "videos" if "videos" in obj else None
    if list_key is not None:
        seen: set[str] = set()
        for i, entry in enumerate(_entries(path, obj, list_key)):
            where = f"{list_key}[{i}]"
            if "id" not in entry:
                raise InputError(path, f"{where}: missing 'id'")
            key = _video_id(path, entry["id"], where)
            vid = _video_id(path, _coco_name(entry), where)
            if key in seen:
                col.counts["duplicate_video_entries"] += 1
            seen.add(key)
            names[key] = vid
            col.video(vid, _split_of(path, entry, where), where)
    for i, a in enumerate(_entries(path, obj, "annotations")):
        where = f"annotations[{i}]"
        key_raw = _pick(a, ("video_id", "image_id"))
        if key_raw is None or "caption" not in a:
            raise InputError(path, f"{where}: needs 'image_id' (or 'video_id') and 'caption'")
        key = _video_id(path, key_raw, where)
        col.caption(names.get(key, key), a["caption"], where)


# -- detection -------------------------------------------------------------------------------------

def _first_line_object(text: str) -> bool:
    for raw in text.splitlines():
        if raw.strip():
            try:
                return isinstance(json.loads(raw), dict)
            except json.JSONDecodeError:
                return False
    return False


def _caption_object(obj: Any) -> bool:
    return isinstance(obj, dict) and any(k in obj for k in _VIDEO_COLS) and any(k in obj for k in _CAPTION_COLS)


def detect_format(path: str | Path, text: str) -> tuple[str, Any]:
    """(format, parsed JSON or None) from the content; the error lists the formats tried and why."""
    path = Path(path)
    stripped = text.lstrip()
    if not stripped:
        raise InputError(path, "the file is empty")
    if stripped[0] in "{[":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if _first_line_object(text):
                return "jsonl", None
            raise _json_error(path, e) from None
        if isinstance(obj, dict):
            if "videos" in obj and "sentences" in obj:
                return "msrvtt-json", obj
            if "annotations" in obj:
                return "coco-json", obj
            if _caption_object(obj):
                return "jsonl", None  # a JSON-lines file with a single line
        if isinstance(obj, list) and obj and all(isinstance(o, dict) for o in obj):
            if all(_caption_object(o) for o in obj):
                return "jsonl", None  # a JSON array of the objects JSONL holds
            keys = sorted({k for o in obj for k in o})
            found = f"a JSON list of objects with keys {keys[:8]}"
        else:
            found = f"keys {sorted(obj)[:8]}" if isinstance(obj, dict) else f"a JSON {type(obj).__name__}"
        raise InputError(path, "JSON, but not a caption format fcvc knows. Tried: msrvtt-json (needs 'videos' and "
                               "'sentences'), coco-json (needs 'annotations'), jsonl (objects with 'video_id' and "
                               f"'caption', one per line or in a JSON array); found {found}",
                         hint="pass --format explicitly, or convert to JSONL of {video_id, caption, split}")
    rows = _csv_rows(path, text)
    try:
        _, header = next(rows)
    except StopIteration:
        raise InputError(path, "the file is empty") from None
    if all(_header_index(header, (c,)) is not None for c in _MSVD_COLS):
        return "msvd-csv", None
    if _header_index(header, _VIDEO_COLS) is not None and _header_index(header, _CAPTION_COLS) is not None:
        return "csv", None
    body = [row for _, row in itertools.islice(rows, 50)]
    if _reads_as_header(header, body):
        raise InputError(path, f"{_header_problem(header)} (tried msvd-csv, whose header needs "
                               f"{', '.join(_MSVD_COLS)}, and csv)", line=1, hint=_HEADER_HINT)
    if len(header) in (2, 3):
        return "csv", None  # headerless video_id, caption[, split]
    raise InputError(path, "unrecognised annotation file. Tried: msrvtt-json / coco-json / jsonl (the file is not "
                           f"JSON), msvd-csv (header lacks {', '.join(_MSVD_COLS)}), csv (no video_id and caption "
                           f"columns, and {len(header)} fields instead of 2-3)", line=1,
                     hint="pass --format explicitly, or see `fcvc vocab --help` for the accepted formats")


# -- binary files ----------------------------------------------------------------------------------

_MEDIA_HINT = ("give fcvc vocab the captions file (CSV, JSONL, MSR-VTT or COCO JSON; see `fcvc vocab --help`); "
               "videos go to `fcvc extract`")
# (offset, magic bytes, what the file is); checked in order
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (4, b"ftyp", "an MP4/MOV video"),
    (0, b"\x1a\x45\xdf\xa3", "a Matroska/WebM video"),
    (0, b"FLV", "an FLV video"),
    (0, b"\x00\x00\x01\xba", "an MPEG video"),
    (0, b"\x00\x00\x01\xb3", "an MPEG video"),
    (0, b"OggS", "an Ogg media file"),
    (0, b"%PDF-", "a PDF document"),
    (0, b"PK\x03\x04", "a zip archive (e.g. an Excel .xlsx workbook or a PyTorch checkpoint)"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Office document (e.g. an Excel .xls workbook)"),
    (0, b"\x1f\x8b", "gzip-compressed"),
    (0, b"BZh", "bzip2-compressed"),
    (0, b"\xfd7zXZ\x00", "xz-compressed"),
    (0, b"\x28\xb5\x2f\xfd", "Zstandard-compressed"),
    (0, b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (0, b"\x93NUMPY", "a NumPy array file"),
)
_RIFF = {b"AVI ": "an AVI video", b"WEBP": "a WebP image", b"WAVE": "a WAV audio file"}


def binary_kind(head: bytes) -> tuple[str, str] | None:
    """(why the file cannot be annotations, what to do) when its first bytes show it is not UTF-8 text
    (a video, an image, an archive, UTF-16 text, other binary data), else None."""
    if head[:4] == b"RIFF" and head[8:12] in _RIFF:
        return f"this is {_RIFF[head[8:12]]}, not an annotation file", _MEDIA_HINT
    for offset, magic, what in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            if what.endswith("-compressed"):
                return (f"the file is {what}", "decompress it first (e.g. `gunzip`, `bunzip2`, `unxz`, `unzstd`) "
                                               "and give fcvc vocab the text file")
            if what.startswith(("a zip", "an old Office")):
                return f"this is {what}, not an annotation file", "export the captions as CSV (UTF-8) first"
            return f"this is {what}, not an annotation file", _MEDIA_HINT
    utf16 = "convert it to UTF-8 first, e.g. `iconv -f utf-16 -t utf-8 FILE > FILE.utf8`"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "the file is UTF-16 text; annotation files must be UTF-8", utf16
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "this is a Python pickle, not an annotation file (it was not unpickled)", _MEDIA_HINT
    if b"\x00" in head:
        even, odd = head[0::2], head[1::2]
        for zeros, text in ((odd, even), (even, odd)):  # ASCII as UTF-16: every other byte NUL
            if len(head) >= 4 and zeros.count(0) > 0.9 * len(zeros) and text.count(0) < 0.1 * len(text):
                return "the file looks like UTF-16 text without a byte-order mark; annotation files must be UTF-8", utf16
        return "this is a binary file (it holds NUL bytes), not an annotation file", _MEDIA_HINT
    return None


def _refuse_binary(path: Path) -> None:
    """A regular file whose first bytes show a video, an image, an archive or other binary data is refused as
    that, not decoded as text (a pipe is left alone: reading its head would consume it)."""
    if not path.is_file():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError:
        return  # read_text names the problem
    found = binary_kind(head)
    if found is not None:
        reason, hint = found
        raise InputError(path, reason, hint=hint)


# -- splits ----------------------------------------------------------------------------------------

def _apply_splits(path: Path, fmt: str, col: _Collector, msvd_clips: list[str] | None,
                  spec: SplitSpec | None) -> tuple[dict[str, str], str]:
    """video id -> split for the videos that get one, and where the splits came from."""
    if spec is not None and spec.mapping is not None:
        return dict(spec.mapping), "split-file"
    if spec is not None:  # a clip list: the MSVD standard rule over it
        if fmt != "msvd-csv":
            raise ConfigError(f"{spec.path} is a clip list (no split names); that form only applies the MSVD "
                              f"standard split to an msvd-csv file, and {path} is {fmt}",
                              hint="give 'video_id split' per line instead")
        try:
            splits = msvd_standard_split(spec.clip_list or ())
        except ValueError:
            raise ConfigError(f"{spec.path}: the MSVD standard split needs the {MSVD_CLIPS} clips of YouTubeClips; "
                              f"this clip list names {len(set(spec.clip_list or ()))}") from None
        missing = [c for c in splits if c not in col.listed]
        if missing:  # in the clip list but absent from the corpus: listed as having no caption
            for c in missing:
                col.listed.setdefault(c, None)
        return splits, "split-file+msvd-standard"
    if fmt == "msvd-csv":
        assert msvd_clips is not None
        if len(msvd_clips) != MSVD_CLIPS:
            raise ConfigError(f"{path} names {len(msvd_clips)} clips; the MSVD standard 1200/100/670 split is "
                              f"defined on the {MSVD_CLIPS} clips of YouTubeClips",
                              hint="pass --split-file YouTubeClips/ (the clip folder) or a list of clip names, "
                                   "or a file of 'video_id split' lines")
        return msvd_standard_split(msvd_clips), "msvd-standard"
    if not col.splits:
        raise ConfigError(f"{path} ({fmt}) gives no split for any video",
                          hint="add a 'split' column/field (train, val, test) or pass --split-file")
    return dict(col.splits), "file"


def load_annotations(path: str | Path, fmt: str = "auto", split_file: str | Path | None = None) -> Annotations:
    """Read an annotation file, apply the split rules, and return the captions that have a split."""
    path = Path(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose auto or one of {', '.join(FORMATS)}")
    spec = read_split_file(split_file) if split_file is not None else None
    _refuse_binary(path)
    text = read_text(path)
    obj = None
    if fmt == "auto":
        fmt, obj = detect_format(path, text)
    elif fmt in ("msrvtt-json", "coco-json"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise _json_error(path, e) from None
        if not isinstance(obj, dict):
            raise InputError(path, f"{fmt}: expected a JSON object at the top level")
    col = _Collector(path)
    msvd_clips = None
    if fmt == "msvd-csv":
        msvd_clips = _read_msvd(path, text, col)
    elif fmt == "csv":
        _read_plain_csv(path, text, col)
    elif fmt == "jsonl":
        _read_jsonl(path, text, col)
    elif fmt == "msrvtt-json":
        for key in ("videos", "sentences"):
            if key not in obj:
                raise InputError(path, f"msrvtt-json: missing top-level '{key}'")
        _read_msrvtt(path, obj, col)
    else:
        if "annotations" not in obj:
            raise InputError(path, "coco-json: missing top-level 'annotations'")
        _read_coco(path, obj, col)

    splits, source = _apply_splits(path, fmt, col, msvd_clips, spec)
    captioned = {c.video_id for c in col.captions}
    kept = [c for c in col.captions if c.video_id in splits]
    unsplit = [v for v in col.listed if v in captioned and v not in splits]
    without = [v for v in col.listed if v not in captioned and v in splits]
    if spec is not None and spec.mapping is not None:
        without += [v for v in spec.mapping if v not in col.listed]
    if not kept:
        raise InputError(path, "no usable captions (every caption was empty, too long, non-English or had no split)")
    used = {c.video_id for c in kept}
    return Annotations(
        path=path, format=fmt, captions=kept,
        splits={v: s for v, s in splits.items() if v in used},
        split_source=source, counts=col.counts,
        videos_without_captions=without, unsplit_videos=unsplit,
        unsafe_ids=[v for v in col.listed if not is_safe(v)],
    )
