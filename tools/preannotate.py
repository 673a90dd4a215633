"""Pre-annotate a folder of images: the model's people for every image, in a file annotators open for review.

    python -m tools.preannotate IMAGES --config CFG --checkpoint CKPT --out FILE.json \\
        [--batch-size N] [--threshold T] [--device cpu|cuda] [--dtype float32|bfloat16|float16] \\
        [--format coco|label-studio] [--save-every N]
    torchrun --nproc_per_node 4 -m tools.preannotate IMAGES ...    # the same file, 4 processes (or nodes)

(run from the repository root, as every tool).

``--format coco`` (default) writes the annotation tool's file: a COCO keypoints file (pycocotools loads it) with the
checkpoint's keypoint layout and skeleton in ``categories``, a ``score`` per person, unlabelled keypoints as COCO
writes them, and every image with status ``todo`` in the tool's own section, so that
``python -m tools.annotate IMAGES --annotations FILE.json`` opens it for review. ``--format label-studio`` writes
Label Studio tasks with predictions (import them into a project made with the ``FILE.label_config.xml`` written
beside it; see docs/preannotate.md).

Images are grouped into batches of equal size (sorted by width, height, name: no padding inside a batch), and
batch i goes to process ``i % world_size``, so one process and many form the same batches and write the same file.
Each process saves what it has done to ``.FILE.json.parts/`` atomically every ``--save-every`` images; running the
same command again after Ctrl-C, a kill or a crash continues from there (settings that differ are refused). Images
that cannot be read are listed in the file (``clickpose_preannotate.unreadable``) and in the summary, not fatal.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

DTYPES = ("float32", "bfloat16", "float16")
REPORT_KEY = "clickpose_preannotate"


class PreannotateError(RuntimeError):
    """Bad input or a state the run cannot continue from; the message names the problem and the fix."""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.preannotate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", help="folder of images (searched recursively)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True, help="the file to write (.json)")
    parser.add_argument("--format", choices=("coco", "label-studio"), default="coco")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass, of equal size (default: 1 on a CPU, where larger batches are "
                             "no faster, 4 on CUDA)")
    parser.add_argument("--threshold", type=float, default=0.3, help="people below this score are not written")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available; under "
                                                       "torchrun cuda:LOCAL_RANK)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="the model's arithmetic (bfloat16: CPUs with AVX512-BF16/AMX, CUDA; float16: CUDA)")
    parser.add_argument("--save-every", type=int, default=20, metavar="N", help="save progress every N images")
    parser.add_argument("--image-url", default="/data/local-files/?d={folder}/{path}",
                        help="Label Studio image URL of an image; {folder}: the image folder's name, {path}: the "
                             "image's path inside it")
    parser.add_argument("--max-pixels", type=int, default=None, help="larger images are skipped as unreadable")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    if (args.batch_size is not None and args.batch_size < 1) or args.save_every < 1:
        parser.error("--batch-size and --save-every must be at least 1")
    if not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must be between 0 and 1, got {args.threshold}")
    return args


# ---- the images and their batches ------------------------------------------------------------------------------
def read_sizes(root: Path, names: Sequence[str], max_pixels: Optional[int]
               ) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Width and height of each image from its header (no decoding); the unreadable ones with the reason."""
    from models.predictor import UnreadableImageError, image_size

    sizes, unreadable = {}, {}
    for name in names:
        try:
            sizes[name] = image_size(root / name, max_pixels, name)
        except UnreadableImageError as exc:
            unreadable[name] = str(exc)
    return sizes, unreadable


def plan_batches(sizes: dict[str, tuple[int, int]], batch_size: int) -> list[list[str]]:
    """Batches of images of one size, in a fixed order (the same for every process count)."""
    ordered = sorted(sizes, key=lambda name: (sizes[name], name))
    batches: list[list[str]] = []
    for name in ordered:
        if batches and len(batches[-1]) < batch_size and sizes[batches[-1][0]] == sizes[name]:
            batches[-1].append(name)
        else:
            batches.append([name])
    return batches


