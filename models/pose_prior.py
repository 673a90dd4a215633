"""A Gaussian prior over the poses of people in their boxes: where the keypoints a user has not placed yet are likely
to be, given the box the user drew and the keypoints placed so far.

The model's refinement looks for each keypoint near where it already is, so a proposal whose keypoints lie far off
(a missed person, added from a box next to another person) moves little when a few of them are placed. The prior
supplies the long-range part: poses in box coordinates ``((x - x0) / w, (y - y0) / h)`` are modelled as one Gaussian
(mean and covariance over the 2K coordinates, fitted on a dataset's fully labelled people and their mirror images),
and :meth:`PosePrior.condition` returns the posterior mean of every keypoint given the placed ones (near-exact
observations) and the model's current estimates (observations with ``noise`` box units of standard deviation). The
refinement then starts from there and fits the keypoints to the image.

It is stored in a checkpoint under its own top-level key :data:`CHECKPOINT_KEY` (tensors only: it loads with
``weights_only=True``); a checkpoint without it has no prior. ``tools/train_quality.py`` fits it from the training
annotations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

CHECKPOINT_KEY = "pose_prior"
FORMAT_VERSION = 1
RIDGE = 1e-4  # added to the covariance's diagonal (box units squared): a prior from few poses stays invertible
PLACED_NOISE = 1e-2  # a placed keypoint's standard deviation, in box units: it is where the user put it
DEFAULT_NOISE = 0.15  # the model's estimates' standard deviation, in box units (docs/benchmarks.md, adding a person)
# How far a box at the image border may be grown across it (factors of its size): a person cut by the border is
# drawn with a box over the visible part only.
EXTENSIONS = (1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0)


def grown_boxes(box: Tensor, open_edges: Sequence[bool]) -> list[Tensor]:
    """Every box (4,) x0, y0, x1, y1 that grows ``box`` across its open edges (left, top, right, bottom) by the
    :data:`EXTENSIONS` factors, ``box`` itself first. An axis open at both ends (the box spans the image) stays."""
    left, top, right, bottom = (bool(e) for e in open_edges)
    factors_x = EXTENSIONS if left != right else (1.0,)
    factors_y = EXTENSIONS if top != bottom else (1.0,)
    boxes = []
    for fx in factors_x:
        for fy in factors_y:
            grown = box.clone()
            for axis, factor, open_low in ((0, fx, left), (1, fy, top)):
                extent = (box[axis + 2] - box[axis]) * factor
                if open_low:  # the box grows across its open edge, its other edge stays
                    grown[axis] = box[axis + 2] - extent
                else:
                    grown[axis + 2] = box[axis] + extent
            boxes.append(grown)
    return boxes


@dataclass(frozen=True)
class PosePrior:
    """mean (2K,) and covariance (2K, 2K) of poses in box coordinates, x and y interleaved per keypoint."""

    mean: Tensor
    covariance: Tensor
    num_poses: int

    @property
    def num_keypoints(self) -> int:
        return self.mean.shape[0] // 2

    @classmethod
    def fit(cls, keypoints: np.ndarray, boxes: np.ndarray, flip_permutation: Optional[Sequence[int]] = None
            ) -> "PosePrior":
        """From COCO annotations: keypoints (N, K, 3) x, y, visibility and boxes (N, 4) x, y, w, h, in pixels.
        People with every keypoint labelled (visibility > 0) and a box of at least one pixel each way are used;
        with ``flip_permutation`` (new_k -> old_k, the dataset's left/right swap) their mirror images too."""
        keypoints = np.asarray(keypoints, dtype=np.float64)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if keypoints.ndim != 3 or keypoints.shape[2] != 3 or len(keypoints) != len(boxes):
            raise ValueError(f"a pose prior is fitted on (N, K, 3) keypoints and (N, 4) boxes, got "
                             f"{keypoints.shape} and {boxes.shape}")
        num_keypoints = keypoints.shape[1]
        usable = (keypoints[..., 2] > 0).all(1) & (boxes[:, 2] >= 1) & (boxes[:, 3] >= 1)
        if usable.sum() <= 2 * num_keypoints:
            raise ValueError(f"a pose prior needs more than {2 * num_keypoints} people with all {num_keypoints} "
                             f"keypoints labelled, the annotations have {int(usable.sum())}")
        box = boxes[usable]
        poses = (keypoints[usable, :, :2] - box[:, None, :2]) / box[:, None, 2:]  # (N, K, 2) box coordinates
        if flip_permutation is not None:
            mirrored = poses[:, list(flip_permutation)].copy()
            mirrored[..., 0] = 1.0 - mirrored[..., 0]
            poses = np.concatenate((poses, mirrored))
        flat = poses.reshape(len(poses), -1)
        covariance = np.cov(flat, rowvar=False) + RIDGE * np.eye(flat.shape[1])
        return cls(torch.from_numpy(flat.mean(0)), torch.from_numpy(covariance), int(usable.sum()))

    @classmethod
    def from_coco(cls, dataset: Mapping[str, Any], num_keypoints: int,
                  flip_permutation: Optional[Sequence[int]] = None, source: str = "the annotations") -> "PosePrior":
        """Fitted on a COCO keypoints dataset (the parsed JSON): its non-crowd annotations with ``num_keypoints``
        keypoints and a box (see :meth:`fit`). ``source`` names the file in errors."""
        annotations = [a for a in dataset.get("annotations", []) if not a.get("iscrowd", 0)
                       and len(a.get("keypoints") or []) == 3 * num_keypoints and len(a.get("bbox") or []) == 4]
        if not annotations:
            raise ValueError(f"{source}: no annotation has {num_keypoints} keypoints and a box to fit a pose prior on")
        keypoints = np.asarray([a["keypoints"] for a in annotations], dtype=np.float64).reshape(-1, num_keypoints, 3)
        boxes = np.asarray([a["bbox"] for a in annotations], dtype=np.float64)
        try:
            return cls.fit(keypoints, boxes, flip_permutation)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc

    def condition(self, box: Tensor, keypoints: Tensor, placed: Tensor, noise: float = DEFAULT_NOISE,
                  open_edges: Sequence[bool] = (False, False, False, False)) -> Tensor:
        """(K, 2) the posterior mean of every keypoint. box: (4,) x0, y0, x1, y1; keypoints: (K, 2) the current
        estimates, in the box's units (pixels, or both normalised by the image); placed: (K,) bool, the keypoints
        the user put (their rows are returned as given).

        open_edges: (left, top, right, bottom), the box's edges at the image border. The person may go on beyond
        such an edge (the prior is of whole people), so the box is grown across it by the factor of
        :data:`EXTENSIONS` under which the observations are most likely, and the posterior is that box's."""
        if keypoints.shape != (self.num_keypoints, 2):
            raise ValueError(f"the pose prior is for {self.num_keypoints} keypoints, got {tuple(keypoints.shape)}")
        box = box.double()
        if bool((box[2:] <= box[:2]).any()):
            raise ValueError(f"a pose prior needs a box of positive size, got {box.tolist()}")
        deviation = torch.where(placed.repeat_interleave(2), torch.tensor(PLACED_NOISE, dtype=torch.float64),
                                torch.tensor(float(noise), dtype=torch.float64))
        mean, covariance = self.mean.double(), self.covariance.double()
        # the observations' spread C + R in box units: one factorisation serves every candidate box
        chol = torch.linalg.cholesky(covariance + torch.diag(deviation ** 2))
        candidates = grown_boxes(box, open_edges)
        if len(candidates) > 1:
            box = max(candidates, key=lambda b: self._log_likelihood(b, keypoints, chol))
        origin, size = box[:2], box[2:] - box[:2]
        observed = ((keypoints.double() - origin) / size).reshape(-1)
        # Gaussian prior N(mean, C), observations x = pose + N(0, R): posterior mean = mean + C (C + R)^-1 (x - mean)
        shift = torch.cholesky_solve((observed - mean)[:, None], chol)[:, 0]
        posterior = (mean + covariance @ shift).reshape(-1, 2) * size + origin
        return torch.where(placed[:, None], keypoints.double(), posterior).to(keypoints.dtype)

    def _log_likelihood(self, box: Tensor, keypoints: Tensor, chol: Tensor) -> float:
        """log p(keypoints | box) up to a constant (the spread's log-determinant, the same for every box): the
        Gaussian of the observations in box units, whose spread has the Cholesky factor ``chol``, and the Jacobian
        of the change to the keypoints' own units (so that boxes of different sizes compare)."""
        origin, size = box[:2], box[2:] - box[:2]
        residual = ((keypoints.double() - origin) / size).reshape(-1) - self.mean.double()
        whitened = torch.linalg.solve_triangular(chol, residual[:, None], upper=False)[:, 0]
        return float(-0.5 * whitened.square().sum() - self.num_keypoints * size.log().sum())

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint entry (tensors and plain values only)."""
        return {"format": FORMAT_VERSION, "num_keypoints": self.num_keypoints, "num_poses": self.num_poses,
                "mean": self.mean.clone(), "covariance": self.covariance.clone()}

    @classmethod
    def from_checkpoint(cls, entry: Mapping[str, Any], num_keypoints: int, source: str = "the checkpoint"
                        ) -> "PosePrior":
        """The prior stored in ``entry``, checked against the model's keypoint count."""
        if not isinstance(entry, Mapping) or entry.get("format") != FORMAT_VERSION or "covariance" not in entry:
            raise ValueError(f"{source}: its '{CHECKPOINT_KEY}' entry is not a pose prior of format {FORMAT_VERSION}; "
                             "fit it again with tools/train_quality.py or delete the entry")
        mean, covariance = torch.as_tensor(entry["mean"]), torch.as_tensor(entry["covariance"])
        if entry.get("num_keypoints") != num_keypoints or mean.shape != (2 * num_keypoints,) \
                or covariance.shape != (2 * num_keypoints, 2 * num_keypoints):
            raise ValueError(f"{source}: its pose prior is for {entry.get('num_keypoints')} keypoints, the model has "
                             f"{num_keypoints}; fit it again with tools/train_quality.py on this model's data")
        return cls(mean.double(), covariance.double(), int(entry.get("num_poses", 0)))
