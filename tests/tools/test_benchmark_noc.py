"""The NoC benchmark's workload is sound: realistic GT, predictions that improve with clicks, and our click counts
equal to the original per-image procedure (small instance, so it runs in seconds)."""
from __future__ import annotations

import json

import numpy as np

from tools.benchmark_noc import (MAX_CLICKS, THRESHOLDS, make_ground_truth, make_predictions, noc_image_ids,
                                 original_noc_sample, ours_noc)


def test_small_benchmark_workload_agrees_with_original(tmp_path):
    gt = make_ground_truth(seed=3, num_images=40, images_with_people=20, target_people=80)
    anns = gt["annotations"]
    assert any(a["num_keypoints"] == 0 for a in anns) and any(a["num_keypoints"] > 0 for a in anns)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    ids = noc_image_ids(gt)
    kps, scores, labels = make_predictions(gt, ids, MAX_CLICKS + 1, seed=4)
    assert kps.shape == (MAX_CLICKS + 1, len(ids), 20, 17, 3)
    clicks = ours_noc(path, ids, kps, scores, labels)
    assert np.all(clicks[0.85] <= clicks[0.95]) and clicks[0.95].max() <= MAX_CLICKS
    assert clicks[0.85].mean() < MAX_CLICKS / 2  # clicks do help
    sample = list(range(min(3, len(ids))))
    original, evaluations, _ = original_noc_sample(path, ids, kps, scores, labels, sample)
    for thr in THRESHOLDS:
        assert original[thr] == clicks[thr][sample].tolist()
    assert evaluations == sum(int(clicks[t][i]) + 1 for t in THRESHOLDS for i in sample)


def test_one_pass_noc_and_ap_after_k_equal_pycocotools(tmp_path):
    """The benchmarked path (one matching pass per round) gives the same clicks as the NoC-only path and the same
    dataset-level stats as pycocotools after every round."""
    from pycocotools.coco import COCO

    from tools.benchmark_noc import _dataset_stats, ours_noc_and_apk

    gt = make_ground_truth(seed=5, num_images=60, images_with_people=30, target_people=120)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    ids = noc_image_ids(gt)
    kps, scores, labels = make_predictions(gt, ids, MAX_CLICKS + 1, seed=6)
    clicks, stats = ours_noc_and_apk(path, ids, kps, scores, labels)
    for thr, counts in ours_noc(path, ids, kps, scores, labels).items():
        assert clicks[thr].tolist() == counts.tolist()
    coco = COCO(str(path))
    for k in (0, 1, MAX_CLICKS):
        np.testing.assert_allclose(stats[k], _dataset_stats(coco, ids, kps[k], scores[k], labels[k]), rtol=0, atol=1e-12)
    assert stats[MAX_CLICKS, 0] > stats[0, 0]
