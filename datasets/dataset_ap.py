"""Dataset-level COCO keypoint stats from per-image match records, equal to pycocotools' ``COCOeval('keypoints')``.

``PerImageKeypointAP.evaluate`` matches each image's predictions to its ground truth once (what ``evaluateImg``
records, in the three area ranges); this module pools those records over the images as ``COCOeval.accumulate``
does (all detections of a category ranked by score, stable, in image-id order) and returns the 10 numbers of
``COCOeval.summarize`` (AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl). Interactive evaluation uses it for the
AP after every number of clicks: one matching pass per round instead of a full COCOeval per round.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch.distributed as dist

from datasets.evaluation import KEYPOINT_STAT_NAMES
from datasets.oks_ap import AREA_RANGES, OKS_THRESHOLDS, RECALL_THRESHOLDS, ImageMatches

# (average precision?, OKS threshold or None, area-range index) of each stat, in COCOeval.summarize order
_SUMMARY = ((True, None, 0), (True, .5, 0), (True, .75, 0), (True, None, 1), (True, None, 2),
            (False, None, 0), (False, .5, 0), (False, .75, 0), (False, None, 1), (False, None, 2))


class DatasetKeypointAP:
    """Collects ``ImageMatches`` (``add``), merges ranks, and summarises like pycocotools.

    Usage: ``add`` per batch, ``synchronize_between_processes()``, then ``summarize() -> (10,) stats``.
    An image added twice keeps its first records (a padded distributed sampler repeats images).
    """

    keypoint_stat_names = KEYPOINT_STAT_NAMES["coco"]

    def __init__(self) -> None:
        self._parts: list[ImageMatches] = []
        self._synchronized = False

    def add(self, matches: ImageMatches) -> None:
        if self._synchronized:
            raise RuntimeError("add() after synchronize_between_processes(); start a new DatasetKeypointAP")
        if matches.matched.shape[1] != len(AREA_RANGES):
            raise ValueError("dataset-level AP needs matches in every area range: use PerImageKeypointAP.evaluate")
        self._parts.append(matches)

    def synchronize_between_processes(self) -> None:
        """Gather every rank's records (a no-op without distributed)."""
        if self._synchronized:
            return
        self._synchronized = True
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self._parts)
            self._parts = [part for rank_parts in gathered for part in rank_parts]

    def _pooled(self) -> Optional[ImageMatches]:
        """All records, one per image (first occurrence), ordered by image id."""
        parts = [p for p in self._parts if len(p.image_ids)]
        if not parts:
            return None
        cat_ids = parts[0].cat_ids
        if any(p.cat_ids != cat_ids for p in parts):
            raise ValueError("matches come from different ground truths (category ids differ)")
        merged = ImageMatches.concatenate(parts, np.concatenate([p.image_ids for p in parts]), cat_ids)
        _, first = np.unique(merged.image_ids, return_index=True)  # sorted ids, index of first occurrence
        return merged.select(first)

    def accumulate(self) -> tuple[np.ndarray, np.ndarray]:
        """(T, R, C, A) precision and (T, C, A) recall, -1 where a (category, area) has no GT that counts."""
        num_t, num_r, num_a = OKS_THRESHOLDS.size, RECALL_THRESHOLDS.size, len(AREA_RANGES)
        pooled = self._pooled()
        num_c = 0 if pooled is None else len(pooled.cat_ids)
        precision = -np.ones((num_t, num_r, num_c, num_a))
        recall = -np.ones((num_t, num_c, num_a))
        for c in range(num_c):
            valid = pooled.det_valid[c]  # (B, D): image-major, each image's detections by score
            scores = pooled.scores[c][valid]
            order = np.argsort(-scores, kind="mergesort")
            for a in range(num_a):
                num_gt = int(pooled.regular_count[c, a].sum())
                if num_gt == 0:
                    continue
                matched = pooled.matched[c, a].transpose(1, 0, 2)[:, valid][:, order]  # (T, n)
                ignored = pooled.dt_ignore[c, a].transpose(1, 0, 2)[:, valid][:, order]
                precision[:, :, c, a], recall[:, c, a] = _precision_recall(matched, ignored, num_gt)
        return precision, recall

    def summarize(self) -> np.ndarray:
        """The 10 stats of ``COCOeval.summarize`` for keypoints (-1 where undefined)."""
        precision, recall = self.accumulate()
        stats = np.empty(len(_SUMMARY))
        for i, (is_ap, threshold, area) in enumerate(_SUMMARY):
            values = precision[..., area] if is_ap else recall[..., area]
            if threshold is not None:
                values = values[np.where(threshold == OKS_THRESHOLDS)[0]]
            kept = values[values > -1]
            stats[i] = -1.0 if kept.size == 0 else float(np.mean(kept))
        return stats


def _precision_recall(matched: np.ndarray, ignored: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.accumulate for one (category, area): (T, n) ranked flags -> (T, R) precision, (T,) recall."""
    tp = np.cumsum(matched & ~ignored, axis=1).astype(float)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(float)
    num_dets = tp.shape[1]
    recall_curve = tp / num_gt
    precision_curve = tp / (fp + tp + np.spacing(1))
    # Precision envelope: the best precision at any later (higher-recall) point.
    precision_curve = np.maximum.accumulate(precision_curve[:, ::-1], axis=1)[:, ::-1]
    precision = np.zeros((tp.shape[0], RECALL_THRESHOLDS.size))
    for t in range(tp.shape[0]):
        at = np.searchsorted(recall_curve[t], RECALL_THRESHOLDS, side="left")
        reached = at < num_dets
        precision[t, reached] = precision_curve[t, at[reached]]
    recall = recall_curve[:, -1] if num_dets else np.zeros(tp.shape[0])
    return precision, recall
