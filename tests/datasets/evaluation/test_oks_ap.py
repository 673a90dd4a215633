"""PerImageKeypointAP must equal pycocotools' per-image COCOeval('keypoints') stats[0] exactly."""
from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datasets.evaluation.oks_ap import PerImageKeypointAP
from datasets.metadata import CROWDPOSE_KEYPOINTS
from tests.helpers.ground_truth import random_gt


# ------------------------------------------------------------------------------------------------ reference side
def _coco(dataset: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(dataset)
        coco.createIndex()
    return coco


def _reference_eval(coco: COCO, image_id, dets: list[dict], sigmas=None) -> COCOeval:
    """What the original did per image and round: loadRes + COCOeval restricted to the image."""
    with contextlib.redirect_stdout(io.StringIO()):
        if dets:
            coco_dt = coco.loadRes(copy.deepcopy(dets))
        else:  # loadRes cannot take an empty list; an empty results object is what it would build
            coco_dt = _coco({"images": coco.dataset["images"], "annotations": [],
                             "categories": coco.dataset["categories"]})
        evaluator = COCOeval(coco, coco_dt, "keypoints")
        evaluator.params.imgIds = [image_id]
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas)
        for step in (evaluator.evaluate, evaluator.accumulate, evaluator.summarize):
            step()
    return evaluator


def _reference_ap(coco: COCO, image_id, dets: list[dict], sigmas=None) -> float:
    return float(_reference_eval(coco, image_id, dets, sigmas).stats[0])


def _as_arrays(dets: list[dict], k: int):
    kps = np.asarray([d["keypoints"] for d in dets], dtype=np.float64).reshape(len(dets), k, 3)
    scores = np.asarray([d["score"] for d in dets], dtype=np.float64)
    labels = np.asarray([d["category_id"] for d in dets], dtype=np.int64)
    return kps, scores, labels


# ------------------------------------------------------------------------------------------------ random data
def _random_dets(rng: np.random.Generator, gt: dict, image_id, labels, k: int = 17) -> list[dict]:
    """0, a few, or more than 20 detections: near a GT at several error scales, or anywhere; tied scores, copies."""
    anns = [a for a in gt["annotations"] if a["image_id"] == image_id]
    num = int(rng.choice([0, rng.integers(1, 8), rng.integers(15, 35)]))
    dets = []
    for _ in range(num):
        if anns and rng.random() < 0.8:
            ann = anns[int(rng.integers(len(anns)))]
            kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(k, 3)
            xy = kp[:, :2] + rng.normal(0, 1, (k, 2)) * np.sqrt(ann["area"]) * rng.choice([0, .01, .03, .08, .2, 1])
            if kp[:, 2].max() == 0:  # around the box: exercises the "outside the doubled box" distance
                box = ann["bbox"]
                xy = np.asarray(box[:2]) + rng.uniform(-1, 2, (k, 2)) * np.asarray(box[2:])
        else:
            xy = rng.uniform(0, 640, (k, 2))
        score = float(np.round(rng.random(), 1)) if rng.random() < 0.5 else float(rng.random())
        triplets = np.concatenate([xy, np.full((k, 1), 0.7311)], axis=1).reshape(-1)
        dets.append({"image_id": image_id, "category_id": int(rng.choice(labels)), "keypoints": triplets.tolist(),
                     "score": score})
        if rng.random() < 0.1:
            dets.append(copy.deepcopy(dets[-1]))
    return dets


def _check_random(seed: int, cats, num_images: int, k: int = 17, sigmas=None, first_id: int = 1) -> int:
    rng = np.random.default_rng(seed)
    gt = random_gt(rng, num_images, cats, k, first_id)
    coco, ours = _coco(gt), PerImageKeypointAP(gt, sigmas=sigmas)
    ids = [img["id"] for img in gt["images"]]
    dets = [_random_dets(rng, gt, i, labels=(0,) + tuple(cats), k=k) for i in ids]
    got = ours.images_ap(ids, *zip(*[_as_arrays(d, k) for d in dets]))
    expected = np.asarray([_reference_ap(coco, i, d, sigmas) for i, d in zip(ids, dets)])
    np.testing.assert_array_equal(got, expected)
    return int((expected == -1).sum())


