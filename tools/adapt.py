"""Fine-tune a checkpoint on the images an annotator finished: the model learns from its annotator.

    python -m tools.adapt ANNOTATIONS.json IMAGES_DIR --config CFG --checkpoint CKPT --out NEW.pth \
        [--epochs 4] [--device cuda] [--batch-size 2] [--lr LR] [--val-fraction 0.2] [--options key=value ...]

ANNOTATIONS.json: the annotation tool's file (``python -m tools.annotate``; the images whose status is 'done' in its
``clickpose_annotate`` section are used, people the user deleted are not) or any COCO keypoints file (every image
with at least one annotated person is used). File names are relative to IMAGES_DIR.

The training is the project's: the model of ``--config`` with the checkpoint's keypoint layout
(``models.build_model``), the weights of ``--checkpoint`` (``util.checkpoint``), the custom dataset
(``datasets.build_dataset`` with ``dataset_file='custom'`` on a filtered copy of the file in a temporary folder),
AdamW over the project's parameter groups (``models.optim.build_optimizer``) at a constant lr, and
``engine.train_one_epoch`` with the interactive training on (``human_feedback=True``; denoising / pose error
modelling as configured). With 10 or more usable images, ``--val-fraction`` of them (at least one) are held out and
scored (model-only keypoint AP, ``engine.evaluate_model``) before and after the fine-tuning.

Written: ``--out`` (atomically: ``model``, ``keypoint_metadata``, ``args``, ``epoch`` and an ``adapt`` summary, as
training checkpoints are) and ``<out stem>.adapt.json`` beside it (images and people used, loss per epoch,
validation AP). The input checkpoint and the annotation file are only read. Bad input ends in one ``error:`` line
and exit code 1 (data, checkpoint) or 2 (arguments, config). See docs/adapt.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

TOOL_KEY = "clickpose_annotate"  # tools/annotate/store.py's section of the annotation file
REPORT_SUFFIX = ".adapt.json"
MIN_IMAGES_FOR_SPLIT = 10


def report_path(out: Path) -> Path:
    """Where the report of a checkpoint written to ``out`` goes: ``NEW.pth`` -> ``NEW.adapt.json``."""
    return out.with_name(out.stem + REPORT_SUFFIX)


# ---- the annotation file -------------------------------------------------------------------------------------------

def read_annotation_file(path: Path) -> dict[str, Any]:
    from util.errors import AnnotationFormatError, DatasetLayoutError

    if not path.is_file():
        raise DatasetLayoutError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationFormatError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise AnnotationFormatError(f"{path}: not a COCO keypoints file (a JSON object with 'images' and "
                                    "'annotations' lists)")
    for kind in ("images", "annotations"):
        for i, item in enumerate(data[kind]):
            if not isinstance(item, dict) or "id" not in item:
                raise AnnotationFormatError(f"{path}: {kind}[{i}] is not an object with an 'id'")
    return data


def _labelled(ann: dict[str, Any], field: str) -> bool:
    values = ann.get(field)
    return isinstance(values, list) and any(isinstance(v, (int, float)) and v > 0 for v in values[2::3])


def select_finished(data: dict[str, Any], field: str) -> dict[str, Any]:
    """The finished images and their people.

    The annotation tool's file (its ``clickpose_annotate`` section): images whose status is 'done'; the people of
    those images that the user deleted are dropped (the tool does not write them, a hand-edited file might).
    A plain COCO file: every image with at least one annotated (labelled, non-crowd) person.
    Returns {'source', 'images', 'annotations', 'finished'} (finished: the count before dropping empty images).
    """
    tool = data.get(TOOL_KEY)
    records = tool.get("images") if isinstance(tool, dict) else None
    anns_by_image: dict[Any, list] = {}
    for ann in data["annotations"]:
        anns_by_image.setdefault(ann.get("image_id"), []).append(ann)
    if isinstance(records, dict):
        done = {name: rec for name, rec in records.items() if isinstance(rec, dict) and rec.get("status") == "done"}
        images = [img for img in data["images"] if img.get("file_name") in done]
        annotations = []
        for img in images:
            people = done[img["file_name"]].get("people") or []
            deleted = {p.get("ann_id") for p in people if isinstance(p, dict) and p.get("deleted")} - {None}
            annotations += [a for a in anns_by_image.get(img["id"], []) if a.get("id") not in deleted]
        return {"source": "annotation tool", "images": images, "annotations": annotations, "finished": len(images)}
    images = [img for img in data["images"]
              if any(_labelled(a, field) and not a.get("iscrowd", 0) for a in anns_by_image.get(img["id"], []))]
    annotations = [a for img in images for a in anns_by_image[img["id"]]]
    return {"source": "COCO keypoints file", "images": images, "annotations": annotations, "finished": len(images)}


def _normalised(name: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def check_layout(data: dict[str, Any], annotations: Sequence[dict[str, Any]], field: str, metadata: Any,
                 path: Path) -> None:
    """The file's keypoints are the checkpoint's: every annotation has 3 * K values, and each category that lists
    keypoint names lists the checkpoint's K names (compared ignoring case and '-'/space vs '_'), or more names that
    start with them (Human-Art lists its 21 names beside 17-keypoint 'keypoints')."""
    from util.errors import AnnotationFormatError

    count = metadata.num_keypoints
    names = list(metadata.keypoint_names)
    for ann in annotations:
        values = ann.get(field)
        if not isinstance(values, list) or len(values) != 3 * count:
            got = f"{len(values) // 3} keypoints" if isinstance(values, list) else f"no '{field}' list"
            raise AnnotationFormatError(
                f"{path}: annotation {ann.get('id')} has {got} but the checkpoint's layout {metadata.name!r} has "
                f"{count} ({', '.join(names)}); use a checkpoint trained with the file's layout")
    for category in data.get("categories") or []:
        listed = category.get("keypoints") if isinstance(category, dict) else None
        if not listed:
            continue
        # Human-Art lists its 21 names beside 17-keypoint 'keypoints': a longer list must start with the layout's
        file_names = [_normalised(n) for n in listed[:count]]
        if len(listed) < count or file_names != [_normalised(n) for n in names]:
            differ = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(listed, names))
                      if _normalised(a) != _normalised(b)]
            detail = "; ".join(differ[:5]) or f"{len(listed)} names vs {count}"
            raise AnnotationFormatError(
                f"{path}: category {category.get('id')}'s keypoints ({len(listed)}) differ from the checkpoint's "
                f"layout {metadata.name!r} ({count}; file vs checkpoint: {detail}): the keypoints would be learnt "
                "as the wrong joints. Use a checkpoint trained with the file's layout")


def check_images(images: Sequence[dict[str, Any]], images_dir: Path) -> None:
    from util.errors import DatasetLayoutError

    if not images_dir.is_dir():
        raise DatasetLayoutError(f"image folder not found: {images_dir}")
    missing = [str(img.get("file_name")) for img in images
               if not isinstance(img.get("file_name"), str) or not (images_dir / img["file_name"]).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetLayoutError(f"{len(missing)} of the {len(images)} finished images are not in {images_dir}: "
                                 f"{shown}. Pass the folder the annotation file's file_name values are relative to")


def split_images(image_ids: Sequence[Any], fraction: float, seed: int) -> tuple[list, list]:
    """(train ids, held-out ids): ``fraction`` of them (at least one) held out when there are 10 or more."""
    ids = list(image_ids)
    if len(ids) < MIN_IMAGES_FOR_SPLIT or fraction <= 0:
        return ids, []
    order = ids[:]
    random.Random(seed).shuffle(order)
    held = set(order[:max(1, int(round(fraction * len(ids))))])
    return [i for i in ids if i not in held], [i for i in ids if i in held]


def write_subset(path: Path, data: dict[str, Any], images: Sequence[dict], annotations: Sequence[dict],
                 field: str) -> int:
    """A COCO file of ``images`` and their ``annotations`` (keypoints from ``field``); returns the people count."""
    ids = {img["id"] for img in images}
    anns = []
    for ann in annotations:
        if ann.get("image_id") in ids:
            ann = {k: v for k, v in ann.items() if k != "score"}
            ann["keypoints"] = ann[field]
            ann["num_keypoints"] = sum(1 for v in ann[field][2::3] if v > 0)
            anns.append(ann)
    categories = data.get("categories") or [{"id": 1, "name": "person", "supercategory": "person"}]
    path.write_text(json.dumps({"info": {"description": "tools.adapt: finished images"}, "images": list(images),
                                "annotations": anns, "categories": categories}))
    return sum(1 for a in anns if a["num_keypoints"] > 0 and not a.get("iscrowd", 0))


# ---- the run -------------------------------------------------------------------------------------------------------

def build_args(opts: argparse.Namespace, data_root: Path) -> argparse.Namespace:
    """The run's args as main.py builds them (its flags' defaults + the config's keys), for dataset_file='custom'."""
    import main as clickpose_main
    from util.config import ConfigError, apply_config_to_args, check_ranges
    from util.config import Config
    from util.config_support import resolve_environment
    from util.distributed import resolve_launch

    cfg = Config.fromfile(opts.config)
    if opts.options:
        cfg.merge_from_dict(opts.options)
    overrides: dict[str, Any] = {"human_feedback": True}
    if opts.epochs is not None:
        overrides["epochs"] = opts.epochs
    if opts.batch_size is not None:
        overrides["batch_size"] = opts.batch_size
    if opts.lr is not None:  # the backbone keeps the config's ratio lr_backbone / lr
        ratio = cfg.lr_backbone / cfg.lr if cfg.lr else 0.1
        overrides.update(lr=opts.lr, lr_backbone=opts.lr * ratio)
    cfg.merge_from_dict(overrides)
    check_ranges(cfg.to_dict())
    if not 0.0 <= opts.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {opts.val_fraction}")
    argv = ["-c", str(opts.config), "--dataset_file", "custom", "--coco_path", str(data_root), "--device",
            opts.device, "--num_workers", str(opts.num_workers), "--seed", str(opts.seed)]
    if opts.trust_checkpoint:
        argv.append("--trust_checkpoint")
    args = clickpose_main.get_args_parser().parse_args(argv)
    resolve_launch(args, {})  # one process
    apply_config_to_args(cfg, args)
    resolve_environment(args, {})
    return args


