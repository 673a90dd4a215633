"""Dataset-level COCO keypoint stats from per-image match records, equal to pycocotools' ``COCOeval('keypoints')``.

``PerImageKeypointAP.evaluate`` matches each image's predictions to its ground truth once (what ``evaluateImg``
records, in the three area ranges); this module pools those records over the images as ``COCOeval.accumulate``
does (all detections of a category ranked by score, stable, in image-id order) and returns the 10 numbers of
``COCOeval.summarize`` (AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl). Interactive evaluation uses it for the
AP after every number of clicks: one matching pass per round instead of a full COCOeval per round, which also gives
each image's AP (NoC).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from datasets.evaluation.oks_ap import AREA_RANGES, OKS_THRESHOLDS, RECALL_THRESHOLDS, ImageMatches, \
    PerImageKeypointAP
from datasets.evaluation.per_image_ap import results_as_arrays
from datasets.evaluation.stat_names import KEYPOINT_STAT_NAMES, KEYPOINT_STATS_KEY, PER_IMAGE_AP_KEY
from util.distributed import gather_first_occurrence

# (average precision?, OKS threshold or None, area-range index) of each stat, in COCOeval.summarize order
_SUMMARY = ((True, None, 0), (True, .5, 0), (True, .75, 0), (True, None, 1), (True, None, 2),
            (False, None, 0), (False, .5, 0), (False, .75, 0), (False, None, 1), (False, None, 2))


class DatasetKeypointAP:
    """Pools per-image match records over the ranks and summarises like pycocotools (``DatasetEvaluator``).

    ``process(image_ids, results)`` matches a batch with ``matcher`` (a ``PerImageKeypointAP``: one pass gives each
    image's AP and its records); ``evaluate() -> {'coco_eval_keypoints_detr': [10 floats], 'per_image_ap':
    {image_id: AP}}``. Without a matcher, records come from ``add(matches)`` and ``summarize() -> (10,)`` scores
    them. An image seen twice keeps its first records (a padded distributed sampler repeats images).
    """

    keypoint_stat_names = KEYPOINT_STAT_NAMES["coco"]

    def __init__(self, matcher: Optional[PerImageKeypointAP] = None) -> None:
        self.matcher = matcher
        self.reset()

    def reset(self) -> None:
        # image id -> (the batch's ImageMatches, the image's row in it, its AP or None): rows point into shared
        # batches, so neither recording nor the gather copies them per image
        self._records: dict[Any, tuple[ImageMatches, int, Optional[float]]] = {}
        self._gathered = False

    def process(self, image_ids: Sequence[Any], results: Sequence[Mapping[str, Any]]) -> None:
        """Match one batch of post-processed predictions ('keypoints' (n, K, 3), 'scores' (n,), 'labels' (n,))."""
        if self.matcher is None:
            raise RuntimeError("DatasetKeypointAP.process needs a matcher: DatasetKeypointAP(PerImageKeypointAP(gt))")
        ap, matches = self.matcher.evaluate(list(image_ids), results_as_arrays(results))
        self._record(matches, ap)

    def add(self, matches: ImageMatches) -> None:
        """Record matches made elsewhere (``PerImageKeypointAP.evaluate``)."""
        self._record(matches, None)

    def _record(self, matches: ImageMatches, ap: Optional[np.ndarray]) -> None:
        if self._gathered:
            raise RuntimeError("records added after evaluate(); call reset() to start a new evaluation")
        if matches.matched.shape[1] != len(AREA_RANGES):
            raise ValueError("dataset-level AP needs matches in every area range: use PerImageKeypointAP.evaluate")
        for row, image_id in enumerate(matches.image_ids):
            if image_id not in self._records:
                self._records[image_id] = (matches, row, None if ap is None else float(ap[row]))

    def evaluate(self) -> dict[str, Any]:
        """The 10 keypoint stats and each image's AP, over every rank's images."""
        stats = self.summarize().tolist()
        return {KEYPOINT_STATS_KEY: stats,
                PER_IMAGE_AP_KEY: {image_id: ap for image_id, (_, _, ap) in sorted(self._records.items())}}

    def _gather(self) -> None:
        if not self._gathered:
            self._gathered = True
            self._records = gather_first_occurrence(self._records)

    def _pooled(self) -> Optional[ImageMatches]:
        """All records, one per image (first occurrence), ordered by image id."""
        self._gather()
        if not self._records:
            return None
        image_ids = sorted(self._records)
        # one select per batch, then back into image-id order
        batches: dict[int, tuple[ImageMatches, list[int], list[int]]] = {}
        for position, image_id in enumerate(image_ids):
            batch, row, _ = self._records[image_id]
            entry = batches.setdefault(id(batch), (batch, [], []))
            entry[1].append(row)
            entry[2].append(position)
        cat_ids = next(iter(batches.values()))[0].cat_ids
        if any(batch.cat_ids != cat_ids for batch, _, _ in batches.values()):
            raise ValueError("matches come from different ground truths (category ids differ)")
        parts = [batch.select(np.asarray(rows)) for batch, rows, _ in batches.values()]
        merged = ImageMatches.concatenate(parts, np.concatenate([p.image_ids for p in parts]), cat_ids)
        return merged.select(np.argsort(np.concatenate([positions for _, _, positions in batches.values()])))

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