# ---- progress on disk --------------------------------------------------------------------------------------------
class Parts:
    """The folder of per-process progress files; each holds the settings, results per image and unreadable images."""

    def __init__(self, out: Path, settings: dict[str, Any], rank: int, world_size: int):
        self.folder = out.parent / f".{out.name}.parts"
        self.own = self.folder / f"rank{rank:03d}-of-{world_size:03d}.json"
        self.settings = settings
        self.results: dict[str, Any] = {}
        self.unreadable: dict[str, str] = {}

    def load_all(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Results and unreadable images of every part (of any earlier process count); refuses other settings."""
        results, unreadable = {}, {}
        for path in sorted(self.folder.glob("rank*.json")):
            try:
                part = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise PreannotateError(f"cannot read the progress file {path} ({exc}); delete {self.folder} to "
                                       "start over") from exc
            changed = [k for k, v in self.settings.items() if part.get("settings", {}).get(k) != v]
            if changed:
                raise PreannotateError(
                    f"{self.folder} holds the progress of a run with other settings ({', '.join(changed)} differ); "
                    f"rerun that command to finish it, or delete {self.folder} to start over with these")
            results.update(part.get("results", {}))
            unreadable.update(part.get("unreadable", {}))
            if path == self.own:
                self.results, self.unreadable = dict(part.get("results", {})), dict(part.get("unreadable", {}))
        return results, unreadable

    def save(self, complete: bool = False) -> None:
        from util.files import atomic_write_text

        atomic_write_text(self.own, json.dumps({"settings": self.settings, "complete": complete,
                                                "results": self.results, "unreadable": self.unreadable}))


# ---- the run -----------------------------------------------------------------------------------------------------
def launch() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; a process group for the final barrier."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1:
        import datetime

        import torch.distributed as dist

        # gloo: the barrier needs no GPU; long timeout: shards can end far apart on large folders
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    return rank, world_size, local_rank


def choose_device(requested: Optional[str], local_rank: int, world_size: int) -> str:
    import torch

    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and world_size > 1:
        requested = f"cuda:{local_rank % max(torch.cuda.device_count(), 1)}"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise PreannotateError(f"--device {requested}: this torch has no CUDA device; use --device cpu")
    return requested


def has_bfloat16(device: str) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX (elsewhere torch emulates it, many times slower than float32)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_dtype(dtype: str, device: str) -> Optional[str]:
    """A warning for a dtype this machine runs slowly; an error for one it cannot use."""
    if dtype == "float16" and not device.startswith("cuda"):
        raise PreannotateError("--dtype float16 is for CUDA devices; on a CPU use bfloat16 (or float32)")
    if dtype == "bfloat16" and not has_bfloat16(device):
        return (f"{device} has no bfloat16 instructions (AVX512-BF16 / AMX on CPUs): bfloat16 is emulated there and "
                "much slower than float32")
    return None


def predict_shard(predictor: Any, root: Path, batches: Sequence[Sequence[str]], parts: Parts, done: set[str],
                  args: argparse.Namespace, show_progress: bool) -> int:
    """Run this process's batches that are not done yet; returns the number of images predicted now."""
    import torch
    from PIL import Image

    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    todo = [batch for batch in batches if not all(name in done for name in batch)]
    total = sum(len(batch) for batch in batches)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=total - sum(len(b) for b in todo), unit="img", dynamic_ncols=True)
    predicted = since_save = 0
    try:
        for batch in todo:
            images, names = [], []
            for name in batch:  # decoding errors (a truncated file) are found here, the batch goes on without it
                try:
                    with Image.open(root / name) as image:
                        images.append(image.convert("RGB"))
                    names.append(name)
                except (OSError, ValueError) as exc:
                    parts.unreadable[name] = f"cannot decode: {exc}"
            people = predictor.detect_batch(images, args.threshold, dtype) if images else []
            for name, image, found in zip(names, images, people):
                parts.results[name] = {"width": image.width, "height": image.height, "people": [
                    {"score": round(p["score"], 5), "box": [round(v, 3) for v in p["box"]],
                     "keypoints": [[round(x, 3), round(y, 3)] for x, y in p["keypoints"]]} for p in found]}
            predicted += len(batch)
            since_save += len(batch)
            if since_save >= args.save_every:
                parts.save()
                since_save = 0
            if bar is not None:
                bar.update(len(batch))
    finally:
        parts.save()  # also on Ctrl-C: what was predicted is kept
        if bar is not None:
            bar.close()
    parts.save(complete=True)
    return predicted


def coco_document(root: Path, names: Sequence[str], results: dict[str, Any], unreadable: dict[str, str],
                  metadata: Any, threshold: float, report: dict[str, Any]) -> dict[str, Any]:
    """The annotation tool's file (see tools/annotate/store.py): ids follow the folder's sorted order."""
    from tools.annotate import effort, store

    category = store.category(metadata.keypoint_names, metadata.skeleton)
    images, annotations, records = [], [], {}
    num_keypoints = metadata.num_keypoints
    for image_id, name in enumerate(names, start=1):
        if name not in results:
            continue
        entry = results[name]
        size = (entry["width"], entry["height"])
        images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        people = []
        for person in entry["people"]:
            ann_id = len(annotations) + 1
            record = {"index": len(people), "score": person["score"], "box": person["box"],
                      "keypoints": person["keypoints"], "visibility": [2] * num_keypoints,
                      "pinned": [False] * num_keypoints, "source": "model", "touched": False, "deleted": False,
                      "ann_id": ann_id}
            annotations.append(store.annotation(record, ann_id, image_id, category["id"], size))
            people.append(record)
        records[name] = {"status": "todo", "threshold": threshold, "effort": effort.new_image_log(),
                         "people": people}
    first = next((name for name in names if name in results), None)
    return {"info": {"description": "keypoints pre-annotated by Click-Pose (tools/preannotate.py)"},
            "images": images, "annotations": annotations, "categories": [category],
            store.TOOL_KEY: store.tool_state(root, first, threshold, records),
            REPORT_KEY: {**report, "unreadable": dict(sorted(unreadable.items()))}}


