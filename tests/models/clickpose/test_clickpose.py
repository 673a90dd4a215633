"""The tiny-config model end to end on CPU: eval without targets, training outputs and backward, 14 and 17
keypoints, the bad-input errors."""
from __future__ import annotations

import math

import pytest
import torch

from models.clickpose.build import build_clickpose, build_postprocessors

from tests.helpers import layout, load_args, make_images, make_targets


def _build(args):
    return build_clickpose(args, layout(args))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return _build(load_args(human_feedback=True))


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(11)
    return make_images([(256, 320), (224, 288)], gen), make_targets([3, 1], 17, gen)


def test_eval_needs_no_targets_and_returns_the_top_groups(tiny, batch):
    images, _ = batch
    tiny.eval()
    with torch.no_grad():
        out, state = tiny(images, return_state=True)
    args = load_args()
    assert set(out) == {"pred_logits", "pred_boxes", "pred_keypoints"}
    assert out["pred_logits"].shape == (2, args.num_group, 2)
    assert out["pred_boxes"].shape == (2, args.num_group, 4)
    assert out["pred_keypoints"].shape == (2, args.num_group, 3 * 17)
    assert torch.allclose(out["pred_keypoints"][..., 34:], torch.tensor(1 / (1 + math.exp(-1))))
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert state.memory.shape[0] == 2 and state.memory.shape[1] == 32 * 40 + 16 * 20 + 8 * 10 + 4 * 5
    # the images are independent: the second one alone gives the same predictions
    with torch.no_grad():
        alone = tiny(make_images([(224, 288)], torch.Generator()).__class__(images.tensors[1:], images.mask[1:]))
    torch.testing.assert_close(alone["pred_keypoints"], out["pred_keypoints"][1:], atol=1e-5, rtol=1e-4)


def test_training_outputs_and_backward(tiny, batch):
    images, targets = batch
    tiny.train()
    out = tiny(images, targets)
    args = load_args()
    d, k = args.dn_number, 17
    assert out["num_tgt"] == d
    assert out["dn_class_input"].shape == (2, d) and out["dn_bbox_input"].shape == (2, d, 4)
    assert out["dn_pose_input"].shape == (2, d, 3 * k) and out["dn_pose_pred"].shape == (2, d, 3 * k)
    assert out["interm_outputs"]["pred_boxes"].shape == (2, args.num_queries, 4)
    aux = out["aux_outputs"]
    # box layers, keypoint layers but the last, then the refinement layers of the last click round
    assert [a["pred_logits"].shape[1] for a in aux] == [args.num_queries] * 2 + [args.num_group_refine]
    assert all("dn_class_pred" in a for a in aux[:2]) and "dn_class_pred" not in aux[2]
    loss = sum(o["pred_boxes"].sum() + o["pred_keypoints"][..., :34].sum() + o["pred_logits"].sigmoid().sum()
               for o in [out, out["interm_outputs"]] + aux) + out["dn_bbox_pred"].sum()
    tiny.zero_grad()
    loss.backward()
    grads = {n: p.grad for n, p in tiny.named_parameters() if p.requires_grad}
    # pose_hw_embed never gets a gradient (the reference's keypoint-size updates reach no loss, spec 0.3)
    assert {n for n, g in grads.items() if g is None} == {n for n in grads if "pose_hw_embed" in n}
    assert grads["backbone.0.body.layer4.0.conv1.weight"].abs().sum() > 0
    assert grads["transformer.decoder.keypoint_embed.weight"].abs().sum() > 0
    frozen = dict(tiny.named_parameters())["backbone.0.body.layer1.0.conv1.weight"]
    assert not frozen.requires_grad and frozen.grad is None


def test_training_without_human_feedback_gives_only_the_decoder_layers(batch):
    images, targets = batch
    model = _build(load_args(human_feedback=False)).train()
    out = model(images, targets)
    assert len(out["aux_outputs"]) == load_args().dec_layers - 1


def test_training_click_loop_with_more_people_than_refined_predictions(tiny):
    gen = torch.Generator().manual_seed(3)
    images = make_images([(256, 320)], gen)
    targets = make_targets([load_args().num_group_refine + 5], 17, gen)  # the reference crashes here
    tiny.train()
    tiny.draw_training_click_rounds = lambda: 2
    try:
        out = tiny(images, targets)
    finally:
        del tiny.draw_training_click_rounds
    assert out["aux_outputs"][-1]["pred_keypoints"].shape[1] == load_args().num_group_refine


