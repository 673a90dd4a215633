"""Small models and inputs for the model tests: the keypoint layout of a config, random images, an encoded
tiny model."""
from __future__ import annotations

import argparse

import torch

from .configs import load_args
from .ground_truth import make_targets


def layout(args: argparse.Namespace):
    """The built-in keypoint layout with ``args.num_body_points`` keypoints (what get_metadata gives a dataset)."""
    from datasets.metadata import default_metadata_for_num_keypoints

    return default_metadata_for_num_keypoints(args.num_body_points)


def make_images(sizes: list[tuple[int, int]], generator: torch.Generator):
    """A NestedTensor batch of random images of these (height, width) sizes."""
    from util.misc import nested_tensor_from_tensor_list

    return nested_tensor_from_tensor_list([torch.randn(3, h, w, generator=generator) for h, w in sizes])


def encoded_session(seed: int, num_keypoints: int = 17):
    """A tiny model with perturbed weights (keypoint heads away from their zero init), two images encoded, and
    targets for them: (model, state, outputs, targets)."""
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
