"""How well "add a person from a box" proposes the person in the box, above all next to another person.

    python -m tools.benchmark_add_person --config config/demo.cfg.py --checkpoint demo_output/train/checkpoint.pth \\
        --data data_synthetic --split val2017

For every ground-truth person of the split (crowd and unlabelled ones skipped), the Predictor proposes a person
from that person's box, once per method of ``Predictor.propose_person`` ('crop': the model's prediction of the box's
crop; 'queries': the decoder's learned keypoint queries started in the box and refined over the whole image). It
reports per method the mean OKS of the proposal to the intended person, the share of proposals closer (OKS) to
another person than to the intended one, and the mean model time; separately for people whose box overlaps another
person's box (IoU > ``--overlap``) and for all. Several runs: the median time.

Then the work left: the oracle of ``tools/oracle_annotator.py`` places the person's worst labelled keypoint at the
truth until every one is within ``--tolerance`` of the true box's diagonal (at most ``--max-placements``), each
placement a refinement of the page's session.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

METHODS = ("crop", "queries")


class SessionHands:
    """The two edits :meth:`OraclePolicy.correct` makes, on a page session."""

    def __init__(self, session: Any):
        self.session = session

    def shown(self) -> list[dict[str, Any]]:
        return self.session.people()

    def place(self, index: int, keypoint: int, target: tuple[float, float]) -> None:
        self.session.refine([(index, keypoint, *target)])


def placements_left(session: Any, box: Sequence[float], truth: np.ndarray, policy: Any) -> int:
    """Placements until the person added from ``box`` (x0, y0, x1, y1 pixels) to ``session`` is within the policy's
    tolerance of ``truth`` (K, 3). The session is left as it was (its encoder state is reused, not recomputed)."""
    from tools.oracle_annotator import Tally

    before = session.snapshot()
    try:
        # nobody counts as already annotated (the OKS column's proposals likewise): the model's own prediction of
        # this person, shown or not, is no duplicate to pass over
        index = session.add_person(list(box), shown_threshold=math.inf)
        return policy.correct(SessionHands(session), index, truth, np.asarray(box, dtype=np.float64), Tally())
    finally:
        session.restore(before)


def box_overlaps(boxes: np.ndarray) -> np.ndarray:
    """(G,) the largest IoU of each COCO box (x, y, w, h) with any other."""
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    iw = np.clip(np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]), 0, None)
    ih = np.clip(np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]), 0, None)
    inter = iw * ih
    area = boxes[:, 2] * boxes[:, 3]
    iou = inter / np.maximum(area[:, None] + area[None] - inter, 1e-9)
    np.fill_diagonal(iou, 0.0)
    return iou.max(1) if len(boxes) > 1 else np.zeros(len(boxes))


def run(opts: argparse.Namespace) -> dict[str, Any]:
    from pycocotools.coco import COCO

    from models.predictor import Predictor
    from tools.annotate.session import open_session
    from tools.oracle_annotator import OraclePolicy
    from tools.train_quality import oks_matrix

    if opts.threads:
        torch.set_num_threads(opts.threads)
    coco = COCO(str(opts.data / "annotations" / f"person_keypoints_{opts.split}.json"))
    images = sorted(coco.dataset["images"], key=lambda i: i["file_name"])[:opts.images]
    predictor = Predictor(opts.config, opts.checkpoint)
    sigmas = np.asarray(predictor.metadata.sigmas, dtype=np.float64)
    policy = OraclePolicy(sigmas, tolerance=opts.tolerance, max_placements=opts.max_placements)
    rows: list[dict[str, Any]] = []
    try:
        for info in images:
            anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]]))
                    if not a.get("iscrowd", 0) and a.get("num_keypoints", 1) > 0]
            if not anns:
                continue
            session = open_session(predictor, opts.data / "images" / opts.split / info["file_name"])
            width, height = session.size
            gt = np.asarray([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), -1, 3)
            boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float64)
            areas = np.asarray([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=np.float64)
            overlap = box_overlaps(boxes)
            for g, (x, y, w, h) in enumerate(boxes):
                cxcywh = torch.tensor([[(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]],
                                      dtype=torch.float32)
                for method in METHODS:
                    times = []
                    for _ in range(opts.runs):
                        started = time.perf_counter()
                        person = predictor.propose_person(session, cxcywh, session.size, method=method)
                        times.append(time.perf_counter() - started)
                    xy = person.keypoints.numpy() * np.array([width, height])
                    oks = oks_matrix(xy, gt[..., :2], gt[..., 2], areas, sigmas)[0]
                    others = np.delete(oks, g)
                    row = {"image": info["file_name"], "person": g, "method": method,
                           "overlap": float(overlap[g]), "oks": float(oks[g]),
                           "closer_to_another": bool(len(others) and others.max() > oks[g]),
                           "ms": 1000 * statistics.median(times)}
                    if method == "crop" and opts.max_placements > 0:
                        row["placements"] = placements_left(session, [x, y, x + w, y + h], gt[g], policy)
                    rows.append(row)
    finally:
        predictor.close()
    return {"rows": rows, "summary": summarise(rows, opts.overlap)}


def summarise(rows: Sequence[dict[str, Any]], overlap: float) -> dict[str, Any]:
    summary = {}
    for method in METHODS:
        for subset, keep in (("overlapping", lambda r: r["overlap"] > overlap), ("all", lambda r: True)):
            chosen = [r for r in rows if r["method"] == method and keep(r)]
            if not chosen:
                continue
            summary[f"{method}/{subset}"] = {
                "people": len(chosen), "mean_oks": statistics.fmean(r["oks"] for r in chosen),
                "closer_to_another": statistics.fmean(float(r["closer_to_another"]) for r in chosen),
                "median_ms": statistics.median(r["ms"] for r in chosen)}
            counts = [r["placements"] for r in chosen if "placements" in r]
            if counts:
                summary[f"{method}/{subset}"]["placements"] = {
                    "mean": statistics.fmean(counts), "median": statistics.median(counts),
                    "at_most_5": statistics.fmean(float(c <= 5) for c in counts)}
    return summary


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.benchmark_add_person", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, type=Path, help="COCO-layout root (annotations/, images/)")
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--overlap", type=float, default=0.1, help="IoU above which a person counts as overlapping")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=0.05, help="of the true box's diagonal (the oracle's)")
    parser.add_argument("--max-placements", type=int, default=30, help="per person; 0: skip the placement count")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="the rows and summary as JSON")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    opts = parse_args(argv)
    result = run(opts)
    if opts.out:
        opts.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| method / people | people | mean OKS to the intended person | closer to another person | model ms |"
          " placements: mean / median / share <= 5 |")
    print("|---|---|---|---|---|---|")
    for name, s in result["summary"].items():
        c = s.get("placements")
        counts = f"{c['mean']:.1f} / {c['median']:.0f} / {100 * c['at_most_5']:.0f}%" if c else "-"
        print(f"| {name} | {s['people']} | {s['mean_oks']:.3f} | {100 * s['closer_to_another']:.0f}% | "
              f"{s['median_ms']:.0f} | {counts} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
