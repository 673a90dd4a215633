"""Per-image keypoint AP in memory, equal to pycocotools' ``COCOeval(gt, dt, 'keypoints')`` restricted to one image.

The original Click-Pose NoC test re-read the ground-truth JSON, built a results object and ran a full COCOeval for
every image and every click round, taking ``stats[0]`` (AP@OKS[.50:.95], area 'all', maxDets 20; -1 when the image
has no non-ignored person). This module loads the ground truth once and evaluates any number of (image, prediction)
pairs in a few vectorised numpy passes, reproducing pycocotools bit for bit:

- OKS with the per-keypoint sigmas, the GT ``area`` as scale, only labelled GT keypoints counted, and the
  "distance to the doubled GT box" form for GT without labelled keypoints; the per-pair sum is taken over exactly
  the labelled keypoints, in their order, so the rounding is the same as pycocotools';
- GT ignored when ``iscrowd`` is set, ``num_keypoints == 0``, or ``area`` lies outside [0, 1e10];
  crowd GT may be matched by several detections;
- detections of each category sorted by score with a stable sort and cut to ``max_dets``; a detection without a
  match whose keypoint-extent area lies outside the area range is ignored;
- greedy matching per OKS threshold (best remaining GT, ties to the later GT, regular GT before ignored GT);
  a match to a GT whose annotation id is 0 counts as no match (pycocotools stores the id as the match flag);
- the 101-point interpolated precision, averaged over all thresholds and categories that have GT.

``evaluate`` also returns the match records of every image in the three area ranges (``ImageMatches``), from which
``datasets.evaluation.dataset_ap.DatasetKeypointAP`` computes the dataset-level stats without a second matching pass.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from datasets.metadata import COCO_KEYPOINTS

# pycocotools' keypoint parameters (built the same way, so the float values are identical).
OKS_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
# pycocotools' keypoint area ranges (all, medium, large), in its order; per-image AP uses only 'all'.
AREA_RANGES = ((0 ** 2, 1e5 ** 2), (32 ** 2, 96 ** 2), (96 ** 2, 1e5 ** 2))
AREA_RANGE_ALL = AREA_RANGES[0]
_EPS = np.spacing(1)
# Elements of the largest (units, dets, gts, keypoints) float64 block evaluated at once.
_CHUNK_ELEMENTS = 1 << 21
# Prediction sets unpacked and padded at once (bounds memory for long batches such as every round of a dataset).
_ENTRIES_PER_PASS = 4096


def _to_numpy(x: Any, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _load_dataset(coco_gt: Any) -> tuple[list, dict[Any, list[dict]], list]:
    """(image ids, annotations per image in file order, category ids) from a COCO object, a dict or a JSON path."""
    if isinstance(coco_gt, (str, Path)):
        with open(coco_gt) as f:
            coco_gt = json.load(f)
    if isinstance(coco_gt, dict):
        missing = [k for k in ("images", "annotations", "categories") if k not in coco_gt]
        if missing:
            raise ValueError(f"ground truth dict lacks {missing}; pass a COCO-format dataset (images, annotations, "
                             "categories)")
        per_image: dict[Any, list[dict]] = {}
        for ann in coco_gt["annotations"]:
            per_image.setdefault(ann["image_id"], []).append(ann)
        image_ids = [img["id"] for img in coco_gt["images"]]
        cat_ids = [c["id"] for c in coco_gt["categories"]]
        return image_ids, per_image, cat_ids
    if hasattr(coco_gt, "imgToAnns") and hasattr(coco_gt, "cats"):  # pycocotools / faster-coco-eval COCO
        return list(coco_gt.imgs), dict(coco_gt.imgToAnns), list(coco_gt.cats)
    raise TypeError(f"coco_gt must be a pycocotools COCO object, a COCO-format dict or a JSON path, "
                    f"not {type(coco_gt).__name__}")


class _GroundTruthTable:
    """Every annotation as rows of flat arrays, grouped per (image, category) and sorted regular-first."""

    def __init__(self, image_ids: list, per_image: dict, cat_ids: list, sigmas: np.ndarray | None):
        self.cat_ids = sorted(set(cat_ids))
        self.image_index = {img_id: i for i, img_id in enumerate(image_ids)}
        cat_index = {c: j for j, c in enumerate(self.cat_ids)}
        num_units = len(image_ids) * len(self.cat_ids)
        rows_per_unit: list[list[dict]] = [[] for _ in range(num_units)]
        for img_id, anns in per_image.items():
            if img_id not in self.image_index:
                continue  # pycocotools never evaluates images outside the image list
            base = self.image_index[img_id] * len(self.cat_ids)
            for ann in anns:
                if ann.get("category_id") in cat_index:
                    rows_per_unit[base + cat_index[ann["category_id"]]].append(ann)

        anns_flat: list[dict] = []
        ignore_flat: list[bool] = []
        self.offset = np.zeros(num_units, dtype=np.int64)
        self.count = np.zeros(num_units, dtype=np.int64)
        file_pos: list[int] = []
        for u, anns in enumerate(rows_per_unit):
            flags = [self._ignored(a) for a in anns]
            order = np.argsort(np.asarray(flags, dtype=np.int64), kind="mergesort")  # regular GT first, stably
            self.offset[u] = len(anns_flat)
            self.count[u] = len(anns)
            anns_flat.extend(anns[i] for i in order)
            ignore_flat.extend(flags[i] for i in order)
            file_pos.extend(order.tolist())
        self._build_arrays(anns_flat, ignore_flat, sigmas)
        # position in the unit's file order: pycocotools breaks OKS ties by it (stable sort by the ignore flag)
        self.file_pos = np.asarray(file_pos, dtype=np.int64)
        self.unit_of_row = np.repeat(np.arange(num_units), self.count)
        self._regular_counts: dict[tuple[float, float], np.ndarray] = {}
        self.regular_count = self.regular_count_in(AREA_RANGE_ALL)

    def ignored_in(self, area_range: tuple[float, float]) -> np.ndarray:
        """(rows,) pycocotools' ``_ignore`` for an area range: crowd, no labelled keypoint, or area outside it."""
        return self.base_ignore | (self.area < area_range[0]) | (self.area > area_range[1])

    def regular_count_in(self, area_range: tuple[float, float]) -> np.ndarray:
        """(units,) number of GT that count (are not ignored) in the area range."""
        if area_range not in self._regular_counts:
            self._regular_counts[area_range] = np.bincount(self.unit_of_row[~self.ignored_in(area_range)],
                                                           minlength=self.count.size)
        return self._regular_counts[area_range]

    @staticmethod
    def _ignored(ann: dict) -> bool:
        for key in ("keypoints", "num_keypoints", "area", "bbox", "iscrowd"):
            if key not in ann:
                raise ValueError(f"ground-truth annotation {ann.get('id')} has no '{key}'; pycocotools' keypoint "
                                 "evaluation needs keypoints, num_keypoints, area, bbox and iscrowd on every "
                                 "annotation (CrowdPose files lack 'area': add it, e.g. from the box)")
        area = ann["area"]
        return bool(ann["iscrowd"]) or ann["num_keypoints"] == 0 or area < AREA_RANGE_ALL[0] or area > AREA_RANGE_ALL[1]

    def _build_arrays(self, anns: list[dict], ignore: list[bool], sigmas: np.ndarray | None) -> None:
        lengths = {len(a["keypoints"]) for a in anns}
        if len(lengths) > 1 or any(n % 3 for n in lengths):
            raise ValueError(f"ground-truth keypoint lists have lengths {sorted(lengths)}; all must be 3*K "
                             "(x, y, v triplets) for one K")
        self.num_keypoints = lengths.pop() // 3 if lengths else (len(sigmas) if sigmas is not None else 0)
        if sigmas is None:  # pycocotools' own default: COCO's 17 sigmas; any other layout passes its own
            if self.num_keypoints not in (0, COCO_KEYPOINTS.num_keypoints):
                raise ValueError(f"the ground truth has {self.num_keypoints} keypoints: pass that layout's OKS "
                                 "sigmas (KeypointMetadata.sigmas); only COCO's 17 are a default")
            sigmas = np.asarray(COCO_KEYPOINTS.sigmas if self.num_keypoints else (), dtype=np.float64)
        sigmas = np.asarray(sigmas, dtype=np.float64)
        if anns and sigmas.shape != (self.num_keypoints,):
            raise ValueError(f"got {sigmas.shape[0]} OKS sigmas for {self.num_keypoints} keypoints; pass one sigma "
                             "per keypoint (datasets.metadata has the standard layouts)")
        self.variances = (sigmas * 2) ** 2
        k = self.num_keypoints
        kpts = np.asarray([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), k, 3)
        self.x, self.y = kpts[..., 0], kpts[..., 1]
        labelled = kpts[..., 2] > 0
        self.num_labelled = labelled.sum(axis=1)
        # Labelled keypoints first, in order: the OKS sum then runs over the same values in the same order.
        self.labelled_first = np.argsort(~labelled, axis=1, kind="stable")
        self.terms = np.where(self.num_labelled > 0, self.num_labelled, k)
        boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(len(anns), 4)
        # Region for GT without labelled keypoints: the box grown by its size on every side.
        self.x0, self.x1 = boxes[:, 0] - boxes[:, 2], boxes[:, 0] + boxes[:, 2] * 2
        self.y0, self.y1 = boxes[:, 1] - boxes[:, 3], boxes[:, 1] + boxes[:, 3] * 2
        self.area = np.asarray([a["area"] for a in anns], dtype=np.float64)
        self.scale = self.area + _EPS
        self.ignore = np.asarray(ignore, dtype=bool)
        self.base_ignore = np.asarray([bool(a["iscrowd"]) or a["num_keypoints"] == 0 for a in anns], dtype=bool)
        self.crowd = np.asarray([bool(a["iscrowd"]) for a in anns], dtype=bool)
        self.id_nonzero = np.asarray([a.get("id", 0) != 0 for a in anns], dtype=bool)