def use_layout(args: argparse.Namespace, metadata: Any, train_file: Path, val_file: Path) -> None:
    """The custom dataset reads the checkpoint's keypoint layout from the filtered files."""
    args.num_body_points = metadata.num_keypoints
    args.custom_keypoint_names = list(metadata.keypoint_names)
    args.custom_flip_pairs = [list(p) for p in metadata.flip_pairs]
    args.custom_sigmas = list(metadata.sigmas)
    args.custom_skeleton = [list(p) for p in metadata.skeleton]
    args.custom_train_ann, args.custom_train_img = str(train_file), str(args.images_dir)
    args.custom_val_ann, args.custom_val_img = str(val_file), str(args.images_dir)
    args.custom_evaluator = "coco"
    args.keypoint_field = "keypoints"  # the filtered copies hold the chosen field as 'keypoints'


def _ap(stats: dict) -> Optional[float]:
    from util.run_folder import AP_KEY

    values = stats.get(AP_KEY)
    return float(values[0]) if values is not None and len(values) else None


def adapt(opts: argparse.Namespace, log_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune; returns the report (also written beside the checkpoint)."""
    import numpy as np
    import torch

    import engine
    from datasets import build_dataset
    from models import build_model
    from models.optim import build_optimizer
    from models.predictor import keypoint_metadata
    from util import checkpoint as checkpoint_io
    from util.errors import AnnotationFormatError, ConfigError
    from util.files import atomic_write_text

    ann_path, images_dir = Path(opts.annotations), Path(opts.images_dir)
    out = Path(opts.out)
    ckpt_path = Path(opts.checkpoint)
    if out.resolve() == ckpt_path.resolve() or out.resolve() == ann_path.resolve():
        raise ConfigError(f"--out {out} is an input file; write the new checkpoint elsewhere (inputs are never "
                          "modified)")
    started = time.time()
    data = read_annotation_file(ann_path)
    if opts.keep_data:  # the split files stay there (for main.py, see docs/adapt.md)
        Path(opts.keep_data).mkdir(parents=True, exist_ok=True)
    folder = (contextlib.nullcontext(str(Path(opts.keep_data).resolve())) if opts.keep_data
              else tempfile.TemporaryDirectory(prefix="clickpose_adapt_"))
    with folder as tmp:
        tmp_dir = Path(tmp)
        args = build_args(opts, tmp_dir)
        args.images_dir = str(images_dir.resolve())
        ckpt = checkpoint_io.read_checkpoint(ckpt_path, trust=args.trust_checkpoint)
        try:
            metadata = keypoint_metadata(args, ckpt)
        except ValueError as exc:
            raise ConfigError(f"the keypoint layout of {ckpt_path} / {opts.config}: {exc}") from exc
        field = args.keypoint_field if any(args.keypoint_field in a for a in data["annotations"]) else "keypoints"
        chosen = select_finished(data, field)
        if not chosen["images"]:
            what = ("no image has status 'done', so there is nothing to learn from; finish (accept) some images "
                    "in the annotation tool first" if chosen["source"] == "annotation tool"
                    else "no image has an annotated person, so there is nothing to learn from")
            raise AnnotationFormatError(f"{ann_path}: {what}")
        check_layout(data, chosen["annotations"], field, metadata, ann_path)
        usable = [img for img in chosen["images"] if any(
            a.get("image_id") == img["id"] and _labelled(a, field) and not a.get("iscrowd", 0)
            for a in chosen["annotations"])]
        if not usable:
            raise AnnotationFormatError(f"{ann_path}: the {chosen['finished']} finished images have no annotated "
                                        "person (with a labelled keypoint), so there is nothing to learn from")
        check_images(chosen["images"], images_dir)
        train_ids, val_ids = split_images([img["id"] for img in usable], opts.val_fraction, args.seed)
        by_id = {img["id"]: img for img in usable}
        train_file, val_file = tmp_dir / "train.json", tmp_dir / "val.json"
        train_people = write_subset(train_file, data, [by_id[i] for i in train_ids], chosen["annotations"], field)
        val_people = write_subset(val_file, data, [by_id[i] for i in val_ids], chosen["annotations"], field) \
            if val_ids else 0
        use_layout(args, metadata, train_file, val_file if val_ids else train_file)
        if args.batch_size > len(train_ids):
            log_fn(f"batch size {args.batch_size} > {len(train_ids)} training images: using {len(train_ids)}")
            args.batch_size = len(train_ids)

        device = torch.device("cpu") if args.device.startswith("cuda") and not torch.cuda.is_available() else None
        if device is not None:
            log_fn(f"--device {args.device} requested but no CUDA device is visible; running on the CPU")
        device = device or torch.device(args.device)
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        model, criterion, postprocessors = build_model(args, metadata)
        checkpoint_io.load_model_weights(model, ckpt["model"], strict=True, source=str(ckpt_path))
        model.to(device)
        criterion.to(device)
        dataset_train = build_dataset("train", args)
        dataset_val = build_dataset("val", args) if val_ids else dataset_train
        train_loader, val_loader = engine.build_loaders(args, dataset_train, dataset_val)
        optimizer = build_optimizer(args, model)

        def evaluate() -> Optional[float]:
            if not val_ids:
                return None
            stats = engine.evaluate_model(model, postprocessors, dataset_val, val_loader, device,
                                          engine.EvalOptions(), log_fn=log_fn)
            return _ap(stats)

        ap_before = evaluate()
        losses = []
        for epoch in range(args.epochs):
            train_loader.batch_sampler.sampler.set_epoch(epoch)
            stats = engine.train_one_epoch(model, criterion, train_loader, optimizer, device, epoch,
                                           args.clip_max_norm, step=engine.StepOptions(print_freq=10), log_fn=log_fn)
            losses.append(float(stats["loss"]))
        ap_after = evaluate()

    report = {
        "annotations": str(ann_path.resolve()), "images_dir": str(images_dir.resolve()),
        "checkpoint": str(ckpt_path.resolve()), "config": str(Path(opts.config).resolve()), "out": str(out.resolve()),
        "source": chosen["source"], "keypoint_layout": metadata.name, "num_keypoints": metadata.num_keypoints,
        "finished_images": chosen["finished"], "images_used": len(usable),
        "train_images": len(train_ids), "train_people": train_people,
        "val_images": len(val_ids), "val_people": val_people,
        "train_image_files": sorted(by_id[i]["file_name"] for i in train_ids),
        "val_image_files": sorted(by_id[i]["file_name"] for i in val_ids),
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "lr_backbone": args.lr_backbone,
        "human_feedback": bool(args.human_feedback), "device": str(device),
        "loss_per_epoch": losses,
        "val_ap_before": ap_before, "val_ap_after": ap_after,
        "seconds": round(time.time() - started, 1),
    }
    if not opts.keep_data:  # the temporary folder is gone: record what the split files were
        args.custom_train_ann = f"{ann_path.resolve()} (finished images: {len(train_ids)} for training)"
        args.custom_val_ann = f"{ann_path.resolve()} (finished images: {len(val_ids)} held out)"
        args.coco_path = None
    report["split_files"] = ({"train": args.custom_train_ann, "val": args.custom_val_ann} if opts.keep_data
                             else None)
    extra = {"adapt": {k: v for k, v in report.items() if not isinstance(v, list) or k == "loss_per_epoch"},
             "train_stats": {"loss": losses[-1]} if losses else {}}
    checkpoint_io.save_checkpoint(out, model.cpu(), epoch=args.epochs - 1, args=args, with_rng=False, extra=extra)
    atomic_write_text(report_path(out), json.dumps(report, indent=2) + "\n")
    return report


def get_parser() -> argparse.ArgumentParser:
    from util.config import DictAction

    parser = argparse.ArgumentParser(prog="python -m tools.adapt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("annotations", help="the annotation tool's file, or a COCO keypoints file")
    parser.add_argument("images_dir", help="the folder the file's file_name values are relative to")
    parser.add_argument("--config", required=True, help="the config the checkpoint was trained with")
    parser.add_argument("--checkpoint", required=True, help="the checkpoint to start from (only read)")
    parser.add_argument("--out", required=True, help="where to write the new checkpoint (.pth)")
    parser.add_argument("--epochs", type=int, default=4, help="passes over the finished images (default 4)")
    parser.add_argument("--device", default="cuda", help="cuda (falls back to cpu when none is visible) or cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: the config's)")
    parser.add_argument("--lr", type=float, default=None,
                        help="constant learning rate (default: the config's lr; the backbone keeps the config's "
                             "lr_backbone / lr ratio)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of the images held out and scored when there are 10 or more (default 0.2)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--num-workers", type=int, default=0, help="data loading processes (default 0)")
    parser.add_argument("--keep-data", metavar="DIR", default=None,
                        help="write the filtered split files (train.json, val.json) to DIR and keep them (default: "
                             "a temporary folder)")
    parser.add_argument("--options", nargs="+", action=DictAction, help="override config keys: key=value")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load a checkpoint holding Python objects with full unpickling (runs code): only for "
                             "files you trust")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from util.errors import error_message, exit_code

    opts = get_parser().parse_args(argv)
    try:
        report = adapt(opts)
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        print(f"error: {error_message(exc).splitlines()[0] if error_message(exc) else type(exc).__name__}",
              file=sys.stderr)
        return code
    ap = report["val_ap_after"]
    print(f"wrote {report['out']} ({report['train_images']} images, {report['train_people']} people, "
          f"{report['epochs']} epochs; loss {', '.join(f'{v:.3f}' for v in report['loss_per_epoch'])}"
          + (f"; held-out AP {report['val_ap_before']:.3f} -> {ap:.3f}" if ap is not None else "") + ")")
    print(f"report: {report_path(Path(report['out']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
