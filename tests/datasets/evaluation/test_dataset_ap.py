"""DatasetKeypointAP must give pycocotools' dataset-level COCOeval('keypoints') stats (to 4 decimals; in practice
bit for bit) from the per-image match records."""
from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval

from datasets.evaluation.dataset_ap import DatasetKeypointAP
from datasets.evaluation.oks_ap import PerImageKeypointAP
from tests.datasets.evaluation.test_oks_ap import _as_arrays, _coco, _random_dets
from tests.helpers.ground_truth import random_gt


def _pycocotools_stats(gt: dict, dets: list[dict], image_ids, sigmas=None) -> np.ndarray:
    coco = _coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "keypoints")
        evaluator.params.imgIds = list(image_ids)
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas)
        for step in (evaluator.evaluate, evaluator.accumulate, evaluator.summarize):
            step()
    return np.asarray(evaluator.stats)


def _ours(gt, dets_per_image: dict, batches: list[list], k: int = 17) -> tuple[np.ndarray, DatasetKeypointAP]:
    per_image = PerImageKeypointAP(gt)
    scorer = DatasetKeypointAP()
    for batch in batches:
        arrays = [_as_arrays(dets_per_image[i], k) for i in batch]
        ap, matches = per_image.evaluate(batch, *zip(*arrays))
        np.testing.assert_array_equal(ap, per_image.images_ap(batch, *zip(*arrays)))  # same AP either way
        scorer.add(matches)
    return scorer.summarize(), scorer


@pytest.mark.parametrize("seed, cats", [(0, (1,)), (1, (1,)), (2, (1, 2))])
def test_random_data_equals_pycocotools(seed, cats):
    rng = np.random.default_rng(seed)
    gt = random_gt(rng, 60, cats)
    ids = [img["id"] for img in gt["images"]]
    dets = {i: _random_dets(rng, gt, i, labels=(0,) + tuple(cats)) for i in ids}
    order = list(rng.permutation(ids))  # batches in any order, one image repeated (a padded sampler)
    batches = [order[:7], order[7:30], order[30:], [order[3]]]
    got, _ = _ours(gt, dets, batches)
    expected = _pycocotools_stats(gt, [d for i in ids for d in dets[i]], ids)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert len(set(np.round(expected, 4))) > 5  # the stats differ from each other: a mixed-up order would show


def test_coco_reference_predictions(shared_data):
    """DESIGN §7: the xtcocoapi example predictions give AP 0.8609, AP50 0.9931, AP75 0.9109."""
    gt = json.loads((shared_data / "coco/annotations/person_keypoints_val2017.json").read_text())
    preds = json.loads((shared_data / "coco/extras/xtcocoapi_example_coco_preds.json").read_text())
    ids = [img["id"] for img in gt["images"]]
    dets = {i: [p for p in preds if p["image_id"] == i] for i in ids}
    got, _ = _ours(gt, dets, [ids[:1], ids[1:]])
    np.testing.assert_allclose(got, _pycocotools_stats(gt, preds, ids), rtol=0, atol=1e-12)
    assert np.round(got[:3], 4).tolist() == [0.8609, 0.9931, 0.9109]


def test_medium_and_large_and_empty():
    """A medium and a large person: APm / APl see only their own; no records at all gives -1 everywhere."""
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "person"}], "annotations": []}
    for ann_id, (image_id, size) in enumerate(((1, 50.0), (2, 200.0)), start=1):
        kp = [[10 + size * (j % 4) / 4, 10 + size * (j // 4) / 5, 2] for j in range(17)]
        gt["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": 1, "keypoints": sum(kp, []),
                                  "num_keypoints": 17, "area": size * size, "bbox": [10, 10, size, size],
                                  "iscrowd": 0})
    exact = [{"image_id": a["image_id"], "category_id": 1, "score": 0.9, "keypoints": a["keypoints"]}
             for a in gt["annotations"]]
    wrong = copy.deepcopy(exact[1])
    wrong["keypoints"] = [v + 80 if j % 3 == 0 else v for j, v in enumerate(wrong["keypoints"])]
    dets = {1: exact[:1], 2: [wrong]}  # the medium one exact, the large one far off
    got, _ = _ours(gt, dets, [[1, 2]])
    np.testing.assert_allclose(got, _pycocotools_stats(gt, exact[:1] + [wrong], [1, 2]), rtol=0, atol=1e-12)
    assert got[3] == pytest.approx(1.0) and got[4] == 0.0  # APm, APl
    assert DatasetKeypointAP().summarize().tolist() == [-1.0] * 10


def _as_results(dets: list[dict], k: int = 17) -> dict:
    """A post-processed prediction (torch tensors, as the PostProcess returns) of COCO-format detections."""
    kps, scores, labels = _as_arrays(dets, k)
    return {"keypoints": torch.from_numpy(kps), "scores": torch.from_numpy(scores), "labels": torch.from_numpy(labels)}


def test_the_evaluator_protocol_gives_the_same_stats_and_each_images_ap():
    """reset / process(image_ids, results) / evaluate: the pycocotools stats, and the per-image AP of each image."""
    rng = np.random.default_rng(4)
    gt = random_gt(rng, 30)
    ids = [img["id"] for img in gt["images"]]
    dets = {i: _random_dets(rng, gt, i, labels=(0, 1)) for i in ids}
    matcher = PerImageKeypointAP(gt)
    scorer = DatasetKeypointAP(matcher)
    scorer.process(ids[:4], [_as_results([dict(d, score=0.5) for d in dets[ids[0]]])] * 4)  # forgotten by reset
    scorer.reset()
    for batch in (ids[10:], ids[:10], ids[:2]):  # the last batch repeats two images: their first records count
        scorer.process(batch, [_as_results(dets[i]) for i in batch])
    stats = scorer.evaluate()
    expected = _pycocotools_stats(gt, [d for i in ids for d in dets[i]], ids)
    np.testing.assert_allclose(stats["coco_eval_keypoints_detr"], expected, rtol=0, atol=1e-12)
    assert list(stats["per_image_ap"]) == sorted(ids)
    alone = matcher.images_ap(ids, *zip(*[_as_arrays(dets[i], 17) for i in ids]))
    assert [stats["per_image_ap"][i] for i in ids] == alone.tolist()
    with pytest.raises(RuntimeError, match="reset"):
        scorer.process(ids[:1], [_as_results(dets[ids[0]])])


def test_two_ranks_are_gathered_first_occurrence_winning(monkeypatch):
    """Rank 1 repeats one of rank 0's images with other predictions (a padded sampler): rank 0's records count."""
    import util.distributed as distributed

    rng = np.random.default_rng(5)
    gt = random_gt(rng, 12)
    ids = [img["id"] for img in gt["images"]]
    dets = {i: _random_dets(rng, gt, i, labels=(1,)) for i in ids}
    matcher = PerImageKeypointAP(gt)
    rank0, rank1 = DatasetKeypointAP(matcher), DatasetKeypointAP(matcher)
    rank0.process(ids[:6], [_as_results(dets[i]) for i in ids[:6]])
    rank1.process(ids[6:] + ids[:1], [_as_results(dets[i]) for i in ids[6:]] + [_as_results([])])
    monkeypatch.setattr(distributed, "all_gather", lambda data: [data, dict(rank1._records)])
    stats = rank0.evaluate()
    expected = _pycocotools_stats(gt, [d for i in ids for d in dets[i]], ids)
    np.testing.assert_allclose(stats["coco_eval_keypoints_detr"], expected, rtol=0, atol=1e-12)
    assert sorted(stats["per_image_ap"]) == sorted(ids)
