"""Box conversions and (generalised) IoU, all on ``(..., 4)`` tensors."""
from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    half_w, half_h = 0.5 * w, 0.5 * h
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(x0, y0, x1, y1) -> (cx, cy, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """All-pairs IoU of xyxy boxes (N,4) x (M,4) -> ((N,M) iou, (N,M) union); ``eps`` is added to the union."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter_wh = (bottom_right - top_left).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / (union + eps), union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 0.0) -> Tensor:
    """All-pairs generalised IoU (Rezatofighi et al. 2019) of xyxy boxes -> (N, M).

    ``eps`` is added to both denominators; the matcher and the losses use 1e-6, as the reference does.
    """
    iou, union = box_iou(boxes1, boxes2, eps)
    hull_tl = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    hull_br = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    hull_wh = (hull_br - hull_tl).clamp(min=0)
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return iou - (hull - union) / (hull + eps)


def generalized_box_iou_pairwise(boxes1: Tensor, boxes2: Tensor, eps: float = 0.0) -> Tensor:
    """Generalised IoU of matching rows of two (N,4) xyxy box sets -> (N,); ``eps`` as in generalized_box_iou."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    inter_wh = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    union = area1 + area2 - inter
    hull_wh = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    hull = hull_wh[:, 0] * hull_wh[:, 1]
    return inter / (union + eps) - (hull - union) / (hull + eps)
