import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("FCVC_PROGRESS", "0")


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is several times faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
