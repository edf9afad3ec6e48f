import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("FCVC_PROGRESS", "0")


@pytest.fixture
def repo_root() -> Path:
    return REPO
