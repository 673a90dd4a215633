"""Loss primitives shared by the matcher and the criterion: sigmoid focal loss, keypoint L1, OKS.

Keypoint tensors use the layout of :mod:`.keypoints` (``[x1, y1, ..., xK, yK, v1, ..., vK]``); K is never assumed.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from util.keypoint_codec import split as split_keypoints  # noqa: F401  (the matcher's import; the codec owns it)

OKS_EPS = 1e-6  # added to the visible count, and the floor of the OKS (reference values)
GIOU_EPS = 1e-6  # added to the IoU and hull denominators (reference value)


def keypoint_sigmas(num_keypoints: int, sigmas: Optional[Sequence[float]] = None) -> Tensor:
    """(K,) float32 OKS sigmas of the keypoint layout (``KeypointMetadata.sigmas``, from the dataset)."""
    if sigmas is None:
        raise ValueError(f"no OKS sigmas given for the {num_keypoints} keypoints: pass the layout's sigmas "
                         "(sigmas=metadata.sigmas, metadata = datasets.get_metadata(args))")
    values = tuple(sigmas)
    if len(values) != num_keypoints:
        raise ValueError(f"keypoint_sigmas has {len(values)} entries but num_body_points is {num_keypoints}; "
                         "give one sigma per keypoint")
    return torch.tensor(values, dtype=torch.float32)


def focal_loss_total(logits: Tensor, onehot: Tensor, normaliser: float, alpha: float, gamma: float = 2.0,
                     quality: Optional[Tensor] = None) -> Tensor:
    """Sum of the element-wise sigmoid focal loss divided by ``normaliser``.

    logits, onehot: (B, N, C). Reduced as mean over N, sum, / normaliser, * N: the same value as sum / normaliser,
    kept in this order so that the result equals the reference bit for bit. ``quality`` (B, N, C) in [0, 1], where
    given, replaces the positives' target 1 (:func:`quality_focal_loss`).
    """
    if quality is None:
        per_element = sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=gamma, reduction="none")
    else:
        per_element = quality_focal_loss(logits, onehot, quality, alpha=alpha, gamma=gamma)
    return per_element.mean(1).sum() / normaliser * logits.shape[1]


def quality_focal_loss(logits: Tensor, onehot: Tensor, quality: Tensor, alpha: float, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss whose positive targets are soft: the positives (``onehot`` = 1) aim at ``quality``.

    BCE(sigmoid(x), t) * |t - sigmoid(x)|^gamma, weighted alpha for positives and 1 - alpha for negatives (t = 0).
    With t in {0, 1} this is exactly the sigmoid focal loss; with soft t its minimum is at sigmoid(x) = t, so a
    score learns how good the matched prediction is (the quality focal loss of Generalized Focal Loss, Li et al.
    2020, with the focal loss's alpha).
    """
    target = onehot * quality.detach().clamp(0, 1)
    prob = logits.sigmoid()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weight = onehot * alpha + (1 - onehot) * (1 - alpha)
    return bce * (target - prob).abs().pow(gamma) * weight


def weighted_keypoint_l1(pred_xy: Tensor, gt_xy: Tensor, visible: Tensor) -> Tensor:
    """Element-wise |pred - gt| of flat coordinates (..., 2K), weighted by the visibility of each keypoint (..., K)."""
    return (pred_xy - gt_xy).abs() * visible.repeat_interleave(2, dim=-1)


def keypoint_oks(pred_xy: Tensor, gt_xy: Tensor, visible: Tensor, area: Tensor, sigmas: Tensor) -> Tensor:
    """Object keypoint similarity, broadcasting over leading dims.

    pred_xy, gt_xy: (..., K, 2); visible: (..., K) weights; area: (...) normalised target area; sigmas: (K,).
    Returns (...): sum_k v_k exp(-d_k^2 / (2 area (2 sigma_k)^2)) / (sum_k v_k + 1e-6), not clamped.
    """
    variances = (sigmas * 2) ** 2
    diff = pred_xy - gt_xy
    squared = diff[..., 0] ** 2 + diff[..., 1] ** 2
    similarity = torch.exp(-(squared / (area[..., None] * variances * 2))) * visible
    return similarity.sum(-1) / (visible.sum(-1) + OKS_EPS)
