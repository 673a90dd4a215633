"""The interactive feedback loop: ONE refinement routine and the oracle that simulates a user's clicks.

A click is data: ``(prediction index, keypoint index, x, y)`` with x, y normalised to [0, 1]. A person in a UI
and the ground-truth oracle (:class:`ClickSimulator`) produce the same thing, and training, k-click
evaluation and NoC evaluation all go through :func:`run_click_rounds` -> :func:`refine`.

What a refinement does (the reference's recipe):
1. each click moves its keypoint to (x, y); each clicked person's box grows to contain all its K keypoints;
2. the box+keypoint decoder layers run on R groups of [box, K keypoints] queries: box content
   ``label_enc(1)``, keypoint contents ``label_enc_pose(1..K)``, references = the corrected boxes and
   keypoints (keypoint size = box size * sigmoid(hw));
3. each layer predicts boxes, logits and keypoints for the R people.
``click_freeze`` decides whether clicked keypoints may still move inside the layers: 'none' (the reference,
whose freeze mask is a no-op), 'round' (this call's clicks are pinned) or 'all' (``pinned`` ones too).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from util.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from util.misc import inverse_sigmoid

from .encoder import EncoderState
from .queries import interleave_groups

if TYPE_CHECKING:
    from .clickpose import ClickPose

CLICK_FREEZE_MODES = ("none", "round", "all")
Clicks = Union[Tensor, Sequence[Tensor]]


def flatten_clicks(clicks: Clicks, batch: int, device: torch.device) -> Tensor:
    """Clicks as one (N, 5) float tensor ``[image, prediction, keypoint, x, y]``.

    Accepts that form, or one (n_i, 4) ``[prediction, keypoint, x, y]`` tensor per image.
    """
    if isinstance(clicks, Tensor):
        if clicks.ndim != 2 or clicks.shape[1] != 5:
            raise ValueError(f"clicks as one tensor must be (N, 5) [image, prediction, keypoint, x, y], "
                             f"got {tuple(clicks.shape)}")
        return clicks.to(device)
    if len(clicks) != batch:
        raise ValueError(f"got clicks for {len(clicks)} images, the batch has {batch}")
    rows = []
    for image, per_image in enumerate(clicks):
        per_image = torch.as_tensor(per_image, dtype=torch.float32, device=device).reshape(-1, 4)
        rows.append(torch.cat((per_image.new_full((len(per_image), 1), image), per_image), 1))
    return torch.cat(rows) if rows else torch.zeros(0, 5, device=device)


def apply_clicks(boxes: Tensor, keypoints: Tensor, clicks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Move clicked keypoints and grow the clicked people's boxes to contain all their keypoints.

    boxes: (B, R, 4) cxcywh; keypoints: (B, R, K, 2); clicks: (N, 5) as :func:`flatten_clicks`.
    Returns corrected boxes, corrected keypoints and the (B, R, K) bool mask of clicked keypoints.
    The keypoint extent enters the box without gradient (as the reference, which rebuilds it as a constant).
    """
    image, person, joint = clicks[:, 0].long(), clicks[:, 1].long(), clicks[:, 2].long()
    for name, index, size in (("image", image, boxes.shape[0]), ("prediction", person, boxes.shape[1]),
                              ("keypoint", joint, keypoints.shape[2])):
        if index.numel() and (index.min() < 0 or index.max() >= size):
            raise ValueError(f"a click has a {name} index outside [0, {size}); clicks are "
                             "[image, prediction, keypoint, x, y] with x, y in [0, 1]")
    keypoints = keypoints.index_put((image, person, joint), clicks[:, 3:5].to(keypoints.dtype))
    clicked = torch.zeros(keypoints.shape[:3], dtype=torch.bool, device=keypoints.device)
    clicked = clicked.index_put((image, person, joint), torch.ones_like(image, dtype=torch.bool))
    extent = keypoints.detach()
    corners = box_cxcywh_to_xyxy(boxes)
    grown = torch.cat((torch.minimum(corners[..., :2], extent.amin(2)), torch.maximum(corners[..., 2:], extent.amax(2))), -1)
    boxes = torch.where(clicked.any(-1, keepdim=True), box_xyxy_to_cxcywh(grown), boxes)
    return boxes, keypoints, clicked


