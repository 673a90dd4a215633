"""HungarianMatcher: hand-computed costs, the batch-wide branch switch, optimality, edge cases."""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from datasets.metadata import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS
from models.clickpose.matcher import HungarianMatcher, build_matcher, focal_class_cost
from util.settings import model_settings

from tests.helpers import random_boxes, random_targets


def _target(boxes, keypoints, area, k=17):
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"labels": torch.ones(len(boxes), dtype=torch.int64), "boxes": boxes,
            "keypoints": torch.as_tensor(keypoints, dtype=torch.float32).reshape(len(boxes), 3 * k),
            "area": torch.as_tensor(area, dtype=torch.float32).reshape(-1)}


def _random_outputs(batch, queries, k=17, box_only=False):
    kpts = torch.zeros(batch, queries, 3 * k) if box_only else torch.rand(batch, queries, 3 * k)
    boxes = random_boxes(batch, queries)
    return {"pred_logits": torch.randn(batch, queries, 2), "pred_boxes": boxes, "pred_keypoints": kpts}


def test_focal_class_cost_one_query_by_hand():
    prob = torch.tensor([[0.5, 0.8]])
    cost = focal_class_cost(prob, torch.tensor([1]), alpha=0.25)
    p = 0.8
    expected = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8) - 0.75 * p ** 2 * -math.log(1 - p + 1e-8)
    assert cost.shape == (1, 1)
    assert cost.item() == pytest.approx(expected, rel=1e-6)


def test_keypoint_branch_costs_by_hand():
    """One query, one target, K=17: keypoint L1 and OKS cost written out."""
    k = 17
    gt_xy = torch.full((2 * k,), 0.5)
    vis = torch.zeros(k)
    vis[[0, 5]] = 1.0
    pred_xy = gt_xy.clone()
    pred_xy[0] += 0.01  # keypoint 0, x; visible
    pred_xy[11] -= 0.02  # keypoint 5, y; visible
    pred_xy[20] += 0.3  # keypoint 10, x; invisible -> no cost
    area = 0.04
    outputs = {"pred_logits": torch.zeros(1, 1, 2), "pred_boxes": torch.full((1, 1, 4), 0.5),
               "pred_keypoints": torch.cat([pred_xy, torch.ones(k)])[None, None]}
    targets = [_target([0.5, 0.5, 0.2, 0.2], torch.cat([gt_xy, vis]), [area])]
    indices, means = HungarianMatcher(sigmas=COCO_KEYPOINTS.sigmas)(outputs, targets)
    sig = COCO_KEYPOINTS.sigmas
    oks = (math.exp(-0.01 ** 2 / (2 * area * (2 * sig[0]) ** 2))
           + math.exp(-0.02 ** 2 / (2 * area * (2 * sig[5]) ** 2))) / (2 + 1e-6)
    assert means["keypoints"].item() == pytest.approx(0.03, rel=1e-5)
    assert means["bbox"].item() == 0.0 and means["giou"].item() == 0.0  # box costs are off in this branch
    p = 0.5  # sigmoid(0)
    assert means["class"].item() == pytest.approx(
        0.25 * (1 - p) ** 2 * -math.log(p + 1e-8) - 0.75 * p ** 2 * -math.log(1 - p + 1e-8), rel=1e-6)
    assert [(i.tolist(), j.tolist()) for i, j in indices] == [([0], [0])]
    total, _ = HungarianMatcher(sigmas=COCO_KEYPOINTS.sigmas).cost_matrix(outputs, targets)
    assert total.shape == (1, 1, 1)
    assert total.item() == pytest.approx(2 * means["class"].item() + 10 * 0.03 + 4 * (1 - oks), rel=1e-5)


def test_box_branch_costs_by_hand():
    outputs = {"pred_logits": torch.zeros(1, 1, 2), "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]]]),
               "pred_keypoints": torch.zeros(1, 1, 51)}
    targets = [_target([0.5, 0.5, 0.4, 0.2], torch.rand(51), [0.08])]
    _, means = HungarianMatcher(sigmas=COCO_KEYPOINTS.sigmas)(outputs, targets)
    assert means["bbox"].item() == pytest.approx(0.2, rel=1e-5)
    # IoU = 0.04/0.08, hull = the target box -> GIoU 0.5 (eps 1e-6 in both denominators)
    assert means["giou"].item() == pytest.approx(-0.5, abs=1e-4)
    assert means["keypoints"].item() == 0.0


