"""One COCO-format keypoint dataset for COCO, CrowdPose, Human-Art, OCHuman and user data.

The datasets differ only in data: where the annotation files and images are (``DatasetSpec``), how many keypoints
there are and which evaluator scores them. ``CocoKeypointDataset[i]`` gives ``(image (3, H, W) normalised, target)``
with the target in the model layout of ``datasets.transforms.to_model_target``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from datasets.metadata import KeypointMetadata
# defined beside the CLI's exit codes; re-exported here (datasets/__init__.py exports them)
from util.errors import AnnotationFormatError, DatasetLayoutError, UnreadableImageError  # noqa: F401
from util.settings import as_data_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitLayout:
    """Where one split lives, relative to the dataset root: the annotation file and the folder that the images'
    ``file_name`` values are relative to."""
    annotation: str
    images: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    metadata_key: str
    # each split lists accepted layouts; the first whose annotation file exists is used
    train: tuple[SplitLayout, ...]
    val: tuple[SplitLayout, ...]
    evaluator: str = "coco"  # 'coco' (pycocotools) | 'crowdpose' (faster-coco-eval, keypoints_crowd)

    def layouts(self, image_set: str) -> tuple[SplitLayout, ...]:
        if image_set == "train":
            return self.train
        if image_set in ("val", "test"):
            return self.val
        raise ValueError(f"unknown image_set {image_set!r}: expected 'train' or 'val'")

    def describe_layout(self) -> str:
        lines = []
        for split, layouts in (("train", self.train), ("val", self.val)):
            for layout in layouts:
                lines.append(f"  <root>/{layout.annotation}   ({split} annotations; images under "
                             f"<root>/{layout.images or '.'}/<file_name>)")
        return "\n".join(lines)


def _coco_layouts(split: str) -> tuple[SplitLayout, ...]:
    ann = f"annotations/person_keypoints_{split}2017.json"
    return SplitLayout(ann, f"images/{split}2017"), SplitLayout(ann, f"{split}2017")


DATASET_SPECS: dict[str, DatasetSpec] = {
    "coco": DatasetSpec("coco", "coco", train=_coco_layouts("train"), val=_coco_layouts("val")),
    "crowdpose": DatasetSpec(
        "crowdpose", "crowdpose",
        train=(SplitLayout("json/crowdpose_trainval.json", "images"),),
        val=(SplitLayout("json/crowdpose_test.json", "images"),),
        evaluator="crowdpose"),
    # file_name values already start with HumanArt/images/, so images resolve against the root itself
    "humanart": DatasetSpec(
        "humanart", "humanart",
        train=(SplitLayout("HumanArt/annotations/training_humanart.json", ""),),
        val=(SplitLayout("HumanArt/annotations/validation_humanart.json", ""),)),
    # the reference trains on OCHuman's val split and evaluates on its test split
    "ochuman": DatasetSpec(
        "ochuman", "ochuman",
        train=(SplitLayout("annotations/ochuman_coco_format_val_range_0.00_1.00.json", "images"),),
        val=(SplitLayout("annotations/ochuman_coco_format_test_range_0.00_1.00.json", "images"),)),
}


def custom_spec(train_ann: str, train_img: str, val_ann: str, val_img: str, evaluator: str = "coco") -> DatasetSpec:
    """Spec for user data (config keys ``custom_{train,val}_{ann,img}``, absolute or relative to the root)."""
    return DatasetSpec("custom", "custom", train=(SplitLayout(train_ann, train_img),),
                       val=(SplitLayout(val_ann, val_img),), evaluator=evaluator)


def resolve_split(root: Path, spec: DatasetSpec, image_set: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of a split under ``root``; a clear error shows the layout when absent."""
    layouts = spec.layouts(image_set)
    hint = (f"Expected layout of the '{spec.name}' dataset (root = --coco_path):\n{spec.describe_layout()}")
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root {str(root)!r} is not a directory.\n{hint}")
    for layout in layouts:
        ann_file = root / layout.annotation
        if not ann_file.is_file():
            continue
        for candidate in layouts:
            if candidate.annotation == layout.annotation and (root / candidate.images).is_dir():
                return ann_file, root / candidate.images
        tried = ", ".join(str(root / c.images) for c in layouts if c.annotation == layout.annotation)
        raise DatasetLayoutError(f"image folder not found (tried {tried}).\n{hint}")
    tried = ", ".join(str(root / layout.annotation) for layout in layouts)
    raise DatasetLayoutError(f"{image_set} annotation file not found (tried {tried}).\n{hint}")


