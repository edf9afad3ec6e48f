"""Caption quality: pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L and CIDEr, made safe to call.

What this module adds around pycocoevalcap (whose scorers do the arithmetic, unchanged):

- **Java first.** PTBTokenizer and METEOR are Java programs. :func:`java_available` checks that a
  working ``java`` is on ``PATH``. Without it, captions are tokenised by :func:`python_tokenize` (a
  documented approximation of the PTB tokenizer), BLEU/ROUGE-L/CIDEr are still computed, METEOR is
  ``None`` and a warning says so. ``FCVC_NO_JAVA=1`` forces this path.
- **Sanitised input.** Every caption goes through :func:`sanitize_caption` (no newline, carriage
  return or other control character can reach the Java programs, whose line protocols they would
  break) and METEOR's field separator ``|||`` is removed from references as well as hypotheses.
  Empty captions (or captions that are only punctuation) are scored as pycocoevalcap scores them:
  its ROUGE-L does not divide by zero on them (it gives an empty caption 1.0 when one of the
  references is empty too after tokenisation, else 0.0), and fcvc calls it unchanged.
- **The PTB tokenizer is run with a temp file in a temp directory** (pycocoevalcap writes one into
  its own package directory, which fails on read-only installs); command, options and punctuation
  filter are pycocoevalcap's, so the tokens are the same (a test compares them).
- **METEOR runs under a time limit** and a dead or hung Java process becomes a warning with
  METEOR = ``None``, never a ``BrokenPipeError`` or a hang.
- BLEU's scorer prints to stdout; it is silenced so ``--json`` output stays one document.

Scores are raw pycocoevalcap values (0..1; CIDEr on its own scale). :func:`format_score_table`
prints them x100 as in the paper.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

from fcvc_pipeline import progress
from fcvc_pipeline.errors import ConfigError, FcvcError, InputError, MismatchError

METRIC_NAMES = ("bleu", "meteor", "rouge", "cider")
SCORE_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
UNK = "<unk>"

# Wall-clock limits for the Java programs (seconds): generous, they only guard against hangs.
PTB_TIMEOUT_S = 600.0
METEOR_TIMEOUT_S = 600.0

_JAVA_CHECK_TIMEOUT_S = 20.0
_java_cache: dict[str, bool] = {}


# --------------------------------------------------------------------------------------------
# Java detection and caption sanitising
# --------------------------------------------------------------------------------------------

def java_available() -> bool:
    """True when a ``java`` on ``PATH`` starts (``java -version`` exits 0); False otherwise.

    ``FCVC_NO_JAVA=1`` makes it False (to reproduce the no-Java path). The answer is cached per
    resolved executable, so changing ``PATH`` is seen at once.
    """
    if os.environ.get("FCVC_NO_JAVA", "") not in ("", "0"):
        return False
    exe = shutil.which("java")
    if exe is None:
        return False
    if exe not in _java_cache:
        try:
            proc = subprocess.run([exe, "-version"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=_JAVA_CHECK_TIMEOUT_S)
            _java_cache[exe] = proc.returncode == 0
        except (OSError, subprocess.SubprocessError):
            _java_cache[exe] = False
    return _java_cache[exe]


# Unicode categories turned into a space: control, format (zero-width, BOM, ...), line/paragraph
# separators, and lone surrogates (which cannot even be encoded to UTF-8).
_BLANK_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def sanitize_caption(text: str) -> str:
    """Newlines, tabs and other control/format characters -> spaces; runs of spaces collapsed; stripped."""
    if not isinstance(text, str):
        raise TypeError(f"a caption must be a string, not {type(text).__name__}")
    chars = [" " if unicodedata.category(ch) in _BLANK_CATEGORIES else ch for ch in text]
    return " ".join("".join(chars).split())


def count_unk(captions: Iterable[str]) -> int:
    """Occurrences of the token ``<unk>`` (whitespace-separated) over all captions."""
    return sum(caption.split().count(UNK) for caption in captions)


# --------------------------------------------------------------------------------------------
# Tokenisers
# --------------------------------------------------------------------------------------------

def _ptb_module():
    return ptbtokenizer


def _ptb_punctuation() -> frozenset[str]:
    return frozenset(_ptb_module().PUNCTUATIONS)


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """Tokenise with Stanford's PTBTokenizer exactly as pycocoevalcap does (needs Java).

    Same jar, options (``-preserveLines -lowerCase``) and punctuation filter as
    ``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer``; the input is sanitised first and empty
    sentences are not sent (they tokenise to ``""``). One output per input, in order.
    """
    clean = [sanitize_caption(s) for s in sentences]
    todo = [i for i, s in enumerate(clean) if s]
    out = [""] * len(clean)
    if not todo:
        return out
    mod = _ptb_module()
    jar = Path(mod.__file__).resolve().parent / mod.STANFORD_CORENLP_3_4_1_JAR
    if not jar.is_file():
        raise FcvcError(f"pycocoevalcap's tokenizer jar is missing: {jar}", hint="reinstall pycocoevalcap")
    punct = _ptb_punctuation()
    with tempfile.TemporaryDirectory(prefix="fcvc-ptb-") as tmp:
        src = Path(tmp) / "sentences.txt"
        src.write_text("\n".join(clean[i] for i in todo), encoding="utf-8")
        cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
               "-lowerCase", str(src)]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=PTB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise FcvcError(f"the PTB tokenizer (Java) did not finish within {PTB_TIMEOUT_S:.0f} s") from None
        except OSError as e:
            raise FcvcError(f"could not start Java for the PTB tokenizer: {e}",
                            hint="install Java 8+ or set FCVC_NO_JAVA=1 to use the Python tokenizer") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise FcvcError(f"the PTB tokenizer (Java) failed with exit code {proc.returncode}: {detail[0]}",
                        hint="set FCVC_NO_JAVA=1 to score with the Python tokenizer instead")
    lines = proc.stdout.decode("utf-8", "replace").split("\n")
    if len(lines) < len(todo):
        raise FcvcError(f"the PTB tokenizer returned {len(lines)} lines for {len(todo)} captions")
    for i, line in zip(todo, lines):
        out[i] = " ".join(w for w in line.rstrip().split(" ") if w and w not in punct)
    return out


# The pure-Python fallback. It follows the PTB conventions that matter for captions, as measured
# against the Java tokenizer with -lowerCase (see tests/evaluation/test_metrics.py):
#   lowercase; split ., , ; : ! ? off word ends (runs such as "!!" or "..." stay one token), but
#   keep inner periods ("u.s.", "3.5") and single-letter abbreviations ("p.m."); split clitics
#   n't 's 're 've 'll 'd 'm ("can't" -> "ca n't", "won't" -> "wo n't", "cannot" -> "can not",
#   "gonna" -> "gon na"); split $ % * + = ; and double quotes off words, "#" only before a digit;
#   keep hyphens, slashes, "&", "@", "_" and digits' commas/colons inside words; brackets become -lrb- -rrb- -lsb- -rsb- -lcb-
#   -rcb- (kept, as pycocoevalcap's upper-case filter misses them after -lowerCase); quotes become
#   `` '' ` ' and are dropped with the rest of pycocoevalcap's punctuation list; symbols such as
#   emoji are dropped, as the Java tokenizer drops them.
# It is an approximation: rare constructs (URLs, emoticons, odd abbreviations) may differ.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SPECIAL_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"],
                  "wanna": ["wan", "na"], "lemme": ["lem", "me"], "gimme": ["gim", "me"]}
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_WORD_SPLIT = re.compile(r"(\.\.\.+|--+|[!?]+|[(){}\[\]\"$%*+=;]|#(?=\d)|`+|'{2,}|\u2014|\u2013"
                         r"|(?<!\d),|,(?!\d)|(?<!\d):|:(?!\d))")
_TRAILING_PERIOD = re.compile(r"^(.*[^.])\.$")
_ABBREVIATION = re.compile(r"^([a-z]\.)+$|^(mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|co|ltd|no)\.$")


def _split_chunk(chunk: str) -> list[str]:
    """Split one whitespace-free chunk that has no bracket/punctuation run left in it."""
    if not chunk:
        return []
    if chunk in _SPECIAL_WORDS:
        return list(_SPECIAL_WORDS[chunk])
    # quotes around a word: 'hello' -> ` hello '
    tokens: list[str] = []
    tail: list[str] = []
    while chunk.startswith("'") and len(chunk) > 1 and not re.match(r"^'(\d0s|n'|em$|tis$)", chunk):
        tokens.append("`")
        chunk = chunk[1:]
    # a period ends the word unless it is an abbreviation or an inner period
    m = _TRAILING_PERIOD.match(chunk)
    if m and not _ABBREVIATION.match(chunk):
        chunk, tail = m.group(1), ["."] + tail
    if chunk.endswith("'") and len(chunk) > 1 and not chunk.endswith("n'"):
        # plural possessive (dogs') or closing quote
        chunk, tail = chunk[:-1], ["'"] + tail
    m = _CLITIC.match(chunk)
    if m:  # "isn't" -> is n't, "can't" -> ca n't, "dog's" -> dog 's
        tokens += [m.group(1), m.group(2)]
    elif "'n'" in chunk and not chunk.startswith("'"):  # rock'n'roll -> rock 'n' roll
        a, b = chunk.split("'n'", 1)
        tokens += [t for t in (a, "'n'", b) if t]
    elif chunk:
        tokens.append(chunk)
    return tokens + tail


def _python_tokenize_one(text: str) -> list[str]:
    text = sanitize_caption(text).lower()
    # drop symbols the Java tokenizer treats as untokenizable (emoji, dingbats, private use)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("So", "Co", "Cn"))
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    out: list[str] = []
    for word in text.split():
        for piece in _WORD_SPLIT.split(word):
            if not piece:
                continue
            if _WORD_SPLIT.fullmatch(piece):
                if piece in ("\u2014", "\u2013"):
                    out.append("--")
                elif piece == '"':
                    out.append("``")  # PTB's `` or '': both are dropped by the punctuation filter
                elif piece in _BRACKETS:
                    out.append(_BRACKETS[piece])
                else:
                    out.append(piece)
            else:
                out += _split_chunk(piece)
    return out


def python_tokenize(sentences: Sequence[str]) -> list[str]:
    """Tokenise without Java: a documented approximation of PTB + pycocoevalcap's punctuation filter."""
    punct = _ptb_punctuation()
    return [" ".join(t for t in _python_tokenize_one(s) if t not in punct) for s in sentences]


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------

