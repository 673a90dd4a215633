"""AP over a subset of keypoints: the new keypoints of an adaptation are scored on their own."""
from __future__ import annotations

import copy

import pytest

from datasets.coco import load_annotations
from datasets.evaluation import score_results
from datasets.keypoint_subset import keypoint_subset_stats, new_keypoints
from datasets.metadata import COCO_KEYPOINTS, HUMANART21_KEYPOINTS


@pytest.fixture(scope="module")
def gt21(shared_data):
    path = shared_data / "humanart" / "HumanArt" / "annotations" / "validation_humanart.json"
    return load_annotations(path, 21, "keypoints_21")


def _perfect(coco):
    return [{"image_id": a["image_id"], "category_id": 1, "keypoints": list(map(float, a["keypoints"])), "score": 0.9}
            for a in coco.dataset["annotations"]]


def test_new_keypoints_of_the_humanart_layout():
    assert new_keypoints(COCO_KEYPOINTS, HUMANART21_KEYPOINTS) == [17, 18, 19, 20]


def test_subset_ap_sees_only_the_chosen_keypoints(gt21):
    sigmas = HUMANART21_KEYPOINTS.sigmas
    exact = _perfect(gt21)
    assert keypoint_subset_stats(gt21, exact, [17, 18, 19, 20], sigmas)[0] == pytest.approx(1.0)
    # move the 4 new keypoints far away: the subset AP collapses, the 17 known ones stay perfect
    moved = copy.deepcopy(exact)
    for r in moved:
        for k in range(17, 21):
            r["keypoints"][3 * k] += 500.0
    assert keypoint_subset_stats(gt21, moved, [17, 18, 19, 20], sigmas)[0] == pytest.approx(0.0)
    assert keypoint_subset_stats(gt21, moved, list(range(17)), sigmas)[0] == pytest.approx(1.0)
    full = score_results(gt21, moved, "keypoints", sorted(gt21.imgs), "coco", sigmas)[0]
    assert 0.0 < full < 1.0


def test_bad_indices_are_errors(gt21):
    with pytest.raises(ValueError, match="outside the layout"):
        keypoint_subset_stats(gt21, [], [21], HUMANART21_KEYPOINTS.sigmas)
    with pytest.raises(ValueError, match="no keypoints selected"):
        keypoint_subset_stats(gt21, [], [], HUMANART21_KEYPOINTS.sigmas)
