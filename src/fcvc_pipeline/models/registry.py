"""Building a captioner from its :class:`ModelConfig` (the names and layer plans are in :mod:`.variants`)."""

from __future__ import annotations

from fcvc_pipeline.errors import ConfigError, require
from fcvc_pipeline.models.base import CaptionModel
from fcvc_pipeline.models.config import ModelConfig
from fcvc_pipeline.models.fcvc import FcvcCaptioner
from fcvc_pipeline.models.lstm import LstmCaptioner


def build_model(cfg: ModelConfig) -> CaptionModel:
    """The model described by ``cfg`` (validated first; every problem reported in one ConfigError)."""
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"build_model needs a ModelConfig (got {type(cfg).__name__})")
    require(cfg.validate())
    return LstmCaptioner(cfg) if cfg.is_lstm else FcvcCaptioner(cfg)
