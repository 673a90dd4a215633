"""SetCriterion, weight_dict and the weighted total: hand-computed terms, normalisation, key sets, edge cases."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from datasets.metadata import COCO_KEYPOINTS
from models.clickpose.criterion import SetCriterion, build_criterion, build_weight_dict, weighted_losses, weighted_total
from models.clickpose.matcher import HungarianMatcher, build_matcher
from util.settings import ModelSettings, model_settings

from tests.helpers import random_boxes, random_keypoints, random_targets

DN = 50
LOSSES = ["labels", "boxes", "keypoints", "dn_label", "dn_bbox", "dn_keypoints", "matching"]


def make_args(**overrides) -> ModelSettings:
    """The model settings of these flat keys (the rest from the config file)."""
    args = dict(cls_loss_coef=2.0, bbox_loss_coef=5.0, keypoints_loss_coef=10.0, oks_loss_coef=4.0,
                giou_loss_coef=2.0, use_dn=True, dn_label_coef=0.3, dn_bbox_coef=0.5, dn_keypoints_coef=0.5,
                aux_loss=True, dec_layers=6, num_box_decoder_layers=2, two_stage_type="standard",
                interm_loss_coef=1.0, no_interm_box_loss=False, dn_number=50, num_classes=2, num_body_points=17,
                focal_alpha=0.25, set_cost_class=2.0, set_cost_bbox=5.0, set_cost_giou=2.0, set_cost_keypoints=10.0,
                set_cost_oks=4.0, human_feedback=True, num_humanfeedback_layers=4, matcher_type="HungarianMatcher")
    args.update(overrides)
    return model_settings(SimpleNamespace(**args))


def _coco_matcher() -> HungarianMatcher:
    return HungarianMatcher(sigmas=COCO_KEYPOINTS.sigmas)


def criterion_for(settings: ModelSettings):
    """build_criterion with the matcher of the built-in layout of ``settings.num_keypoints`` keypoints."""
    from datasets.metadata import default_metadata_for_num_keypoints

    sigmas = default_metadata_for_num_keypoints(settings.num_keypoints).sigmas
    return build_criterion(settings.loss, build_matcher(settings.matcher, sigmas))


def head(batch, queries, k=17, box_only=False, dn=False):
    out = {"pred_logits": torch.randn(batch, queries, 2), "pred_boxes": random_boxes(batch, queries),
           "pred_keypoints": torch.zeros(batch, queries, 3 * k) if box_only else random_keypoints(batch, queries, k=k)}
    if dn:
        out.update(dn_class_pred=torch.randn(batch, DN, 2), dn_bbox_pred=random_boxes(batch, DN),
                   dn_pose_pred=random_keypoints(batch, DN, k=k), dn_class_input=torch.randint(1, 3, (batch, DN)),
                   dn_bbox_input=random_boxes(batch, DN), dn_pose_input=random_keypoints(batch, DN, k=k), num_tgt=DN)
    return out


def training_outputs(batch, num_aux=9, k=17, queries=(900, 900, 50, 50, 50, 20, 20, 20, 20)):
    """The shape of the model's training output (spec §9), with small query counts to stay fast."""
    out = head(batch, 50, k=k, dn=True)
    out["aux_outputs"] = [head(batch, queries[i], k=k, box_only=i < 2, dn=i < 5) for i in range(num_aux)]
    out["interm_outputs"] = head(batch, queries[0], k=k, box_only=True)
    return out


def expected_keys(num_aux):
    per_layer = ["loss_ce", "loss_bbox", "loss_giou", "loss_keypoints", "loss_oks", "dn_loss_ce", "dn_loss_bbox",
                 "dn_loss_giou", "dn_loss_keypoints", "set_class", "set_bbox", "set_giou", "set_keypoints"]
    keys = set(per_layer) | {"class_error"}
    for i in range(num_aux):
        keys |= {f"{k}_{i}" for k in per_layer
                 if not (i < 2 and k in ("loss_keypoints", "loss_oks", "dn_loss_keypoints"))}
    keys |= {f"{k}_interm" for k in ("loss_ce", "loss_bbox", "loss_giou", "set_class", "set_bbox", "set_giou",
                                       "set_keypoints")}
    return keys


@pytest.fixture(scope="module")
def criterion():
    return criterion_for(make_args())


def one_pair(pred_box, gt_box, pred_kpts, gt_kpts, area, logit=(0.0, 0.0)):
    outputs = {"pred_logits": torch.tensor([[logit]]), "pred_boxes": torch.tensor([[pred_box]]),
               "pred_keypoints": pred_kpts[None, None]}
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([gt_box]), "keypoints": gt_kpts[None],
                "area": torch.tensor([area])}]
    return outputs, targets


