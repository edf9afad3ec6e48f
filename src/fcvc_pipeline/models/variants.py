"""The one table of model variants: name, aliases, what each conv layer attends to, what features it needs.

The paper's Table 4 plus the LSTM baseline of Eqs. 1-3. Every other module asks this table (through
:func:`variant` or :class:`~fcvc_pipeline.models.config.ModelConfig`'s properties) instead of testing
model names itself. A new variant is one more :class:`Variant` row here (and, if it needs a new kind of
layer, a case in ``models/fcvc.py``).

=============  =========================================================================
``fcvc-cf-ia``  the headline model (alias ``fcvc-final``): TA in the lower half, IA above
``fcvc``        the conv stack with no attention (global feature only)
``fcvc-ta``     TA in every layer
``fcvc-ia``     in every layer TA computes the frame weights and IA uses them (IA context only)
``fcvc-all``    TA in the lower half, TA + IA in the upper half
``lstm``        LSTM encoder over the frames, its final state initialises an LSTM decoder
=============  =========================================================================

This module is a leaf: plain data, no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fcvc_pipeline.errors import ConfigError
from fcvc_pipeline.naming import did_you_mean


@dataclass(frozen=True)
class LayerPlan:
    """What one conv layer attends to.

    ``temporal``: the layer runs temporal attention (Eq. 5) and so produces frame weights alpha.
    ``temporal_context``: TA's context vector is added to the layer's hidden state (False for ``fcvc-ia``,
    where TA only supplies the weights that IA inherits).
    ``inherited``: the layer runs inherited attention (Eq. 6) with alpha from ``alpha_from``, the index of
    the last TA layer at or below it.
    """

    temporal: bool = False
    temporal_context: bool = False
    inherited: bool = False
    alpha_from: int | None = None


def _plain(n: int) -> tuple[LayerPlan, ...]:
    return tuple(LayerPlan() for _ in range(n))


def _ta(n: int) -> tuple[LayerPlan, ...]:
    return tuple(LayerPlan(temporal=True, temporal_context=True) for _ in range(n))


def _ia(n: int) -> tuple[LayerPlan, ...]:
    return tuple(LayerPlan(temporal=True, temporal_context=False, inherited=True, alpha_from=i) for i in range(n))


def _lower(n: int) -> int:
    """The lower half: the first ceil(n / 2) layers."""
    return (n + 1) // 2


def _all(n: int) -> tuple[LayerPlan, ...]:
    return tuple(LayerPlan(temporal=True, temporal_context=True) if i < _lower(n) else
                 LayerPlan(temporal=True, temporal_context=True, inherited=True, alpha_from=i)
                 for i in range(n))


def _cf_ia(n: int) -> tuple[LayerPlan, ...]:
    return tuple(LayerPlan(temporal=True, temporal_context=True) if i < _lower(n) else
                 LayerPlan(inherited=True, alpha_from=_lower(n) - 1)
                 for i in range(n))


def _none(n: int) -> tuple[LayerPlan, ...]:
    return ()


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str
    plan: Callable[[int], tuple[LayerPlan, ...]]  # layers -> the attention of each conv layer
    aliases: tuple[str, ...] = ()
    lstm: bool = False  # the recurrent baseline (no conv layers)
    min_layers: int = 1  # fewest conv layers that keep the variant's meaning

    @property
    def uses_regions(self) -> bool:
        """Inherited (region) attention somewhere: the model needs region features."""
        return any(p.inherited for p in self.plan(max(self.min_layers, 4)))

    @property
    def uses_frame_attention(self) -> bool:
        return any(p.temporal for p in self.plan(max(self.min_layers, 4)))


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("fcvc-cf-ia", "TA in the lower half, IA in the upper half (the paper's final model)", _cf_ia,
            aliases=("fcvc-final",), min_layers=2),
    Variant("fcvc", "no attention: the global feature only", _plain),
    Variant("fcvc-ta", "TA in every layer", _ta),
    Variant("fcvc-ia", "TA computes the frame weights and IA uses them, in every layer", _ia),
    Variant("fcvc-all", "TA in the lower half, TA + IA in the upper half", _all, min_layers=2),
    Variant("lstm", "LSTM encoder over the frames initialising an LSTM decoder (Eqs. 1-3)", _none, lstm=True),
)}

MODEL_NAMES: tuple[str, ...] = tuple(VARIANTS)
MODEL_ALIASES: dict[str, str] = {a: v.name for v in VARIANTS.values() for a in v.aliases}
DEFAULT_MODEL = "fcvc-cf-ia"
# the paper's order for the ablation table: baseline first, headline model last
ABLATION_ORDER: tuple[str, ...] = ("lstm", "fcvc", "fcvc-ta", "fcvc-ia", "fcvc-all", "fcvc-cf-ia")


def resolve_alias(name: str) -> str:
    """The canonical spelling of ``name`` when it is a known name or alias, else ``name`` unchanged."""
    key = str(name).strip().lower()
    return MODEL_ALIASES.get(key, key)


def canonical_model_name(name: str) -> str:
    """``fcvc-final`` -> ``fcvc-cf-ia``; a canonical name is returned unchanged; anything else is a ConfigError."""
    key = resolve_alias(name)
    if key not in VARIANTS:
        hint = did_you_mean(key, (*MODEL_NAMES, *MODEL_ALIASES))
        raise ConfigError(f"unknown model {name!r}{hint}; choose one of {known_models_text()}")
    return key


def known_models_text() -> str:
    return ", ".join(MODEL_NAMES) + " (alias: " + ", ".join(f"{a} = {c}" for a, c in MODEL_ALIASES.items()) + ")"


def variant(name: str) -> Variant:
    return VARIANTS[canonical_model_name(name)]
