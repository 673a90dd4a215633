"""Predict people in one image, optionally apply clicks, and write the annotated image and a JSON.

    python -m tools.predict IMAGE --config config/clickpose.cfg.py --checkpoint ckpt.pth \
        [--click PERSON,KEYPOINT,X,Y ...] [--out-dir predictions] [--score-threshold 0.3]

PERSON is the 'index' printed/written for a person by the prediction; X, Y are pixels of the image.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_click(text: str) -> tuple[int, int, float, float]:
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--click expects PERSON,KEYPOINT,X,Y, got {text!r}")
    return int(parts[0]), int(parts[1]), float(parts[2]), float(parts[3])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", default=None, help="weights (default: untrained model)")
    parser.add_argument("--click", type=parse_click, action="append", default=[], metavar="P,K,X,Y")
    parser.add_argument("--out-dir", default="predictions")
    parser.add_argument("--score-threshold", type=float, default=0.3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="load a checkpoint holding Python objects beyond tensors with full unpickling, which "
                             "can run code: only for files you trust")
    args = parser.parse_args(argv)

    import numpy as np
    from PIL import Image

    from models.predictor import Predictor
    from util.visualize import draw_people, save_rgb

    from util.checkpoint import CheckpointError
    from util.config import ConfigError

    try:
        predictor = Predictor(args.config, args.checkpoint, device=args.device, score_threshold=args.score_threshold,
                              trust_checkpoint=args.trust_checkpoint)
    except (CheckpointError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    people = predictor.predict(args.image)
    if args.click:
        people = predictor.correct(clicks=args.click)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    image = np.asarray(Image.open(args.image).convert("RGB"))
    save_rgb(out_dir / f"{stem}_poses.jpg", draw_people(image, people, predictor.metadata.skeleton, args.click))
    (out_dir / f"{stem}_poses.json").write_text(json.dumps(
        {"image": str(args.image), "clicks": args.click, "keypoint_names": list(predictor.metadata.keypoint_names),
         "people": people}, indent=1))
    print(f"{len(people)} people -> {out_dir / (stem + '_poses.jpg')} and {out_dir / (stem + '_poses.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
