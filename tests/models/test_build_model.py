"""build_model wires the model, the criterion and the post-processor together; one training step runs."""
from __future__ import annotations

import torch

from models import build_model

from tests.helpers import layout, load_args, make_images, make_targets


def test_tiny_training_step_and_shared_matcher():
    args = load_args(human_feedback=True)
    model, criterion, postprocessors = build_model(args, layout(args))
    assert model.click_simulator.matcher is criterion.matcher
    gen = torch.Generator().manual_seed(2)
    images, targets = make_images([(256, 320), (224, 288)], gen), make_targets([2, 3], 17, gen)
    model.train()
    outputs = model(images, targets)
    losses = criterion(outputs, targets)
    total = sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses)
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        results = postprocessors["pose"](model(images), torch.tensor([[256, 320], [224, 288]]))
    assert results[0]["keypoints"].shape == (args.num_select, 3 * 17)
