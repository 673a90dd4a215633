"""Benchmark: the metric side of interactive evaluation, ours vs the original's procedure, in one run.

Workload (what a COCO val2017 NoC evaluation computes once the model has produced its predictions):
  * NoC@85/90/95: per-image keypoint AP after 0..17 click rounds;
  * AP after k = 1..17 clicks: dataset-level COCO keypoint AP of each round's predictions.

Ours: the GT is indexed once (``PerImageKeypointAP``); one vectorised matching pass per round
(``PerImageKeypointAP.evaluate``) gives the per-image AP of every image (``noc_per_image`` derives all thresholds)
and the records that ``DatasetKeypointAP`` pools into the dataset-level AP after k clicks. Also timed in the same
run: the per-image AP alone (NoC only), and the previous AP@k path (pycocotools, GT loaded once, one COCOeval per
round), whose numbers ours must equal to 4 decimals.
Original (clickpose.py ``human_feedback_loop_NOC_test`` + three NoC runs + 17 k-click runs): for each threshold and
image, for each round until the threshold is reached, ``COCO(json)`` reload + ``loadRes`` + ``COCOeval`` restricted to
the image + ``summarize``; and for each k a fresh ``COCO(json)`` + ``loadRes`` + ``evaluate/accumulate/summarize``.

Data: a synthetic GT file the size and shape of ``person_keypoints_val2017.json`` (5000 images, ~11000 person
annotations of which ~6350 have keypoints, crowd regions, polygons), and synthetic predictions (20 per image, both
classes as the original PostProcess emits) whose errors shrink round by round as oracle clicks fix the worst
keypoint. The original procedure takes hours here, so it is timed on a sample of images (the full per-image loop,
all three thresholds) and extrapolated linearly per evaluation; the script prints the sample size and the factor.

    python -m tools.benchmark_noc [--repeats 5] [--sample-images 6] [--orig-apk-runs 2] [--pycocotools-rounds 17]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from datasets.evaluation.dataset_ap import DatasetKeypointAP
from datasets.evaluation.noc import noc_per_image, resolve_max_clicks
from datasets.evaluation.oks_ap import PerImageKeypointAP
from datasets.metadata import COCO_KEYPOINTS
from util.config import Config

_CONFIG = Config.fromfile(Path(__file__).resolve().parents[1] / "config" / "clickpose.cfg.py")
THRESHOLDS = tuple(_CONFIG.noc_thresholds)  # NoC@85/90/95 (the config holds the default)
MAX_CLICKS = resolve_max_clicks(_CONFIG.max_clicks, COCO_KEYPOINTS.num_keypoints)  # 17 unless the config sets it
NUM_SELECT = 20
# A standing person in a unit box (x, y), COCO-17 order: head, arms, hips, legs.
_POSE_TEMPLATE = np.array([[.50, .08], [.54, .05], [.46, .05], [.58, .07], [.42, .07], [.66, .22], [.34, .22],
                           [.74, .38], [.26, .38], [.78, .52], [.22, .52], [.60, .55], [.40, .55], [.62, .76],
                           [.38, .76], [.63, .96], [.37, .96]])


def make_ground_truth(seed: int = 0, num_images: int = 5000, images_with_people: int = 2693,
                      target_people: int = 11004) -> dict:
    """COCO-val-shaped person keypoint GT (sizes, counts, crowd share and polygons close to the real file)."""
    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (480, 640), (640, 427), (427, 640), (640, 424), (500, 375), (640, 360)]
    images, anns = [], []
    people_per_image = np.minimum(rng.geometric(images_with_people / target_people, images_with_people), 40)
    with_people = set(rng.choice(num_images, images_with_people, replace=False).tolist())
    counts = iter(people_per_image.tolist())
    for i in range(num_images):
        w, h = sizes[int(rng.integers(len(sizes)))]
        img_id = 100000 + 97 * i
        images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": w, "height": h, "license": 1})
        if i not in with_people:
            continue
        for _ in range(next(counts)):
            anns.append(_person(rng, len(anns) + 1, img_id, w, h))
    return {"info": {"description": "synthetic COCO-val-sized person keypoints"}, "licenses": [],
            "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "supercategory": "person",
                            "keypoints": list(COCO_KEYPOINTS.keypoint_names),
                            "skeleton": [[a + 1, b + 1] for a, b in COCO_KEYPOINTS.skeleton]}]}


def _person(rng: np.random.Generator, ann_id: int, img_id: int, w: int, h: int) -> dict:
    scale = float(np.clip(rng.lognormal(np.log(0.25), 0.7), 0.03, 0.95))
    bw, bh = scale * w * rng.uniform(0.35, 0.6), min(h - 1.0, scale * h * rng.uniform(0.8, 1.3))
    x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    crowd = rng.random() < 0.01
    # ~42% of COCO person boxes (mostly small ones) have no labelled keypoint
    unlabelled = crowd or rng.random() < (0.75 if bw * bh < 64 ** 2 else 0.25)
    labelled = 0 if unlabelled else int(rng.integers(1, 18))
    kps = np.zeros((17, 3))
    if labelled:
        which = rng.choice(17, labelled, replace=False)
        xy = np.array([x, y]) + (_POSE_TEMPLATE + rng.normal(0, 0.04, (17, 2))) * np.array([bw, bh])
        kps[which, :2] = np.round(xy[which], 0)
        kps[which, 2] = rng.choice([1, 2], labelled, p=[0.2, 0.8])
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(16, 40))))
    poly = np.stack([x + bw / 2 * (1 + np.cos(angles) * rng.uniform(.6, 1, angles.size)),
                     y + bh / 2 * (1 + np.sin(angles) * rng.uniform(.6, 1, angles.size))], 1)
    ann = {"segmentation": [np.round(poly.reshape(-1), 2).tolist()], "num_keypoints": int(labelled),
           "area": round(float(bw * bh * rng.uniform(0.45, 0.7)), 4), "iscrowd": int(crowd),
           "keypoints": [int(v) for v in kps.reshape(-1)], "image_id": img_id,
           "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)], "category_id": 1, "id": ann_id}
    if crowd:
        ann["segmentation"] = {"counts": [int(c) for c in rng.integers(1, 400, 60)], "size": [h, w]}
    return ann


def noc_image_ids(gt: dict) -> list[int]:
    """The original's CLICKPOSE_NoC_Test filter: images with a non-crowd person with labelled keypoints."""
    keep = {a["image_id"] for a in gt["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0}
    return [img["id"] for img in gt["images"] if img["id"] in keep]


def make_predictions(gt: dict, image_ids: list[int], rounds: int, seed: int = 1):
    """(rounds, N, 20, 17, 3) keypoints, (rounds, N, 20) scores and labels; each round clicks each person's worst
    keypoint to its GT and the refinement shrinks the other errors."""
    rng = np.random.default_rng(seed)
    per_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    num = len(image_ids)
    gt_xy = rng.uniform(0, 600, (num, NUM_SELECT, 17, 2))  # unmatched slots: false positives anywhere
    labelled = np.zeros((num, NUM_SELECT, 17), dtype=bool)
    spread = np.zeros((num, NUM_SELECT))
    scores = rng.uniform(0.02, 0.35, (num, NUM_SELECT))
    labels = np.ones((num, NUM_SELECT), dtype=np.int64)
    for b, img_id in enumerate(image_ids):
        people = [a for a in per_image[img_id] if not a["iscrowd"]][:NUM_SELECT]
        for j, a in enumerate(people):
            kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(17, 3)
            box = np.asarray(a["bbox"])
            guess = box[:2] + _POSE_TEMPLATE * box[2:]
            gt_xy[b, j] = np.where(kp[:, 2:] > 0, kp[:, :2], guess)
            labelled[b, j] = kp[:, 2] > 0
            spread[b, j] = np.sqrt(a["area"]) * rng.lognormal(np.log(0.05), 0.7)  # per-person difficulty
            scores[b, j] = rng.uniform(0.4, 0.95)
        spare = np.arange(len(people), NUM_SELECT)
        labels[b, spare[rng.random(spare.size) < 0.4]] = 0  # PostProcess also emits class-0 entries
    error = rng.normal(0, 1, (num, NUM_SELECT, 17, 2)) * (spread[..., None, None] +
                                                       (spread == 0)[..., None, None] * 40)
    keypoints = np.empty((rounds, num, NUM_SELECT, 17, 3))
    keypoints[..., 2] = 0.7311
    for r in range(rounds):
        keypoints[r, ..., :2] = gt_xy + error
        worst = np.argmax(np.abs(error).sum(-1) * labelled, axis=-1)  # the oracle's click: worst labelled keypoint
        clicked = labelled.any(-1)
        error *= 0.9
        error[np.nonzero(clicked)[0], np.nonzero(clicked)[1], worst[clicked]] = 0.0
    return keypoints, np.broadcast_to(scores, (rounds, num, NUM_SELECT)), np.broadcast_to(labels, (rounds, num, NUM_SELECT))


def _results(image_id: int, kps: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[dict]:
    return [{"image_id": int(image_id), "category_id": int(lb), "keypoints": k.reshape(-1).tolist(), "score": float(s)}
            for k, s, lb in zip(kps, scores, labels)]


# ------------------------------------------------------------------------------------------------- ours
def ours_noc(gt_path: Path, image_ids: list[int], keypoints, scores, labels) -> dict[float, np.ndarray]:
    rounds, num = keypoints.shape[:2]
    evaluator = PerImageKeypointAP(str(gt_path))
    ap = evaluator.images_ap(np.tile(image_ids, rounds), keypoints.reshape(rounds * num, NUM_SELECT, 17, 3),
                             scores.reshape(rounds * num, -1), labels.reshape(rounds * num, -1))
    return noc_per_image(ap.reshape(rounds, num).T, THRESHOLDS, MAX_CLICKS)


def ours_noc_and_apk(gt_path: Path, image_ids: list[int], keypoints, scores, labels):
    """One matching pass per round: NoC at every threshold and the dataset-level stats after every round."""
    rounds, num = keypoints.shape[:2]
    evaluator = PerImageKeypointAP(str(gt_path))
    curves = np.empty((num, rounds))
    stats = []
    for k in range(rounds):
        curves[:, k], matches = evaluator.evaluate(image_ids, keypoints[k], scores[k], labels[k])
        pooled = DatasetKeypointAP()
        pooled.add(matches)
        stats.append(pooled.summarize())
    return noc_per_image(curves, THRESHOLDS, MAX_CLICKS), np.stack(stats)


def keypoint_ap(coco_gt, results: list[dict], image_ids: list[int]) -> float:
    """pycocotools keypoint AP (stats[0]) of ``results`` over ``image_ids``, console output swallowed."""
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "keypoints")
        evaluator.params.imgIds = list(image_ids)
        for step in (evaluator.evaluate, evaluator.accumulate, evaluator.summarize):
            step()
    return float(evaluator.stats[0])


def dataset_ap(coco_gt, image_ids, keypoints, scores, labels) -> float:
    return float(_dataset_stats(coco_gt, image_ids, keypoints, scores, labels)[0])


def _dataset_stats(coco_gt, image_ids, keypoints, scores, labels) -> np.ndarray:
    """pycocotools' 10 keypoint stats of one round's predictions (the previous AP@k path)."""
    from pycocotools.cocoeval import COCOeval
    results = [d for b, i in enumerate(image_ids) for d in _results(i, keypoints[b], scores[b], labels[b])]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "keypoints")
        evaluator.params.imgIds = list(image_ids)
        for step in (evaluator.evaluate, evaluator.accumulate, evaluator.summarize):
            step()
    return np.asarray(evaluator.stats)


# ------------------------------------------------------------------------------------------------- original
def original_image_ap(gt_path: Path, image_id: int, results: list[dict]) -> float:
    """One evaluation of the original NoC loop: the GT file is read again every time."""
    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
    return keypoint_ap(coco_gt, results, [image_id])


def original_noc_sample(gt_path, image_ids, keypoints, scores, labels, sample: list[int]):
    """Run the original loop (all thresholds) on the sampled images; (clicks, evaluations, seconds)."""
    clicks = {t: [] for t in THRESHOLDS}
    evaluations, start = 0, time.perf_counter()
    for thr in THRESHOLDS:
        for b in sample:
            for it in range(MAX_CLICKS + 1):
                ap = original_image_ap(gt_path, image_ids[b], _results(image_ids[b], keypoints[it, b], scores[it, b],
                                                                       labels[it, b]))
                evaluations += 1
                if ap >= thr:
                    break
            clicks[thr].append(it)
    return clicks, evaluations, time.perf_counter() - start


def original_apk_run(gt_path, image_ids, keypoints, scores, labels) -> float:
    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
    return dataset_ap(coco, image_ids, keypoints, scores, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of our NoC metric (median reported)")
    parser.add_argument("--apk-repeats", type=int, default=1, help="timed runs of our NoC + AP@0..17 (median)")
    parser.add_argument("--pycocotools-rounds", type=int, default=17,
                        help="rounds of the previous AP@k path (pycocotools) timed and compared (scaled to 17)")
    parser.add_argument("--sample-images", type=int, default=6, help="images the original NoC loop is timed on")
    parser.add_argument("--orig-apk-runs", type=int, default=2, help="original AP@k runs timed (of 17)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from pycocotools.coco import COCO
    gt = make_ground_truth(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        gt_path = Path(tmp) / "person_keypoints_val2017_synthetic.json"
        gt_path.write_text(json.dumps(gt))
        ids = noc_image_ids(gt)
        rounds = MAX_CLICKS + 1
        kps, scores, labels = make_predictions(gt, ids, rounds, seed=args.seed + 1)
        n_kp = sum(a["num_keypoints"] > 0 for a in gt["annotations"])
        print(f"GT: {len(gt['images'])} images, {len(gt['annotations'])} annotations ({n_kp} with keypoints), "
              f"{gt_path.stat().st_size / 1e6:.1f} MB; NoC set: {len(ids)} images x {rounds} rounds x {NUM_SELECT} "
              "predictions")

        noc_times, both_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            clicks = ours_noc(gt_path, ids, kps, scores, labels)
            noc_times.append(time.perf_counter() - start)
        for _ in range(args.apk_repeats):
            start = time.perf_counter()
            both_clicks, ours_stats = ours_noc_and_apk(gt_path, ids, kps, scores, labels)
            both_times.append(time.perf_counter() - start)
        assert all((both_clicks[t] == clicks[t]).all() for t in THRESHOLDS)
        ours_noc_s, ours_both_s = statistics.median(noc_times), statistics.median(both_times)
        ap_k = ours_stats[1:, 0].tolist()
        print("ours: NoC " + ", ".join(f"@{int(t * 100)}={clicks[t].mean():.3f}" for t in THRESHOLDS)
              + f"; AP@1={ap_k[0]:.4f} AP@17={ap_k[-1]:.4f}")
        print(f"ours: NoC metric alone {ours_noc_s:.2f} s (all thresholds, {rounds} rounds x {len(ids)} images, median "
              f"of {args.repeats}: {', '.join(f'{t:.2f}' for t in noc_times)}); NoC + dataset-level stats after "
              f"0..17 clicks in one matching pass per round: {ours_both_s:.2f} s "
              f"(median of {args.apk_repeats}: {', '.join(f'{t:.2f}' for t in both_times)})")

        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(gt_path))  # loaded once for all k (as the project's KeypointEvaluator does)
        timed = list(range(1, min(args.pycocotools_rounds, MAX_CLICKS) + 1))
        previous = [_dataset_stats(coco, ids, kps[k], scores[k], labels[k]) for k in timed]
        previous_s = (time.perf_counter() - start) / len(timed) * MAX_CLICKS
        for k, stats in zip(timed, previous):
            if not np.array_equal(np.round(stats, 4), np.round(ours_stats[k], 4)):
                raise SystemExit(f"AP after {k} clicks differs from pycocotools: {ours_stats[k]} vs {stats}")
        apk_extra_s = max(ours_both_s - ours_noc_s, 0.0)
        print(f"previous AP@1..17 (pycocotools COCOeval per round, GT loaded once): {previous_s:.1f} s "
              f"({len(timed)} of 17 rounds timed{'' if len(timed) == MAX_CLICKS else ', scaled to 17'}); all 10 stats "
              f"equal to ours to 4 decimals on every timed round")
        print(f"AP@1..17 metric: ours {ours_both_s:.2f} s standalone (matching included; {apk_extra_s:.2f} s on top of "
              f"the NoC pass) vs previous {previous_s:.1f} s: ratio {ours_both_s / previous_s:.3f}")

        rng = np.random.default_rng(args.seed + 2)
        sample = sorted(rng.choice(len(ids), min(args.sample_images, len(ids)), replace=False).tolist())
        orig_clicks, evals, seconds = original_noc_sample(gt_path, ids, kps, scores, labels, sample)
        for thr in THRESHOLDS:
            if orig_clicks[thr] != clicks[thr][sample].tolist():
                raise SystemExit(f"click counts differ at {thr}: original {orig_clicks[thr]} vs ours "
                                 f"{clicks[thr][sample].tolist()}")
        per_eval = seconds / evals
        total_evals = int(sum(np.minimum(clicks[t] + 1, MAX_CLICKS + 1).sum() for t in THRESHOLDS))
        orig_noc_s = per_eval * total_evals
        print(f"original NoC: sample of {len(sample)} images x 3 thresholds = {evals} evaluations in {seconds:.1f} s "
              f"({per_eval * 1e3:.0f} ms each); click counts identical to ours on the sample; the full set needs "
              f"{total_evals} evaluations -> {orig_noc_s:.0f} s extrapolated linearly per evaluation")

        start = time.perf_counter()
        orig_ap = [original_apk_run(gt_path, ids, kps[k], scores[k], labels[k]) for k in range(1, args.orig_apk_runs + 1)]
        per_run = (time.perf_counter() - start) / args.orig_apk_runs
        assert np.round(orig_ap, 4).tolist() == np.round(ap_k[:args.orig_apk_runs], 4).tolist()
        orig_apk_s = per_run * MAX_CLICKS
        print(f"original AP@k: {args.orig_apk_runs} of 17 runs timed, {per_run:.1f} s each -> {orig_apk_s:.0f} s "
              "for 17 (same AP values as ours)")
        total_ours, total_orig = ours_both_s, orig_noc_s + orig_apk_s
        print(f"total: ours {total_ours:.1f} s vs original {total_orig:.0f} s (ratio {total_ours / total_orig:.4f}); "
              f"NoC part alone: ratio {ours_noc_s / orig_noc_s:.5f}")


if __name__ == "__main__":
    main()
