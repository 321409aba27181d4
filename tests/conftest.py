"""Shared fixtures. Tests run on CPU with tiny models; no network, no hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Keep thread pools small on the 2-core CI machine and never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread for in-process tests: on the 2-core CI machine oversubscribed OpenMP threads make the
    tiny models 5-10x slower. Workflow jobs set their own threads (``devices.configure_torch``)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
