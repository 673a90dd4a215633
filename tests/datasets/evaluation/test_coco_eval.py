"""Evaluators: the reference numbers of the sample predictions, ground truth scoring AP 1.0 through the whole
dataset -> prediction -> evaluator path, category filtering, results files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datasets import build_dataset, build_evaluator, evaluate_results_file
from datasets.evaluation import KeypointEvaluator, predictions_to_coco_results
from datasets.metadata import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS
from util.box_ops import box_cxcywh_to_xyxy


def test_coco_reference_numbers(shared_data):
    stats = evaluate_results_file(shared_data / "coco/annotations/person_keypoints_val2017.json",
                                  shared_data / "coco/extras/xtcocoapi_example_coco_preds.json",
                                  sigmas=COCO_KEYPOINTS.sigmas)
    assert stats.round(4).tolist() == [0.8609, 0.9931, 0.9109, 0.7756, 0.9373, 0.875, 1.0, 0.9167, 0.78, 0.9429]


def test_crowdpose_reference_numbers(shared_data):
    extras = shared_data / "crowdpose/extras"
    stats = evaluate_results_file(extras / "xtcocoapi_example_crowdpose_val.json",
                                  extras / "xtcocoapi_example_crowdpose_preds.json", backend="crowdpose",
                                  sigmas=CROWDPOSE_KEYPOINTS.sigmas)
    assert stats.round(4).tolist() == [0.7877, 0.9881, 0.7314, 0.8222, 1.0, 0.7778, 1.0, 0.9802, 0.4116]


def _targets_as_predictions(target: dict, num_kpts: int, with_background_copies: bool = False) -> dict:
    """A model-layout target turned into a post-processed prediction in original-image pixels."""
    h, w = target["orig_size"].tolist()
    n = target["boxes"].shape[0]
    boxes = box_cxcywh_to_xyxy(target["boxes"]) * torch.tensor([w, h, w, h])
    xy = target["keypoints"][:, :2 * num_kpts].reshape(n, num_kpts, 2) * torch.tensor([w, h])
    keypoints = torch.cat([xy, torch.ones(n, num_kpts, 1)], dim=-1)
    scores, labels = torch.ones(n), torch.ones(n, dtype=torch.int64)
    if with_background_copies:  # the reference post-process also emits label-0 entries, here with higher scores
        boxes, keypoints = boxes.repeat(2, 1), keypoints.repeat(2, 1, 1)
        scores = torch.cat([torch.full((n,), 2.0), scores])
        labels = torch.cat([torch.zeros(n, dtype=torch.int64), labels])
    return {"scores": scores, "labels": labels, "boxes": boxes, "keypoints": keypoints}


@pytest.mark.parametrize("name", ["coco", "crowdpose", "humanart", "ochuman"])
def test_ground_truth_through_the_dataset_scores_ap_one(name, tmp_path, sample_root, make_args):
    args = make_args(name, sample_root(name))
    dataset = build_dataset("val", args)
    num_kpts = dataset.metadata.num_keypoints
    evaluator = build_evaluator(dataset, args, output_dir=tmp_path, log=None)
    for index in range(len(dataset)):
        _, target = dataset[index]
        prediction = _targets_as_predictions(target, num_kpts, with_background_copies=True)
        evaluator.process([int(target["image_id"])], [prediction])
    stats = evaluator.evaluate()
    assert set(stats) == {"coco_eval_bbox", "coco_eval_keypoints_detr"}
    assert len(stats["coco_eval_bbox"]) == 12
    assert len(stats["coco_eval_keypoints_detr"]) == (9 if name == "crowdpose" else 10)
    assert round(stats["coco_eval_keypoints_detr"][0], 4) == 1.0
    # bbox AP counts the zero-keypoint people (not in the targets) as misses: same as their GT boxes as results
    gt = json.loads(dataset.ann_file.read_text())
    gt_boxes = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0}
                for a in gt["annotations"] if not a.get("iscrowd") and a["num_keypoints"] > 0]
    expected_bbox = evaluate_results_file(dataset.ann_file, gt_boxes, iou_type="bbox", backend=evaluator.backend)
    assert 0.5 < stats["coco_eval_bbox"][0] == pytest.approx(expected_bbox[0], abs=1e-4)
    written = json.loads((tmp_path / "keypoints_results.json").read_text())
    assert written and all(r["category_id"] == 1 for r in written)
    assert len(written[0]["keypoints"]) == 3 * num_kpts
    # the written file scores the same
    again = evaluate_results_file(dataset.ann_file, tmp_path / "keypoints_results.json",
                                  backend=evaluator.backend, sigmas=dataset.metadata.sigmas,
                                  image_ids=evaluator.img_ids)
    assert np.allclose(again, stats["coco_eval_keypoints_detr"])


@pytest.mark.parametrize("name,backend", [("coco", "coco"), ("crowdpose", "crowdpose"), ("humanart", "coco"),
                                          ("ochuman", "coco")])
def test_ground_truth_file_as_results_scores_ap_one(name, backend, sample_root, make_args):
    args = make_args(name, sample_root(name))
    dataset = build_dataset("val", args, transforms=None)
    gt = json.loads(dataset.ann_file.read_text())
    results = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
               for a in gt["annotations"] if not a.get("iscrowd") and a["num_keypoints"] > 0]
    stats = evaluate_results_file(dataset.ann_file, results, backend=backend, sigmas=dataset.metadata.sigmas)
    assert round(float(stats[0]), 4) == 1.0


def test_worse_predictions_score_lower(sample_root, make_args):
    args = make_args("coco", sample_root("coco"))
    dataset = build_dataset("val", args)
    stats = {}
    for shift in (0.0, 8.0):
        evaluator = build_evaluator(dataset, args, log=None)
        for index in range(len(dataset)):
            _, target = dataset[index]
            prediction = _targets_as_predictions(target, 17)
            prediction["keypoints"][..., 0] += shift
            evaluator.process([int(target["image_id"])], [prediction])
        stats[shift] = evaluator.evaluate()["coco_eval_keypoints_detr"][0]
    assert stats[0.0] == pytest.approx(1.0) and stats[8.0] < 0.9


def test_prediction_formats_and_first_update_wins(shared_data):
    gt = shared_data / "coco/annotations/person_keypoints_val2017.json"
    evaluator = KeypointEvaluator(gt, sigmas=COCO_KEYPOINTS.sigmas, log=None)
    kpts = torch.rand(2, 17, 3) * 100
    base = {"scores": torch.tensor([0.9, 0.5]), "labels": torch.tensor([1, 0]),
            "boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 5.0, 5.0]])}
    bbox, kp = predictions_to_coco_results(785, dict(base, keypoints=kpts))
    _, kp_flat = predictions_to_coco_results(785, dict(base, keypoints=kpts.reshape(2, 51)))
    assert kp == kp_flat and len(kp[0]["keypoints"]) == 51
    assert bbox[0]["bbox"] == [1.0, 2.0, 10.0, 20.0] and bbox[1]["category_id"] == 0
    empty = {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
             "boxes": torch.zeros(0, 4), "keypoints": torch.zeros(0, 17, 3)}
    evaluator.process([785], [dict(base, keypoints=kpts)])
    evaluator.process([785, 40083], [empty, empty])
    assert evaluator.img_ids == [785, 40083]
    assert len(evaluator.results("keypoints")) == 2  # the repeat of 785 was ignored
    with pytest.raises(KeyError, match="not in the ground truth"):
        evaluator.process([123], [empty])
    evaluator.evaluate()
    with pytest.raises(RuntimeError, match="reset"):
        evaluator.process([785], [empty])
    evaluator.reset()
    evaluator.process([40083], [empty])
    assert evaluator.img_ids == [40083]


def test_no_predictions_scores_zero(shared_data):
    gt = shared_data / "coco/annotations/person_keypoints_val2017.json"
    evaluator = KeypointEvaluator(gt, sigmas=COCO_KEYPOINTS.sigmas, log=None)
    empty = {"scores": [], "labels": [], "boxes": torch.zeros(0, 4), "keypoints": torch.zeros(0, 17, 3)}
    evaluator.process([785], [empty])
    assert evaluator.evaluate()["coco_eval_keypoints_detr"][0] == 0.0


def test_evaluate_merges_ranks_once_first_occurrence_wins(shared_data, monkeypatch):
    import util.distributed as distributed
    gt = shared_data / "coco/annotations/person_keypoints_val2017.json"
    evaluator = KeypointEvaluator(gt, sigmas=COCO_KEYPOINTS.sigmas, log=None)
    one = {"scores": [0.9], "labels": [1], "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
           "keypoints": torch.ones(1, 17, 3)}
    evaluator.process([785], [one])
    other_rank = KeypointEvaluator(evaluator.ground_truth, log=None)
    other_rank.process([40083, 785], [one, dict(one, scores=[0.1])])  # 785 again: a padded sampler's repeat
    calls = []

    def fake_all_gather(data):
        calls.append(1)
        return [data, dict(other_rank._per_image)]

    monkeypatch.setattr(distributed, "all_gather", fake_all_gather)
    first = evaluator.evaluate()
    assert evaluator.evaluate() == first
    assert len(calls) == 1
    assert evaluator.img_ids == [785, 40083]
    assert [r["score"] for r in evaluator.results("keypoints")] == [0.9, 0.9]


def test_crowdpose_box_ap_uses_box_area_for_size_ranges(shared_data):
    gt_file = shared_data / "crowdpose/extras/xtcocoapi_example_crowdpose_val.json"
    gt = json.loads(gt_file.read_text())
    assert all("area" not in a for a in gt["annotations"])
    results = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    stats = evaluate_results_file(gt_file, results, iou_type="bbox", backend="crowdpose")
    # every box is >= 90x94 px: no small ones (-1), medium and large are scored
    assert stats[0] == 1.0 and stats[3] == -1.0 and stats[4] == 1.0 and stats[5] == 1.0


def test_per_image_ap_uses_each_scorers_oks_scale(shared_data):
    """NoC's per-image AP: COCO with the annotation's area; CrowdPose (no 'area') with 0.53 x the box area, the
    scale of its scorer; checked against pycocotools on a GT whose areas are set that way."""
    import copy

    from datasets.metadata import CROWDPOSE_KEYPOINTS
    from datasets.evaluation.oks_ap import PerImageKeypointAP

    path = shared_data / "crowdpose/extras/xtcocoapi_example_crowdpose_val.json"
    gt = json.loads(path.read_text())
    evaluator = KeypointEvaluator(str(path), backend="crowdpose", sigmas=CROWDPOSE_KEYPOINTS.sigmas, log=None)
    per_image = evaluator.per_image_ap()
    scaled = copy.deepcopy(gt)
    for ann in scaled["annotations"]:
        ann["area"] = 0.53 * ann["bbox"][2] * ann["bbox"][3]
    reference = PerImageKeypointAP(scaled, sigmas=CROWDPOSE_KEYPOINTS.sigmas)  # itself equal to pycocotools
    rng = np.random.default_rng(0)
    smaller = 0
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        kps = np.asarray([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), 14, 3)
        kps[..., :2] += rng.normal(0, 6, kps[..., :2].shape)
        scores = rng.uniform(0.1, 1, len(anns))
        got = per_image.image_ap(image["id"], kps, scores)
        assert got == reference.image_ap(image["id"], kps, scores)
        unscaled = PerImageKeypointAP(evaluator.coco_gt, sigmas=CROWDPOSE_KEYPOINTS.sigmas).image_ap(
            image["id"], kps, scores)  # the box area itself: a larger scale, so a higher AP somewhere
        smaller += got < unscaled
    assert smaller > 0


def test_evaluators_built_on_one_ground_truth_share_it(sample_root, make_args, monkeypatch):
    """build_evaluator(..., ground_truth=) and KeypointEvaluator(GroundTruth) read nothing again (CrowdPose: the
    file), and the per-image AP matcher is built once."""
    import datasets.evaluation.ground_truth as ground_truth_module

    args = make_args("crowdpose", sample_root("crowdpose"))
    dataset = build_dataset("val", args, transforms=None)
    loads = []
    real_load = ground_truth_module.load_ground_truth
    monkeypatch.setattr(ground_truth_module, "load_ground_truth", lambda *a: loads.append(a) or real_load(*a))
    report = build_evaluator(dataset, args, log=None)
    rounds = [build_evaluator(dataset, ground_truth=report.ground_truth, iou_types=("keypoints",), log=None)
              for _ in range(3)] + [KeypointEvaluator(report.ground_truth, log=None)]
    assert len(loads) == 1 and loads[0][1] == "crowdpose"
    assert all(e.coco_gt is report.coco_gt and e.backend == "crowdpose" for e in rounds)
    assert rounds[0].sigmas == list(CROWDPOSE_KEYPOINTS.sigmas)
    assert report.per_image_ap() is rounds[1].per_image_ap()
