"""How captions are decoded: one frozen :class:`DecodingOptions`, stored with a run and read back whole.

``fcvc train`` chooses the beam size on the validation split and writes the resulting options into
``best.pt`` (key ``decoding``) and the run manifest, with how they were chosen (``chosen_on``,
``val_cider_by_beam``). ``fcvc score``, ``fcvc caption`` and the ablation read them back with
:meth:`DecodingOptions.from_json` and apply only what the user overrides on the command line
(:meth:`DecodingOptions.override`). A run from before that choice has no ``decoding``: it gets
``DEFAULT_BEAM_SIZE``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fcvc_pipeline.errors import ConfigError

DEFAULT_BEAM_SIZE = 5  # decoding of a run that has no beam size chosen on validation


@dataclass(frozen=True)
class DecodingOptions:
    beam_size: int = DEFAULT_BEAM_SIZE
    max_len: int | None = None  # longest caption in tokens; None: the longest the model was built for
    length_penalty: float = 1.0  # hypotheses ranked by score / (tokens + 1) ** length_penalty
    # provenance of a run's choice (not used by the search itself)
    chosen_on: str | None = None  # "val" when the beam size was chosen on the validation split
    val_cider_by_beam: dict[str, float] | None = None

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.beam_size, int) or self.beam_size < 1:
            out.append(f"--beam-size must be at least 1 (got {self.beam_size!r})")
        if self.max_len is not None and (not isinstance(self.max_len, int) or self.max_len < 1):
            out.append(f"--max-len must be at least 1 (got {self.max_len!r})")
        if not isinstance(self.length_penalty, (int, float)) or self.length_penalty < 0:
            out.append(f"--length-penalty must be >= 0 (got {self.length_penalty!r})")
        return out

    def override(self, *, beam_size: int | None = None, max_len: int | None = None,
                 length_penalty: float | None = None) -> DecodingOptions:
        """These options with each argument that is not None put in its place."""
        changes = {k: v for k, v in (("beam_size", beam_size), ("max_len", max_len),
                                     ("length_penalty", length_penalty)) if v is not None}
        return dataclasses.replace(self, **changes) if changes else self

    def search_key(self) -> dict[str, Any]:
        """What changes the captions (for caches): the search settings, not the provenance."""
        return {"beam_size": self.beam_size, "max_len": self.max_len, "length_penalty": self.length_penalty}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"beam_size": self.beam_size, "length_penalty": self.length_penalty,
                               "chosen_on": self.chosen_on}
        if self.max_len is not None:
            out["max_len"] = self.max_len
        if self.val_cider_by_beam is not None:
            out["val_cider_by_beam"] = dict(self.val_cider_by_beam)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> DecodingOptions:
        """The options stored with a run (None: a run from before the choice -> the defaults)."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError(f"stored decoding options must be an object (got {type(raw).__name__})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"stored decoding options have unknown field(s) {', '.join(unknown)} "
                              f"(written by a newer fcvc?)")
        opts = cls(**raw)
        if isinstance(opts.beam_size, float) and opts.beam_size.is_integer():
            opts = dataclasses.replace(opts, beam_size=int(opts.beam_size))
        return opts
