"""Backbones and captioning models.

The captioning API (names used by the trainer, the captioner and the benchmarks):

- :mod:`.config`: ``MODEL_NAMES``, ``MODEL_ALIASES``, ``canonical_model_name``, ``ModelConfig``, ``build_model``
- :mod:`.state`: ``VideoBatch``, ``ModelOutput``, ``StepOutput``, ``Rows``
- :mod:`.base`: ``CaptionModel`` (forward / encode / decode / init_state / step)
- :mod:`.fcvc`: the FCVC family; :mod:`.lstm`: the LSTM baseline
"""

from fcvc_pipeline.models.base import CaptionModel
from fcvc_pipeline.models.config import (DEFAULT_MODEL, MODEL_ALIASES, MODEL_NAMES, LayerPlan, ModelConfig,
                                         build_model, canonical_model_name)
from fcvc_pipeline.models.state import ModelOutput, Rows, StepOutput, VideoBatch

__all__ = [
    "CaptionModel", "DEFAULT_MODEL", "LayerPlan", "MODEL_ALIASES", "MODEL_NAMES", "ModelConfig", "ModelOutput",
    "Rows", "StepOutput", "VideoBatch", "build_model", "canonical_model_name",
]
