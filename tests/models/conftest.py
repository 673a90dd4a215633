"""Fixtures of the model tests; their helpers (config loading, small synthetic batches) are in tests/helpers."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