def test_single_pair_terms_by_hand():
    k = 17
    crit = SetCriterion(2, _coco_matcher(), {}, 0.25, ["labels", "boxes", "keypoints"])
    gt_xy = torch.full((2 * k,), 0.5)
    vis = torch.zeros(k)
    vis[[0, 16]] = 1.0
    pred_xy = gt_xy.clone()
    pred_xy[0] += 0.02  # visible keypoint 0
    pred_xy[33] += 0.01  # visible keypoint 16 (y)
    pred_xy[10] += 0.4  # invisible keypoint 5: no loss
    area = 0.05
    outputs, targets = one_pair([0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.4, 0.2], torch.cat([pred_xy, torch.ones(k)]),
                                torch.cat([gt_xy, vis]), area, logit=(0.3, -0.4))
    losses = crit(outputs, targets)
    # focal: class 0 negative (logit 0.3), class 1 positive (logit -0.4); num_boxes 1
    p0, p1 = 1 / (1 + math.exp(-0.3)), 1 / (1 + math.exp(0.4))
    focal = 0.75 * p0 ** 2 * -math.log(1 - p0) + 0.25 * (1 - p1) ** 2 * -math.log(p1)
    assert losses["loss_ce"].item() == pytest.approx(focal, rel=1e-5)
    assert losses["class_error"].item() == pytest.approx(100.0)  # argmax is class 0, target 1
    assert losses["loss_bbox"].item() == pytest.approx(0.2, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(0.5, abs=1e-4)  # IoU 0.5, hull = target box
    assert losses["loss_keypoints"].item() == pytest.approx(0.03, rel=1e-4)
    sig = COCO_KEYPOINTS.sigmas
    oks = (math.exp(-0.02 ** 2 / (2 * area * (2 * sig[0]) ** 2))
           + math.exp(-0.01 ** 2 / (2 * area * (2 * sig[16]) ** 2))) / (2 + 1e-6)
    assert losses["loss_oks"].item() == pytest.approx(1 - oks, rel=1e-4)


def test_num_boxes_normalisation_and_empty_batch():
    crit = SetCriterion(2, _coco_matcher(), {}, 0.25, ["labels", "boxes", "keypoints"])
    outputs = head(2, 6)
    targets = random_targets([3, 1])
    base = crit(outputs, targets)
    # duplicating the batch doubles the sums and num_boxes: per-box losses unchanged
    doubled = {k: torch.cat([v, v]) for k, v in outputs.items()}
    twice = crit(doubled, targets + targets)
    for key in ("loss_ce", "loss_bbox", "loss_giou", "loss_keypoints", "loss_oks"):
        assert twice[key].item() == pytest.approx(base[key].item(), rel=1e-5)
    # no people at all: num_boxes clamps to 1, box/keypoint terms are exactly 0, the focal loss is all-negative
    empty = crit(outputs, random_targets([0, 0]))
    assert empty["loss_bbox"].item() == 0 and empty["loss_keypoints"].item() == 0 and empty["loss_oks"].item() == 0
    prob = outputs["pred_logits"].sigmoid()
    all_negative = (0.75 * prob ** 2 * -torch.log(1 - prob)).sum()
    assert empty["loss_ce"].item() == pytest.approx(all_negative.item(), rel=1e-5)
    assert empty["class_error"].item() == 100.0


def test_class_error_zero_when_matched_queries_pick_the_person_class():
    crit = SetCriterion(2, _coco_matcher(), {}, 0.25, ["labels"])
    outputs = head(1, 4)
    outputs["pred_logits"][..., 1] = 5.0
    outputs["pred_logits"][..., 0] = -5.0
    assert crit(outputs, random_targets([2]))["class_error"].item() == 0.0


def test_dn_losses_by_hand_and_normalised_by_group_size():
    crit = SetCriterion(2, _coco_matcher(), {}, 0.25, ["dn_label", "dn_bbox", "dn_keypoints"])
    out = head(2, 5, dn=True)
    losses = crit(out, random_targets([1, 0]))
    pred, gt = out["dn_bbox_pred"], out["dn_bbox_input"]
    assert losses["dn_loss_bbox"].item() == pytest.approx(((pred - gt).abs().sum() / DN).item(), rel=1e-5)
    kp, kg = out["dn_pose_pred"], out["dn_pose_input"]
    weighted = ((kp[..., :34] - kg[..., :34]).abs() * kg[..., 34:].repeat_interleave(2, -1)).sum() / DN
    assert losses["dn_loss_keypoints"].item() == pytest.approx(weighted.item(), rel=1e-5)
    # label 2 (= num_classes: a dn query of an empty image) has an all-zero focal target
    logits, labels = out["dn_class_pred"], out["dn_class_input"]
    prob = logits.sigmoid()
    target = torch.zeros_like(prob)
    target[..., 1] = (labels == 1).float()
    focal = torch.where(target > 0, 0.25 * (1 - prob) ** 2 * -torch.log(prob), 0.75 * prob ** 2 * -torch.log(1 - prob))
    assert losses["dn_loss_ce"].item() == pytest.approx((focal.sum() / DN).item(), rel=1e-5)
    assert losses["dn_loss_giou"].item() > 0


def test_dn_losses_are_zero_without_num_tgt():
    crit = SetCriterion(2, _coco_matcher(), {}, 0.25, ["dn_label", "dn_bbox", "dn_keypoints"])
    losses = crit(head(1, 5), random_targets([2]))
    assert set(losses) == {"dn_loss_ce", "dn_loss_bbox", "dn_loss_giou", "dn_loss_keypoints"}
    assert all(v.item() == 0 for v in losses.values())


@pytest.mark.parametrize("num_aux", [9, 5])
def test_key_set_for_aux_counts(criterion, num_aux):
    queries = (60, 60, 12, 12, 12, 8, 8, 8, 8)
    losses = criterion(training_outputs(2, num_aux=num_aux, queries=queries), random_targets([3, 1]))
    assert set(losses) == expected_keys(num_aux)
    assert all(torch.isfinite(v).all() for v in losses.values())
    if num_aux == 9:  # refinement outputs carry no dn tensors: their dn keys exist and are 0
        assert losses["dn_loss_ce_5"].item() == 0 and losses["dn_loss_keypoints_8"].item() == 0
        assert losses["dn_loss_ce_4"].item() > 0


def test_every_weighted_key_produced_has_a_weight_and_gradients_flow(criterion):
    queries = (60, 60, 12, 12, 12, 8, 8, 8, 8)
    outputs = training_outputs(3, queries=queries)
    leaves = [outputs["pred_keypoints"], outputs["aux_outputs"][0]["pred_boxes"], outputs["dn_pose_pred"]]
    for t in leaves:
        t.requires_grad_(True)
    losses = criterion(outputs, random_targets([3, 0, 25]))
    loss_keys = {k for k in losses if k.startswith(("loss_", "dn_loss_"))}
    assert loss_keys <= set(criterion.weight_dict)
    # weighted but never produced (the reference's own quirk): loss_oks on box layers and interm
    assert set(criterion.weight_dict) - loss_keys == {"loss_oks_0", "loss_oks_1", "loss_oks_interm"}
    total = weighted_total(losses, criterion.weight_dict)
    total.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in leaves)


