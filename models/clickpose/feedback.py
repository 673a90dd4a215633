"""The interactive feedback loop as data: clicks, the oracle that simulates a user, and the round loop.

A click is ``(prediction index, keypoint index, x, y)`` with x, y normalised to [0, 1]. A person in a UI and the
ground-truth oracle (:class:`ClickSimulator`) produce the same thing. The refinement itself is a method of the
model (:meth:`models.clickpose.clickpose.ClickPose.refine`); training, k-click and NoC evaluation drive it through
:func:`run_click_rounds`, which only needs a ``refine_fn`` (this module never imports the model).

``click_freeze`` decides whether clicked keypoints may still move inside the refinement layers: 'none' (the
reference, whose freeze mask is a no-op), 'round' (this call's clicks are pinned) or 'all' (earlier ones too).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence, Union

import torch
from torch import Tensor, nn

from util.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from util.settings import FeedbackCfg

from util import keypoint_codec as kp

CLICK_FREEZE_MODES = ("none", "round", "all")
Clicks = Union[Tensor, Sequence[Tensor]]


def check_click_freeze(mode: str) -> str:
    if mode not in CLICK_FREEZE_MODES:
        raise ValueError(f"click_freeze must be one of {CLICK_FREEZE_MODES}, got {mode!r}")
    return mode


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


def pinned_keypoints(clicked: Tensor, click_freeze: str, pinned: Optional[Tensor] = None) -> Tensor:
    """(B, R, K) keypoints held fixed in the refinement layers: none, this call's clicks, or these and ``pinned``."""
    check_click_freeze(click_freeze)
    if click_freeze == "none":
        return torch.zeros_like(clicked)
    if click_freeze == "all" and pinned is not None:
        return clicked | pinned
    return clicked


@dataclass
class Refinement:
    """Result of one refinement (:meth:`ClickPose.refine`).

    layers: per refinement layer, {'pred_logits' (B,R,C), 'pred_boxes' (B,R,4), 'pred_keypoints' (B,R,3K)};
    corrected: the decoder's inputs after the clicks, in the same layout (visibility 1.0, logits as given);
    clicked: (B, R, K) this call's clicks; pinned: (B, R, K) keypoints held fixed in the layers;
    keypoint_hidden: (B, R, K, C) the last layer's normed keypoint-query outputs (what a keypoint-quality head reads).
    """

    layers: list[dict[str, Tensor]]
    corrected: dict[str, Tensor]
    clicked: Tensor
    pinned: Tensor
    keypoint_hidden: Optional[Tensor] = None


class RefineFn(Protocol):
    """One refinement on fixed images: (boxes (B,R,4), keypoints (B,R,K,2), clicks, pinned, logits) -> result."""

    def __call__(self, boxes: Tensor, keypoints: Tensor, clicks: Clicks, pinned: Optional[Tensor],
                 logits: Optional[Tensor]) -> Refinement: ...


def select_top(outputs: dict[str, Tensor], num: int) -> dict[str, Tensor]:
    """The ``num`` predictions with the highest max-class logit, best first (gathered, gradient kept)."""
    chosen = torch.topk(outputs["pred_logits"].max(-1)[0], num, dim=1)[1]
    picked = {}
    for key in ("pred_logits", "pred_boxes", "pred_keypoints"):
        value = outputs[key]
        picked[key] = torch.gather(value, 1, chosen[..., None].expand(-1, -1, value.shape[-1]))
    return picked


# ---- the oracle ------------------------------------------------------------------------------------------
ErrorMeasure = Callable[[Tensor, Tensor, Tensor], Tensor]  # (current, gt (M,K,2), visible (M,K)) -> (M,K)


def l1_error(current: Tensor, gt_xy: Tensor, gt_visible: Tensor) -> Tensor:
    """Visibility-weighted |dx| + |dy| (the reference's choice of the keypoint to click)."""
    return ((current - gt_xy).abs() * gt_visible[..., None]).sum(-1)


def l2_error(current: Tensor, gt_xy: Tensor, gt_visible: Tensor) -> Tensor:
    """Visibility-weighted Euclidean distance (a user who fixes the visibly farthest keypoint first)."""
    return (current - gt_xy).norm(dim=-1) * gt_visible