class PerImageKeypointAP:
    """Per-image COCO keypoint AP (``COCOeval('keypoints')``, ``imgIds=[image_id]``, ``stats[0]``) in memory.

    Args:
        coco_gt: ground truth: a pycocotools ``COCO`` object, a COCO-format dict or the path of its JSON file.
            Loaded once; its categories (sorted ids) are the evaluated ones, as pycocotools does.
        sigmas: OKS sigmas, one per keypoint (default: the standard layout for the GT's keypoint count,
            i.e. pycocotools' COCO-17 values for 17 keypoints).
        max_dets: detections per image and category kept after sorting by score (COCO keypoints: 20).
    """

    def __init__(self, coco_gt: Any, sigmas: Sequence[float] | np.ndarray | None = None, max_dets: int = 20):
        if max_dets < 1:
            raise ValueError(f"max_dets must be >= 1, got {max_dets}")
        image_ids, per_image, cat_ids = _load_dataset(coco_gt)
        if not cat_ids:
            raise ValueError("the ground truth has no categories; COCOeval would evaluate nothing")
        self.max_dets = int(max_dets)
        self.gt = _GroundTruthTable(image_ids, per_image, cat_ids, None if sigmas is None else np.asarray(sigmas))
        self.cat_ids = self.gt.cat_ids
        self.num_keypoints = self.gt.num_keypoints

    # ----------------------------------------------------------------------------------------------- public API
    def image_ap(self, image_id: Any, keypoints: Any, scores: Any, labels: Any = None) -> float:
        """AP of one image.

        Args:
            keypoints: (n, K, 3), (n, K, 2) or (n, 3K) COCO triplets, pixels (only x, y are used).
            scores: (n,) detection scores.
            labels: (n,) category ids (default: every detection is the GT's only category).
        Returns:
            AP@OKS[.50:.95] for this image, or -1.0 when it has no non-ignored GT person.
        """
        return float(self.images_ap([image_id], [keypoints], [scores], None if labels is None else [labels])[0])

    def images_ap(self, image_ids: Sequence[Any], keypoints: Any, scores: Any = None, labels: Any = None) -> np.ndarray:
        """AP of many (image, predictions) pairs; an image id may repeat (e.g. one entry per click round).

        Args:
            image_ids: (B,) ids of GT images.
            keypoints: per entry predictions, either stacked arrays (B, n, K, 3|2) / (B, n, 3K) or a list of B
                arrays (n_b, ...); or a list of B dicts with 'keypoints', 'scores' and optionally 'labels'
                (PostProcess output; then ``scores``/``labels`` are taken from the dicts).
            scores: (B, n) or a list of (n_b,) arrays.
            labels: (B, n) or a list of (n_b,) arrays of category ids, or None.
        Returns:
            (B,) float64 APs (-1 where the image has no non-ignored GT).
        """
        return self._run(image_ids, keypoints, scores, labels, with_matches=False)[0]

    def evaluate(self, image_ids: Sequence[Any], keypoints: Any, scores: Any = None,
                 labels: Any = None) -> tuple[np.ndarray, "ImageMatches"]:
        """``images_ap`` plus what pycocotools' ``evaluateImg`` records for every entry, category and area range
        (all, medium, large): the input of dataset-level AP (``dataset_ap.DatasetKeypointAP``)."""
        return self._run(image_ids, keypoints, scores, labels, with_matches=True)

    def _run(self, image_ids, keypoints, scores, labels, with_matches: bool):
        keypoints, scores, labels = self._unpack(keypoints, scores, labels)
        num = len(image_ids)
        if not (len(keypoints) == len(scores) == num) or (labels is not None and len(labels) != num):
            raise ValueError(f"got {num} image ids but {len(keypoints)} keypoint sets and {len(scores)} score sets; "
                             "pass one prediction set per image id")
        image_rows = self._image_rows(image_ids)
        result = np.empty(num)
        parts = []
        for start in range(0, num, _ENTRIES_PER_PASS):
            part = slice(start, start + _ENTRIES_PER_PASS)
            padded = self._pad(keypoints[part], scores[part], None if labels is None else labels[part])
            result[part], matches = self._entries_ap(image_rows[part], *padded, with_matches)
            parts.append(matches)
        if not with_matches:
            return result, None
        ids = np.asarray([i.item() if hasattr(i, "item") else i for i in image_ids], dtype=object)
        return result, ImageMatches.concatenate(parts, ids, tuple(self.cat_ids))

    def _image_rows(self, image_ids: Sequence[Any]) -> np.ndarray:
        rows = np.empty(len(image_ids), dtype=np.int64)
        for b, img_id in enumerate(image_ids):
            img_id = img_id.item() if hasattr(img_id, "item") else img_id
            if img_id not in self.gt.image_index:
                raise ValueError(f"image id {img_id!r} is not in the ground truth's image list "
                                 "(pycocotools' loadRes rejects it too)")
            rows[b] = self.gt.image_index[img_id]
        return rows

    def _entries_ap(self, image_rows: np.ndarray, xy: np.ndarray, score: np.ndarray, label: np.ndarray,
                    present: np.ndarray, with_matches: bool) -> tuple[np.ndarray, Optional["ImageMatches"]]:
        """Per-entry AP (area 'all'); with ``with_matches`` every entry is matched in every area range."""
        num_cats, num = len(self.cat_ids), image_rows.size
        single = num_cats == 1
        ranges = AREA_RANGES if with_matches else (AREA_RANGE_ALL,)
        per_cat = np.full((num_cats, num) if single else (num_cats, num, OKS_THRESHOLDS.size * RECALL_THRESHOLDS.size),
                          -1.0)
        valid = np.zeros((num_cats, num), dtype=bool)
        matches = ImageMatches.empty(num_cats, len(ranges), num, self.max_dets) if with_matches else None
        for j, cat in enumerate(self.cat_ids):
            units = image_rows * num_cats + j
            valid[j] = self.gt.regular_count[units] > 0
            wanted = np.arange(num) if with_matches else np.flatnonzero(valid[j])
            if wanted.size == 0:
                continue
            in_cat = present[wanted] & (label[wanted] == cat)
            det_score, det_valid, matched, dt_ignore = self._match(units[wanted], xy[wanted], score[wanted], in_cat,
                                                                   ranges)
            with_gt = valid[j, wanted]
            precision = self._interpolated_precision(matched[0][with_gt], dt_ignore[0][with_gt],
                                                     self.gt.regular_count[units[wanted][with_gt]])
            per_cat[j, wanted[with_gt]] = precision.mean(axis=1) if single else precision
            if matches is not None:
                matches.fill(j, det_score, det_valid, matched, dt_ignore,
                             np.stack([self.gt.regular_count_in(r)[units] for r in ranges]))
        return (per_cat[0] if single else self._combine_categories(per_cat, valid)), matches

    # ------------------------------------------------------------------------------------------ input handling
    def _unpack(self, keypoints: Any, scores: Any, labels: Any) -> tuple[list | np.ndarray, Any, Any]:
        if isinstance(keypoints, (list, tuple)) and keypoints and isinstance(keypoints[0], dict):
            preds = keypoints
            keypoints = [p["keypoints"] for p in preds]
            scores = [p["scores"] for p in preds]
            labels = [p["labels"] for p in preds] if all("labels" in p for p in preds) else None
        if scores is None:
            raise ValueError("scores are required (pass them, or pass dicts with 'keypoints' and 'scores')")
        return keypoints, scores, labels

    def _pad(self, keypoints, scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Stack per-entry predictions into (B, n_max, K, 2) xy, (B, n_max) scores/labels/present."""
        k = self.num_keypoints
        if labels is None and len(self.cat_ids) > 1:
            raise ValueError(f"the ground truth has categories {self.cat_ids}; pass labels for the detections")
        if not isinstance(keypoints, (list, tuple)) and not isinstance(scores, (list, tuple)):
            return self._stacked(_to_numpy(keypoints, np.float64), _to_numpy(scores, np.float64), labels)
        kp_list = [_to_numpy(kp, np.float64) for kp in keypoints]
        sc_list = [_to_numpy(s, np.float64).reshape(-1) for s in scores]
        num, n_max = len(kp_list), max((s.size for s in sc_list), default=0)
        xy = np.zeros((num, n_max, k, 2))
        score = np.zeros((num, n_max))
        label = np.full((num, n_max), self.cat_ids[0], dtype=np.int64) if labels is None else \
            np.zeros((num, n_max), dtype=np.int64)
        present = np.zeros((num, n_max), dtype=bool)
        for b, (kp, sc) in enumerate(zip(kp_list, sc_list)):
            n = sc.size
            if kp.size != n * k * 3 and kp.size != n * k * 2:
                raise ValueError(f"entry {b}: {n} scores but keypoints of shape {kp.shape}; expected (n, {k}, 3), "
                                 f"(n, {k}, 2) or (n, {3 * k}) with n = {n}")
            if n:
                xy[b, :n] = kp.reshape(n, k, -1)[..., :2]
            score[b, :n] = sc
            present[b, :n] = True
            if labels is not None:
                lb = _to_numpy(labels[b]).reshape(-1)
                if lb.size != n:
                    raise ValueError(f"entry {b}: {n} scores but {lb.size} labels")
                label[b, :n] = lb
        return xy, score, label, present

    def _stacked(self, keypoints: np.ndarray, scores: np.ndarray, labels: Any):
        """Fast path for (B, n, K, 3|2) or (B, n, 3K) keypoints with (B, n) scores and labels."""
        k = self.num_keypoints
        per_point = keypoints.size // max(1, scores.size * k)
        if scores.ndim != 2 or keypoints.shape[:2] != scores.shape or \
                (scores.size and (per_point not in (2, 3) or keypoints.size != scores.size * k * per_point)):
            raise ValueError(f"stacked predictions: keypoints {keypoints.shape} and scores {scores.shape} do not fit; "
                             f"expected (B, n, {k}, 3), (B, n, {k}, 2) or (B, n, {3 * k}) with scores (B, n)")
        xy = np.zeros((*scores.shape, k, 2))
        if scores.size:
            xy[:] = keypoints.reshape(*scores.shape, k, per_point)[..., :2]
        if labels is None:
            label = np.full(scores.shape, self.cat_ids[0], dtype=np.int64)
        else:
            label = _to_numpy(labels).astype(np.int64, copy=False)
            if label.shape != scores.shape:
                raise ValueError(f"labels {label.shape} must have the shape of scores {scores.shape}")
        return xy, scores, label, np.ones(scores.shape, dtype=bool)

    # ---------------------------------------------------------------------------------------------- evaluation
    def _match(self, units: np.ndarray, xy: np.ndarray, score: np.ndarray, in_cat: np.ndarray,
               ranges: Sequence[tuple[float, float]]) -> tuple[np.ndarray, ...]:
        """Greedy matching of each unit's top ``max_dets`` detections (of this category) in every area range.

        Returns (U, D) sorted scores and validity, and (A, U, T, D) match and ignore flags (D = detections kept).
        """
        # Sort each unit's detections of this category by score (stable), others last; keep max_dets.
        order = np.lexsort((-score, ~in_cat), axis=-1)[:, :self.max_dets]
        xy = np.take_along_axis(xy, order[:, :, None, None], axis=1)
        det_valid = np.take_along_axis(in_cat, order, axis=1)
        det_score = np.take_along_axis(score, order, axis=1)
        det_area = self._keypoint_extent_area(xy)
        ignored = [self.gt.ignored_in(r) for r in ranges]
        shape = (len(ranges), units.size, OKS_THRESHOLDS.size, det_valid.shape[1])
        matched, dt_ignore = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)

        counts = self.gt.count[units]
        by_count = np.argsort(counts, kind="stable")  # similar GT counts share a chunk: less padding
        per_unit = max(1, xy.shape[1] * max(1, self.num_keypoints))
        start = 0
        while start < units.size:
            step = max(1, _CHUNK_ELEMENTS // (per_unit * max(1, int(counts[by_count[start]]))))
            while step > 1 and per_unit * step * counts[by_count[min(units.size, start + step) - 1]] > _CHUNK_ELEMENTS:
                step //= 2
            sel = by_count[start:start + step]
            rows, gt_valid = self._gt_rows(units[sel])
            oks = self._oks(xy[sel], rows, gt_valid)
            for a, (low, high) in enumerate(ranges):
                det_outside = (det_area[sel] < low) | (det_area[sel] > high)
                matched[a, sel], dt_ignore[a, sel] = self._greedy(oks, rows, gt_valid, ignored[a][rows],
                                                                  det_valid[sel], det_outside)
            start += step
        return det_score, det_valid, matched, dt_ignore

    @staticmethod
    def _keypoint_extent_area(xy: np.ndarray) -> np.ndarray:
        """loadRes' detection area: (max x - min x) * (max y - min y) over all keypoints (NaN propagates)."""
        if xy.shape[1] == 0 or xy.shape[2] == 0:
            return np.zeros(xy.shape[:2])
        x, y = xy[..., 0], xy[..., 1]
        return (x.max(axis=-1) - x.min(axis=-1)) * (y.max(axis=-1) - y.min(axis=-1))

    def _gt_rows(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = self.gt.count[units]
        g_max = int(counts.max(initial=0))
        slot = np.arange(g_max)
        valid = slot[None, :] < counts[:, None]
        rows = np.where(valid, self.gt.offset[units][:, None] + slot[None, :], 0)
        return rows, valid

    def _oks(self, xy: np.ndarray, rows: np.ndarray, gt_valid: np.ndarray) -> np.ndarray:
        """(U, D, G) OKS between sorted detections (U, D, K, 2) and the units' GT rows (U, G).

        Pairs are grouped by how many keypoint terms they sum, and each group gathers just those terms in order, so
        every sum runs over the same values in the same order as pycocotools' (bit-equal results).
        """
        gt = self.gt
        oks = np.zeros((*xy.shape[:2], rows.shape[1]))
        box_form = gt.num_labelled[rows] == 0
        terms = np.where(gt_valid, gt.terms[rows], 0)
        det_axis = np.arange(xy.shape[1])[None, :, None]
        for n in np.unique(terms[terms > 0]):
            for boxed in (False, True):
                u, g = np.nonzero((terms == n) & (box_form == boxed))
                if u.size == 0:
                    continue
                r = rows[u, g]
                pick = gt.labelled_first[r, :n]  # (P, n): the summed keypoints (all of them for the box form)
                at = (u[:, None, None], det_axis, pick[:, None, :])
                xd, yd = xy[at + (0,)], xy[at + (1,)]  # (P, D, n)
                if boxed:  # distance to the GT box grown by its size on every side
                    dx = np.maximum(0, gt.x0[r, None, None] - xd) + np.maximum(0, xd - gt.x1[r, None, None])
                    dy = np.maximum(0, gt.y0[r, None, None] - yd) + np.maximum(0, yd - gt.y1[r, None, None])
                else:
                    dx = xd - gt.x[r[:, None], pick][:, None, :]
                    dy = yd - gt.y[r[:, None], pick][:, None, :]
                err = (dx ** 2 + dy ** 2) / gt.variances[pick][:, None, :] / gt.scale[r, None, None] / 2
                oks[u, :, g] = np.exp(-err).sum(axis=-1) / n
        return oks

    def _greedy(self, oks: np.ndarray, rows: np.ndarray, gt_valid: np.ndarray, gt_ignored: np.ndarray,
                det_valid: np.ndarray, det_outside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """COCOeval.evaluateImg's matching for one area range: (U, T, D) match flags and detection ignore flags."""
        num_units, num_dets = det_valid.shape
        gt_ignore = gt_ignored & gt_valid
        gt_regular = ~gt_ignored & gt_valid
        crowd = self.gt.crowd[rows]
        id_nonzero = self.gt.id_nonzero[rows]
        position = np.where(gt_valid, self.gt.file_pos[rows], -1)
        thresholds = np.minimum(OKS_THRESHOLDS, 1 - 1e-10)[None, :, None]
        lowest = thresholds.min()
        num_t = OKS_THRESHOLDS.size

        taken = np.zeros((num_units, num_t, rows.shape[1]), dtype=bool)
        matched = np.zeros((num_units, num_t, num_dets), dtype=bool)
        dt_ignore = np.zeros((num_units, num_t, num_dets), dtype=bool)
        t_idx = np.arange(num_t)[None, :]
        for d in range(num_dets):  # greedy: detections in score order take the best GT still free
            # only units where this detection reaches the lowest threshold with some GT can match
            live = np.flatnonzero(det_valid[:, d] & (oks[:, d, :] >= lowest).any(axis=1))
            if live.size == 0:
                continue
            o = oks[live, d, None, :]  # (L, 1, G)
            free = (~taken[live] | crowd[live, None, :]) & (o >= thresholds)
            pos = position[live, None, :]
            best, found = _last_best(o, free & gt_regular[live, None, :], pos)
            best_ig, found_ig = _last_best(o, free & gt_ignore[live, None, :], pos)
            best = np.where(found, best, best_ig)
            found = found | found_ig
            at = (live[:, None], best)
            taken[live[:, None], t_idx, best] |= found
            dt_ignore[live, :, d] = found & gt_ignore[at]
            matched[live, :, d] = found & id_nonzero[at]
        dt_ignore |= ~matched & det_outside[:, None, :]
        dt_ignore |= ~det_valid[:, None, :]
        return matched, dt_ignore

    @staticmethod
    def _interpolated_precision(matched: np.ndarray, dt_ignore: np.ndarray, num_regular: np.ndarray) -> np.ndarray:
        """COCOeval.accumulate for single units: (U, T, D) match flags -> (U, T*101) precision at recall points."""
        num_units, num_t, num_dets = matched.shape
        tp = np.cumsum(matched & ~dt_ignore, axis=2).astype(float)
        fp = np.cumsum(~matched & ~dt_ignore, axis=2).astype(float)
        recall = tp / num_regular[:, None, None]
        precision = tp / (fp + tp + _EPS)
        # Precision envelope: the best precision at any later (higher-recall) point.
        precision = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]
        # Detection i serves the recall thresholds <= recall[i] not served by an earlier detection.
        reach = np.searchsorted(RECALL_THRESHOLDS, recall, side="right")
        first = np.ones_like(reach, dtype=bool)
        first[..., 1:] = reach[..., 1:] != reach[..., :-1]
        slots = np.zeros((num_units, num_t, RECALL_THRESHOLDS.size + 1))
        np.put_along_axis(slots, np.where(first, reach, 0), np.where(first, precision, 0.0), axis=2)
        q = np.maximum.accumulate(slots[..., ::-1], axis=2)[..., ::-1][..., 1:]
        return q.reshape(num_units, -1)

    def _combine_categories(self, per_cat: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Mean over (threshold, recall, category) entries of the categories with GT, in pycocotools' order."""
        num_t, num_r = OKS_THRESHOLDS.size, RECALL_THRESHOLDS.size
        result = np.full(per_cat.shape[1], -1.0)
        for b in np.flatnonzero(valid.any(axis=0)):
            stacked = per_cat[:, b].reshape(-1, num_t, num_r).transpose(1, 2, 0)  # (T, R, C)
            result[b] = np.mean(stacked[stacked > -1])
        return result


@dataclass
class ImageMatches:
    """What pycocotools' ``evaluateImg`` records, for B entries (image predictions), C categories, A area ranges.

    ``scores``/``det_valid``: (C, B, D) each entry's top ``D = max_dets`` detections of the category, by score;
    ``matched``/``dt_ignore``: (C, A, B, T, D) per OKS threshold, matched to a GT (with a nonzero id) / ignored;
    ``regular_count``: (C, A, B) GT that count in the area range.
    """
    image_ids: np.ndarray
    cat_ids: tuple
    scores: np.ndarray
    det_valid: np.ndarray
    matched: np.ndarray
    dt_ignore: np.ndarray
    regular_count: np.ndarray

    @classmethod
    def empty(cls, num_cats: int, num_ranges: int, num: int, max_dets: int) -> "ImageMatches":
        flags = (num_cats, num_ranges, num, OKS_THRESHOLDS.size, max_dets)
        return cls(np.empty(num, dtype=object), (), np.zeros((num_cats, num, max_dets)),
                   np.zeros((num_cats, num, max_dets), dtype=bool), np.zeros(flags, dtype=bool),
                   np.zeros(flags, dtype=bool), np.zeros((num_cats, num_ranges, num), dtype=np.int64))

    def fill(self, cat: int, scores: np.ndarray, det_valid: np.ndarray, matched: np.ndarray, dt_ignore: np.ndarray,
             regular_count: np.ndarray) -> None:
        """Set category ``cat`` of every entry from ``_match`` outputs (D' <= max_dets detections)."""
        kept = scores.shape[1]
        self.scores[cat, :, :kept] = scores
        self.det_valid[cat, :, :kept] = det_valid
        self.matched[cat, ..., :kept] = matched
        self.dt_ignore[cat, ..., :kept] = dt_ignore
        self.regular_count[cat] = regular_count

    @classmethod
    def concatenate(cls, parts: Sequence["ImageMatches"], image_ids: np.ndarray, cat_ids: tuple) -> "ImageMatches":
        """Join along the entry axis; ``image_ids`` and ``cat_ids`` label the result."""
        return cls(image_ids, cat_ids, *(np.concatenate([getattr(p, name) for p in parts], axis=axis)
                                         for name, axis in (("scores", 1), ("det_valid", 1), ("matched", 2),
                                                            ("dt_ignore", 2), ("regular_count", 2))))

    def select(self, index: np.ndarray) -> "ImageMatches":
        """The entries at ``index`` (in that order)."""
        return ImageMatches(self.image_ids[index], self.cat_ids, self.scores[:, index], self.det_valid[:, index],
                            self.matched[:, :, index], self.dt_ignore[:, :, index], self.regular_count[:, :, index])


def _last_best(oks: np.ndarray, allowed: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the maximum of ``oks`` over allowed GT (last axis), and whether any was allowed.

    pycocotools walks the GT in its order (file order within regular, then within ignored GT) and takes any GT whose
    OKS is >= the best so far, so equal OKS go to the GT later in the file (largest ``position``).
    """
    values = np.where(allowed, oks, -np.inf)
    num_gt = values.shape[-1]
    if num_gt == 0:
        shape = values.shape[:-1]
        return np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=bool)
    top = values.max(axis=-1, keepdims=True)
    at_top = allowed & (values == top)
    best = np.argmax(np.where(at_top, position, -1), axis=-1)
    return best, at_top.any(axis=-1)