def test_weighted_total_uses_keys_present_in_both():
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(3.0), "set_x": torch.tensor(100.0)}
    weights = {"a": 0.5, "b": 2.0, "c": 7.0}
    assert weighted_total(losses, weights).item() == pytest.approx(7.0)
    assert {k: v.item() for k, v in weighted_losses(losses, weights).items()} == {"a": 1.0, "b": 6.0}
    with pytest.raises(RuntimeError, match="no weighted loss terms"):
        weighted_total({"set_x": torch.tensor(1.0)}, weights)


def test_weight_dict_from_config():
    w = build_weight_dict(make_args().loss)
    assert (w["loss_ce"], w["loss_bbox"], w["loss_giou"], w["loss_keypoints"], w["loss_oks"]) == (2, 5, 2, 10, 4)
    assert (w["dn_loss_ce"], w["dn_loss_bbox"], w["dn_loss_giou"], w["dn_loss_keypoints"]) == (0.3, 2.5, 1.0, 5.0)
    assert w["dn_loss_bbox_8"] == 2.5 and "loss_keypoints_1" not in w and "dn_loss_keypoints_0" not in w
    assert w["loss_oks_0"] == 4.0 and w["loss_keypoints_2"] == 10.0
    assert {k: v for k, v in w.items() if k.endswith("_interm")} == \
        {"loss_ce_interm": 2.0, "loss_bbox_interm": 5.0, "loss_oks_interm": 4.0, "loss_giou_interm": 2.0}
    assert len(w) == 9 + 9 * 9 - 2 * 2 + 4  # base+dn, 9 aux layers, minus 2 *keypoints keys on 2 box layers, interm
    no_feedback = build_weight_dict(make_args(human_feedback=False).loss)
    assert "loss_ce_4" in no_feedback and "loss_ce_5" not in no_feedback
    no_dn = build_weight_dict(make_args(use_dn=False, aux_loss=False, two_stage_type="no").loss)
    assert set(no_dn) == {"loss_ce", "loss_bbox", "loss_giou", "loss_keypoints", "loss_oks"}
    no_box = build_weight_dict(make_args(no_interm_box_loss=True, interm_loss_coef=0.5).loss)
    assert no_box["loss_ce_interm"] == 1.0 and no_box["loss_bbox_interm"] == 0.0