# ------------------------------------------------------------------------------------------------ tests
def test_random_images_equal_pycocotools_exactly():
    no_gt = sum(_check_random(seed, (1,), 40) for seed in range(4))
    assert no_gt > 0  # the random data did cover images whose AP is -1


def test_gt_annotation_id_zero_quirk_is_reproduced():
    # pycocotools stores the matched GT id as the match flag, so a match to GT id 0 counts as a miss.
    _check_random(11, (1,), 30, first_id=0)


def test_several_categories_equal_pycocotools():
    _check_random(5, (1, 2), 40)


def test_other_layout_with_given_sigmas_equals_pycocotools():
    sigmas = np.asarray(CROWDPOSE_KEYPOINTS.sigmas)
    _check_random(7, (1,), 30, k=14, sigmas=sigmas)


def test_oks_matrix_is_bit_equal_to_pycocotools():
    rng = np.random.default_rng(3)
    gt = random_gt(rng, 25)
    coco, ours = _coco(gt), PerImageKeypointAP(gt)
    compared = 0
    for img in gt["images"]:
        dets = [d for d in _random_dets(rng, gt, img["id"], labels=(1,)) if d]
        reference = _reference_eval(coco, img["id"], dets).ious[img["id"], 1] if dets else []
        if len(reference) == 0:
            continue
        unit = ours.gt.image_index[img["id"]]
        rows = np.arange(ours.gt.offset[unit], ours.gt.offset[unit] + ours.gt.count[unit])[None]
        kps, scores, _ = _as_arrays(dets, 17)
        order = np.argsort(-scores, kind="mergesort")[:20]
        oks = ours._oks(kps[order][None, ..., :2], rows, np.ones(rows.shape, dtype=bool))[0]
        # our GT rows are regular-first; reorder pycocotools' columns the same way
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        ignored = [bool(a["iscrowd"]) or a["num_keypoints"] == 0 or a["area"] > 1e10 for a in anns]
        np.testing.assert_array_equal(oks, reference[:, np.argsort(ignored, kind="mergesort")])
        compared += oks.size
    assert compared > 100


def test_coco_sample_with_xtcocoapi_predictions(shared_data):
    gt_path = shared_data / "coco/annotations/person_keypoints_val2017.json"
    preds = json.loads((shared_data / "coco/extras/xtcocoapi_example_coco_preds.json").read_text())
    coco, ours = _coco(json.loads(gt_path.read_text())), PerImageKeypointAP(str(gt_path))
    ids = sorted({p["image_id"] for p in preds})
    for image_id in ids:
        dets = [p for p in preds if p["image_id"] == image_id]
        assert ours.image_ap(image_id, *_as_arrays(dets, 17)) == _reference_ap(coco, image_id, dets)
    # known values: image 40083 passes 9 of 10 OKS thresholds
    assert ours.image_ap(40083, *_as_arrays([p for p in preds if p["image_id"] == 40083], 17)) == 0.9


@pytest.mark.parametrize("relpath", ["ochuman/annotations/ochuman_coco_format_test_range_0.00_1.00.json",
                                     "humanart/HumanArt/annotations/validation_humanart.json"])
def test_real_gt_with_jittered_gt_predictions(shared_data, relpath):
    gt = json.loads((shared_data / relpath).read_text())
    coco = _coco(gt)
    ours = PerImageKeypointAP(coco)  # from a COCO object this time
    rng = np.random.default_rng(0)
    for round_scale in (0.0, 0.02, 0.05, 0.15):  # like click rounds: smaller errors
        for img in gt["images"]:
            dets = []
            for ann in (a for a in gt["annotations"] if a["image_id"] == img["id"]):
                kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)
                for label in (1, 0):  # PostProcess emits both classes
                    xy = kp[:, :2] + rng.normal(0, 1, (17, 2)) * np.sqrt(ann["area"]) * round_scale
                    dets.append({"image_id": img["id"], "category_id": label, "score": float(rng.random()),
                                 "keypoints": np.concatenate([xy, np.ones((17, 1))], 1).reshape(-1).tolist()})
            dets.append({"image_id": img["id"], "category_id": 1, "score": 0.5,
                         "keypoints": rng.uniform(0, 500, 51).tolist()})  # a false positive
            got = ours.image_ap(img["id"], *_as_arrays(dets, 17))
            assert got == _reference_ap(coco, img["id"], dets)
            assert got >= 0


