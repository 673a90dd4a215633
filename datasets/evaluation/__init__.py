"""Evaluation: box and keypoint AP, per-image AP, AP after k clicks, number of clicks (NoC) and their reports.

Every scorer follows one protocol (``base.DatasetEvaluator``: ``reset``, ``process(image_ids, results)``,
``evaluate() -> dict``); the ground truth is loaded once (``ground_truth.GroundTruth``) and shared by the evaluators
of a run.

- ``coco_eval``: ``KeypointEvaluator`` (pycocotools / faster-coco-eval CrowdPose), ``evaluate_results_file``;
- ``oks_ap``: ``PerImageKeypointAP``, pycocotools' keypoint AP of single images, vectorised;
- ``dataset_ap``: ``DatasetKeypointAP``, dataset-level keypoint stats from the per-image matches;
- ``per_image_ap``: ``PerImageAPEvaluator``, the per-image AP alone (NoC beside another dataset-level scorer);
- ``noc``: NoC maths and ``InteractiveResults``; ``report``: the interactive report files.
"""
from datasets.evaluation.base import DatasetEvaluator, EvaluatorGroup
from datasets.evaluation.coco_eval import (KeypointEvaluator, evaluate_results_file, predictions_to_coco_results,
                                           score_results)
from datasets.evaluation.dataset_ap import DatasetKeypointAP
from datasets.evaluation.ground_truth import CROWDPOSE_SCALE_PER_BOX_AREA, GroundTruth, load_ground_truth
from datasets.evaluation.noc import (InteractiveResults, ap_vs_clicks_table, check_thresholds, noc_per_image,
                                     noc_summary, resolve_max_clicks, threshold_key)
from datasets.evaluation.oks_ap import ImageMatches, PerImageKeypointAP
from datasets.evaluation.per_image_ap import PerImageAPEvaluator
from datasets.evaluation.report import write_click_list, write_interactive_report
from datasets.evaluation.stat_names import (BBOX_STAT_NAMES, KEYPOINT_STAT_NAMES, KEYPOINT_STATS_KEY, PER_IMAGE_AP_KEY,
                                            STAT_KEYS)

__all__ = ["DatasetEvaluator", "EvaluatorGroup", "KeypointEvaluator", "evaluate_results_file",
           "predictions_to_coco_results", "score_results", "DatasetKeypointAP", "GroundTruth", "load_ground_truth",
           "CROWDPOSE_SCALE_PER_BOX_AREA", "InteractiveResults", "ap_vs_clicks_table", "check_thresholds",
           "noc_per_image", "noc_summary", "resolve_max_clicks", "threshold_key", "ImageMatches",
           "PerImageKeypointAP", "PerImageAPEvaluator", "write_click_list", "write_interactive_report",
           "BBOX_STAT_NAMES", "KEYPOINT_STAT_NAMES", "KEYPOINT_STATS_KEY", "PER_IMAGE_AP_KEY", "STAT_KEYS"]
