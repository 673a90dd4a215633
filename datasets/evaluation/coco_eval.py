"""Box and keypoint AP of post-processed predictions.

Two scorers behind one evaluator:
- ``coco``: pycocotools COCOeval (COCO, Human-Art, OCHuman, custom), keypoint OKS sigmas from the metadata;
- ``crowdpose``: faster-coco-eval ``keypoints_crowd`` with ``use_area=False`` (scale = 0.53 * box area, as the
  CrowdPose tools), giving AP/AR and AP on the easy/medium/hard crowd-index splits.

Only the ground truth's categories are scored (person = 1): the reference post-process also emits label-0 entries,
which COCO evaluation ignores the same way. Predictions are collected per image and scored once at the end, which
gives the same numbers as the reference's per-batch evaluation (each image is scored on its own; ``accumulate``
pools them) while loading the ground truth once.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from datasets.evaluation.ground_truth import GroundTruth, load_ground_truth, quiet
from datasets.evaluation.oks_ap import PerImageKeypointAP
from datasets.evaluation.stat_names import KEYPOINT_STAT_NAMES, STAT_KEYS
from util.distributed import gather_first_occurrence, is_main_process

# crowd-index thresholds of the CrowdPose easy / medium / hard split
CROWD_INDEX_EASY_BELOW = 0.2
CROWD_INDEX_MEDIUM_BELOW = 0.8


def _to_list(value: Any) -> list:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value)


def predictions_to_coco_results(image_id: int, prediction: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    """One image's post-processed prediction -> (bbox results, keypoint results) in COCO results format.

    prediction: ``scores`` (n,), ``labels`` (n,), ``boxes`` (n, 4) xyxy pixels, ``keypoints`` (n, K, 3) or
    (n, 3K) triplets [x, y, score]. Either of boxes / keypoints may be absent.
    """
    scores = [float(s) for s in _to_list(prediction["scores"])]
    labels = [int(c) for c in _to_list(prediction["labels"])]
    bbox_results, keypoint_results = [], []
    if not scores:
        return bbox_results, keypoint_results
    if "boxes" in prediction:
        for (x1, y1, x2, y2), score, label in zip(_to_list(prediction["boxes"]), scores, labels):
            bbox_results.append({"image_id": int(image_id), "category_id": label,
                                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    if "keypoints" in prediction:
        keypoints = prediction["keypoints"]
        keypoints = keypoints.reshape(len(scores), -1) if hasattr(keypoints, "reshape") else keypoints
        for kpts, score, label in zip(_to_list(keypoints), scores, labels):
            flat = list(np.asarray(kpts, dtype=np.float64).reshape(-1))
            keypoint_results.append({"image_id": int(image_id), "category_id": label,
                                     "keypoints": [float(v) for v in flat], "score": score})
    return bbox_results, keypoint_results


def _crowdpose_eval_class():
    from faster_coco_eval import COCOeval_faster

    class CrowdPoseEval(COCOeval_faster):
        """faster-coco-eval keypoints_crowd whose easy/medium/hard split covers only the evaluated images and
        reads the crowd index from the loaded ground truth (the library re-reads the file and takes every image)."""

        def get_type_result(self, first: float = CROWD_INDEX_EASY_BELOW, second: float = CROWD_INDEX_MEDIUM_BELOW):
            evaluated = list(self.params.imgIds)
            splits: tuple[list, list, list] = ([], [], [])
            for image_id in evaluated:
                crowd_index = self.cocoGt.imgs[image_id].get("crowdIndex", 0.0)
                splits[0 if crowd_index < first else 1 if crowd_index < second else 2].append(image_id)
            scores = []
            for ids in splits:
                self.params.imgIds = ids
                self.evaluate()
                self.accumulate()
                scores.append(round(float(np.mean(self.eval["precision"][:, :, :, 0, :])), 4))
            self.params.imgIds = evaluated
            return scores

    return CrowdPoseEval


def score_results(coco_gt, results: list[dict], iou_type: str, image_ids: Sequence[int], backend: str,
                  sigmas: Optional[Sequence[float]] = None, log: Optional[Callable[[str], None]] = None
                  ) -> np.ndarray:
    """Run COCO-style evaluation of ``results`` on ``image_ids``; returns the summary stats array.

    iou_type: 'bbox' or 'keypoints'; backend: 'coco' (pycocotools) or 'crowdpose' (faster-coco-eval).
    ``coco_gt`` must come from ``load_ground_truth(..., backend)``. ``results`` are not modified.
    """
    results = copy.deepcopy(results)
    categories = set(coco_gt.getCatIds())
    results = [r for r in results if r["category_id"] in categories]
    lines: list[str] = []
    if backend == "crowdpose":
        cocoeval_class = _crowdpose_eval_class()
        coco_dt = coco_gt.loadRes(results)
        kwargs = {"iouType": "bbox"} if iou_type == "bbox" else {
            "iouType": "keypoints_crowd", "kpt_oks_sigmas": np.asarray(sigmas, dtype=np.float64), "use_area": False}
        evaluator = cocoeval_class(coco_gt, coco_dt, print_function=lines.append, **kwargs)
        evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        stats = np.asarray(evaluator.stats, dtype=np.float64)
    elif backend == "coco":
        from pycocotools.cocoeval import COCOeval
        with quiet():
            coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if iou_type == "keypoints" and sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        capture = io.StringIO()
        with contextlib.redirect_stdout(capture):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        lines = capture.getvalue().splitlines()
        stats = np.asarray(evaluator.stats, dtype=np.float64)
    else:
        raise ValueError(f"unknown evaluation backend {backend!r}: expected 'coco' or 'crowdpose'")
    if log is not None:
        summary = [str(line) for line in lines if str(line).lstrip().startswith("Average")]
        log(f"IoU metric: {iou_type}\n" + "\n".join(summary))
    return stats


def _empty_results(coco_gt):
    """A results COCO with no detections (pycocotools' loadRes rejects an empty list)."""
    from pycocotools.coco import COCO
    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                     "categories": copy.deepcopy(coco_gt.dataset.get("categories", []))}
    empty.createIndex()
    return empty