def _one_person_gt(extra_anns=(), extra_images=()) -> dict:
    kp = [[100 + 10 * j, 100 + 5 * j, 2] for j in range(17)]
    ann = {"id": 1, "image_id": 1, "category_id": 1, "keypoints": sum(kp, []), "num_keypoints": 17,
           "area": 20000.0, "bbox": [100, 100, 160, 80], "iscrowd": 0}
    return {"images": [{"id": 1}, {"id": 2}, *extra_images], "annotations": [ann, *extra_anns],
            "categories": [{"id": 1, "name": "person"}]}


def _gt_keypoints(gt: dict, ann_index: int = 0) -> np.ndarray:
    return np.asarray(gt["annotations"][ann_index]["keypoints"], dtype=np.float64).reshape(1, 17, 3)


def test_edge_cases():
    gt = _one_person_gt(extra_anns=[{"id": 2, "image_id": 3, "category_id": 1, "keypoints": [0] * 51,
                                     "num_keypoints": 0, "area": 100.0, "bbox": [0, 0, 10, 10], "iscrowd": 1}],
                        extra_images=[{"id": 3}])
    ours = PerImageKeypointAP(gt)
    exact = _gt_keypoints(gt)
    perfect = ours.image_ap(1, exact, [0.9])
    assert perfect == pytest.approx(1.0, abs=1e-15)  # precision tp / (tp + eps), as pycocotools
    assert ours.image_ap(1, np.zeros((0, 17, 3)), np.zeros(0)) == 0.0  # GT but no detection
    assert ours.image_ap(2, exact, [0.9]) == -1.0  # no GT at all
    assert ours.image_ap(3, exact, [0.9]) == -1.0  # only a crowd GT
    assert ours.image_ap(1, exact, [0.9], labels=[0]) == 0.0  # category 0 is not evaluated
    coco = _coco(gt)
    assert _reference_ap(coco, 3, [{"image_id": 3, "category_id": 1, "keypoints": exact.reshape(-1).tolist(),
                                    "score": 0.9}]) == -1.0


def test_only_the_top_max_dets_count():
    gt = _one_person_gt()
    exact = _gt_keypoints(gt)
    far = exact.copy()
    far[..., :2] += 500
    kps = np.concatenate([np.repeat(far, 20, axis=0), exact])  # the right one scores lowest: 21st
    scores = np.linspace(1.0, 0.5, 21)
    assert PerImageKeypointAP(gt).image_ap(1, kps, scores) == 0.0
    assert PerImageKeypointAP(gt, max_dets=21).image_ap(1, kps, scores) > 0.0


def test_score_ties_keep_input_order():
    gt = _one_person_gt()
    exact, far = _gt_keypoints(gt), _gt_keypoints(gt) + np.array([300.0, 300.0, 0.0])
    coco, ours = _coco(gt), PerImageKeypointAP(gt)
    for kps in (np.concatenate([exact, far]), np.concatenate([far, exact])):
        dets = [{"image_id": 1, "category_id": 1, "keypoints": k.reshape(-1).tolist(), "score": 0.5} for k in kps]
        assert ours.image_ap(1, kps, [0.5, 0.5]) == _reference_ap(coco, 1, dets)
    # the false positive ranked first lowers precision at every recall level
    assert ours.image_ap(1, np.concatenate([far, exact]), [0.5, 0.5]) < 0.6
    assert ours.image_ap(1, np.concatenate([exact, far]), [0.5, 0.5]) > 0.99


