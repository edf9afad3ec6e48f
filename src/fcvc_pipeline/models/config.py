"""The frozen :class:`ModelConfig` saved with the weights (a leaf: plain data, no torch).

Which variants exist and what their layers attend to is the table in :mod:`.variants`; building a model
from a config is :func:`fcvc_pipeline.models.registry.build_model`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fcvc_pipeline.errors import ConfigError
from fcvc_pipeline.models.variants import DEFAULT_MODEL, MODEL_NAMES, VARIANTS, LayerPlan, resolve_alias

# How the caption-step convolution of every FCVC layer is masked (see models/causal_conv.py):
#   "causal": ConvS2S-style, k taps on the steps t-(k-1)..t (left padding k-1).
#   "paper":  the paper's reading -- a k-wide kernel centred on step t whose right half is masked, i.e.
#             (k+1)//2 taps on the steps t-(k-1)//2..t (only those taps are stored).
CONV_MASKS: tuple[str, ...] = ("causal", "paper")
# What a saved config without a ``conv_mask`` key was trained with (every checkpoint written before the
# field existed). Deliberately a separate constant from the field's default, which may change.
LEGACY_CONV_MASK = "causal"


def conv_taps(kernel_size: int, conv_mask: str) -> int:
    """How many caption steps one conv output reads: k ("causal") or (k+1)//2 ("paper", t-(k-1)//2..t)."""
    return (kernel_size + 1) // 2 if conv_mask == "paper" else kernel_size