def _check_keys(captions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> None:
    if not captions:
        raise MismatchError("there are no captions to score")
    extra = [v for v in captions if v not in references]
    missing = [v for v in references if v not in captions]
    problems = []
    if extra:
        problems.append(f"{len(extra)} captioned video(s) have no reference captions: "
                        + ", ".join(repr(v) for v in extra[:5]) + (" ..." if len(extra) > 5 else ""))
    if missing:
        problems.append(f"{len(missing)} video(s) with references have no caption: "
                        + ", ".join(repr(v) for v in missing[:5]) + (" ..." if len(missing) > 5 else ""))
    empty = [v for v in captions if v in references and len(references[v]) == 0]
    if empty:
        problems.append(f"{len(empty)} video(s) have an empty reference list: "
                        + ", ".join(repr(v) for v in empty[:5]))
    for v, c in captions.items():
        if not isinstance(c, str):
            problems.append(f"the caption of {v!r} is not a string ({type(c).__name__})")
            break
    if problems:
        raise MismatchError("captions and references do not match: " + "; ".join(problems))


def _meteor_field(text: str) -> str:
    # '|||' separates METEOR's fields; pycocoevalcap strips it from hypotheses only.
    return " ".join(text.replace("|||", "").split())


def _run_meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float | None, str | None]:
    """pycocoevalcap's METEOR under a time limit: (score, None) or (None, reason it failed)."""
    try:
        meteor = Meteor()
    except OSError as e:
        return None, f"could not start METEOR (Java): {e}"
    outcome: dict[str, Any] = {}

    def work():
        try:
            outcome["score"] = meteor.compute_score(gts, res)[0]
        except BaseException as e:  # noqa: BLE001 - reported to the caller as text
            outcome["error"] = e

    worker = threading.Thread(target=work, name="fcvc-meteor", daemon=True)
    worker.start()
    worker.join(METEOR_TIMEOUT_S)
    proc = meteor.meteor_p
    hung = worker.is_alive()
    if hung or "error" in outcome:
        proc.kill()
        worker.join(5.0)
        stderr = b""
        with contextlib.suppress(Exception):
            stderr = proc.stderr.read() or b""
        last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        if hung:
            reason = f"METEOR did not answer within {METEOR_TIMEOUT_S:.0f} s"
        else:
            err = outcome["error"]
            reason = f"METEOR (Java) failed: {type(err).__name__}: {err}".rstrip(": ")
        if last[0]:
            reason += f" (java said: {last[0]})"
    else:
        reason = None
    # pycocoevalcap's __del__ takes this lock; a failed call may have left it held.
    meteor.lock = threading.Lock()
    with contextlib.suppress(Exception):
        proc.stdin.close()
    with contextlib.suppress(Exception):
        proc.kill()
        proc.wait(timeout=10)
    score = outcome.get("score")
    if reason is None and (score is None or not math.isfinite(score)):
        reason = f"METEOR returned an unusable value ({score!r})"
    return (None, reason) if reason else (float(score), None)