def test_input_forms_agree():
    rng = np.random.default_rng(2)
    gt = random_gt(rng, 12)
    ours = PerImageKeypointAP(gt)
    ids = [img["id"] for img in gt["images"]]
    kps = rng.uniform(0, 500, (len(ids), 20, 17, 3))
    for b, img_id in enumerate(ids):  # put some detections on the people
        anns = [a for a in gt["annotations"] if a["image_id"] == img_id]
        for j, ann in enumerate(anns[:20]):
            kps[b, j] = np.asarray(ann["keypoints"]).reshape(17, 3) + rng.normal(0, 2, (17, 3))
    scores, labels = rng.random((len(ids), 20)), rng.integers(0, 2, (len(ids), 20))
    stacked = ours.images_ap(ids, kps, scores, labels)
    assert (stacked > 0).sum() >= 3
    flat = ours.images_ap(np.asarray(ids), kps.reshape(len(ids), 20, 51), scores, labels)
    as_lists = ours.images_ap(ids, list(kps), list(scores), list(labels))
    as_dicts = ours.images_ap(ids, [{"keypoints": torch.from_numpy(k).float(), "scores": torch.from_numpy(s).float(),
                                     "labels": torch.from_numpy(lb), "boxes": torch.zeros(20, 4)}
                                    for k, s, lb in zip(kps, scores, labels)])
    single = [ours.image_ap(i, k[..., :2], s, lb) for i, k, s, lb in zip(ids, kps, scores, labels)]
    np.testing.assert_array_equal(stacked, flat)
    np.testing.assert_array_equal(stacked, as_lists)
    np.testing.assert_array_equal(stacked, single)
    # float32 inputs (as the model gives them) round differently, but stay close
    np.testing.assert_allclose(as_dicts, stacked, atol=0.05)


def test_clear_errors():
    gt = _one_person_gt()
    ours = PerImageKeypointAP(gt)
    with pytest.raises(ValueError, match="not in the ground truth"):
        ours.image_ap(99, _gt_keypoints(gt), [1.0])
    with pytest.raises(ValueError, match="keypoints of shape"):
        ours.image_ap(1, np.zeros((1, 5, 3)), [1.0])
    with pytest.raises(ValueError, match="OKS sigmas"):
        PerImageKeypointAP(gt, sigmas=[0.1] * 14)
    del gt["annotations"][0]["area"]
    with pytest.raises(ValueError, match="'area'"):
        PerImageKeypointAP(gt)


def _person(ann_id: int, xy: np.ndarray, image_id: int = 1) -> dict:
    kp = np.concatenate([xy, np.full((17, 1), 2.0)], axis=1)
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
            "num_keypoints": 17, "area": 20000.0, "bbox": [90.0, 90.0, 200.0, 120.0], "iscrowd": 0}


def _dets(kps: list[np.ndarray], scores: list[float]) -> list[dict]:
    return [{"image_id": 1, "category_id": 1, "keypoints": np.concatenate([k, np.ones((17, 1))], 1).reshape(-1).tolist(),
             "score": s} for k, s in zip(kps, scores)]


def test_equal_oks_goes_to_the_later_gt():
    # det1 sits exactly between GT a and GT b (equal OKS to both); det2 sits on a. pycocotools gives det1 the later
    # GT (b), so det2 can still match a: two true positives. Taking the first GT would leave det2 unmatched.
    base = np.stack([100.0 + 10 * np.arange(17), 100.0 + 5 * np.arange(17)], axis=1)
    gt = {"images": [{"id": 1}], "annotations": [_person(1, base + 3), _person(2, base - 3)],
          "categories": [{"id": 1, "name": "person"}]}
    dets = _dets([base, base + 3], [0.9, 0.8])
    ours = PerImageKeypointAP(gt)
    got = ours.image_ap(1, *_as_arrays(dets, 17)[:2])
    assert got == _reference_ap(_coco(gt), 1, dets)
    assert got > 0.9  # giving det1 the first GT instead would score 0.826


def test_match_to_gt_with_id_zero_counts_as_a_miss():
    base = np.stack([100.0 + 10 * np.arange(17), 100.0 + 5 * np.arange(17)], axis=1)
    gt = {"images": [{"id": 1}], "annotations": [_person(0, base)], "categories": [{"id": 1, "name": "person"}]}
    dets = _dets([base], [0.9])
    got = PerImageKeypointAP(gt).image_ap(1, *_as_arrays(dets, 17)[:2])
    assert got == _reference_ap(_coco(gt), 1, dets) == 0.0


def test_sigmas_default_only_for_cocos_layout():
    gt14 = random_gt(np.random.default_rng(3), 2, k=14)
    with pytest.raises(ValueError, match="14 keypoints: pass that layout's OKS sigmas"):
        PerImageKeypointAP(gt14)
    assert PerImageKeypointAP(gt14, sigmas=CROWDPOSE_KEYPOINTS.sigmas).num_keypoints == 14
