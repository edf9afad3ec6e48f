"""The captioners: FCVC and its ablations, and the LSTM baseline.

- :mod:`.variants`: the table of variants (``VARIANTS``, ``MODEL_NAMES``, aliases, layer plans)
- :mod:`.config`: ``ModelConfig`` (saved with the weights)
- :mod:`.registry`: ``build_model``
- :mod:`.state`: ``VideoBatch``, ``ModelOutput``, ``StepOutput``, ``Rows``
- :mod:`.base`: ``CaptionModel`` (forward / encode / decode / init_state / step)
- :mod:`.fcvc`: the FCVC family; :mod:`.lstm`: the LSTM baseline
"""

from fcvc_pipeline.models.base import CaptionModel
from fcvc_pipeline.models.config import ModelConfig
from fcvc_pipeline.models.registry import build_model
from fcvc_pipeline.models.state import ModelOutput, Rows, StepOutput, VideoBatch
from fcvc_pipeline.models.variants import (
    ABLATION_ORDER,
    DEFAULT_MODEL,
    MODEL_ALIASES,
    MODEL_NAMES,
    VARIANTS,
    LayerPlan,
    Variant,
    canonical_model_name,
    variant,
)

__all__ = [
    "ABLATION_ORDER", "CaptionModel", "DEFAULT_MODEL", "LayerPlan", "MODEL_ALIASES", "MODEL_NAMES", "ModelConfig",
    "ModelOutput", "Rows", "StepOutput", "VARIANTS", "Variant", "VideoBatch", "build_model", "canonical_model_name",
    "variant",
]
