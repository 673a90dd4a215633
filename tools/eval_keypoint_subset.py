"""Keypoint AP over chosen keypoints only (OKS on those keypoints), from a COCO results file: e.g. the 4 keypoints a
17 -> 21 adaptation added. Evaluation with --output_dir writes keypoints_results.json (in the interactive modes:
the last round's).

    python -m tools.eval_keypoint_subset \
        --ann $CLICKPOSE_HumanArt_PATH/HumanArt/annotations/validation_humanart.json --keypoint_field keypoints_21 \
        --results logs/humanart21_eval/keypoints_results.json

The layout is the built-in one with --num_body_points keypoints (21: Human-Art's). Without --keypoints, the
keypoints that COCO's 17 lack are scored (Human-Art 21: left/right finger, left/right toe).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datasets.coco import AnnotationFormatError, load_annotations
from datasets.evaluation import KEYPOINT_STAT_NAMES
from datasets.keypoint_subset import keypoint_subset_stats, new_keypoints
from datasets.metadata import COCO_KEYPOINTS, default_metadata_for_num_keypoints


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ann", required=True, help="ground-truth COCO keypoint annotation file")
    parser.add_argument("--keypoint_field", default="keypoints_21", help="annotation field of the keypoints")
    parser.add_argument("--num_body_points", type=int, default=21, help="keypoint count of the layout")
    parser.add_argument("--results", required=True, help="COCO keypoint results JSON of the same images")
    parser.add_argument("--keypoints", default=None, help="comma-separated keypoint names (default: the new ones)")
    args = parser.parse_args(argv)
    try:
        metadata = default_metadata_for_num_keypoints(args.num_body_points)
        coco = load_annotations(Path(args.ann), metadata.num_keypoints, args.keypoint_field)
        if args.keypoints:
            names = [n.strip() for n in args.keypoints.split(",")]
            missing = [n for n in names if n not in metadata.keypoint_names]
            if missing:
                raise ValueError(f"keypoints {missing} are not in the layout {list(metadata.keypoint_names)}")
            indices = [metadata.keypoint_names.index(n) for n in names]
        else:
            indices = new_keypoints(COCO_KEYPOINTS, metadata)
        results = json.loads(Path(args.results).read_text())
        stats = keypoint_subset_stats(coco, results, indices, metadata.sigmas)
    except (ValueError, OSError, AnnotationFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"keypoints: {[metadata.keypoint_names[k] for k in indices]}")
    for name, value in zip(KEYPOINT_STAT_NAMES["coco"], stats):
        print(f"{name:>5}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
