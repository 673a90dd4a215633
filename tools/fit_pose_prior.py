"""Fit the pose prior (models/pose_prior.py) on a COCO keypoints file and store it in a checkpoint.

    python -m tools.fit_pose_prior --checkpoint demo_output/train/checkpoint_quality.pth \\
        --annotations data_synthetic/annotations/person_keypoints_train2017.json

The prior is what lets the annotation tools place the keypoints of a person added from a box: given the box and the
keypoints placed so far, it says where the others are likely to be, and the model's refinement starts from there.
It is fitted on the file's people with every keypoint labelled (and their mirror images, using the checkpoint's
left/right pairs) and written under its own key beside the model (its weights and keys unchanged), atomically:
``--out`` (default: the checkpoint itself). ``tools/train_quality.py`` fits it too.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch


def add_pose_prior(checkpoint: dict[str, Any], annotations: Path, layout: Any) -> dict[str, Any]:
    """Fit the prior on ``annotations`` for ``layout`` (a KeypointMetadata) and store it in ``checkpoint`` (in
    place). Returns a summary for reports."""
    from models.pose_prior import CHECKPOINT_KEY, PosePrior

    try:
        dataset = json.loads(Path(annotations).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the annotations {annotations}: {exc}") from exc
    prior = PosePrior.from_coco(dataset, layout.num_keypoints, layout.flip_permutation(), source=str(annotations))
    checkpoint[CHECKPOINT_KEY] = prior.to_checkpoint()
    return {"annotations": str(annotations), "poses": prior.num_poses}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.fit_pose_prior", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--annotations", required=True, type=Path, help="a COCO keypoints file (the training split)")
    parser.add_argument("--config", default="config/clickpose.cfg.py",
                        help="the keypoint layout when the checkpoint records none")
    parser.add_argument("--out", type=Path, default=None, help="default: write into --checkpoint")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from models.predictor import keypoint_metadata
    from util.checkpoint import read_checkpoint
    from util.config import Config, apply_config_to_args
    from util.errors import CheckpointError
    from util.files import atomic_write

    opts = parse_args(argv)
    try:
        checkpoint = read_checkpoint(opts.checkpoint)
        args = apply_config_to_args(Config.fromfile(opts.config), argparse.Namespace())
        summary = add_pose_prior(checkpoint, opts.annotations, keypoint_metadata(args, checkpoint))
        out = opts.out or opts.checkpoint
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda f: torch.save(checkpoint, f))
    except (OSError, ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"pose prior from {summary['poses']} people of {opts.annotations} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