class KeypointEvaluator:
    """Box and keypoint AP of a dataset (the ``DatasetEvaluator`` protocol).

    ``reset()``; ``process(image_ids, results)`` per batch (a repeated image keeps its first predictions, as the
    reference's de-duplication of padded samplers); ``evaluate() -> {'coco_eval_bbox': [12 floats],
    'coco_eval_keypoints_detr': [10 floats (coco) or 9 (crowdpose: AP, AP50, AP75, AR, AR50, AR75, AP_easy,
    AP_medium, AP_hard)]}`` gathers the ranks, scores, and writes the COCO results files to ``output_dir``; index 0
    is the keypoint AP.

    ``ground_truth``: a ``GroundTruth`` (shared, not re-read; its backend and sigmas are used) or what
    ``load_ground_truth`` reads (a path, a dict or a COCO object) with ``backend`` and ``sigmas``.
    """

    def __init__(self, ground_truth: Union[GroundTruth, str, Path, dict, Any], *, backend: str = "coco",
                 sigmas: Optional[Sequence[float]] = None, output_dir: Optional[Union[str, Path]] = None,
                 iou_types: Iterable[str] = ("bbox", "keypoints"), log: Optional[Callable[[str], None]] = print):
        if not isinstance(ground_truth, GroundTruth):
            ground_truth = GroundTruth.load(ground_truth, backend, sigmas)
        self.ground_truth = ground_truth
        self.backend = ground_truth.backend
        self.sigmas = ground_truth.sigmas
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.iou_types = tuple(iou_types)
        self.log = log
        self.keypoint_stat_names = KEYPOINT_STAT_NAMES[self.backend]
        self.reset()

    @property
    def coco_gt(self):
        """The backend's COCO object of the ground truth."""
        return self.ground_truth.coco

    @property
    def img_ids(self) -> list[int]:
        return sorted(self._per_image)

    # ------------------------------------------------------------------------------------------- the protocol
    def reset(self) -> None:
        self._per_image: dict[int, tuple[list[dict], list[dict]]] = {}
        self._gathered = False
        self.stats: dict[str, np.ndarray] = {}

    def process(self, image_ids: Sequence[int], results: Sequence[Mapping[str, Any]]) -> None:
        """Record one batch: ``results[i]`` (see ``predictions_to_coco_results``) is the prediction of
        ``image_ids[i]``; an image already recorded keeps its first predictions."""
        if self._gathered:
            raise RuntimeError("process() after evaluate(); call reset() to start a new evaluation")
        ids = [int(i) for i in image_ids]
        unknown = [i for i in ids if i not in self.coco_gt.imgs]
        if unknown:
            raise KeyError(f"image ids {unknown[:5]} are not in the ground truth; wrong annotation file?")
        for image_id, prediction in zip(ids, results):
            if image_id not in self._per_image:
                self._per_image[image_id] = predictions_to_coco_results(image_id, prediction)

    def evaluate(self) -> dict[str, list[float]]:
        """Every rank's predictions scored (the same numbers on every rank); the results files are written."""
        return self.summarize()

    # ------------------------------------------------------------------------------------- the steps of evaluate
    def _gather(self) -> None:
        """Every rank's predictions, first occurrence of an image winning (a no-op without distributed)."""
        if not self._gathered:
            self._gathered = True
            self._per_image = gather_first_occurrence(self._per_image)

    def results(self, iou_type: str) -> list[dict]:
        """COCO results of all collected images for 'bbox' or 'keypoints', ordered by image id."""
        slot = 0 if iou_type == "bbox" else 1
        return [r for image_id in self.img_ids for r in self._per_image[image_id][slot]]

    def accumulate(self) -> None:
        """Gather the ranks and score every IoU type (evaluate + accumulate + summarize of the backend)."""
        self._gather()
        for iou_type in self.iou_types:
            self.stats[iou_type] = score_results(self.coco_gt, self.results(iou_type), iou_type, self.img_ids,
                                                 self.backend, self.sigmas, self.log)

    def summarize(self) -> dict[str, list[float]]:
        """Stats under the reference's log names; writes the COCO results JSON files to ``output_dir``."""
        if not self.stats:
            self.accumulate()
        self.write_results()
        return {STAT_KEYS[t]: self.stats[t].tolist() for t in self.iou_types}

    def per_image_ap(self) -> PerImageKeypointAP:
        """Per-image keypoint AP (for NoC) on this evaluator's ground truth (``GroundTruth.per_image_ap``)."""
        return self.ground_truth.per_image_ap()

    def write_results(self) -> list[Path]:
        """Write ``{bbox,keypoints}_results.json`` (scored categories only) on the main process."""
        if self.output_dir is None or not is_main_process():
            return []
        self.output_dir.mkdir(parents=True, exist_ok=True)
        categories = set(self.coco_gt.getCatIds())
        written = []
        for iou_type in self.iou_types:
            path = self.output_dir / f"{iou_type}_results.json"
            with open(path, "w") as handle:
                json.dump([r for r in self.results(iou_type) if r["category_id"] in categories], handle)
            written.append(path)
        return written


def evaluate_results_file(gt: Union[str, Path, dict, Any], results: Union[str, Path, list], *,
                          iou_type: str = "keypoints", backend: str = "coco",
                          sigmas: Optional[Sequence[float]] = None, image_ids: Optional[Sequence[int]] = None,
                          log: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """Score a COCO results JSON file (or list) against a ground-truth file; default images: all in the GT.

    Returns the stats array (keypoints: 10 numbers for 'coco', 9 for 'crowdpose'; bbox: 12).
    """
    coco_gt = load_ground_truth(gt, backend)
    if isinstance(results, (str, Path)):
        with open(results, "r") as handle:
            results = json.load(handle)
    ids = sorted(coco_gt.imgs) if image_ids is None else list(image_ids)
    return score_results(coco_gt, list(results), iou_type, ids, backend, sigmas, log)
