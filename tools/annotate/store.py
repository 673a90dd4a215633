"""The annotation file: a COCO keypoints JSON (valid for pycocotools) that also carries the tool's own state.

Layout written by ``Workspace.document``: ``images`` (every image of the folder), ``annotations`` (what was
reviewed: the kept people -- see :func:`kept` -- of each image marked done, and of each image that came in with
annotations from an existing COCO file, see :func:`exported`), ``categories`` (one 'person' category with the model's
keypoint names and 1-based skeleton), and ``clickpose_annotate`` (per image: status, threshold, every person with
pinned clicks and flags, annotation ids, effort log; the current image). The model's guesses on images opened but
not done are only in ``clickpose_annotate``, so pycocotools never reads them as annotations; the tool resumes from
that section. Annotations of images that are not in the folder are kept as they were.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

TOOL_KEY = "clickpose_annotate"
FORMAT_VERSION = 1


class AnnotationFileError(ValueError):
    """The annotation file cannot be used; the message names the file, the problem and the fix."""


def read_document(path: Path, keypoint_names: Sequence[str]) -> dict[str, Any]:
    """Read and check an existing annotation file (a COCO keypoints file, ours or anyone's)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationFileError(f"cannot read annotation file {path}: {exc}; fix or move it, or pass another "
                                  "--annotations file") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k, []), list) for k in ("images", "annotations")):
        raise AnnotationFileError(f"{path} is not a COCO keypoints file (a JSON object with 'images' and "
                                  "'annotations' lists); pass another --annotations file")
    num = len(keypoint_names)
    for category in data.get("categories") or []:
        if len(category.get("keypoints") or []) not in (0, num):
            raise AnnotationFileError(
                f"{path}: category {category.get('id')} has {len(category['keypoints'])} keypoints but the model has "
                f"{num} ({', '.join(keypoint_names)}); use a checkpoint with that layout or another file")
    ids = [image.get("id") for image in data.get("images", [])]
    if len(ids) != len(set(ids)):
        raise AnnotationFileError(f"{path}: image ids are not unique; fix the file")
    for ann in data.get("annotations", []):
        values = ann.get("keypoints")
        if not isinstance(values, list) or len(values) != 3 * num or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise AnnotationFileError(f"{path}: annotation {ann.get('id')} needs {3 * num} finite keypoint values "
                                      "[x1, y1, v1, ...]; fix the file")
    return data


def kept(person: dict[str, Any], threshold: float) -> bool:
    """A person that counts: not deleted, and edited by the user or scored at or above the image's threshold."""
    return not person.get("deleted") and bool(person.get("touched") or person.get("score", 1.0) >= threshold)


def exported(record: dict[str, Any]) -> bool:
    """Whether an image's kept people belong in the COCO ``annotations``: the user marked it done, or its people
    came from an existing COCO file opened for review (someone's labels: never dropped for not being done)."""
    return record.get("status") == "done" or any(p.get("source") == "file" for p in record.get("people", []))


def people_from_annotations(annotations: Sequence[dict[str, Any]], pin_labelled: bool) -> list[dict[str, Any]]:
    """People of another tool's (or an earlier export's) annotations, as ``PoseSession`` records: labelled keypoints
    pinned when ``pin_labelled`` (a refinement then never moves what someone labelled)."""
    people = []
    for ann in annotations:
        triples = [ann["keypoints"][i:i + 3] for i in range(0, len(ann["keypoints"]), 3)]
        x, y, w, h = ann.get("bbox") or _extent(triples)
        people.append({"box": [x, y, x + max(w, 1.0), y + max(h, 1.0)], "score": float(ann.get("score", 1.0)),
                       "keypoints": [[kx, ky] for kx, ky, _ in triples], "visibility": [int(v) for _, _, v in triples],
                       "pinned": [pin_labelled and v > 0 for _, _, v in triples], "source": "file", "touched": True,
                       "deleted": False, "ann_id": ann.get("id")})
    return people


def _extent(triples: Sequence[Sequence[float]]) -> list[float]:
    labelled = [(x, y) for x, y, v in triples if v > 0] or [(0.0, 0.0)]
    xs, ys = [p[0] for p in labelled], [p[1] for p in labelled]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def annotation(person: dict[str, Any], ann_id: int, image_id: int, category_id: int, size: tuple[int, int]
               ) -> dict[str, Any]:
    """One COCO keypoints annotation: unlabelled keypoints (v=0) are written as 0, 0, 0 as COCO does."""
    width, height = size
    keypoints: list[float] = []
    for (x, y, *_), v in zip(person["keypoints"], person["visibility"]):
        keypoints += [round(float(x), 2), round(float(y), 2), int(v)] if v > 0 else [0, 0, 0]
    x0, y0, x1, y1 = person["box"]
    x0, y0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
    x1, y1 = min(max(x1, x0), width), min(max(y1, y0), height)
    box = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "keypoints": keypoints,
            "num_keypoints": sum(1 for v in person["visibility"] if v > 0), "bbox": box,
            "area": round(box[2] * box[3], 2), "iscrowd": 0, "score": round(float(person["score"]), 4)}


def tool_state(images_dir: str | Path, current: str | None, threshold: float, records: dict[str, Any]
               ) -> dict[str, Any]:
    """The tool's own section (``TOOL_KEY``): the folder, the image to resume at, the default threshold, and per
    image its record (status, threshold, effort log, people as ``PoseSession.to_record`` writes them)."""
    return {"version": FORMAT_VERSION, "images_dir": str(images_dir), "current": current, "threshold": threshold,
            "images": records}


def category(keypoint_names: Sequence[str], skeleton: Sequence[Sequence[int]], existing: dict | None = None) -> dict:
    """The person category: the model's keypoint names and its skeleton, 1-based as COCO writes it."""
    base = {"id": 1, "name": "person", "supercategory": "person"}
    if existing:
        base.update({k: existing[k] for k in ("id", "name", "supercategory") if k in existing})
    return {**base, "keypoints": list(keypoint_names), "skeleton": [[int(a) + 1, int(b) + 1] for a, b in skeleton]}