def test_build_criterion_losses_list():
    crit = criterion_for(make_args())
    assert crit.losses == LOSSES and crit.weight_dict == build_weight_dict(make_args().loss)
    assert criterion_for(make_args(dn_number=0)).losses == ["labels", "boxes", "keypoints", "matching"]
    with pytest.raises(ValueError, match="unknown loss names"):
        SetCriterion(2, _coco_matcher(), {}, 0.25, ["masks"])


def test_fourteen_keypoints():
    crit = criterion_for(make_args(num_body_points=14))
    queries = (40, 40, 10, 10, 10, 6, 6, 6, 6)
    losses = crit(training_outputs(2, k=14, queries=queries), random_targets([2, 3], k=14))
    assert set(losses) == expected_keys(9)
    assert all(torch.isfinite(v).all() for v in losses.values())



def test_num_boxes_is_averaged_over_processes(monkeypatch):
    """This process has 3 people, a simulated second one has 1: both normalise by (3 + 1) / 2 = 2."""
    import torch.distributed as dist

    def all_reduce_with_peer(tensor):
        tensor.add_(1.0)  # the other rank's count

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", all_reduce_with_peer)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    crit = SetCriterion(2, _coco_matcher(), {}, 0.25, ["boxes"])
    outputs, targets = head(1, 6, box_only=True), random_targets([3])
    loss = crit(outputs, targets)["loss_bbox"]
    (rows, cols), = crit.matcher(outputs, targets)[0]
    l1_sum = (outputs["pred_boxes"][0, rows] - targets[0]["boxes"][cols]).abs().sum()
    assert loss.item() == pytest.approx(l1_sum.item() / 2, rel=1e-6)


# ---- cls_quality_target='oks' (an option; the reference's target is 1) ----------------------------------------------
def test_quality_focal_loss_is_the_focal_loss_for_hard_targets_and_is_minimal_at_the_quality():
    from torchvision.ops import sigmoid_focal_loss

    from models.clickpose.losses import quality_focal_loss

    logits = torch.randn(2, 6, 3)
    onehot = (torch.rand(2, 6, 3) > 0.6).float()
    hard = quality_focal_loss(logits, onehot, torch.ones_like(onehot), alpha=0.25)
    assert torch.allclose(hard, sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2, reduction="none"), atol=1e-6)
    # one positive aiming at 0.3: the loss over logits is smallest where sigmoid(logit) = 0.3
    grid = torch.linspace(-4, 4, 801)
    values = quality_focal_loss(grid, torch.ones_like(grid), torch.full_like(grid, 0.3), alpha=0.25)
    assert grid[values.argmin()].sigmoid().item() == pytest.approx(0.3, abs=0.01)


def _one_person_scene(pred_shift: float):
    """One query against one person; the prediction's keypoints are shifted by ``pred_shift`` (0: exact)."""
    torch.manual_seed(0)
    targets = random_targets([1])
    gt = targets[0]
    pred_kpts = gt["keypoints"][0].clone()
    pred_kpts[:34] += pred_shift
    outputs = {"pred_logits": torch.tensor([[[0.0, 0.5]]]), "pred_boxes": gt["boxes"][None].clone(),
               "pred_keypoints": pred_kpts[None, None]}
    return outputs, targets


def test_oks_quality_target_leaves_a_perfect_pose_as_the_reference_and_lowers_a_poor_ones_target():
    reference = SetCriterion(2, _coco_matcher(), {}, 0.25, ["labels"])
    quality = SetCriterion(2, _coco_matcher(), {}, 0.25, ["labels"], cls_quality_target="oks")
    exact, targets = _one_person_scene(0.0)
    assert quality(exact, targets)["loss_ce"].item() == pytest.approx(reference(exact, targets)["loss_ce"].item(),
                                                                       rel=1e-4)
    poor, targets = _one_person_scene(0.2)
    logit = poor["pred_logits"].requires_grad_()
    quality(poor, targets)["loss_ce"].backward()
    # the person logit (0.5 -> p = 0.62) is above a poor pose's OKS: the loss pushes it down; the reference pushes up
    assert logit.grad[0, 0, 1].item() > 0
    logit.grad = None
    reference(poor, targets)["loss_ce"].backward()
    assert logit.grad[0, 0, 1].item() < 0


def test_quality_target_uses_box_iou_on_box_only_layers_and_refuses_unknown_kinds():
    crit = SetCriterion(2, _coco_matcher(), {}, 0.25, ["labels"], cls_quality_target="oks")
    outputs, targets = _one_person_scene(0.2)
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    assert crit._match_quality(outputs, targets, indices, keypoint_layer=False).item() == pytest.approx(1.0)
    assert crit._match_quality(outputs, targets, indices, keypoint_layer=True).item() < 0.9
    with pytest.raises(ValueError, match="cls_quality_target"):
        SetCriterion(2, _coco_matcher(), {}, 0.25, ["labels"], cls_quality_target="iou")
