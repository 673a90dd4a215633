"""An oracle model whose predictions after every click round are known, for testing interactive evaluation.

For each image of a COCO-format ground truth, query p < people predicts person p's keypoints with an error that
shrinks by ``SHRINK`` per click round (deterministic: seeded by the image id), the others are two false positives and
padding. The same definition gives the expected numbers through pycocotools (an independent implementation): the
per-image AP after every round, the NoC per threshold, and the dataset-level AP after every k.

Run as a script under ``torch.distributed.run`` it evaluates on 2 gloo processes and writes the results as JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
QUERIES = 20
SHRINK = 0.55  # error factor per click round


def people(gt: dict, image_id: int) -> list[dict]:
    return [a for a in gt["annotations"] if a["image_id"] == image_id and not a["iscrowd"] and a["num_keypoints"] > 0]


def oracle_round(gt: dict, image_id: int, k: int, num_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    """(QUERIES, K, 2) pixel keypoints and (QUERIES,) scores that the oracle predicts after k clicks."""
    rng = np.random.default_rng(image_id)
    xy = np.zeros((QUERIES, num_keypoints, 2))
    scores = np.full(QUERIES, 1e-6)
    for p, ann in enumerate(people(gt, image_id)[:QUERIES - 2]):
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(num_keypoints, 3)
        x, y, w, h = ann["bbox"]
        guess = np.stack([x + w * rng.random(num_keypoints), y + h * rng.random(num_keypoints)], 1)
        truth = np.where(kp[:, 2:] > 0, kp[:, :2], guess)
        area = ann.get("area", w * h)  # CrowdPose has no area
        error = rng.normal(0, 1, (num_keypoints, 2)) * np.sqrt(area) * rng.uniform(0.04, 0.3)
        xy[p] = truth + error * SHRINK ** k
        scores[p] = 0.95 - 0.04 * p
    fakes = slice(len(people(gt, image_id)), len(people(gt, image_id)) + 2)
    xy[fakes] = rng.uniform(0, 400, (2, num_keypoints, 2))  # two false positives, the same in every round
    scores[fakes] = (0.5, 0.3)
    return xy, scores


class OracleModel(nn.Module):
    """Implements what ``engine.evaluate_interactive`` calls: ``model(samples, return_state=True)`` and
    ``model.click_rounds(state, outputs, targets, num_rounds)`` (rounds 0..num_rounds)."""

    def __init__(self, gt: dict, num_keypoints: int = 17):
        super().__init__()
        self.gt, self.num_keypoints = gt, num_keypoints
        self.sizes = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}

    def forward(self, samples, return_state: bool = False):
        outputs = {"pred_logits": torch.zeros(len(samples), QUERIES, 2)}
        return (outputs, "state") if return_state else outputs

    def click_rounds(self, state, outputs, targets, num_rounds: int) -> list[dict]:
        assert state == "state" and len(targets) == len(outputs["pred_logits"])
        return [self._round(targets, k) for k in range(num_rounds + 1)]

    def _round(self, targets, k: int) -> dict:
        logits, boxes, keypoints = [], [], []
        for t in targets:
            image_id = int(t["image_id"])
            w, h = self.sizes[image_id]
            xy, scores = oracle_round(self.gt, image_id, k, self.num_keypoints)
            normalised = torch.from_numpy(xy / np.array([w, h]))
            logit = torch.logit(torch.from_numpy(scores))
            logits.append(torch.stack([torch.full_like(logit, -50.0), logit], 1))  # class 1 = person
            boxes.append(torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=torch.float64).expand(QUERIES, 4))
            keypoints.append(torch.cat([normalised.flatten(1), torch.ones(QUERIES, self.num_keypoints,
                                                                          dtype=torch.float64)], 1))
        return {"pred_logits": torch.stack(logits), "pred_boxes": torch.stack(boxes),
                "pred_keypoints": torch.stack(keypoints)}


class ImageList(torch.utils.data.Dataset):
    """(dummy image, target) pairs carrying what the engine reads: image_id and orig_size."""

    def __init__(self, gt: dict, image_ids: list[int]):
        self.sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
        self.image_ids = image_ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int):
        image_id = self.image_ids[index]
        return torch.zeros(1), {"image_id": torch.tensor(image_id), "orig_size": torch.tensor(self.sizes[image_id])}


def collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def run_evaluation(gt: dict, image_ids: list[int], batch_size: int, max_clicks: int, thresholds, *,
                   report_round=None, sampler=None, backend: str = "coco", sigmas=None):
    """engine.evaluate_interactive with the oracle, wired as main.py does (CrowdPose: a keypoint evaluator per
    round)."""
    import engine
    from datasets.evaluation import KeypointEvaluator
    from models.clickpose.postprocess import PostProcess

    num_keypoints = len(gt["annotations"][0]["keypoints"]) // 3
    loader = torch.utils.data.DataLoader(ImageList(gt, image_ids), batch_size=batch_size, sampler=sampler,
                                         collate_fn=collate)
    report = KeypointEvaluator(gt, backend=backend, sigmas=sigmas, log=None)
    rounds = None if backend == "coco" else (
        lambda: KeypointEvaluator(gt, backend=backend, sigmas=sigmas, iou_types=("keypoints",), log=None))
    options = engine.EvalOptions(interactive=True, max_clicks=max_clicks, thresholds=tuple(thresholds),
                                 report_round=report_round)
    return engine.evaluate_interactive(
        OracleModel(gt, num_keypoints), PostProcess(num_select=QUERIES, num_keypoints=num_keypoints), loader,
        torch.device("cpu"), options, round_evaluator=engine.click_round_evaluator(report.per_image_ap(), rounds),
        report_evaluator=report, log_fn=lambda _: None)


# ----------------------------------------------------------------------------------------- expected numbers
def _results(gt: dict, image_ids, k: int) -> list[dict]:
    out = []
    for image_id in image_ids:
        xy, scores = oracle_round(gt, image_id, k, 17)
        triplets = np.concatenate([xy, np.ones((QUERIES, 17, 1))], 2).reshape(QUERIES, -1)
        out += [{"image_id": image_id, "category_id": 1, "keypoints": t.tolist(), "score": float(s)}
                for t, s in zip(triplets, scores)]
    return out


def pycocotools_ap(gt: dict, image_ids, k: int) -> float:
    """COCOeval('keypoints') stats[0] of the oracle's round-k predictions on ``image_ids``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(_results(gt, image_ids, k)), "keypoints")
        evaluator.params.imgIds = list(image_ids)
        for step in (evaluator.evaluate, evaluator.accumulate, evaluator.summarize):
            step()
    return float(evaluator.stats[0])