def test_branch_switch_is_batch_wide():
    """Box-nearest and keypoint-nearest queries differ; any non-zero keypoint in the batch switches every image."""
    k = 17
    gt_kpts = torch.cat([torch.full((2 * k,), 0.3), torch.ones(k)])
    targets = [_target([0.7, 0.7, 0.2, 0.2], gt_kpts, [0.04]), _target([0.5, 0.5, 0.2, 0.2], gt_kpts, [0.04])]
    boxes = torch.tensor([[0.7, 0.7, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]])  # query 0 has the right box
    outputs = {"pred_logits": torch.zeros(2, 2, 2), "pred_boxes": boxes[None].repeat(2, 1, 1),
               "pred_keypoints": torch.zeros(2, 2, 3 * k)}
    outputs["pred_boxes"][1] = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2]])
    matcher = HungarianMatcher(sigmas=COCO_KEYPOINTS.sigmas)
    indices, _ = matcher(outputs, targets)
    assert indices[0][0].tolist() == [0] and indices[1][0].tolist() == [1]  # box branch
    # image 1 gets keypoints: query 0 of image 0 now has the nearest keypoints (all 0.3) -> image 0 switches to 0?
    outputs["pred_keypoints"][0, 1, :2 * k] = 0.3  # query 1 of image 0 has the exact keypoints
    outputs["pred_keypoints"][1, 0, :2 * k] = 0.3
    indices, means = matcher(outputs, targets)
    assert indices[0][0].tolist() == [1] and indices[1][0].tolist() == [0]  # keypoint branch everywhere
    assert means["bbox"].item() == 0.0


def test_assignment_is_optimal_against_brute_force():
    torch.manual_seed(3)
    for queries, gts in [(4, 3), (5, 5), (3, 5), (6, 2)]:
        cost = torch.randn(1, queries, gts)
        (rows, cols), = HungarianMatcher._assign(cost.numpy(), [gts])
        n = min(queries, gts)
        assert len(rows) == len(cols) == n
        assert len(set(rows.tolist())) == n and len(set(cols.tolist())) == n
        got = cost[0, rows, cols].sum().item()
        if queries >= gts:
            best = min(sum(cost[0, q, t].item() for t, q in enumerate(perm))
                       for perm in itertools.permutations(range(queries), gts))
        else:
            best = min(sum(cost[0, q, t].item() for q, t in enumerate(perm))
                       for perm in itertools.permutations(range(gts), queries))
        assert got == pytest.approx(best, abs=1e-5)


def test_full_matcher_is_optimal_on_small_batches():
    """Re-derive the keypoint-branch cost matrix with the written-out formula and brute-force the best matching."""
    torch.manual_seed(5)
    outputs = _random_outputs(2, 4)
    targets = random_targets([3, 2])
    indices, _ = HungarianMatcher(sigmas=COCO_KEYPOINTS.sigmas)(outputs, targets)
    sig = torch.tensor(COCO_KEYPOINTS.sigmas)
    for image, (rows, cols) in enumerate(indices):
        t = targets[image]
        prob = outputs["pred_logits"][image].sigmoid()[:, 1]
        pred = outputs["pred_keypoints"][image, :, :34]
        gt, vis = t["keypoints"][:, :34], t["keypoints"][:, 34:]

        def cost(q, g):
            p = prob[q]
            cls = 0.25 * (1 - p) ** 2 * -torch.log(p + 1e-8) - 0.75 * p ** 2 * -torch.log(1 - p + 1e-8)
            l1 = ((pred[q] - gt[g]).abs() * vis[g].repeat_interleave(2)).sum()
            d2 = ((pred[q] - gt[g]).view(17, 2) ** 2).sum(-1)
            oks = (torch.exp(-d2 / (2 * t["area"][g] * (2 * sig) ** 2)) * vis[g]).sum() / (vis[g].sum() + 1e-6)
            return (2 * cls + 10 * l1 + 4 * (1 - oks.clamp(min=1e-6))).item()

        n_gt = len(t["labels"])
        best = min(sum(cost(q, g) for g, q in enumerate(perm)) for perm in itertools.permutations(range(4), n_gt))
        got = sum(cost(q, g) for q, g in zip(rows.tolist(), cols.tolist()))
        assert len(rows) == n_gt
        assert got == pytest.approx(best, abs=1e-4)