def _rouge_l(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
    """pycocoevalcap's ROUGE-L: ``Rouge().compute_score`` itself on the tokenised captions.

    Nothing is special-cased, so the value is pycocoevalcap's to the last bit (including its
    ``np.mean`` over the videos). Empty captions need no protection: pycocoevalcap splits with
    ``str.split(" ")``, so ``""`` is the one token ``""``, never a division by zero. An empty
    caption therefore scores 1.0 when one of its references is empty too (after tokenisation,
    e.g. ``"..."``) and 0.0 otherwise; a non-empty caption gains nothing from an empty reference.
    ``compute_score`` asserts the same video ids in both dicts, exactly one caption per video and
    at least one reference per video: :func:`_check_keys` and :func:`score_captions` guarantee
    all three (an empty reference list is a :class:`MismatchError`).
    """
    score, _ = Rouge().compute_score(gts, res)
    return float(score)


def score_captions(captions: Mapping[str, str], references: Mapping[str, Sequence[str]], *,
                   use_java: bool | None = None, metrics: Sequence[str] = METRIC_NAMES) -> dict[str, Any]:
    """Score generated captions against raw references with pycocoevalcap.

    ``captions``: video id -> generated caption; ``references``: video id -> raw reference captions.
    Both must cover the same videos (a caption without references, or references without a
    caption, is a :class:`MismatchError` naming the first few). ``use_java``: None = use Java when
    :func:`java_available`, True = require it, False = never (Python tokenizer, no METEOR).
    ``metrics``: a subset of ``("bleu", "meteor", "rouge", "cider")``; metrics not asked for are None.

    Returns ``Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr`` (raw values; METEOR None when unavailable),
    ``unk_count``, ``videos``, ``tokenizer`` ("ptb" or "python") and ``warnings`` (list of str).
    """
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown or not metrics:
        raise ConfigError(f"unknown metric(s) {unknown!r}; choose from {', '.join(METRIC_NAMES)}")
    _check_keys(captions, references)
    warnings: list[str] = []
    java = java_available() if use_java is not False else False
    if use_java and not java:
        raise ConfigError("Java was required for scoring but no working `java` is on PATH",
                          hint="install a Java runtime (8 or newer)")
    if not java:
        why = "Java was not used (use_java=False)" if use_java is False else "Java is not available"
        warnings.append(f"{why}: captions were tokenised with fcvc's Python tokenizer (an approximation of "
                        "PTB, so BLEU/ROUGE-L/CIDEr may differ slightly from pycocoevalcap's) and METEOR "
                        "was not computed (install a Java runtime, 8 or newer, for both)")

    vids = sorted(captions)
    hyp_text = [captions[v] for v in vids]
    ref_counts = [len(references[v]) for v in vids]
    ref_text = [r for v in vids for r in references[v]]
    tokenize = ptb_tokenize if java else python_tokenize
    tokens = tokenize(hyp_text + ref_text)
    res = {v: [tokens[i]] for i, v in enumerate(vids)}
    gts: dict[str, list[str]] = {}
    pos = len(vids)
    for v, n in zip(vids, ref_counts):
        gts[v] = tokens[pos:pos + n]
        pos += n

    out: dict[str, Any] = {key: None for key in SCORE_KEYS}
    # BLEU's scorer prints its statistics on stdout: keep stdout clean for --json.
    with contextlib.redirect_stdout(io.StringIO()):
        if "bleu" in metrics:
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            for n in range(4):
                out[f"Bleu_{n + 1}"] = float(bleu[n])
        if "rouge" in metrics:
            out["ROUGE_L"] = _rouge_l(gts, res)
        if "cider" in metrics:
            out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if "meteor" in metrics and java:
        meteor_res = {v: [_meteor_field(res[v][0])] for v in vids}
        meteor_gts = {v: [_meteor_field(r) for r in gts[v]] for v in vids}
        out["METEOR"], problem = _run_meteor(meteor_gts, meteor_res)
        if problem:
            warnings.append(f"{problem}; METEOR is reported as unavailable")
    if "cider" in metrics and len(vids) < 2:
        warnings.append(f"only {len(vids)} video scored: CIDEr takes its IDF weights from the evaluated "
                        "set, so it is 0 for a single video and unreliable for very few")
    out["unk_count"] = count_unk(hyp_text)
    out["videos"] = len(vids)
    out["tokenizer"] = "ptb" if java else "python"
    out["warnings"] = warnings
    return out


# --------------------------------------------------------------------------------------------
# Tables and caption files
# --------------------------------------------------------------------------------------------

_TABLE_COLUMNS = (("BLEU-1", "Bleu_1"), ("BLEU-2", "Bleu_2"), ("BLEU-3", "Bleu_3"), ("BLEU-4", "Bleu_4"),
                  ("METEOR", "METEOR"), ("ROUGE-L", "ROUGE_L"), ("CIDEr", "CIDEr"))
# Keys of a score dict that are never shown as extra columns.
_NOT_COLUMNS = {"unk_count", "videos", "tokenizer", "warnings", "captions_file", "scores_file", "split",
                "cached", "model", "run"}


def _cell(value: Any, *, scale: bool) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and not scale:
        return str(value)
    if isinstance(value, (int, float)):
        v = float(value) * (100.0 if scale else 1.0)
        return f"{v:.1f}" if math.isfinite(v) else "n/a"
    return str(value)


def features_note(identity: Mapping[str, str | None] | None) -> str | None:
    """One line saying which backbone weights the scored features came from (None when unknown).

    ``identity`` is ``features.settings.weights_identity`` of the store: ``{"inception": ..., "clip": ...}``.
    Random weights (``random:<seed>``, the offline test mode) are called out: such scores measure the
    pipeline, not what the paper's pretrained features give.
    """
    if not identity or not any(identity.values()):
        return None
    inception, clip = identity.get("inception"), identity.get("clip")
    note = f"features: Inception-V3 {inception}, clips {clip or 'none'}"
    if any(str(v).startswith("random") for v in (inception, clip) if v):
        note += (" -- RANDOM backbone weights (offline test mode): not comparable with results on pretrained "
                 "features such as the paper's")
    return note


def format_score_table(rows: list[tuple[str, dict]], *, markdown: bool = True,
                       features: Mapping[str, str | None] | None = None) -> str:
    """The paper-style table: one row per (model, scores); metrics x100 with one decimal, then #unk.

    Extra scalar keys in the dicts (e.g. ``sec_per_10M_params``) become extra columns, unscaled,
    in order of first appearance; a missing or None value prints as ``n/a``. ``features`` (the store's
    weights identity) adds a line under the table saying which backbone weights the features came from.
    """
    known = {k for _, k in _TABLE_COLUMNS} | _NOT_COLUMNS
    extra: list[str] = []
    for _, scores in rows:
        for k, v in scores.items():
            if k not in known and k not in extra and (v is None or isinstance(v, (int, float, str))):
                extra.append(k)
    header = ["model"] + [title for title, _ in _TABLE_COLUMNS] + ["#unk"] + extra
    body = []
    for name, scores in rows:
        line = [str(name)] + [_cell(scores.get(k), scale=True) for _, k in _TABLE_COLUMNS]
        line.append(_cell(scores.get("unk_count"), scale=False))
        line += [_cell(scores.get(k), scale=False) for k in extra]
        body.append(line)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        parts = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts)

    lines = [fmt(header)]
    if markdown:
        lines.append("|" + "|".join(("-" * (w + 1) + ":") if i else (":" + "-" * (w + 1))
                                    for i, w in enumerate(widths)) + "|")
    else:
        lines.append("  ".join("-" * w for w in widths))
    lines += [fmt(r) for r in body]
    note = features_note(features)
    if note:
        lines += ["", note]
    return "\n".join(lines)


