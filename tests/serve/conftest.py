"""One tiny exported captioner for every serve test (generated videos, random Inception-V3 at 75x75)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fcvc_pipeline.stages.export import ExportConfig, run_export
from tests.tiny import generated_workdir


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory) -> tuple[Path, list[Path]]:
    """(the .fcvc file, the six generated videos it can caption)."""
    root = tmp_path_factory.mktemp("serve")
    work, videos = generated_workdir(root, epochs=2, inception_weights="random")
    model = root / "tiny.fcvc"
    run_export(ExportConfig(output=model, workdir=work))
    return model, videos
