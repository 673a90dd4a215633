"""Write the synthetic COCO-format people dataset (see datasets/synthetic.py).

    python -m tools.make_synthetic_dataset --out data_synthetic --num-images 200 [--seed 0] [--split-val 40] \
        [--scene full|demo]

The result loads with ``--dataset_file coco --coco_path <out>``.
"""
from __future__ import annotations

import argparse
import sys
import time

from datasets.synthetic import SCENES, write_synthetic_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output dataset root")
    parser.add_argument("--num-images", type=int, required=True, help="images in total (train + val)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-val", type=int, default=None, help="how many of the images form the val split "
                        "(default: max(1, N // 5))")
    parser.add_argument("--scene", choices=sorted(SCENES), default="full",
                        help="full: 1-4 people of 30-100%% of the image height, occluding boxes; demo: 1-3 people of "
                        "55-95%%, no occluding boxes (what make demo trains on)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        written = write_synthetic_dataset(args.out, args.num_images, seed=args.seed, num_val=args.split_val,
                                          scene=SCENES[args.scene])
    except ValueError as err:
        parser.error(str(err))
    elapsed = time.perf_counter() - start
    for split, path in written.items():
        print(f"{split}: {path}")
    print(f"{args.num_images} images in {elapsed:.1f}s -> use --dataset_file coco --coco_path {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
