"""Shared fixtures. Real sample data lives in ``../shared/data`` beside the checkout (never copied in)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CLICKPOSE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_REFERENCE = SHARED_DATA.parent / "reference"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real dataset samples (coco/, crowdpose/, humanart/, ochuman/); skips when absent."""
    if not (SHARED_DATA / "coco").is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set CLICKPOSE_SHARED_DATA to the shared/data folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """Facts about the original implementation (state-dict keys etc.); skips when absent."""
    if not (SHARED_REFERENCE / "original_state_dict_keys.txt").is_file():
        pytest.skip(f"reference facts not found at {SHARED_REFERENCE}")
    return SHARED_REFERENCE


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible)")