def expected_curves(gt: dict, image_ids, max_clicks: int) -> np.ndarray:
    return np.array([[pycocotools_ap(gt, [i], k) for k in range(max_clicks + 1)] for i in image_ids])


def expected_noc(curves: np.ndarray, threshold: float, max_clicks: int) -> list[int]:
    """The original's loop: evaluate, stop when AP >= threshold, else click; at most max_clicks."""
    counts = []
    for curve in curves:
        counts.append(next((k for k in range(max_clicks) if curve[k] >= threshold), max_clicks))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, nargs="+", required=True)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-clicks", type=int, default=4)
    parser.add_argument("--thresholds", type=float, nargs="+", required=True)
    args = parser.parse_args()
    torch.distributed.init_process_group("gloo")
    gt = json.loads(Path(args.gt).read_text())
    sampler = torch.utils.data.DistributedSampler(ImageList(gt, args.images), shuffle=False)
    results = run_evaluation(gt, args.images, args.batch_size, args.max_clicks, args.thresholds, sampler=sampler)
    seen = sorted(int(t["image_id"]) for _, targets in torch.utils.data.DataLoader(
        ImageList(gt, args.images), sampler=sampler, collate_fn=collate) for t in targets)
    if torch.distributed.get_rank() == 0:
        Path(args.out).write_text(json.dumps({
            "image_ids": results.image_ids, "ap_curves": results.ap_curves.tolist(),
            "clicks": {str(t): c.tolist() for t, c in results.clicks.items()},
            "round_ap": [s[0] for s in results.round_stats], "rank0_images": seen}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
