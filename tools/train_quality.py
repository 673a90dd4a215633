"""Train the keypoint-quality head (models/keypoint_quality.py) on a frozen detector, and measure it.

    python -m tools.train_quality --config config/demo.cfg.py --checkpoint demo_output/train/checkpoint.pth \\
        --data data_synthetic --out demo_output/train/checkpoint_quality.pth

For each image of the training split, the Predictor's people (its decoding and refinement, exactly as the annotation
tools see them) are matched to the ground truth (Hungarian on OKS); the matched people give, per keypoint, the
refinement's keypoint features, whether the shown keypoint is more than ``--tolerance`` x the truth's box diagonal
off, and the truth's visibility. ``--clicks N`` adds N rounds of an oracle (each round moves every matched person's
worst keypoint to the truth and refines it), so the head also learns the people a user has already corrected. Only
the small head is trained (full batch, AdamW); the detector is unchanged.

The validation split is measured the same way: the AUROC of (1 - confidence) for "off" over labelled keypoints the
user has not placed, with the head and with the layers' agreement it replaces, and the accuracy of the predicted
visibility against always "visible". The output is the input checkpoint with the head under its own key (the
detector's weights and keys unchanged) and the pose prior fitted on the training split (``tools/fit_pose_prior.py``),
written atomically, and a report ``OUT.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass
class Holder:
    """An image and its cached encoder state (what the Predictor's model calls work on)."""

    image: Any
    state: Any


@dataclass
class Samples:
    """Per keypoint of the matched people: features, agreement, targets and masks (N rows of K keypoints)."""

    hidden: Tensor  # (N, K, C)
    agreement: Tensor  # (N, K)
    off: Tensor  # (N, K) bool
    labelled: Tensor  # (N, K) bool: the truth has the keypoint (v > 0) and the user did not place it
    visibility: Tensor  # (N, K) long, the truth's COCO flags

    @staticmethod
    def join(parts: Sequence["Samples"]) -> "Samples":
        if not parts:
            raise ValueError("no person of these images matched the ground truth: nothing to train or measure on")
        return Samples(*(torch.cat([getattr(p, name) for p in parts]) for name in
                         ("hidden", "agreement", "off", "labelled", "visibility")))


def oks_matrix(pred: np.ndarray, gt: np.ndarray, gt_vis: np.ndarray, areas: np.ndarray, sigmas: np.ndarray
               ) -> np.ndarray:
    """(P, G) COCO OKS between predicted (P, K, 2) and true (G, K, 2) keypoints (pixels); labelled truth only."""
    variances = (2 * sigmas) ** 2
    d2 = ((pred[:, None] - gt[None]) ** 2).sum(-1)  # (P, G, K)
    e = d2 / (2 * variances * (areas[None, :, None] + np.spacing(1)))
    labelled = gt_vis[None] > 0
    counts = np.maximum(labelled.sum(-1), 1)
    return (np.exp(-e) * labelled).sum(-1) / counts


def match_people(pred: np.ndarray, gt: np.ndarray, gt_vis: np.ndarray, areas: np.ndarray, sigmas: np.ndarray,
                 min_oks: float = 0.1) -> list[tuple[int, int]]:
    """(prediction, truth) pairs of the Hungarian assignment on OKS, each with OKS >= ``min_oks``."""
    from scipy.optimize import linear_sum_assignment

    if len(pred) == 0 or len(gt) == 0:
        return []
    oks = oks_matrix(pred, gt, gt_vis, areas, sigmas)
    rows, cols = linear_sum_assignment(-oks)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if oks[r, c] >= min_oks]