def test_images_without_people():
    matcher = HungarianMatcher(sigmas=COCO_KEYPOINTS.sigmas)
    indices, means = matcher(_random_outputs(3, 6), random_targets([2, 0, 3]))
    assert [len(r) for r, _ in indices] == [2, 0, 3]
    assert all(r.dtype == torch.int64 and c.dtype == torch.int64 for r, c in indices)
    assert indices[1][0].numel() == 0
    indices, means = matcher(_random_outputs(2, 6), random_targets([0, 0]))  # nothing in the whole batch
    assert [len(r) for r, _ in indices] == [0, 0]
    assert set(means) == {"class", "bbox", "giou", "keypoints"} and all(v.item() == 0 for v in means.values())


def test_more_people_than_queries():
    indices, _ = HungarianMatcher(sigmas=COCO_KEYPOINTS.sigmas)(_random_outputs(1, 20), random_targets([25]))
    rows, cols = indices[0]
    assert len(rows) == 20 and len(set(cols.tolist())) == 20 and cols.max() < 25


def test_fourteen_keypoints_use_crowdpose_sigmas():
    matcher = HungarianMatcher(sigmas=CROWDPOSE_KEYPOINTS.sigmas)
    assert matcher.num_keypoints == 14
    assert torch.allclose(matcher.sigmas, torch.tensor(CROWDPOSE_KEYPOINTS.sigmas))
    indices, _ = matcher(_random_outputs(2, 5, k=14), random_targets([2, 1], k=14))
    assert [len(r) for r, _ in indices] == [2, 1]


def test_clear_errors():
    with pytest.raises(ValueError, match="last dim 51"):
        HungarianMatcher(sigmas=CROWDPOSE_KEYPOINTS.sigmas)(_random_outputs(1, 5, k=17), random_targets([1], k=17))
    with pytest.raises(ValueError, match="num_body_points|num_keypoints"):
        HungarianMatcher(num_keypoints=5, sigmas=[0.1] * 4)
    with pytest.raises(ValueError, match="no OKS sigmas given"):
        HungarianMatcher(num_keypoints=5)
    outputs = _random_outputs(1, 5)
    outputs["pred_logits"][0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        HungarianMatcher(sigmas=COCO_KEYPOINTS.sigmas)(outputs, random_targets([1]))


def test_build_matcher_reads_config():
    args = SimpleNamespace(set_cost_class=1.0, set_cost_bbox=3.0, set_cost_giou=0.5, set_cost_keypoints=7.0,
                           set_cost_oks=2.0, focal_alpha=0.3, num_body_points=14, matcher_type="HungarianMatcher")
    m = build_matcher(model_settings(args).matcher, [0.05] * 14)
    assert (m.cost_class, m.cost_bbox, m.cost_giou, m.cost_keypoints, m.cost_oks, m.focal_alpha) == \
        (1.0, 3.0, 0.5, 7.0, 2.0, 0.3)
    assert torch.allclose(m.sigmas, torch.full((14,), 0.05))
    assert "sigmas" not in m.state_dict()  # nothing extra in checkpoints


def test_match_many_equals_separate_calls():
    torch.manual_seed(7)
    matcher = HungarianMatcher(sigmas=COCO_KEYPOINTS.sigmas)
    targets = random_targets([2, 0, 4])
    outs = [_random_outputs(3, 30, box_only=True), _random_outputs(3, 8), _random_outputs(3, 5)]
    together = matcher.match_many(outs, targets)
    for out, (indices, means) in zip(outs, together):
        alone, alone_means = matcher(out, targets)
        assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(indices, alone))
        assert all(torch.equal(means[k], alone_means[k]) for k in alone_means)
