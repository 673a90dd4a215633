"""The refinement routine, the oracle clicks and the click-round loop (tiny model, perturbed weights so that
every head moves its outputs)."""
from __future__ import annotations

import pytest
import torch

from models.clickpose.build import build_clickpose
from util.settings import model_settings
from models.clickpose.feedback import CLICK_POLICIES, ClickSimulator, apply_clicks, build_click_simulator, flatten_clicks
from util.keypoint_codec import coordinates
from util.box_ops import box_cxcywh_to_xyxy

from tests.helpers import encoded_session, layout, load_args


def _build(args):
    return build_clickpose(args, layout(args))

K = 17


@pytest.fixture(scope="module")
def session():
    return encoded_session(21, K)


class FixedMatcher:
    """Matches prediction i to ground truth i for the first n_i predictions."""

    def __call__(self, outputs, targets):
        return [(torch.arange(len(t["boxes"])), torch.arange(len(t["boxes"]))) for t in targets], {}


def test_apply_clicks_moves_the_keypoint_and_grows_only_clicked_boxes():
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]]])
    keypoints = torch.full((1, 2, 3, 2), 0.5)
    clicks = torch.tensor([[0, 0, 1, 0.9, 0.2]])
    new_boxes, new_kpts, clicked = apply_clicks(boxes, keypoints, clicks)
    assert new_kpts[0, 0, 1].tolist() == pytest.approx([0.9, 0.2])
    assert torch.equal(new_kpts[0, 1], keypoints[0, 1]) and torch.equal(new_boxes[0, 1], boxes[0, 1])
    x0, y0, x1, y1 = box_cxcywh_to_xyxy(new_boxes[0, 0]).tolist()
    assert (x0, y0, x1, y1) == pytest.approx((0.4, 0.2, 0.9, 0.6))
    assert clicked.sum() == 1 and clicked[0, 0, 1]
    with pytest.raises(ValueError, match="keypoint index outside"):
        apply_clicks(boxes, keypoints, torch.tensor([[0, 0, 3, 0.1, 0.1]]))


def test_clicks_per_image_equal_the_flat_form():
    per_image = [torch.tensor([[1, 2, 0.5, 0.25]]), torch.zeros(0, 4), torch.tensor([[0, 5, 0.1, 0.2]])]
    flat = flatten_clicks(per_image, 3, torch.device("cpu"))
    assert torch.allclose(flat, torch.tensor([[0, 1, 2, 0.5, 0.25], [2, 0, 5, 0.1, 0.2]]))
    with pytest.raises(ValueError, match="clicks for 3 images"):
        flatten_clicks(per_image, 2, torch.device("cpu"))


def test_simulator_clicks_the_worst_labelled_keypoint_once_per_matched_person():
    gt = torch.zeros(2, 3 * 4)
    gt[0, :8] = torch.tensor([0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4])
    gt[0, 8:] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    gt[1, :8] = 0.5
    gt[1, 8:] = 1.0
    targets = [{"boxes": torch.rand(2, 4), "labels": torch.ones(2, dtype=torch.long), "keypoints": gt}]
    simulator = ClickSimulator(FixedMatcher(), 4)
    preds = {"pred_logits": torch.zeros(1, 3, 2), "pred_boxes": torch.rand(1, 3, 4)}
    matching = simulator.match(preds, targets)
    current = torch.zeros(1, 3, 4, 2)
    current[0, 0] = gt[0, :8].view(4, 2)
    current[0, 0, 1] += 0.3  # biggest error, but unlabelled
    current[0, 0, 3] += 0.1
    current[0, 0, 0] += 0.05
    current[0, 1] = 0.5  # person 2 is already exact: no click
    clicks = simulator.clicks(matching, current)
    assert len(clicks) == 1 and clicks[0].tolist() == pytest.approx([0, 0, 3, 0.4, 0.4])
    current[0, 1, 2, 0] += 0.1
    current[0, 1, 3, 1] -= 0.1  # a tie: the first index wins
    clicks = simulator.clicks(matching, current)
    assert clicks[1].tolist() == pytest.approx([0, 1, 2, 0.5, 0.5])


def test_click_policy_is_swappable():
    gt = torch.zeros(1, 3 * 2)
    gt[0, 4:] = 1.0  # both keypoints labelled, at (0, 0)
    targets = [{"boxes": torch.rand(1, 4), "labels": torch.ones(1, dtype=torch.long), "keypoints": gt}]
    current = torch.tensor([[[[0.3, 0.3], [0.5, 0.0]]]])  # L1 0.6 vs 0.5, L2 0.42 vs 0.5
    preds = {"pred_boxes": torch.rand(1, 1, 4)}
    picked = {}
    for policy in ("worst", "worst_l2", lambda cur, xy, vis: -(cur - xy).abs().sum(-1) + 10):
        simulator = ClickSimulator(FixedMatcher(), 2, policy)
        picked[policy if isinstance(policy, str) else "callable"] = int(
            simulator.clicks(simulator.match(preds, targets), current)[0, 2])
    assert picked == {"worst": 0, "worst_l2": 1, "callable": 1}
    with pytest.raises(ValueError, match="click_policy must be one of"):
        ClickSimulator(FixedMatcher(), 2, "best")
    args = load_args(click_policy="worst_l2")
    assert build_click_simulator(model_settings(args).feedback, FixedMatcher()).error is CLICK_POLICIES["worst_l2"]
    assert build_clickpose(args, layout(args)).click_simulator.error is CLICK_POLICIES["worst_l2"]


