"""Atomic writes, fingerprints, stage manifests and small keyed JSON caches (the caching contract).

A stage's output directory carries ``manifest.json``, written last and atomically, holding the stage
name, the stage version, the config fields that change outputs, and fingerprints of its inputs.
:func:`check_manifest` compares a stored manifest with the one a rerun would write and says either
``up to date`` or why the stage must run again, in the style of DVC. Smaller derived results (the
captions of a split, the scores of a captions file, the constant-caption floor) use :func:`read_cached`
/ :func:`write_cached`: one JSON layout ``{"fingerprint", "key", <field>: value}``, recomputed whenever the
key differs or the file cannot be read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcvc_pipeline.errors import InputError

MANIFEST_NAME = "manifest.json"


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot fingerprint {type(obj).__name__}")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default, ensure_ascii=False)


def fingerprint(obj: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Content hash of a file plus its size (the name is not part of it)."""
    p = Path(path)
    return {"sha256": file_sha256(p), "size": p.stat().st_size}


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask can only be read by setting it


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then ``os.replace`` it into place.

    An OSError (full disk, read-only directory, no permission) is raised again naming ``path`` where the
    original named only the temp file or nothing at all (a failed ``write`` or ``fsync`` names no file).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:  # already gone, or the filesystem refuses this too: the first error is the one to report
            pass
        if isinstance(e, OSError):
            raise _naming(e, path) from e
        raise


def append_synced_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` and fsync it before returning (a log that a rerun reads back: what it
    holds is on disk). An OSError is raised again naming ``path``, as :func:`atomic_write_bytes` does."""
    path = Path(path)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _naming(e, path) from e


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` when it names a path a person knows; else the same errno naming ``path`` (the temp file
    beside it is an implementation detail, and a failed write or fsync names nothing)."""
    name = error.filename
    ours = isinstance(name, str) and Path(name).name.startswith(f".{path.name}.") and name.endswith(".tmp")
    if error.errno is None or (name is not None and not ours):
        return error
    return OSError(error.errno, os.strerror(error.errno), str(path))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_default, ensure_ascii=False) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temp file + ``os.replace`` (a crash never leaves half a checkpoint)."""
    import torch  # noqa: PLC0415 -- deferred: the other artifact helpers (vocab, scores) must not load torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch colours part of its message on terminals
# torch's sentence naming the object it refused (the wording differs between torch versions) ...
_REFUSED_OBJECT = re.compile(r"(?:Unsupported global: )?GLOBAL \S+ (?:was not an allowed global by default"
                             r"|whose module \S+ is blocked)|\S+ must be \S+ to load")
# ... or the pickle instruction its weights-only reader does not know
_REFUSED_OPCODE = re.compile(r"Unsupported operand \S+")


def torch_load_failure(error: BaseException) -> tuple[str, str | None]:
    """Why ``torch.load(..., weights_only=True)`` raised ``error``: one line for a message, and a hint.

    torch's own text runs to several paragraphs and tells the reader to rerun with ``weights_only=False``;
    cut short, it loses the condition that matters (only for a file from a source you trust). A refused
    file is described here in full, in our words, keeping torch's sentence that names what it refused.
    """
    text = _ANSI.sub("", str(error))
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        if found := _REFUSED_OBJECT.search(text):
            what = (f"it holds pickled Python objects other than tensors and plain values "
                    f"(torch: {found.group(0)})")
        elif found := _REFUSED_OPCODE.search(text):
            what = (f"its pickle uses an instruction that the tensors-only reader does not accept "
                    f"(torch: {found.group(0)})")
        else:
            what = "its pickle holds something other than tensors and plain values"
        return (f"{what}; refused for safety: fcvc loads with torch.load(weights_only=True), because unpickling "
                "other objects can run arbitrary code",
                "only if you trust the source of this file: load it with torch.load(weights_only=False), "
                "torch.save just its tensors (a state dict), and use that file")
    if isinstance(error, EOFError):
        return "the file ends early (EOFError): it is empty or truncated", None
    first = next((line.strip() for line in text.splitlines() if line.strip()), "(no message)")
    if len(first) > 300:
        first = first[:300].rsplit(" ", 1)[0] + " \u2026"
    return f"{type(error).__name__}: {first}", None


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning a parse error into an :class:`InputError` that names the position."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno) from None


@dataclass
class Manifest:
    """What produced an artifact. Equality of (stage, version, config, inputs) means up to date."""

    stage: str
    version: int
    config: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    def key(self) -> dict[str, Any]:
        return {"stage": self.stage, "version": self.version, "config": self.config, "inputs": self.inputs}

    def fingerprint(self) -> str:
        return fingerprint(self.key())

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"fingerprint": self.fingerprint()}


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST_NAME
    atomic_write_json(path, manifest.to_json())
    return path


def read_manifest(directory: str | Path) -> Manifest | None:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Manifest(stage=raw["stage"], version=raw["version"], config=raw["config"],
                        inputs=raw.get("inputs", {}), outputs=raw.get("outputs", {}),
                        created=raw.get("created", 0.0))
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable manifest means "not up to date", never a crash


@dataclass(frozen=True)
class Freshness:
    up_to_date: bool
    reason: str


def _diff(kind: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if k not in old:
            out.append(f"{kind} '{k}' is new")
        elif k not in new:
            out.append(f"{kind} '{k}' was removed")
        elif canonical_json(old[k]) != canonical_json(new[k]):
            if kind == "config" and not isinstance(old[k], (dict, list)) and not isinstance(new[k], (dict, list)):
                out.append(f"config '{k}' changed ({old[k]!r} -> {new[k]!r})")
            else:
                out.append(f"{kind} '{k}' changed")
    return out


def check_manifest(directory: str | Path, expected: Manifest) -> Freshness:
    """Compare the manifest stored in ``directory`` with ``expected``."""
    old = read_manifest(directory)
    if old is None:
        return Freshness(False, "no previous output")
    if old.stage != expected.stage:
        return Freshness(False, f"the directory holds output of stage '{old.stage}'")
    if old.version != expected.version:
        return Freshness(False, f"stage version changed ({old.version} -> {expected.version})")
    reasons = _diff("config", old.config, expected.config) + _diff("input", old.inputs, expected.inputs)
    if reasons:
        return Freshness(False, "; ".join(reasons))
    return Freshness(True, "up to date")


# -- keyed JSON caches -------------------------------------------------------------------------------------
def read_cached(path: str | Path, key: Any, *, field: str = "value") -> Any | None:
    """The value :func:`write_cached` stored at ``path`` for the same ``key``, else None.

    A missing, unreadable or differently keyed file means "recompute", never an error.
    """
    p = Path(path)
    if not p.is_file():
        return None
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("fingerprint") != fingerprint(key) or field not in raw:
        return None
    return raw[field]


def write_cached(path: str | Path, key: Any, value: Any, *, field: str = "value", **extra: Any) -> None:
    """Store ``value`` at ``path`` (atomically) under ``field``, with the ``key`` it was computed from and
    its fingerprint (``extra``: more top-level fields for people reading the file)."""
    atomic_write_json(path, {"fingerprint": fingerprint(key), "key": key, field: value, **extra})
