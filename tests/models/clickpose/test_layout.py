"""The keypoint layout reaches every part of the model: custom sigmas and flip pairs, any K, no datasets import."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from datasets import get_metadata
from datasets.metadata import COCO_KEYPOINTS
from models import build_model
from models.clickpose.matcher import build_matcher
from util.settings import model_settings
from util.keypoint_metadata import KeypointMetadata

from tests.helpers import REPO, load_args, make_images, make_targets


def _one_person(k: int):
    """One prediction and one target whose keypoints differ by known offsets (keypoint branch of the matcher)."""
    gen = torch.Generator().manual_seed(7)
    gt_xy = torch.rand(k, 2, generator=gen) * 0.4 + 0.3
    pred_xy = gt_xy + (torch.rand(k, 2, generator=gen) - 0.5) * 0.1
    vis = torch.ones(k)
    outputs = {"pred_logits": torch.tensor([[[0.3, -0.2]]]), "pred_boxes": torch.tensor([[[0.5, 0.5, 0.4, 0.4]]]),
               "pred_keypoints": torch.cat((pred_xy.flatten(), vis))[None, None]}
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]),
                "keypoints": torch.cat((gt_xy.flatten(), vis))[None], "area": torch.tensor([0.1])}]
    return outputs, targets, pred_xy, gt_xy


def _oks_by_hand(pred_xy, gt_xy, area, sigmas):
    total = 0.0
    for (px, py), (gx, gy), s in zip(pred_xy.tolist(), gt_xy.tolist(), sigmas):
        total += math.exp(-((px - gx) ** 2 + (py - gy) ** 2) / (2 * area * (2 * s) ** 2))
    return total / (len(sigmas) + 1e-6)


def test_custom_sigmas_reach_matcher_and_criterion():
    custom = [0.02 + 0.01 * k for k in range(17)]
    args = load_args(dataset_file="custom", custom_sigmas=custom)
    metadata = get_metadata(args)
    assert metadata.sigmas == tuple(custom)
    model, criterion, _ = build_model(args, metadata)
    assert criterion.matcher is model.click_simulator.matcher  # one matcher: training loop, oracle, losses
    assert tuple(model.keypoint_sigmas) == tuple(custom)  # the pose error modeling's KS uses them too

    outputs, targets, pred_xy, gt_xy = _one_person(17)
    oks_custom = _oks_by_hand(pred_xy, gt_xy, 0.1, custom)
    oks_coco = _oks_by_hand(pred_xy, gt_xy, 0.1, COCO_KEYPOINTS.sigmas)
    assert abs(oks_custom - oks_coco) > 0.05  # the test can tell the two apart

    cost_custom, _ = criterion.matcher.cost_matrix(outputs, targets)
    cost_coco, _ = build_matcher(model_settings(args).matcher, COCO_KEYPOINTS.sigmas).cost_matrix(outputs, targets)
    assert float(cost_coco - cost_custom) == pytest.approx(args.set_cost_oks * (oks_custom - oks_coco), abs=1e-5)

    match = criterion.matcher(outputs, targets)
    losses = criterion.loss_keypoints(outputs, targets, match, num_boxes=1.0)
    assert float(losses["loss_oks"]) == pytest.approx(1 - oks_custom, abs=1e-5)


@pytest.mark.parametrize("k", [5, 21])
def test_any_keypoint_count_trains_a_step(k, gen):
    names = [f"kp{i}" for i in range(k)]
    args = load_args(dataset_file="custom", num_body_points=k, custom_keypoint_names=names,
                     custom_flip_pairs=[[0, 1]], custom_sigmas=[0.05] * k, human_feedback=True)
    model, criterion, post = build_model(args, get_metadata(args))
    assert model.transformer.decoder.hw.weight.shape == (k, 2)
    assert model.label_enc_pose.weight.shape[0] == k + 1
    model.train()
    outputs = model(make_images([(256, 320)], gen), make_targets([2], k, gen))
    losses = criterion(outputs, make_targets([2], k, gen))
    assert all(torch.isfinite(v).all() for v in losses.values())
    sum(losses[n] * w for n, w in criterion.weight_dict.items() if n in losses).backward()
    results = post["pose"](outputs, torch.tensor([[256, 320]]))
    assert results[0]["keypoints"].shape[-1] == 3 * k


def test_layout_and_num_body_points_must_agree():
    with pytest.raises(ValueError, match="num_body_points=17; set num_body_points=5"):
        build_model(load_args(), KeypointMetadata("five", tuple("abcde"), (), (0.1,) * 5))
    with pytest.raises(TypeError, match="KeypointMetadata"):
        build_model(load_args(), None)


def test_the_model_never_imports_datasets():
    code = ("import sys, models, models.predictor, models.clickpose.build, models.clickpose.criterion, "
            "models.clickpose.matcher, models.clickpose.losses, models.clickpose.clickpose; "
            "print(sorted(m for m in sys.modules if m == 'datasets' or m.startswith('datasets.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