def _pinned_xy(rounds, index):
    return [coordinates(layer["pred_keypoints"], K) for layer in rounds[index]["refine_layers"]]


@pytest.mark.parametrize("mode", ["none", "round", "all"])
def test_click_freeze_modes(session, mode):
    model, state, outputs, targets = session
    simulator = ClickSimulator(FixedMatcher(), K)
    with torch.no_grad():
        rounds = model.click_rounds(state, outputs, targets, 3, simulator, click_freeze=mode)
    first = rounds[1]["refine_layers"][0]
    clicks_1 = simulator.clicks(simulator.match(rounds[0], targets), coordinates(rounds[0]["pred_keypoints"], K))
    image, person, joint = clicks_1[:, 0].long(), clicks_1[:, 1].long(), clicks_1[:, 2].long()
    assert len(clicks_1) == 6
    last_round_layers = _pinned_xy(rounds, 3)
    for layers_xy in (_pinned_xy(rounds, 1), last_round_layers):
        moved = (layers_xy[-1][image, person, joint] - clicks_1[:, 3:]).abs().max()
        if mode == "none":
            assert moved > 1e-4  # the reference lets clicked keypoints move in the refinement layers
        elif mode == "all" or layers_xy is not last_round_layers:
            assert moved == 0  # pinned exactly, in every later round too under 'all'
        else:
            assert moved > 1e-4  # 'round' only pins the current round's clicks
    assert first["pred_keypoints"].shape == (2, load_args().num_group_refine, 3 * K)


def test_rounds_chain_refinements_and_match_manual_calls(session):
    model, state, outputs, targets = session
    simulator = ClickSimulator(FixedMatcher(), K)
    with torch.no_grad():
        rounds = model.click_rounds(state, outputs, targets, 2, simulator)
        start = rounds[0]
        matching = simulator.match(start, targets)
        boxes, kpts = start["pred_boxes"], coordinates(start["pred_keypoints"], K)
        first = model.refine(state, boxes, kpts, simulator.clicks(matching, kpts))
        last = first.layers[-1]
        kpts = coordinates(last["pred_keypoints"], K)
        second = model.refine(state, last["pred_boxes"], kpts, simulator.clicks(matching, kpts))
    assert len(rounds) == 3 and "refine_layers" not in rounds[0]
    assert rounds[0]["pred_logits"].shape[1] == load_args().num_group_refine
    for key in ("pred_boxes", "pred_keypoints", "pred_logits"):
        assert torch.equal(rounds[1][key], last[key])
        assert torch.equal(rounds[2][key], second.layers[-1][key])
    # the corrected inputs carry visibility 1 and the initial logits
    assert torch.equal(rounds[2]["corrected"]["pred_logits"], start["pred_logits"])
    assert (rounds[2]["corrected"]["pred_keypoints"][..., 2 * K:] == 1).all()
    with torch.no_grad():
        corrected = model.click_rounds(state, outputs, targets, 2, simulator, only_correction=True)
    assert torch.equal(corrected[2]["pred_keypoints"], rounds[2]["corrected"]["pred_keypoints"])


def test_refinement_of_one_image_does_not_depend_on_the_other(session):
    model, state, outputs, targets = session
    simulator = ClickSimulator(FixedMatcher(), K)
    with torch.no_grad():
        both = model.click_rounds(state, outputs, targets, 1, simulator)
        no_clicks_on_second = [targets[0], {**targets[1], "boxes": targets[1]["boxes"][:0],
                                            "labels": targets[1]["labels"][:0], "keypoints": targets[1]["keypoints"][:0]}]
        fewer = model.click_rounds(state, outputs, no_clicks_on_second, 1, simulator)
    assert torch.equal(both[1]["pred_keypoints"][0], fewer[1]["pred_keypoints"][0])
    assert not torch.equal(both[1]["pred_keypoints"][1], fewer[1]["pred_keypoints"][1])


def test_real_matcher_simulator(session):
    model, state, outputs, targets = session
    with torch.no_grad():
        rounds = model.click_rounds(state, outputs, targets, 1)  # the model's own Hungarian matcher
    clicked = rounds[1]["corrected"]["pred_keypoints"][..., :2 * K] != coordinates(
        rounds[0]["pred_keypoints"], K).flatten(2)
    assert clicked.any(-1).sum() == 6  # one click per ground-truth person (4 + 2)


def test_no_clicks_and_images_without_people(session):
    model, state, outputs, targets = session
    with torch.no_grad():
        start = model.click_rounds(state, outputs, targets, 0)[0]
        kpts = coordinates(start["pred_keypoints"], K)
        result = model.refine(state, start["pred_boxes"], kpts, [torch.zeros(0, 4), torch.zeros(0, 4)])
        empty = [{**t, "boxes": t["boxes"][:0], "labels": t["labels"][:0], "keypoints": t["keypoints"][:0],
                  "area": t["area"][:0]} for t in targets]
        rounds = model.click_rounds(state, outputs, empty, 2)
    assert not result.clicked.any()
    assert torch.equal(result.corrected["pred_boxes"], start["pred_boxes"])
    # without clicks a round is just a refinement pass of the unchanged poses
    assert torch.equal(rounds[1]["corrected"]["pred_boxes"], start["pred_boxes"])
    assert len(rounds) == 3