@dataclass
class Refinement:
    """Result of one :func:`refine` call.

    layers: per refinement layer, {'pred_logits' (B,R,C), 'pred_boxes' (B,R,4), 'pred_keypoints' (B,R,3K)};
    corrected: the decoder's inputs after the clicks, in the same layout (visibility 1.0, logits as given);
    clicked: (B, R, K) this call's clicks; pinned: (B, R, K) keypoints held fixed in the layers.
    """

    layers: list[dict[str, Tensor]]
    corrected: dict[str, Tensor]
    clicked: Tensor
    pinned: Tensor


def refine(model: "ClickPose", state: EncoderState, boxes: Tensor, keypoints: Tensor, clicks: Clicks,
           click_freeze: str = "none", pinned: Optional[Tensor] = None, logits: Optional[Tensor] = None
           ) -> Refinement:
    """Apply ``clicks`` to the poses and run the box+keypoint decoder layers on them (see the module doc).

    state: the cached encoder state of the images; boxes: (B, R, 4) cxcywh in [0, 1]; keypoints: (B, R, K, 2);
    clicks: see :func:`flatten_clicks`; pinned: (B, R, K) earlier clicks, used when click_freeze == 'all';
    logits: (B, R, C) carried into ``corrected`` (zeros when None).
    """
    if click_freeze not in CLICK_FREEZE_MODES:
        raise ValueError(f"click_freeze must be one of {CLICK_FREEZE_MODES}, got {click_freeze!r}")
    decoder = model.transformer.decoder
    batch, num_people, num_keypoints, _ = keypoints.shape
    if num_keypoints != decoder.num_keypoints:
        raise ValueError(f"poses have {num_keypoints} keypoints, the model {decoder.num_keypoints}")
    flat = flatten_clicks(clicks, batch, keypoints.device)
    boxes, keypoints, clicked = apply_clicks(boxes, keypoints, flat)
    pin_mask = clicked if click_freeze != "none" else torch.zeros_like(clicked)
    if click_freeze == "all" and pinned is not None:
        pin_mask = pin_mask | pinned
    pin = (pin_mask, keypoints) if click_freeze != "none" else None

    box_refs = inverse_sigmoid(boxes).sigmoid()  # the reference passes boxes through logit space first
    kpt_refs = decoder.keypoint_references(box_refs, keypoints)
    device = keypoints.device
    box_content = model.label_enc(torch.ones(batch, num_people, dtype=torch.long, device=device))
    kpt_types = torch.arange(1, num_keypoints + 1, device=device).expand(batch, num_people, -1)
    tgt = interleave_groups(box_content, model.label_enc_pose(kpt_types))
    refs = interleave_groups(box_refs, kpt_refs)
    hs, new_refs = decoder.run_keypoint_layers(tgt, refs, state, attn_mask=None, pin=pin)
    layers = []
    for offset, (layer_hs, layer_refs) in enumerate(zip(hs, [refs] + new_refs)):
        layer_logits, layer_boxes, layer_kpts = decoder.predict_groups(decoder.num_box_layers + offset, layer_hs,
                                                                       layer_refs, pin)
        layers.append({"pred_logits": layer_logits, "pred_boxes": layer_boxes, "pred_keypoints": layer_kpts})
    if logits is None:
        logits = layers[-1]["pred_logits"].new_zeros(layers[-1]["pred_logits"].shape)
    corrected = {"pred_logits": logits, "pred_boxes": boxes,
                 "pred_keypoints": torch.cat((keypoints.flatten(2), keypoints.new_ones(keypoints.shape[:3])), -1)}
    return Refinement(layers, corrected, clicked, pin_mask)


def select_top(outputs: dict[str, Tensor], num: int) -> dict[str, Tensor]:
    """The ``num`` predictions with the highest max-class logit, best first (gathered, gradient kept)."""
    chosen = torch.topk(outputs["pred_logits"].max(-1)[0], num, dim=1)[1]
    picked = {}
    for key in ("pred_logits", "pred_boxes", "pred_keypoints"):
        value = outputs[key]
        picked[key] = torch.gather(value, 1, chosen[..., None].expand(-1, -1, value.shape[-1]))
    return picked


def keypoint_xy(pred_keypoints: Tensor, num_keypoints: int) -> Tensor:
    """(B, R, 3K) ``[x1, y1, ..., v1..vK]`` -> (B, R, K, 2)."""
    return pred_keypoints[..., :2 * num_keypoints].unflatten(-1, (num_keypoints, 2))


