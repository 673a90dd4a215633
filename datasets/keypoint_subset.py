"""Keypoint AP over a subset of the keypoints (OKS computed on those keypoints only).

For keypoint adaptation (17 -> 21): the AP of the 4 new keypoints on their own says how well the adapted model
learned them, which the 21-keypoint AP dilutes with the 17 it already knew. Ground truth and predictions are cut to
the chosen keypoints; people with none of them labelled are ignored, as COCO ignores people without keypoints.
"""
from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import numpy as np

from datasets.evaluation import load_ground_truth, score_results
from util.keypoint_metadata import KeypointMetadata


def _cut(flat: Sequence[float], indices: Sequence[int]) -> list[float]:
    return [float(v) for k in indices for v in flat[3 * k:3 * k + 3]]


def subset_ground_truth(coco_gt: Any, indices: Sequence[int]) -> dict:
    """A COCO dataset dict whose annotations keep only ``indices`` (``num_keypoints`` recounted)."""
    data = copy.deepcopy(coco_gt.dataset)
    for ann in data["annotations"]:
        ann["keypoints"] = _cut(ann["keypoints"], indices)
        ann["num_keypoints"] = sum(1 for v in ann["keypoints"][2::3] if v > 0)
    for category in data.get("categories", []):
        if "keypoints" in category:
            category["keypoints"] = [category["keypoints"][k] for k in indices
                                     if k < len(category["keypoints"])]
        category.pop("skeleton", None)
    return data


def subset_results(results: Sequence[dict], indices: Sequence[int]) -> list[dict]:
    """COCO keypoint results with only ``indices`` kept."""
    return [{**r, "keypoints": _cut(r["keypoints"], indices)} for r in results]


def keypoint_subset_stats(coco_gt: Any, results: Sequence[dict], indices: Sequence[int],
                          sigmas: Sequence[float], image_ids: Optional[Sequence[int]] = None) -> np.ndarray:
    """The 10 COCO keypoint stats (AP, AP50, AP75, APm, APl, AR, ...) of ``results`` on keypoints ``indices``.

    ``coco_gt``: a pycocotools COCO with the full layout; ``sigmas``: the full layout's OKS sigmas.
    """
    indices = [int(k) for k in indices]
    if not indices:
        raise ValueError("no keypoints selected: give at least one keypoint index")
    bad = [k for k in indices if not 0 <= k < len(sigmas)]
    if bad:
        raise ValueError(f"keypoint indices {bad} are outside the layout's 0..{len(sigmas) - 1}")
    gt = load_ground_truth(subset_ground_truth(coco_gt, indices), "coco")
    ids = sorted(gt.imgs) if image_ids is None else list(image_ids)
    return score_results(gt, subset_results(results, indices), "keypoints", ids, "coco",
                         [sigmas[k] for k in indices])


def new_keypoints(source: KeypointMetadata, target: KeypointMetadata) -> list[int]:
    """Indices of the target layout's keypoints that the source layout lacks (by name)."""
    known = set(source.keypoint_names)
    return [k for k, name in enumerate(target.keypoint_names) if name not in known]