CLICK_POLICIES: dict[str, ErrorMeasure] = {"worst": l1_error, "worst_l2": l2_error}


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
    ``matcher(outputs, targets) -> (indices, costs)``); each round, for every matched pair, the keypoint with the
    largest error under ``policy`` is clicked at its GT position (first index on ties). ``policy`` is a name of
    :data:`CLICK_POLICIES` ('worst' = visible-weighted |dx| + |dy|, the reference) or a callable
    ``(current (M,K,2), gt_xy (M,K,2), gt_visible (M,K)) -> (M,K) error``. People whose error is zero everywhere
    get no click. Unmatched predictions never get clicks.
    """

    def __init__(self, matcher: nn.Module, num_keypoints: int, policy: Union[str, ErrorMeasure] = "worst"):
        if isinstance(policy, str) and policy not in CLICK_POLICIES:
            raise ValueError(f"click_policy must be one of {sorted(CLICK_POLICIES)} or a callable, got {policy!r}")
        self.matcher = matcher
        self.num_keypoints = num_keypoints
        self.error = CLICK_POLICIES[policy] if isinstance(policy, str) else policy

    def match(self, predictions: dict[str, Tensor], targets: Sequence[dict[str, Tensor]]) -> Matching:
        indices = self.matcher(predictions, targets)[0]
        device = predictions["pred_boxes"].device
        images, preds, gt_xy, gt_vis = [], [], [], []
        for image, ((pred_idx, gt_idx), target) in enumerate(zip(indices, targets)):
            gt_idx = gt_idx.to(device)
            images.append(torch.full_like(gt_idx, image))
            preds.append(pred_idx.to(device))
            gt = target["keypoints"].to(device)[gt_idx]
            gt_xy.append(kp.coordinates(gt, self.num_keypoints))
            gt_vis.append(kp.visibility(gt, self.num_keypoints))
        return Matching(torch.cat(images), torch.cat(preds), torch.cat(gt_xy), torch.cat(gt_vis))

    def clicks(self, matching: Matching, keypoints: Tensor) -> Tensor:
        """(B, R, K, 2) current keypoints -> (M', 5) clicks ``[image, prediction, keypoint, x, y]``."""
        current = keypoints.detach()[matching.image, matching.prediction]
        worst_error, worst = self.error(current, matching.gt_xy, matching.gt_visible).max(-1)
        keep = worst_error > 0
        rows = torch.arange(len(worst), device=worst.device)
        xy = matching.gt_xy[rows, worst]
        clicks = torch.cat((matching.image[:, None].float(), matching.prediction[:, None].float(),
                            worst[:, None].float(), xy), 1)
        return clicks[keep]


def build_click_simulator(cfg: FeedbackCfg, matcher: nn.Module) -> ClickSimulator:
    """The oracle of the feedback section's ``click_policy`` around the shared matcher."""
    return ClickSimulator(matcher, cfg.num_keypoints, cfg.click_policy)


def run_click_rounds(refine_fn: RefineFn, initial_outputs: dict[str, Tensor], targets: Sequence[dict[str, Tensor]],
                     num_rounds: int, simulator: ClickSimulator, num_refine: int, only_correction: bool = False
                     ) -> list[dict]:
    """Simulated interactive session: round 0 = the top ``num_refine`` predictions, round r = after r clicks
    per matched person.

    Each round's dict holds 'pred_logits', 'pred_boxes', 'pred_keypoints' (the refined last layer, or with
    ``only_correction`` the corrected inputs as the reference reports them), and for rounds >= 1
    'refine_layers' (every refinement layer's outputs) and 'corrected'. Each round starts from the previous
    round's refined last layer; the initial logits are kept for the corrected inputs.
    """
    current = select_top(initial_outputs, num_refine)
    matching = simulator.match(current, targets)
    rounds: list[dict] = [dict(current)]
    logits = current["pred_logits"]
    boxes = current["pred_boxes"]
    keypoints = kp.coordinates(current["pred_keypoints"], simulator.num_keypoints)
    pinned = None
    for _ in range(num_rounds):
        clicks = simulator.clicks(matching, keypoints)
        result = refine_fn(boxes, keypoints, clicks, pinned, logits)
        last = result.layers[-1]
        shown = result.corrected if only_correction else last
        rounds.append({**shown, "refine_layers": result.layers, "corrected": result.corrected})
        boxes = last["pred_boxes"]
        keypoints = kp.coordinates(last["pred_keypoints"], simulator.num_keypoints)
        pinned = result.pinned
    return rounds