@dataclass
class Matching:
    """Prediction-to-person assignment (flattened over the batch): image (M,), prediction (M,),
    ground-truth keypoints (M, K, 2) and their visibility (M, K)."""

    image: Tensor
    prediction: Tensor
    gt_xy: Tensor
    gt_visible: Tensor


class ClickSimulator:
    """The oracle user: one click per matched person per round, on its worst labelled keypoint.

    The predictions are matched to the ground truth ONCE (Hungarian ``matcher``, called as
    ``matcher(outputs, targets) -> (indices, costs)``); each round, for every matched pair, the keypoint with
    the largest visible-weighted |dx| + |dy| is clicked at its GT position (first index on ties). People whose
    labelled keypoints are all exact get no click. Unmatched predictions never get clicks.
    """

    def __init__(self, matcher: nn.Module, num_keypoints: int):
        self.matcher = matcher
        self.num_keypoints = num_keypoints

    def match(self, predictions: dict[str, Tensor], targets: Sequence[dict[str, Tensor]]) -> Matching:
        indices = self.matcher(predictions, targets)[0]
        device = predictions["pred_boxes"].device
        k = self.num_keypoints
        images, preds, gt_xy, gt_vis = [], [], [], []
        for image, ((pred_idx, gt_idx), target) in enumerate(zip(indices, targets)):
            gt_idx = gt_idx.to(device)
            images.append(torch.full_like(gt_idx, image))
            preds.append(pred_idx.to(device))
            gt = target["keypoints"].to(device)[gt_idx]
            gt_xy.append(gt[:, :2 * k].reshape(-1, k, 2))
            gt_vis.append(gt[:, 2 * k:])
        return Matching(torch.cat(images), torch.cat(preds), torch.cat(gt_xy), torch.cat(gt_vis))

    def clicks(self, matching: Matching, keypoints: Tensor) -> Tensor:
        """(B, R, K, 2) current keypoints -> (M', 5) clicks ``[image, prediction, keypoint, x, y]``."""
        current = keypoints.detach()[matching.image, matching.prediction]
        error = ((current - matching.gt_xy).abs() * matching.gt_visible[..., None]).sum(-1)
        worst_error, worst = error.max(-1)
        keep = worst_error > 0
        rows = torch.arange(len(worst), device=worst.device)
        xy = matching.gt_xy[rows, worst]
        clicks = torch.cat((matching.image[:, None].float(), matching.prediction[:, None].float(),
                            worst[:, None].float(), xy), 1)
        return clicks[keep]


def run_click_rounds(model: "ClickPose", state: EncoderState, initial_outputs: dict[str, Tensor],
                     targets: Sequence[dict[str, Tensor]], num_rounds: int, simulator: ClickSimulator,
                     click_freeze: str = "none", only_correction: bool = False,
                     num_refine: Optional[int] = None) -> list[dict]:
    """Simulated interactive session: round 0 = the top ``num_refine`` predictions, round r = after r clicks
    per matched person.

    Each round's dict holds 'pred_logits', 'pred_boxes', 'pred_keypoints' (the refined last layer, or with
    ``only_correction`` the corrected inputs as the reference reports them), and for rounds >= 1
    'refine_layers' (every refinement layer's outputs) and 'corrected'. Each round starts from the previous
    round's refined last layer; the initial logits are kept for the corrected inputs.
    """
    num_refine = num_refine if num_refine is not None else model.num_group_refine
    current = select_top(initial_outputs, num_refine)
    matching = simulator.match(current, targets)
    rounds: list[dict] = [dict(current)]
    logits = current["pred_logits"]
    boxes = current["pred_boxes"]
    keypoints = keypoint_xy(current["pred_keypoints"], simulator.num_keypoints)
    pinned = None
    for _ in range(num_rounds):
        clicks = simulator.clicks(matching, keypoints)
        result = refine(model, state, boxes, keypoints, clicks, click_freeze, pinned, logits)
        last = result.layers[-1]
        shown = result.corrected if only_correction else last
        rounds.append({**shown, "refine_layers": result.layers, "corrected": result.corrected})
        boxes = last["pred_boxes"]
        keypoints = keypoint_xy(last["pred_keypoints"], simulator.num_keypoints)
        pinned = result.pinned
    return rounds
