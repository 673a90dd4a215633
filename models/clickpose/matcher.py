"""Hungarian matching between predicted people and ground-truth people (one assignment per image).

Cost of assigning query q to target t, computed for the whole batch at once, then solved per image:
- box branch (every predicted keypoint is 0, i.e. box-only decoder layers and the encoder proposals):
  ``5 * L1(cxcywh) + 2 * focal class cost + 2 * (-GIoU)``;
- keypoint branch (any predicted keypoint in the batch is non-zero):
  ``2 * focal class cost + 10 * visible-weighted keypoint L1 + 4 * (1 - OKS)``; box costs do not enter.
The branch is chosen once for the whole batch (``pred_keypoints.sum() > 0``), as in the reference.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from util.settings import MatcherCfg

from .losses import GIOU_EPS, OKS_EPS, keypoint_oks, keypoint_sigmas, split_keypoints, weighted_keypoint_l1

MatchIndices = list[tuple[Tensor, Tensor]]
COST_NAMES = ("class", "bbox", "giou", "keypoints")


def focal_class_cost(prob: Tensor, target_labels: Tensor, alpha: float, gamma: float = 2.0) -> Tensor:
    """(Q, C) class probabilities, (T,) labels -> (Q, T) focal cost: positive-term minus negative-term."""
    as_positive = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    as_negative = (1 - alpha) * prob ** gamma * -(1 - prob + 1e-8).log()
    return as_positive[:, target_labels] - as_negative[:, target_labels]


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of queries to targets (scipy ``linear_sum_assignment``)."""

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 cost_keypoints: float = 10.0, cost_oks: float = 4.0, focal_alpha: float = 0.25,
                 num_keypoints: Optional[int] = None, sigmas: Optional[Sequence[float]] = None):
        """``sigmas``: the OKS sigmas of the keypoint layout (required); K = ``len(sigmas)``, which
        ``num_keypoints`` must equal when given."""
        super().__init__()
        if num_keypoints is None:
            num_keypoints = len(sigmas) if sigmas is not None else 0
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: set_cost_class, set_cost_bbox and set_cost_giou are all 0; "
                             "at least one of them must be non-zero")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.cost_keypoints, self.cost_oks = cost_keypoints, cost_oks
        self.focal_alpha, self.num_keypoints = focal_alpha, num_keypoints
        self.register_buffer("sigmas", keypoint_sigmas(num_keypoints, sigmas), persistent=False)

    def _keypoint_costs(self, pred_kpts: Tensor, tgt_kpts: Tensor, tgt_area: Tensor) -> tuple[Tensor, Tensor]:
        """(Q, 3K) predictions x (T, 3K) targets -> (Q, T) weighted keypoint L1 and (Q, T) 1 - OKS."""
        k = self.num_keypoints
        pred_xy, _ = split_keypoints(pred_kpts, k)
        tgt_xy, tgt_vis = split_keypoints(tgt_kpts, k)
        cost_l1 = weighted_keypoint_l1(pred_xy[:, None], tgt_xy[None], tgt_vis[None]).sum(-1)
        oks = keypoint_oks(pred_xy.reshape(-1, 1, k, 2), tgt_xy.reshape(1, -1, k, 2), tgt_vis[None],
                           tgt_area[None], self.sigmas.to(pred_xy))
        return cost_l1, 1 - oks.clamp(min=OKS_EPS)

    def _box_costs(self, pred_boxes: Tensor, tgt_boxes: Tensor) -> tuple[Tensor, Tensor]:
        """(Q, 4) x (T, 4) cxcywh -> (Q, T) L1 and (Q, T) -GIoU."""
        cost_l1 = torch.cdist(pred_boxes, tgt_boxes, p=1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes), eps=GIOU_EPS)
        return cost_l1, -giou

    @torch.no_grad()
    def cost_matrix(self, outputs: dict[str, Any], targets: Sequence[dict[str, Tensor]]
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total cost (B, N, T_total) of every query against every target of the batch, and the per-term means.

        Rows of image b against the targets of image b form the block that is solved for image b.
        """
        logits = outputs["pred_logits"]
        batch, num_queries = logits.shape[:2]
        if len(targets) != batch:
            raise ValueError(f"HungarianMatcher got {len(targets)} target dicts for a batch of {batch} images")
        tgt_labels = torch.cat([t["labels"] for t in targets])
        if tgt_labels.numel() == 0:  # nothing to match anywhere in the batch (the reference crashes here)
            zero = logits.new_zeros(())
            return logits.new_zeros(batch, num_queries, 0), {name: zero for name in COST_NAMES}
        prob = logits.flatten(0, 1).sigmoid()
        pred_kpts = outputs["pred_keypoints"].flatten(0, 1)
        tgt_kpts = torch.cat([t["keypoints"] for t in targets])

        cost_class = focal_class_cost(prob, tgt_labels, self.focal_alpha)
        pred_xy, _ = split_keypoints(pred_kpts, self.num_keypoints)
        if pred_xy.sum() > 0:  # keypoint branch; box costs are zero there
            tgt_area = torch.cat([t["area"] for t in targets])
            cost_kpt, cost_oks = self._keypoint_costs(pred_kpts, tgt_kpts, tgt_area)
            cost_bbox = cost_giou = torch.zeros_like(cost_kpt)
            total = self.cost_class * cost_class + self.cost_keypoints * cost_kpt + self.cost_oks * cost_oks
        else:
            tgt_boxes = torch.cat([t["boxes"] for t in targets])
            cost_bbox, cost_giou = self._box_costs(outputs["pred_boxes"].flatten(0, 1), tgt_boxes)
            cost_kpt = torch.zeros_like(cost_bbox)
            total = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        means = {"class": cost_class.mean(), "bbox": cost_bbox.mean(), "giou": cost_giou.mean(),
                 "keypoints": cost_kpt.mean()}
        return total.view(batch, num_queries, -1), means

    @torch.no_grad()
    def match_many(self, outputs_list: Sequence[dict[str, Any]], targets: Sequence[dict[str, Tensor]]
                   ) -> list[tuple[MatchIndices, dict[str, Tensor]]]:
        """``forward`` for several output dicts against the same targets, with one host transfer for all of them."""
        costs, means = zip(*(self.cost_matrix(outputs, targets) for outputs in outputs_list))
        sizes = [len(t["labels"]) for t in targets]
        flat = torch.cat([c.reshape(-1) for c in costs]).float().cpu().numpy()
        if not np.isfinite(flat).all():
            raise ValueError("HungarianMatcher: the matching cost has NaN/inf entries: the predictions (pred_logits/"
                             "pred_boxes/pred_keypoints) or the targets (boxes, keypoints, area) are not finite")
        results, start = [], 0
        for cost, cost_means in zip(costs, means):
            block = flat[start:start + cost.numel()].reshape(cost.shape)
            start += cost.numel()
            results.append((self._assign(block, sizes), cost_means))
        return results

    @torch.no_grad()
    def forward(self, outputs: dict[str, Any], targets: Sequence[dict[str, Tensor]]
                ) -> tuple[MatchIndices, dict[str, Tensor]]:
        """outputs: pred_logits (B,N,C), pred_boxes (B,N,4), pred_keypoints (B,N,3K); targets: one dict per image.

        Returns ``[(query_idx int64, target_idx int64) per image]`` and the mean of each cost matrix over the
        whole batch (``class``, ``bbox``, ``giou``, ``keypoints``; logged as ``set_*``).
        """
        return self.match_many([outputs], targets)[0]

    @staticmethod
    def _assign(cost: np.ndarray, sizes: list[int]) -> MatchIndices:
        """(B, N, T_total) cost -> per image, the optimal assignment on its own (N, T_i) block."""
        indices = []
        start = 0
        for image, size in enumerate(sizes):
            rows, cols = linear_sum_assignment(cost[image, :, start:start + size])
            start += size
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices


def build_matcher(cfg: MatcherCfg, sigmas: Sequence[float]) -> HungarianMatcher:
    """The matcher section's Hungarian matcher (costs, ``focal_alpha``, K) with the layout's OKS ``sigmas``."""
    if cfg.matcher_type != "HungarianMatcher":
        raise ValueError(f"unknown matcher_type {cfg.matcher_type!r}; only 'HungarianMatcher' exists")
    return HungarianMatcher(cost_class=cfg.cost_class, cost_bbox=cfg.cost_bbox, cost_giou=cfg.cost_giou,
                            cost_keypoints=cfg.cost_keypoints, cost_oks=cfg.cost_oks, focal_alpha=cfg.focal_alpha,
                            num_keypoints=cfg.num_keypoints, sigmas=sigmas)
