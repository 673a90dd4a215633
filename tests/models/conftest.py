"""Helpers for the model tests: config loading and small synthetic batches."""
from __future__ import annotations

import argparse
import runpy
from pathlib import Path

import pytest
import torch

from util.misc import nested_tensor_from_tensor_list

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def _read_config(path: Path) -> dict:
    values = {k: v for k, v in runpy.run_path(str(path)).items() if not k.startswith("_")}
    merged: dict = {}
    for base in runpy.run_path(str(path)).get("_base_", []):
        merged.update(_read_config(path.parent / base))
    merged.update(values)
    return merged


def load_args(name: str = "tiny.cfg.py", **overrides) -> argparse.Namespace:
    """Config file from config/ as an args namespace (as main.py builds it), with overrides."""
    try:
        from util.config import Config  # the project's loader, when present
        values = Config.fromfile(CONFIG_DIR / name).to_dict()
    except ImportError:
        values = _read_config(CONFIG_DIR / name)
    values.update(device="cpu")
    values.update(overrides)
    return argparse.Namespace(**values)


def layout(args: argparse.Namespace):
    """The built-in keypoint layout with ``args.num_body_points`` keypoints (what get_metadata gives a dataset)."""
    from datasets.metadata import default_metadata_for_num_keypoints

    return default_metadata_for_num_keypoints(args.num_body_points)


def make_targets(num_people: list[int], num_keypoints: int, generator: torch.Generator) -> list[dict]:
    """Random but plausible targets (normalised cxcywh boxes, keypoints inside them, ~80% labelled)."""
    targets = []
    for image, n in enumerate(num_people):
        centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        size = torch.rand(n, 2, generator=generator) * 0.3 + 0.1
        boxes = torch.cat((centre, size), 1)
        xy = centre[:, None] + (torch.rand(n, num_keypoints, 2, generator=generator) - 0.5) * size[:, None]
        visible = (torch.rand(n, num_keypoints, generator=generator) < 0.8).float()
        visible[:, 0] = 1.0
        xy = xy * visible[..., None]
        keypoints = torch.cat((xy.flatten(1), visible), 1)
        targets.append({"boxes": boxes, "labels": torch.ones(n, dtype=torch.int64), "keypoints": keypoints,
                        "area": size.prod(1) * 0.7, "iscrowd": torch.zeros(n, dtype=torch.int64),
                        "image_id": torch.tensor([image]), "orig_size": torch.tensor([256, 320]),
                        "size": torch.tensor([256, 320])})
    return targets


def make_images(sizes: list[tuple[int, int]], generator: torch.Generator):
    return nested_tensor_from_tensor_list([torch.randn(3, h, w, generator=generator) for h, w in sizes])


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def encoded_session(seed: int, num_keypoints: int = 17):
    """A tiny model with perturbed weights (keypoint heads away from their zero init), two images encoded, and
    targets for them: (model, state, outputs, targets). Same draws as the fixtures that used to build it inline."""
    from models.clickpose.build import build_clickpose

    torch.manual_seed(0)
    args = load_args()
    model = build_clickpose(args, layout(args)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    images = make_images([(256, 320), (224, 288)], generator)
    targets = make_targets([4, 2], num_keypoints, generator)
    with torch.no_grad():
        outputs, state = model(images, return_state=True)
    return model, state, outputs, targets