class Collector:
    """Runs the Predictor's model calls on one image and turns matched people into :class:`Samples`."""

    def __init__(self, predictor, tolerance: float, clicks: int, min_oks: float = 0.1):
        self.predictor, self.tolerance, self.clicks, self.min_oks = predictor, tolerance, clicks, min_oks
        self.sigmas = np.asarray(predictor.metadata.sigmas, dtype=np.float64)

    @torch.no_grad()
    def image_samples(self, path: Path, anns: Sequence[dict]) -> list[Samples]:
        from models.keypoint_quality import keypoint_off
        from util import keypoint_codec as kp

        p = self.predictor
        anns = [a for a in anns if a.get("num_keypoints", 1) > 0 and not a.get("iscrowd", 0)]
        prediction = p.prediction(path)
        people, (width, height) = prediction.people, prediction.size
        if people.num_people == 0 or not anns:
            return []
        scale = torch.tensor([width, height], dtype=torch.float32)
        gt = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).view(len(anns), -1, 3)
        gt_xy, gt_vis = gt[..., :2], gt[..., 2].long()
        gt_boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        areas = np.asarray([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=np.float64)
        pairs = match_people((people.keypoints * scale).numpy(), gt_xy.numpy(), gt_vis.numpy(), areas, self.sigmas,
                             self.min_oks)
        if not pairs:
            return []
        rows = torch.tensor([r for r, _ in pairs])
        truth = torch.tensor([g for _, g in pairs])
        device = p.device
        state = prediction.state
        boxes = people.boxes[rows][None].to(device)
        keypoints = people.keypoints[rows][None].to(device)
        pinned = torch.zeros(1, len(rows), p.num_keypoints, dtype=torch.bool, device=device)
        clicks = torch.zeros(0, 4, device=device)
        shown = keypoints
        out = []
        for round_ in range(self.clicks + 1):
            result = p.model.refine(state, boxes, shown, [clicks], click_freeze="all", pinned=pinned)
            if round_ == 0:
                agreement = p.agreement(result, shown, [(width, height)])
                # the shown people are the decoding's, judged by the features of a refinement from them
            else:
                corrected = kp.coordinates(result.corrected["pred_keypoints"], p.num_keypoints)
                agreement = p.agreement(result, corrected, [(width, height)])
                shown = kp.coordinates(result.layers[-1]["pred_keypoints"], p.num_keypoints)
                boxes = result.layers[-1]["pred_boxes"]
                pinned = result.pinned
            shown_px = shown[0].cpu() * scale
            off = keypoint_off(shown_px, gt_xy[truth], gt_boxes[truth], self.tolerance)
            labelled = (gt_vis[truth] > 0) & ~pinned[0].cpu()
            out.append(Samples(result.keypoint_hidden[0].cpu().float(), agreement[0].float(), off, labelled,
                               gt_vis[truth]))
            clicks = self._oracle_clicks(shown_px, gt_xy[truth], gt_vis[truth], labelled, (width, height))
            if clicks is None:
                break
            clicks = clicks.to(device)
        return out

    @staticmethod
    def _oracle_clicks(shown_px: Tensor, gt_xy: Tensor, gt_vis: Tensor, clickable: Tensor, size: tuple[int, int]
                       ) -> Optional[Tensor]:
        """(n, 4) ``[row, keypoint, x, y]`` in [0, 1]: each row's worst clickable keypoint moved to the truth."""
        error = (shown_px - gt_xy).norm(dim=-1).masked_fill(~clickable, -1.0)
        worst = error.argmax(-1)
        rows = torch.nonzero(error.max(-1).values > 0).flatten()
        if len(rows) == 0:
            return None
        target = gt_xy[rows, worst[rows]] / torch.tensor(size, dtype=torch.float32)
        return torch.cat((rows[:, None].float(), worst[rows, None].float(), target.clamp(0, 1)), 1)


def collect(predictor, data_root: Path, split: str, limit: Optional[int], opts: argparse.Namespace,
            log: Callable[[str], None]) -> Samples:
    """Samples of the first ``limit`` images (sorted by file name) of ``split``."""
    from pycocotools.coco import COCO

    from util.errors import DatasetLayoutError

    ann_file = data_root / "annotations" / f"person_keypoints_{split}.json"
    image_dir = data_root / "images" / split
    if not ann_file.is_file() or not image_dir.is_dir():
        raise DatasetLayoutError(f"{data_root}: expected {ann_file.relative_to(data_root)} and "
                                 f"{image_dir.relative_to(data_root)}/ (COCO layout); pass --data the dataset root")
    coco = COCO(str(ann_file))
    images = sorted(coco.dataset["images"], key=lambda i: i["file_name"])[:limit]
    collector, parts, started = Collector(predictor, opts.tolerance, opts.clicks, opts.min_oks), [], time.perf_counter()
    for n, info in enumerate(images):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]]))
        parts += collector.image_samples(image_dir / info["file_name"], anns)
        if (n + 1) % 50 == 0:
            log(f"  {split}: {n + 1}/{len(images)} images, {time.perf_counter() - started:.0f} s")
    return Samples.join(parts)


