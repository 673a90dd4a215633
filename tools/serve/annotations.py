"""Annotations submitted in Label Studio (the ``/webhook`` events), kept as a COCO keypoints file.

The file has the layout of the annotation page's file (``tools/annotate/store``): ``images`` (one per Label Studio
task: id = the task id, ``file_name`` = the task's image reference, width, height), ``annotations`` (one per person:
COCO keypoints, unlabelled keypoints as 0, 0, 0; each also records ``ls_annotation_id`` and ``ls_task_id``) and one
``person`` category with the model's keypoint names and skeleton. Saving an annotation again (ANNOTATION_UPDATED)
replaces its people; deleting it removes them. Every change rewrites the file atomically, so it is always whole.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

from tools.annotate import store
from tools.serve.errors import RequestError
from util.files import atomic_write_text


def _pixels(value: dict[str, Any], key: str, size: int) -> float:
    number = value.get(key)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise RequestError(f"a region's value.{key} must be a number (percent of the image), got {number!r}")
    return float(number) * size / 100.0


def people_from_result(result: Sequence[dict[str, Any]], keypoint_index: Callable[[str], int], num_keypoints: int
                       ) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    """People of a Label Studio annotation's regions, in pixels, and the image's (width, height). A person is a
    ``rectanglelabels`` region and the ``keypointlabels`` regions whose ``parentID`` is its id; a keypoint without a
    (known) parent goes to the smallest box around it, else all such keypoints form one person of their own."""
    regions = [r for r in result if isinstance(r, dict) and r.get("type") in ("rectanglelabels", "keypointlabels")]
    sizes = {(r.get("original_width"), r.get("original_height")) for r in regions}
    if len(sizes) > 1 or any(not isinstance(w, int) or not isinstance(h, int) or w <= 0 or h <= 0 for w, h in sizes):
        raise RequestError("the annotation's regions need one positive original_width / original_height")
    width, height = sizes.pop() if sizes else (0, 0)
    people: dict[Hashable, dict[str, Any]] = {}
    for region in regions:
        if region["type"] == "rectanglelabels":
            value = region.get("value") or {}
            x, y = _pixels(value, "x", width), _pixels(value, "y", height)
            box = [x, y, x + _pixels(value, "width", width), y + _pixels(value, "height", height)]
            people[region.get("id") or id(region)] = _empty(num_keypoints, box)
    loose: dict[str, Any] = {}
    for region in regions:
        if region["type"] != "keypointlabels":
            continue
        value = region.get("value") or {}
        labels = value.get("keypointlabels") or []
        if not labels:
            continue
        try:
            k = keypoint_index(labels[0])
        except RequestError:
            continue  # a label of the project that is not a keypoint of this model
        x, y = _pixels(value, "x", width), _pixels(value, "y", height)
        person = people.get(region.get("parentID")) or _around(people.values(), x, y)
        if person is None:
            person = loose = loose or _empty(num_keypoints, None)
        person["keypoints"][k], person["visibility"][k] = [x, y], 2
    found = list(people.values()) + ([loose] if loose else [])
    for person in found:
        if person["box"] is None:
            labelled = [p for p, v in zip(person["keypoints"], person["visibility"]) if v]
            xs, ys = [p[0] for p in labelled], [p[1] for p in labelled]
            person["box"] = [min(xs), min(ys), max(xs), max(ys)]
    return found, (width, height)


def _empty(num_keypoints: int, box: Any) -> dict[str, Any]:
    return {"box": box, "keypoints": [[0.0, 0.0] for _ in range(num_keypoints)], "visibility": [0] * num_keypoints,
            "score": 1.0}


def _around(people: Any, x: float, y: float) -> Any:
    inside = [p for p in people if p["box"][0] <= x <= p["box"][2] and p["box"][1] <= y <= p["box"][3]]
    return min(inside, key=lambda p: (p["box"][2] - p["box"][0]) * (p["box"][3] - p["box"][1]), default=None)


class AnnotationStore:
    """The COCO keypoints file (see the module docstring); an existing file is read and continued."""

    def __init__(self, path: str | Path, keypoint_names: Sequence[str], skeleton: Sequence[Sequence[int]]):
        self.path = Path(path)
        self.keypoint_names = list(keypoint_names)
        self.lock = threading.Lock()
        data = store.read_document(self.path, self.keypoint_names) if self.path.exists() else {}
        existing = (data.get("categories") or [None])[0]
        self.category = store.category(self.keypoint_names, skeleton, existing)
        self.extra = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
        self.images: dict[Any, dict[str, Any]] = {image["id"]: image for image in data.get("images", [])}
        self.annotations: list[dict[str, Any]] = list(data.get("annotations", []))

    def record(self, task_id: Any, annotation_id: Any, image: str, size: tuple[int, int],
               people: Sequence[dict[str, Any]]) -> int:
        """Store (or replace) one Label Studio annotation's people; returns how many were written."""
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            raise RequestError(f"task id {task_id!r} is not a number; COCO image ids are numbers")
        with self.lock:
            width, height = size
            known = self.images.get(task_id, {})
            if not width and known:
                width, height = known.get("width", 0), known.get("height", 0)
            self.images[task_id] = {"id": task_id, "file_name": image, "width": width, "height": height}
            self.annotations = [a for a in self.annotations if a.get("ls_annotation_id") != annotation_id]
            next_id = max((int(a.get("id", 0)) for a in self.annotations), default=0) + 1
            for n, person in enumerate(people):
                entry = store.annotation(person, next_id + n, task_id, self.category["id"], (width, height))
                self.annotations.append({**entry, "ls_annotation_id": annotation_id, "ls_task_id": task_id})
            self._save()
        return len(people)

    def delete(self, annotation_ids: Sequence[Any]) -> None:
        """Remove the people of these Label Studio annotations."""
        with self.lock:
            gone = set(annotation_ids)
            self.annotations = [a for a in self.annotations if a.get("ls_annotation_id") not in gone]
            self._save()

    def document(self) -> dict[str, Any]:
        return {"info": {"description": "keypoints annotated in Label Studio with the Click-Pose ML backend"},
                **self.extra, "images": list(self.images.values()), "annotations": self.annotations,
                "categories": [self.category]}

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.document(), separators=(",", ":")))