@dataclass(frozen=True)
class ModelConfig:
    model: str = DEFAULT_MODEL
    vocab_size: int = 0
    frame_dim: int = 2048  # pooled Inception-V3 per frame
    clip_dim: int = 4096  # C3D fc6 per frame; 0 = no clip features
    region_dim: int = 2048  # one Mixed_7c grid cell
    num_regions: int = 64  # 8 x 8 grid
    num_frames: int = 15
    d_model: int = 512
    layers: int = 4
    kernel_size: int = 5
    # "paper" (kernel centred on t, right half masked: t-(k-1)//2..t, the paper's reading) or "causal" (the
    # ConvS2S window t-(k-1)..t, fcvc's default before the two were measured); see CONV_MASKS. On the sample
    # set "paper" had the higher validation CIDEr (mean of 3 seeds 230.7 vs 222.5) with 22% fewer parameters
    # (docs/models.md). Configs saved without the key always load as "causal" (from_json).
    conv_mask: str = "paper"
    heads: int = 8
    dropout: float = 0.1
    max_len: int = 20  # longest caption in tokens (without <bos>/<eos>)
    # Eq. 7 penalty weights. With T ~ 10 words, N = 15 frames and M = 64 regions the frame penalty of a
    # caption is ~2-20 and the region penalty ~700 (its floor is N (M - T)^2 / M), so these weights keep
    # both terms around 1-10% of a converged NLL (~2): L_nll dominates, as the paper asks.
    attn_lambda: float = 1e-3
    attn_mu: float = 1e-4
    lstm_layers: int = 1  # stacked LSTM layers of the baseline's encoder and decoder
    # A learned embedding of each frame's position added to f_n. Attention over frames is otherwise
    # blind to their order (and the mean g is by construction), so without clip features "moves left"
    # and "moves right" could only be told apart from where the object sits in single frames.
    # None = the variant's default, resolved on construction: on for the FCVC family, off for the LSTM, whose
    # Eq. 1 input is f_t alone (it reads the frames in order). Saved configs hold the resolved bool; those
    # saved before the LSTM default changed hold True for every variant, the LSTM included, so models rebuilt
    # from those checkpoints keep the embedding their weights contain.
    frame_positions: bool | None = None
    # Likewise a learned embedding of each grid cell added to the region features r_ij: without it IA's
    # context says *what* the attended regions hold but not *where* they are, and motion is invisible.
    region_positions: bool = True
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        canonical = resolve_alias(self.model)
        if canonical in VARIANTS:  # store the canonical name so saved configs never carry aliases
            object.__setattr__(self, "model", canonical)
        if self.frame_positions is None:  # the variant's default (see the field)
            object.__setattr__(self, "frame_positions", not self.is_lstm)

    # .. derived facts (from the variants table) ..............................................................
    @property
    def uses_regions(self) -> bool:
        """True for models with inherited attention (they need region features)."""
        return self.model in VARIANTS and VARIANTS[self.model].uses_regions

    @property
    def uses_frame_attention(self) -> bool:
        return self.model in VARIANTS and VARIANTS[self.model].uses_frame_attention

    @property
    def is_lstm(self) -> bool:
        return self.model in VARIANTS and VARIANTS[self.model].lstm

    @property
    def use_frame_positions(self) -> bool:
        """Whether f_n gets a learned frame-position embedding (``frame_positions``, resolved on construction:
        True for the FCVC family, False for the LSTM unless set)."""
        return bool(self.frame_positions)

    @property
    def conv_taps(self) -> int:
        """Caption steps one conv output reads (k for "causal", (k+1)//2 for "paper")."""
        return conv_taps(self.kernel_size, self.conv_mask)

    def layer_plan(self) -> tuple[LayerPlan, ...]:
        """The attention of each conv layer (lower half = the first ``ceil(layers / 2)`` layers)."""
        return VARIANTS[self.model].plan(self.layers) if self.model in VARIANTS else ()

    # .. checks and serialisation ...........................................................................
    def validate(self) -> list[str]:
        """Every problem at once (empty list = valid)."""
        p: list[str] = []
        if self.model not in MODEL_NAMES:
            p.append(f"model: unknown name {self.model!r} (choose one of {', '.join(MODEL_NAMES)}; alias fcvc-final)")
        specials = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
        if len(set(specials.values())) != 3:
            p.append(f"pad_id, bos_id and eos_id must differ (got {specials})")
        for name, value in specials.items():
            if not isinstance(value, int) or value < 0:
                p.append(f"{name} must be a non-negative integer (got {value!r})")
        if self.vocab_size <= max(specials.values()) + 1:
            p.append(f"vocab_size must exceed the special token ids (got {self.vocab_size}; "
                     f"it is set from the vocabulary, so build one with `fcvc vocab`)")
        for name in ("frame_dim", "num_regions", "num_frames", "d_model", "kernel_size", "heads", "max_len"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.conv_mask not in CONV_MASKS:
            p.append(f"conv_mask: unknown value {self.conv_mask!r} (choose one of {', '.join(CONV_MASKS)})")
        if self.frame_positions is not None and not isinstance(self.frame_positions, bool):
            p.append(f"frame_positions must be true, false or null (= the variant's default; "
                     f"got {self.frame_positions!r})")
        if self.clip_dim < 0:
            p.append(f"clip_dim must be >= 0 (0 = no clip features; got {self.clip_dim})")
        if self.uses_regions and self.region_dim < 1:
            p.append(f"region_dim must be >= 1 for {self.model} (got {self.region_dim})")
        if not 0.0 <= self.dropout < 1.0:
            p.append(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.attn_lambda < 0 or self.attn_mu < 0:
            p.append(f"attn_lambda and attn_mu must be >= 0 (got {self.attn_lambda}, {self.attn_mu})")
        if self.is_lstm:
            if self.lstm_layers < 1:
                p.append(f"lstm_layers must be >= 1 (got {self.lstm_layers})")
        else:
            if self.layers < 1:
                p.append(f"layers must be >= 1 (got {self.layers})")
            need = VARIANTS[self.model].min_layers if self.model in VARIANTS else 1
            if need > 1 and self.layers < need:
                p.append(f"{self.model} needs layers >= {need} (TA below, IA above; got {self.layers})")
            if self.uses_frame_attention and self.heads >= 1 and self.d_model % self.heads:
                p.append(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return p

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["conv_mask"] == LEGACY_CONV_MASK:  # written as before the field existed: same manifests
            del out["conv_mask"]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a model config must be a JSON object (got {type(d).__name__})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"model config has unknown field(s) {', '.join(unknown)} "
                              f"(written by a newer fcvc?)")
        # Configs written before ``conv_mask`` existed were trained with the causal (ConvS2S) window. Fill
        # that in explicitly rather than through the field's default: the default may later become "paper",
        # and an old checkpoint must still rebuild the model its weights belong to.
        if "conv_mask" not in d:
            d = {**d, "conv_mask": LEGACY_CONV_MASK}
        return cls(**d)

