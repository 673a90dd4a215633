"""Fixtures for the dataset tests: config-like args and a small synthetic dataset."""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import pytest

from datasets.synthetic import write_synthetic_dataset

# dataset_file -> (root under shared/data, keypoint count)
SAMPLE_DATASETS = {"coco": ("coco", 17), "crowdpose": ("crowdpose", 14), "humanart": ("humanart", 17),
                   "ochuman": ("ochuman", 17)}


def dataset_args(dataset_file: str, root, **overrides) -> Namespace:
    """The config keys the dataset code reads, with the reference defaults."""
    num = SAMPLE_DATASETS.get(dataset_file, (None, 17))[1]
    values = dict(dataset_file=dataset_file, coco_path=str(root), num_body_points=num, noc_filter=False,
                  data_aug_scales=[480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800], data_aug_max_size=1333,
                  data_aug_scales2_resize=[400, 500, 600], data_aug_scales2_crop=[384, 600],
                  data_aug_scale_overlap=None, flip_exact=False, crop_marks_invisible=False)
    values.update(overrides)
    return Namespace(**values)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A 6-image synthetic dataset (4 train, 2 val), written once per session."""
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, num_images=6, seed=3, num_val=2)
    return root


@pytest.fixture(scope="session")
def make_args():
    """``make_args(dataset_file, root, **overrides) -> Namespace`` (see ``dataset_args``)."""
    return dataset_args


@pytest.fixture(scope="session")
def sample_root(shared_data):
    """``sample_root(dataset_file) -> Path`` of a real sample dataset."""
    return lambda name: shared_data / SAMPLE_DATASETS[name][0]
