"""Write CrowdPose's training file, ``json/crowdpose_trainval.json``, from its train and val files.

CrowdPose is trained on train + val and evaluated on test; the official release ships the two training splits
separately. This joins them (images and annotations; the categories must agree) and refuses files whose image or
annotation ids collide, since pycocotools would silently merge such entries.

    python -m tools.crowdpose_trainval /path/to/crowdpose_dir      # reads json/crowdpose_{train,val}.json
    python -m tools.crowdpose_trainval --train A.json --val B.json --out C.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (expected a CrowdPose annotation file)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {path} is not valid JSON ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise SystemExit(f"error: {path} has no '{key}' list; is it a COCO-format annotation file?")
    return data


def _duplicates(first: list[dict], second: list[dict]) -> list:
    return sorted({entry["id"] for entry in first} & {entry["id"] for entry in second})


def join_splits(train: dict, val: dict) -> dict:
    """Train followed by val; the other top-level keys (info, licenses, ...) come from train."""
    if train["categories"] != val["categories"]:
        raise ValueError("the train and val files define different categories; they are not splits of one dataset")
    for key in ("images", "annotations"):
        clash = _duplicates(train[key], val[key])
        if clash:
            raise ValueError(f"{len(clash)} {key[:-1]} id(s) occur in both splits (first: {clash[:5]}); "
                             "renumber one split before joining")
    return {**train, "images": train["images"] + val["images"],
            "annotations": train["annotations"] + val["annotations"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", help="CrowdPose root (the folder holding json/)")
    parser.add_argument("--train", help="train annotation file (default: ROOT/json/crowdpose_train.json)")
    parser.add_argument("--val", help="val annotation file (default: ROOT/json/crowdpose_val.json)")
    parser.add_argument("--out", help="output file (default: ROOT/json/crowdpose_trainval.json)")
    args = parser.parse_args(argv)
    if not args.root and not (args.train and args.val and args.out):
        parser.error("give the CrowdPose root, or all of --train, --val and --out")
    json_dir = Path(args.root or ".") / "json"
    train_path = Path(args.train) if args.train else json_dir / "crowdpose_train.json"
    val_path = Path(args.val) if args.val else json_dir / "crowdpose_val.json"
    out = Path(args.out) if args.out else json_dir / "crowdpose_trainval.json"
    try:
        joined = join_splits(_load(train_path), _load(val_path))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(joined))
    partial.replace(out)  # atomic: an interrupted run leaves no half-written training file
    print(f"wrote {out}: {len(joined['images'])} images, {len(joined['annotations'])} annotations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
