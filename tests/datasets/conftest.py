"""Fixtures for the dataset tests: a small synthetic dataset (config-like args and samples: tests/conftest.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from datasets.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A 6-image synthetic dataset (4 train, 2 val), written once per session."""
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, num_images=6, seed=3, num_val=2)
    return root