def fit(samples: Samples, hidden_dim: int, num_keypoints: int, tolerance: float, steps: int, seed: int):
    """The head trained full-batch on ``samples``; returns (head, final loss)."""
    from models.keypoint_quality import KeypointQualityHead

    torch.manual_seed(seed)
    head = KeypointQualityHead(hidden_dim, num_keypoints, tolerance=tolerance)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-2)
    labelled = samples.labelled
    positives = samples.off[labelled].float().mean().clamp(1e-3, 1 - 1e-3)
    pos_weight = (1 - positives) / positives  # balance "off" against "fine"
    loss = torch.tensor(0.0)
    for _ in range(steps):
        out = head(samples.hidden, samples.agreement)
        error_loss = torch.nn.functional.binary_cross_entropy_with_logits(
            out["error_logit"][labelled], samples.off[labelled].float(), pos_weight=pos_weight)
        visibility_loss = torch.nn.functional.cross_entropy(out["visibility_logits"].flatten(0, 1),
                                                            samples.visibility.flatten())
        loss = error_loss + visibility_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval(), float(loss.detach())


def measure(head, samples: Samples) -> dict[str, float]:
    """AUROC for "off" of the head's and of the agreement's doubt, and visibility accuracy vs all-visible."""
    from models.keypoint_quality import auroc

    confidence, visibility = head.confidence_and_visibility(samples.hidden, samples.agreement)
    labelled = samples.labelled
    return {"keypoints": int(labelled.sum()), "off_fraction": float(samples.off[labelled].float().mean()),
            "auroc_head": auroc(-confidence[labelled], samples.off[labelled]),
            "auroc_agreement": auroc(-samples.agreement[labelled], samples.off[labelled]),
            "visibility_accuracy": float((visibility == samples.visibility).float().mean()),
            "visibility_accuracy_all_visible": float((samples.visibility == 2).float().mean())}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.train_quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help="COCO-layout root (annotations/, images/)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--train-split", default="train2017")
    parser.add_argument("--val-split", default="val2017")
    parser.add_argument("--images", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--val-images", type=int, default=None)
    parser.add_argument("--clicks", type=int, default=2, help="oracle rounds per image after the prediction")
    parser.add_argument("--tolerance", type=float, default=0.05, help="'off' = farther than this x box diagonal")
    parser.add_argument("--min-oks", type=float, default=0.1, help="a person counts as matched from this OKS")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def train_quality(opts: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    from models.keypoint_quality import CHECKPOINT_KEY, quality_to_checkpoint
    from models.predictor import Predictor
    from tools.fit_pose_prior import add_pose_prior
    from util.checkpoint import read_checkpoint
    from util.files import atomic_write

    if opts.out.resolve() == opts.checkpoint.resolve():
        raise ValueError("--out is the input checkpoint: write the head to a new file (the input stays as it is)")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    started = time.perf_counter()
    predictor = Predictor(opts.config, opts.checkpoint, device=opts.device)
    try:
        train = collect(predictor, opts.data, opts.train_split, opts.images, opts, log)
        val = collect(predictor, opts.data, opts.val_split, opts.val_images, opts, log)
        collected = time.perf_counter() - started
        head, loss = fit(train, predictor.args.hidden_dim, predictor.num_keypoints, opts.tolerance, opts.steps,
                         opts.seed)
    finally:
        predictor.close()
    report = {"train": measure(head, train), "val": measure(head, val), "loss": loss,
              "train_rows": len(train.hidden), "val_rows": len(val.hidden), "clicks": opts.clicks,
              "tolerance": opts.tolerance, "collect_s": round(collected, 1),
              "total_s": round(time.perf_counter() - started, 1), "checkpoint": str(opts.checkpoint)}
    checkpoint = read_checkpoint(opts.checkpoint)
    checkpoint[CHECKPOINT_KEY] = quality_to_checkpoint(head, report)
    train_file = opts.data / "annotations" / f"person_keypoints_{opts.train_split}.json"
    try:  # the pose prior the annotation tools place box-added people with (tools/fit_pose_prior.py)
        report["pose_prior"] = add_pose_prior(checkpoint, train_file, predictor.metadata)
    except ValueError as exc:
        log(f"warning: no pose prior is stored ({exc}); people added from a box are refined without one")
        report["pose_prior"] = None
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(opts.out, lambda f: torch.save(checkpoint, f))
    opts.out.with_suffix(opts.out.suffix + ".json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    opts = parse_args(argv)
    from util.errors import CheckpointError

    try:
        report = train_quality(opts)
    except (OSError, ValueError, CheckpointError) as exc:  # a missing or unloadable file, a dataset matching nobody
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split in ("train", "val"):
        r = report[split]
        print(f"{split}: {r['keypoints']} keypoints ({100 * r['off_fraction']:.0f}% off): AUROC head "
              f"{r['auroc_head']:.3f}, agreement {r['auroc_agreement']:.3f}; visibility accuracy "
              f"{r['visibility_accuracy']:.3f} (all visible: {r['visibility_accuracy_all_visible']:.3f})")
    print(f"wrote {opts.out} ({report['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