def test_crowdpose_14_keypoints_builds_and_runs():
    gen = torch.Generator().manual_seed(4)
    model = _build(load_args(num_body_points=14, human_feedback=True))
    assert model.state_dict()["transformer.decoder.hw.weight"].shape == (14, 2)
    assert model.state_dict()["label_enc_pose.weight"].shape == (15, 64)
    images, targets = make_images([(256, 320)], gen), make_targets([2], 14, gen)
    model.train()
    out = model(images, targets)
    assert out["pred_keypoints"].shape[-1] == 42 and out["aux_outputs"][-1]["pred_keypoints"].shape[-1] == 42
    model.eval()
    with torch.no_grad():
        out, state = model(images, return_state=True)
        rounds = model.click_rounds(state, out, targets, 2)
    assert rounds[2]["pred_keypoints"].shape == (1, load_args().num_group_refine, 42)


def test_too_small_images_are_a_clear_error(tiny):
    tiny.eval()
    with pytest.raises(ValueError, match="encoder has .* tokens but num_queries"):
        with torch.no_grad():
            tiny(make_images([(64, 64)], torch.Generator()))


def test_training_without_targets_is_a_clear_error(tiny, batch):
    tiny.train()
    with pytest.raises(ValueError, match="needs targets in training"):
        tiny(batch[0])


def test_postprocess_matches_a_direct_computation():
    gen = torch.Generator().manual_seed(9)
    k, q = 17, 6
    outputs = {"pred_logits": torch.randn(2, q, 2, generator=gen), "pred_boxes": torch.rand(2, q, 4, generator=gen),
               "pred_keypoints": torch.rand(2, q, 3 * k, generator=gen)}
    sizes = torch.tensor([[480, 640], [200, 100]])
    postprocessors = build_postprocessors(load_args(num_select=5))
    post = postprocessors["pose"]
    assert postprocessors["bbox"] is post  # the reference's key, kept as an alias
    results = post(outputs, sizes)
    for image, result in enumerate(results):
        h, w = sizes[image].tolist()
        scored = sorted(((outputs["pred_logits"][image, i, c].sigmoid().item(), i, c)
                         for i in range(q) for c in range(2)), reverse=True)[:5]
        for rank, (score, query, label) in enumerate(scored):
            assert result["scores"][rank].item() == pytest.approx(score)
            assert result["labels"][rank].item() == label
            cx, cy, bw, bh = outputs["pred_boxes"][image, query].tolist()
            expected_box = torch.tensor([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
            torch.testing.assert_close(result["boxes"][rank], expected_box)
            kp = outputs["pred_keypoints"][image, query]
            expected = torch.stack((kp[0:2 * k:2] * w, kp[1:2 * k:2] * h, kp[2 * k:]), -1).flatten()
            torch.testing.assert_close(result["keypoints"][rank], expected)


def test_postprocess_nms_drops_overlapping_boxes_of_the_same_class():
    """nms_iou_threshold > 0: per image and class, a box overlapping a better-scored one by more than the threshold
    goes, with its keypoints; the rest keep their score order. -1 keeps everything."""
    k = 17
    boxes = torch.tensor([[[0.30, 0.50, 0.20, 0.40], [0.31, 0.50, 0.20, 0.40], [0.70, 0.50, 0.20, 0.40]]])
    logits = torch.tensor([[[-9.0, 2.0], [-9.0, 1.0], [-9.0, 0.0]]])  # scores: 0.88, 0.73, 0.5 (label 1)
    keypoints = torch.arange(3 * 3 * k, dtype=torch.float32).reshape(1, 3, 3 * k) / (9 * k)
    outputs = {"pred_logits": logits, "pred_boxes": boxes, "pred_keypoints": keypoints}
    sizes = torch.tensor([[100, 200]])
    full = build_postprocessors(load_args(num_select=3))["pose"](outputs, sizes)[0]
    kept = build_postprocessors(load_args(num_select=3, nms_iou_threshold=0.5))["pose"](outputs, sizes)[0]
    assert full["scores"].shape == (3,)
    torch.testing.assert_close(kept["scores"], full["scores"][[0, 2]])
    torch.testing.assert_close(kept["keypoints"], full["keypoints"][[0, 2]])
    torch.testing.assert_close(kept["boxes"], full["boxes"][[0, 2]])
    loose = build_postprocessors(load_args(num_select=3, nms_iou_threshold=0.99))["pose"](outputs, sizes)[0]
    assert loose["scores"].shape == (3,)