def label_studio_tasks(root: Path, names: Sequence[str], results: dict[str, Any], metadata: Any,
                       url_template: str, model_version: str) -> list[dict[str, Any]]:
    from urllib.parse import quote

    from tools import label_studio

    tasks = []
    for name in names:
        if name in results:
            entry = results[name]
            url = url_template.format(folder=quote(root.name), path=quote(name))
            tasks.append(label_studio.task(url, entry["people"], (entry["width"], entry["height"]),
                                           metadata.keypoint_names, model_version))
    return tasks


def run(args: argparse.Namespace) -> int:
    from models.predictor import Predictor, list_images
    from util.files import atomic_write_text

    started = time.perf_counter()
    root = Path(args.images).resolve()
    if not root.is_dir():
        raise PreannotateError(f"image folder not found: {args.images}")
    out = Path(args.out).resolve()
    rank, world_size, local_rank = launch()
    device = choose_device(args.device, local_rank, world_size)
    if args.batch_size is None:
        args.batch_size = 4 if device.startswith("cuda") else 1
    settings = {"images": str(root), "config": str(Path(args.config).resolve()), "format": args.format,
                "checkpoint": str(Path(args.checkpoint).resolve()), "threshold": args.threshold,
                "dtype": args.dtype, "batch_size": args.batch_size}
    checkpoint = Path(args.checkpoint)
    if checkpoint.is_file():  # another file under the same name is another model
        stat = checkpoint.stat()
        settings["checkpoint_file"] = [stat.st_size, stat.st_mtime_ns]
    parts = Parts(out, settings, rank, world_size)
    if out.exists() and not parts.folder.exists() and not args.overwrite:
        raise PreannotateError(f"{out} exists; pass --overwrite to replace it, or another --out")

    names = [p.relative_to(root).as_posix() for p in list_images(root)]
    if not names:
        raise PreannotateError(f"no images found under {root}")
    sizes, unreadable = read_sizes(root, names, args.max_pixels)
    batches = plan_batches(sizes, args.batch_size)
    mine = batches[rank::world_size]
    done, _ = parts.load_all()

    warning = check_dtype(args.dtype, device)
    if warning and rank == 0:
        print(f"warning: {warning}", file=sys.stderr)
    predictor = Predictor(args.config, args.checkpoint, device=device)
    parts.unreadable.update({name: reason for name, reason in unreadable.items()})
    try:
        predicted = predict_shard(predictor, root, mine, parts, set(done), args,
                                  show_progress=rank == 0 and sys.stderr.isatty())
    except KeyboardInterrupt:
        print(f"\ninterrupted: progress saved in {parts.folder}; run the same command again to continue",
              file=sys.stderr)
        return 130
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank != 0:
        return 0
    results, unreadable = parts.load_all()
    missing = [name for batch in batches for name in batch if name not in results and name not in unreadable]
    if missing:
        raise PreannotateError(f"{len(missing)} images have no result (e.g. {missing[0]}): a process stopped early; "
                               "run the same command again to finish")
    people = sum(len(results[name]["people"]) for name in results)
    report = {"checkpoint": settings["checkpoint"], "config": settings["config"], "threshold": args.threshold,
              "dtype": args.dtype, "batch_size": args.batch_size, "images": len(results), "people": people}
    if args.format == "coco":
        document: Any = coco_document(root, names, results, unreadable, predictor.metadata, args.threshold, report)
    else:
        document = label_studio_tasks(root, names, results, predictor.metadata, args.image_url,
                                      model_version=Path(args.checkpoint).name)
        from tools import label_studio

        atomic_write_text(out.with_suffix(".label_config.xml"), label_studio.label_config(
            predictor.metadata.keypoint_names))
    atomic_write_text(out, json.dumps(document, separators=(",", ":")))
    shutil.rmtree(parts.folder, ignore_errors=True)
    seconds = time.perf_counter() - started
    print(f"{len(results)} images, {people} people -> {out} ({predicted} predicted now in {seconds:.1f} s on "
          f"{world_size} process(es); {len(unreadable)} unreadable)")
    for name, reason in sorted(unreadable.items()):
        print(f"  unreadable: {name}: {reason}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from util.allocator import keep_freed_memory

    keep_freed_memory()  # large CPU tensors are reused instead of faulted in again for every image
    from util.checkpoint import CheckpointError
    from util.config import ConfigError

    try:
        return run(args)
    except (PreannotateError, CheckpointError, ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
