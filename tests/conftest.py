"""Shared fixtures. Real sample data lives in ``../shared/data`` beside the checkout (never copied in); tiny made-up
samples in the same layouts live in ``tests/data`` (``sample_data``)."""
from __future__ import annotations

import os
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from tests.helpers import config_defaults

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CLICKPOSE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_REFERENCE = SHARED_DATA.parent / "reference"
# tiny made-up samples in the checkout, one root per dataset laid out as DATASET_SPECS expects (make_samples.py)
SAMPLE_DATA = REPO_ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real dataset samples (coco/, crowdpose/, humanart/, ochuman/); skips when absent."""
    if not (SHARED_DATA / "coco").is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set CLICKPOSE_SHARED_DATA to the shared/data folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """Root of the tiny hand-made samples in the checkout (coco/, crowdpose/, humanart/, ochuman/; 2 images a
    split, rebuilt by tests/data/make_samples.py); always present, so tests on formats and layouts never skip."""
    return SAMPLE_DATA


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


# dataset_file -> (root under shared/data, keypoint count)
SAMPLE_DATASETS = {"coco": ("coco", 17), "crowdpose": ("crowdpose", 14), "humanart": ("humanart", 17),
                   "ochuman": ("ochuman", 17)}


# the config keys the dataset code reads whose values come from config/clickpose.cfg.py
DATASET_CONFIG_KEYS = ("data_aug_scales", "data_aug_max_size", "data_aug_scales2_resize", "data_aug_scales2_crop",
                       "data_aug_scale_overlap", "flip_exact", "crop_marks_invisible")


def dataset_args(dataset_file: str, root, **overrides) -> Namespace:
    """The config keys the dataset code reads, with the reference defaults (config/clickpose.cfg.py)."""
    num = SAMPLE_DATASETS.get(dataset_file, (None, 17))[1]
    values = dict(dataset_file=dataset_file, coco_path=str(root), num_body_points=num, noc_filter=False,
                  **config_defaults(*DATASET_CONFIG_KEYS))
    values.update(overrides)
    return Namespace(**values)


@pytest.fixture(scope="session")
def make_args():
    """``make_args(dataset_file, root, **overrides) -> Namespace`` (see ``dataset_args``)."""
    return dataset_args


@pytest.fixture(scope="session")
def sample_root(shared_data):
    """``sample_root(dataset_file) -> Path`` of a real sample dataset."""
    return lambda name: shared_data / SAMPLE_DATASETS[name][0]