def _item_pair(path: Path, item: Any, where: str) -> tuple[str, str] | None:
    """(video, caption) from one list/JSONL item; None for a reported failure without a caption."""
    if not isinstance(item, dict):
        raise InputError(path, f"{where}: expected an object with \"video\" and \"caption\", got "
                               f"{type(item).__name__}")
    video = item.get("video", item.get("video_id"))
    if not isinstance(video, str) or not video:
        raise InputError(path, f"{where}: missing or non-string \"video\"")
    caption = item.get("caption")
    if caption is None and "error" in item:
        return None
    if not isinstance(caption, str):
        raise InputError(path, f"{where}: video {video!r} has a missing or non-string \"caption\"")
    return video, caption


def _add(path: Path, out: dict[str, str], seen: dict[str, str], pair, where: str) -> None:
    video, caption = pair
    if video in out:
        raise InputError(path, f"{where}: video {video!r} appears twice (first at {seen[video]})")
    out[video] = caption
    seen[video] = where


def read_captions_file(path: str | Path) -> dict[str, str]:
    """Read generated captions: ``fcvc caption --json``'s list ``[{"video", "caption", ...}]``, a
    ``{video: caption}`` object, or JSON Lines of the list items. ``video_id`` is accepted for
    ``video``. Items that report an ``error`` and carry no caption are skipped with a warning.
    Anything else is an :class:`InputError` naming the file and the position.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "no such captions file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(p, f"not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise InputError(p, "the captions file is empty")
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    skipped: list[str] = []
    try:
        doc = json.loads(text)
        items: list[tuple[str, Any]] | None = None
        if isinstance(doc, list):
            items = [(f"item {i}", it) for i, it in enumerate(doc)]
        elif isinstance(doc, dict) and "caption" in doc and ("video" in doc or "video_id" in doc):
            items = [("item 0", doc)]  # a one-line JSONL file
        elif isinstance(doc, dict):
            for video, caption in doc.items():
                if not isinstance(caption, str):
                    raise InputError(p, f"video {video!r}: the caption must be a string, got "
                                        f"{type(caption).__name__}",
                                     hint="expected {\"video\": \"caption\", ...} or the `fcvc caption --json` list")
                out[video] = caption
            if not out:
                raise InputError(p, "no captions in the file")
            return out
        else:
            raise InputError(p, f"expected a JSON list or object, got {type(doc).__name__}")
    except json.JSONDecodeError as whole_err:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                if n == 1 and not text.lstrip().startswith("{"):
                    raise InputError(p, f"invalid JSON: {whole_err.msg}", line=whole_err.lineno) from None
                raise InputError(p, f"invalid JSON Lines: {e.msg} (column {e.colno})", line=n) from None
    for where, item in items:
        pair = _item_pair(p, item, where)
        if pair is None:
            skipped.append(str(item.get("video", item.get("video_id"))))
            continue
        _add(p, out, seen, pair, where)
    if skipped:
        progress.warn(f"{p}: {len(skipped)} item(s) report an error and have no caption: "
                      + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    if not out:
        raise InputError(p, "no captions in the file")
    return out