def _require(condition: bool, ann_file: Path, where: str, problem: str) -> None:
    if not condition:
        raise AnnotationFormatError(f"{ann_file}: {where}: {problem}")


def select_keypoint_field(data: dict, field: str, ann_file: Path) -> None:
    """Make ``field`` (e.g. Human-Art's ``keypoints_21``) the annotations' ``keypoints``, in place, so that the
    dataset, the evaluators and the per-image AP all read the chosen layout; ``num_<field>`` (when present) becomes
    ``num_keypoints``, else it is recounted from the visibility flags."""
    if field == "keypoints":
        return
    count_field = f"num_{field}"
    for i, ann in enumerate(data.get("annotations") or []):
        if not isinstance(ann, dict):
            continue  # the format check below names it
        _require(field in ann, ann_file, f"annotations[{i}] (id {ann.get('id')})",
                 f"missing field '{field}' (keypoint_field={field!r}); does this file have that layout?")
        ann["keypoints"] = ann[field]
        ann["num_keypoints"] = int(ann[count_field]) if count_field in ann else \
            sum(1 for v in ann[field][2::3] if v > 0)


def load_annotations(ann_file: Path, num_keypoints: int, keypoint_field: str = "keypoints") -> COCO:
    """Read and check a COCO keypoint file; returns a pycocotools ``COCO`` (keeps 64-bit ids as Python ints).

    Array sizes come from ``num_keypoints`` (the metadata), not from ``categories[*].keypoints``: Human-Art lists
    21 names there while ``keypoints`` holds 17 triplets (and ``keypoints_21`` the 21: ``keypoint_field``).
    """
    try:
        with open(ann_file, "r") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise AnnotationFormatError(f"{ann_file}: not valid JSON ({err})") from err
    _require(isinstance(data, dict), ann_file, "top level", "expected an object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        _require(isinstance(data.get(key), list), ann_file, f"field '{key}'", "missing or not a list")
    select_keypoint_field(data, keypoint_field, ann_file)
    validate_annotations(data, ann_file, num_keypoints)
    data.setdefault("categories", [{"id": 1, "name": "person", "supercategory": "person"}])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


_FIX = "fix the file (or regenerate it)"


def _numeric_rows(rows: list, ann_file: Path, anns: list, field: str, length: int) -> None:
    """Every row is a list of ``length`` finite numbers; the first bad one is named by annotation id."""
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != length:
            got = f"{len(row)} values" if isinstance(row, (list, tuple)) else f"the value {row!r:.40}"
            hint = (f" ({length // 3} keypoints x 3); is this the right dataset_file / keypoint layout?"
                    if field == "keypoints" else f" numbers; {_FIX}")
            raise AnnotationFormatError(f"{ann_file}: annotation id {anns[i]['id']}: field '{field}' has {got}, "
                                        f"expected {length}{hint}")
    if not rows:
        return
    values = np.array(rows)
    if values.dtype.kind not in "iuf":  # a string or null somewhere
        bad = next(i for i, row in enumerate(rows) if not all(isinstance(v, (int, float)) for v in row))
        raise AnnotationFormatError(f"{ann_file}: annotation id {anns[bad]['id']}: field '{field}' holds a value "
                                    f"that is not a number ({rows[bad]!r:.80}); {_FIX}")
    finite = np.isfinite(values.astype(np.float64)).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise AnnotationFormatError(f"{ann_file}: annotation id {anns[bad]['id']}: field '{field}' holds NaN or "
                                    f"infinity; {_FIX} or remove the annotation")


def _unique_ids(items: list, ann_file: Path, kind: str) -> None:
    seen: dict = {}
    for i, item in enumerate(items):
        key = item["id"]
        if key in seen:
            raise AnnotationFormatError(
                f"{ann_file}: {kind} id {key} appears twice ({kind}s[{seen[key]}] and {kind}s[{i}]): every {kind} "
                "needs its own id (merged files? renumber the ids of one of them); otherwise results are scored "
                "against the wrong ground truth")
        seen[key] = i


def _check_records(items: list, ann_file: Path, kind: str, fields: Sequence[str]) -> None:
    for i, item in enumerate(items):
        where = f"{kind}s[{i}]" + (f" (id {item.get('id')})" if isinstance(item, dict) and "id" in item else "")
        _require(isinstance(item, dict), ann_file, where, "not an object")
        for key in fields:
            _require(key in item, ann_file, where, f"missing field '{key}'")
        _require(isinstance(item["id"], int) and not isinstance(item["id"], bool), ann_file, where,
                 f"field 'id' must be an integer, got {item['id']!r:.40}")


def validate_annotations(data: dict, ann_file: Path, num_keypoints: int) -> None:
    """Refuse a keypoint file that would silently corrupt labels or metrics: missing fields, duplicate image or
    annotation ids, annotations of images that do not exist, and boxes, keypoints or areas that are not finite
    numbers of the right count (caught here, not later as a diverged training). Errors name the file and id."""
    images, anns = data["images"], data["annotations"]
    _check_records(images, ann_file, "image", ("id", "file_name"))
    _check_records(anns, ann_file, "annotation", ("id", "image_id", "bbox", "keypoints", "category_id"))
    _unique_ids(images, ann_file, "image")
    _unique_ids(anns, ann_file, "annotation")
    image_ids = {img["id"] for img in images}
    for ann in anns:
        _require(ann["image_id"] in image_ids, ann_file, f"annotation id {ann['id']}",
                 f"its image_id {ann['image_id']!r} is not in 'images'; add the image or remove the annotation")
    _numeric_rows([a["bbox"] for a in anns], ann_file, anns, "bbox", 4)
    _numeric_rows([a["keypoints"] for a in anns], ann_file, anns, "keypoints", 3 * num_keypoints)
    with_area = [a for a in anns if "area" in a]
    _numeric_rows([[a["area"]] for a in with_area], ann_file, with_area, "area", 1)
    for ann in with_area:
        # OKS divides by the area: a labelled person needs a positive one
        positive = ann["area"] > 0 or ann.get("iscrowd", 0) or labelled_count(ann) == 0
        _require(ann["area"] >= 0 and positive, ann_file, f"annotation id {ann['id']}",
                 f"field 'area' is {ann['area']}, expected a positive number (the person's segment area in pixels); "
                 "fix it or remove the field (the box area is used then)")


def labelled_count(ann: dict) -> int:
    """The annotation's ``num_keypoints`` (as the reference filters on it), or the labelled count if absent."""
    if "num_keypoints" in ann:
        return int(ann["num_keypoints"])
    return sum(1 for v in ann["keypoints"][2::3] if v > 0)


def has_keypoints(coco: COCO, image_id: int) -> bool:
    """Reference train filter: the image has annotations and their num_keypoints sum to more than zero."""
    anns = coco.imgToAnns.get(image_id, [])
    return len(anns) > 0 and sum(labelled_count(a) for a in anns) > 0


def annotations_to_target(anns: Sequence[dict], image_id: int, width: int, height: int,
                          num_keypoints: int) -> dict:
    """COCO annotations -> pixel-space target: crowd and zero-keypoint people removed, boxes xyxy clamped to the
    image, degenerate boxes dropped. Missing ``area`` (CrowdPose) becomes the clamped box area."""
    people = [a for a in anns if not a.get("iscrowd", 0) and labelled_count(a) != 0]
    boxes = torch.tensor([a["bbox"] for a in people], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2].clamp_(min=0, max=width)
    boxes[:, 1::2].clamp_(min=0, max=height)
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area = torch.tensor([float(a["area"]) if "area" in a else float(box_area[i]) for i, a in enumerate(people)],
                        dtype=torch.float32)
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
    keypoints = torch.tensor([a["keypoints"] for a in people], dtype=torch.float32).reshape(-1, num_keypoints, 3)
    return {
        "boxes": boxes[keep],
        "labels": torch.tensor([a["category_id"] for a in people], dtype=torch.int64)[keep],
        "image_id": torch.tensor([image_id], dtype=torch.int64),
        "keypoints": keypoints[keep],
        "area": area[keep],
        "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
        "orig_size": torch.tensor([height, width], dtype=torch.int64),
        "size": torch.tensor([height, width], dtype=torch.int64),
    }


def read_image(path: Path) -> Image.Image:
    """RGB PIL image (grayscale, palette and alpha images converted)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from err


def check_image_size(ann_file: Path, info: dict, image: Image.Image, path: Path) -> None:
    """The decoded image has the annotation file's width and height (when the file gives them)."""
    expected = (info.get("width"), info.get("height"))
    if None in expected or expected == image.size:
        return
    raise AnnotationFormatError(
        f"{ann_file}: image id {info['id']}: {path} is {image.width}x{image.height} pixels but the file says "
        f"{expected[0]}x{expected[1]}, so its boxes and keypoints may belong to another picture. Fix the image or "
        "width/height in the file; to use the images as they are, pass --trust_image_sizes")


class CocoKeypointDataset(torch.utils.data.Dataset):
    """COCO-format people with keypoints.

    Attributes for the engine: ``coco`` (pycocotools COCO of the annotation file), ``ann_file`` (its path),
    ``ids`` (image ids in dataset order, Python ints), ``metadata``, ``spec``, ``keypoint_field`` (the annotation
    field read as ``keypoints``).
    ``skip_unreadable``: an unreadable image is skipped with a warning (training) instead of raising (evaluation);
    ``num_skipped`` counts the skips. ``check_image_size``: an image whose size differs from the file's
    width/height is an error (boxes and keypoints would not fit it); False uses the image as read.
    """

    def __init__(self, ann_file: Path, img_folder: Path, metadata: KeypointMetadata, *,
                 transforms: Optional[Callable] = None, image_set: str = "train", filter_images: bool = True,
                 skip_unreadable: bool = False, spec: Optional[DatasetSpec] = None, keypoint_field: str = "keypoints",
                 check_image_size: bool = True):
        self.ann_file, self.img_folder = Path(ann_file), Path(img_folder)
        self.metadata, self.spec, self.transforms = metadata, spec, transforms
        self.image_set, self.skip_unreadable, self.num_skipped = image_set, skip_unreadable, 0
        self.keypoint_field, self.check_image_size = keypoint_field, check_image_size
        self.coco = load_annotations(self.ann_file, metadata.num_keypoints, keypoint_field)
        all_ids = sorted(self.coco.imgs)
        self.ids: list[int] = [i for i in all_ids if has_keypoints(self.coco, i)] if filter_images else all_ids

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.img_folder / self.coco.imgs[self.ids[index]]["file_name"]

    def load_raw(self, index: int) -> tuple[Image.Image, dict]:
        """Untransformed RGB image and pixel-space target (boxes xyxy, keypoints (N, K, 3))."""
        image_id = self.ids[index]
        image = read_image(self.image_path(index))
        if self.check_image_size:
            check_image_size(self.ann_file, self.coco.imgs[image_id], image, self.image_path(index))
        target = annotations_to_target(self.coco.imgToAnns.get(image_id, []), image_id, image.width, image.height,
                                       self.metadata.num_keypoints)
        return image, target

    def __getitem__(self, index: int):
        for attempt in range(len(self.ids)):
            current = (index + attempt) % len(self.ids)
            try:
                image, target = self.load_raw(current)
            except UnreadableImageError as err:
                if not self.skip_unreadable:
                    raise
                self.num_skipped += 1
                logger.warning("%s; skipped (%d so far in this worker)", err, self.num_skipped)
                continue
            if self.transforms is not None:
                image, target = self.transforms(image, target)
            return image, target
        raise UnreadableImageError(f"no readable image in {self.img_folder} ({len(self.ids)} tried)")


def spec_from_args(args) -> DatasetSpec:
    """The registered spec of the dataset, or the custom spec from the ``custom_*`` config keys (``args``: a
    ``util.settings.DataCfg`` or the flat keys)."""
    cfg = as_data_settings(args)
    name = cfg.dataset_file
    if name == "custom":
        values = []
        for field in ("train_ann", "train_img", "val_ann", "val_img"):
            value = getattr(cfg.custom, field)
            if not value:
                raise ValueError(f"dataset_file='custom' needs the config key custom_{field} (a path, absolute or "
                                 f"relative to --coco_path), e.g. --options custom_{field}=...")
            values.append(str(value))
        return custom_spec(*values, evaluator=cfg.custom.evaluator)
    if name not in DATASET_SPECS:
        raise ValueError(f"dataset_file {name!r} is not supported; choose one of "
                         f"{sorted(DATASET_SPECS) + ['custom']}")
    return DATASET_SPECS[name]
