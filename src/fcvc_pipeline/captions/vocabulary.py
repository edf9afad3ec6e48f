"""The vocabulary and the split-aware caption table (the contract between ``fcvc vocab`` and training).

Files in ``<workdir>/vocab/``:

- ``vocab.json``: ``{"tokens": [...], "min_count": n, "max_len": n}``; ids are list positions and the
  four specials come first: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3.
- ``captions.jsonl``: one caption per line, ``{"video_id", "split", "caption", "tokens"}`` where
  ``caption`` is the raw text (the evaluation reference, never altered) and ``tokens`` the normalised
  training tokens (lowercased, punctuation stripped, truncated to ``max_len``).
- ``manifest.json``: the stage manifest (written last).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from fcvc_pipeline.artifacts import atomic_write_json, atomic_write_text, fingerprint
from fcvc_pipeline.errors import InputError, MissingArtifactError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
SPLITS = ("train", "val", "test")

VOCAB_FILE = "vocab.json"
CAPTIONS_FILE = "captions.jsonl"


@dataclass(frozen=True)
class Vocabulary:
    tokens: tuple[str, ...]
    min_count: int = 1
    max_len: int = 20

    pad_id = 0
    bos_id = 1
    eos_id = 2
    unk_id = 3

    def __post_init__(self):
        if tuple(self.tokens[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    def id(self, token: str) -> int:
        return self._index.get(token, self.unk_id)  # type: ignore[attr-defined]

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Token strings -> ids (unknown -> ``<unk>``); no ``<bos>``/``<eos>`` added."""
        return [self.id(t) for t in tokens]

    def decode_tokens(self, ids: Sequence[int]) -> list[str]:
        """Ids -> tokens, stopping at ``<eos>`` and dropping ``<pad>``/``<bos>``."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            out.append(self.tokens[i])
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.decode_tokens(ids))

    def fingerprint(self) -> str:
        return fingerprint({"tokens": list(self.tokens)})

    def to_json(self) -> dict:
        return {"tokens": list(self.tokens), "min_count": self.min_count, "max_len": self.max_len}

    @classmethod
    def from_json(cls, raw: dict) -> "Vocabulary":
        return cls(tokens=tuple(raw["tokens"]), min_count=int(raw.get("min_count", 1)), max_len=int(raw.get("max_len", 20)))


@dataclass(frozen=True)
class CaptionRow:
    video_id: str
    split: str  # train | val | test
    caption: str  # raw reference text
    tokens: tuple[str, ...]  # normalised, truncated training tokens


def save_vocab_dir(directory: str | Path, vocab: Vocabulary, rows: Sequence[CaptionRow]) -> None:
    d = Path(directory)
    atomic_write_json(d / VOCAB_FILE, vocab.to_json())
    lines = (json.dumps({"video_id": r.video_id, "split": r.split, "caption": r.caption, "tokens": list(r.tokens)},
                        ensure_ascii=False) for r in rows)
    atomic_write_text(d / CAPTIONS_FILE, "\n".join(lines) + "\n")


def load_vocabulary(directory: str | Path) -> Vocabulary:
    path = Path(directory) / VOCAB_FILE
    if not path.is_file():
        raise MissingArtifactError(f"no vocabulary at {path}", hint="run `fcvc vocab ANNOTATIONS` first")
    try:
        return Vocabulary.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError) as e:
        raise InputError(path, f"unreadable vocabulary ({e})", hint="rerun `fcvc vocab`") from None


def load_captions(directory: str | Path, split: str | None = None) -> list[CaptionRow]:
    path = Path(directory) / CAPTIONS_FILE
    if not path.is_file():
        raise MissingArtifactError(f"no caption table at {path}", hint="run `fcvc vocab ANNOTATIONS` first")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                row = CaptionRow(r["video_id"], r["split"], r["caption"], tuple(r["tokens"]))
            except (ValueError, KeyError) as e:
                raise InputError(path, f"bad caption row ({e})", line=n, hint="rerun `fcvc vocab`") from None
            if split is None or row.split == split:
                rows.append(row)
    return rows


def references_by_video(rows: Iterable[CaptionRow]) -> dict[str, list[str]]:
    """video id -> its raw reference captions (order kept), for scoring."""
    refs: dict[str, list[str]] = {}
    for r in rows:
        refs.setdefault(r.video_id, []).append(r.caption)
    return refs
