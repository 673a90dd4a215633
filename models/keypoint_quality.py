"""An optional head that says, per keypoint, how likely the model's estimate is wrong and whether the keypoint is
visible: what the annotation tools show so that a person looks at the doubtful keypoints first.

The detector's own visibility slot is a constant (as in the original) and the agreement of its last two refinement
layers is not an error signal, so this small head reads the last refinement layer's keypoint-query outputs (plus that
agreement) and predicts

- ``error_logit`` (..., K): the logit of "more than ``tolerance`` x the person's box diagonal from the truth";
- ``visibility_logits`` (..., K, 3): COCO's flags 0 (not labelled), 1 (occluded), 2 (visible).

It is trained on a frozen detector (``tools/train_quality.py``) and stored in a checkpoint under its own top-level
key :data:`CHECKPOINT_KEY`, beside ``model``: the detector's weights and keys are untouched, so the original's
checkpoints load ``strict=True`` as before, and a checkpoint without the key simply has no head.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

CHECKPOINT_KEY = "keypoint_quality"
FORMAT_VERSION = 1


class KeypointQualityHead(nn.Module):
    """hidden (..., K, C) and agreement (..., K) in [0, 1] -> {'error_logit' (..., K), 'visibility_logits' (..., K, 3)}.

    A keypoint-type embedding is added to the projected input, so one small MLP serves every keypoint.
    """

    def __init__(self, hidden_dim: int, num_keypoints: int, width: int = 64, tolerance: float = 0.05):
        super().__init__()
        self.hidden_dim, self.num_keypoints, self.width, self.tolerance = hidden_dim, num_keypoints, width, tolerance
        self.project = nn.Linear(hidden_dim + 1, width)
        self.keypoint_type = nn.Embedding(num_keypoints, width)
        self.body = nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.error = nn.Linear(width, 1)
        self.visibility = nn.Linear(width, 3)

    def forward(self, hidden: Tensor, agreement: Tensor) -> dict[str, Tensor]:
        if hidden.shape[-2:] != (self.num_keypoints, self.hidden_dim):
            raise ValueError(f"the quality head reads (..., {self.num_keypoints}, {self.hidden_dim}) keypoint "
                             f"features, got {tuple(hidden.shape)}")
        # log-agreement: the layers' disagreement in OKS units, which is what varies (agreement sits near 1)
        log_agreement = agreement.clamp(min=1e-6).log().clamp(min=-20.0)[..., None].to(hidden.dtype)
        x = self.project(torch.cat((hidden, log_agreement), -1))
        x = self.body(x + self.keypoint_type.weight.to(x.dtype))
        return {"error_logit": self.error(x)[..., 0], "visibility_logits": self.visibility(x)}

    @torch.no_grad()
    def confidence_and_visibility(self, hidden: Tensor, agreement: Tensor) -> tuple[Tensor, Tensor]:
        """(..., K) confidence = 1 - P(off) in [0, 1], and (..., K) predicted COCO visibility (long)."""
        out = self(hidden.float(), agreement.float())
        return torch.sigmoid(-out["error_logit"]), out["visibility_logits"].argmax(-1)


def quality_to_checkpoint(head: KeypointQualityHead, report: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The checkpoint entry for ``head`` (tensors and plain values only: it loads with ``weights_only=True``)."""
    return {"format": FORMAT_VERSION, "hidden_dim": head.hidden_dim, "num_keypoints": head.num_keypoints,
            "width": head.width, "tolerance": head.tolerance,
            "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()}, "report": dict(report or {})}


def quality_from_checkpoint(entry: Mapping[str, Any], hidden_dim: int, num_keypoints: int,
                            source: str = "the checkpoint") -> KeypointQualityHead:
    """The head stored in ``entry``, checked against the detector it is to serve."""
    if not isinstance(entry, Mapping) or entry.get("format") != FORMAT_VERSION or "state_dict" not in entry:
        raise ValueError(f"{source}: its '{CHECKPOINT_KEY}' entry is not a keypoint-quality head of format "
                         f"{FORMAT_VERSION}; retrain it with tools/train_quality.py or delete the entry")
    if (entry["hidden_dim"], entry["num_keypoints"]) != (hidden_dim, num_keypoints):
        raise ValueError(f"{source}: its keypoint-quality head was trained for {entry['num_keypoints']} keypoints "
                         f"and {entry['hidden_dim']} channels, the model has {num_keypoints} and {hidden_dim}; "
                         "retrain it with tools/train_quality.py on this model")
    head = KeypointQualityHead(hidden_dim, num_keypoints, int(entry["width"]), float(entry["tolerance"]))
    head.load_state_dict(entry["state_dict"], strict=True)
    return head.eval()


def keypoint_off(predicted: Tensor, truth: Tensor, gt_boxes: Tensor, tolerance: float) -> Tensor:
    """(..., K) bool: predicted keypoints farther than ``tolerance`` x the truth's box diagonal from the truth.
    predicted, truth: (..., K, 2) pixels; gt_boxes: (..., 4) x, y, w, h pixels (COCO's bbox)."""
    diagonal = torch.hypot(gt_boxes[..., 2], gt_boxes[..., 3])[..., None]
    return (predicted - truth).norm(dim=-1) > tolerance * diagonal


def auroc(scores: Tensor, positives: Tensor) -> float:
    """Area under the ROC curve of ``scores`` ranking ``positives`` first (ties count half); NaN without both."""
    scores, positives = scores.flatten().double(), positives.flatten().bool()
    num_pos, num_neg = int(positives.sum()), int((~positives).sum())
    if num_pos == 0 or num_neg == 0:
        return math.nan
    ranks = _average_ranks(scores)
    return float((ranks[positives].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks with ties given their mean rank."""
    order = values.argsort()
    sorted_values = values[order]
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=values.dtype)
    unique, inverse = torch.unique(sorted_values, return_inverse=True)
    mean_rank = torch.zeros(len(unique), dtype=values.dtype).index_add_(0, inverse, ranks[order])
    counts = torch.zeros(len(unique), dtype=values.dtype).index_add_(0, inverse, torch.ones_like(sorted_values))
    ranks[order] = (mean_rank / counts)[inverse]
    return ranks
