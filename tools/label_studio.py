"""Label Studio's formats for people with keypoints: prediction regions, tasks and the labelling config.

A person is one ``rectanglelabels`` region (its box) and one ``keypointlabels`` region per labelled keypoint whose
``parentID`` is the box's id; coordinates are percent of the image (``x = 100 * x_px / width``; a rectangle's x/y
is its top-left corner) with ``original_width`` / ``original_height`` set, as Label Studio stores them. Keypoints
with visibility 0 (not labelled) are left out. The names of the regions' controls (``from_name``) and of the image
(``to_name``) must match the project's labelling config; :func:`label_config` writes one that does, and
:class:`Controls` names those of another project's config (the ML backend, ``tools/serve``, reads them from it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence
from xml.sax.saxutils import quoteattr

BOX_CONTROL, KEYPOINT_CONTROL, IMAGE_OBJECT = "box", "kp", "image"
KEYPOINT_WIDTH = 0.8  # the drawn keypoint's radius, percent of the image width (Label Studio's 'width')


@dataclass(frozen=True)
class Controls:
    """The labelling config's names that regions refer to: the rectangle control (``box``; None: the config has
    none, so keypoints are written without a parent box), the keypoint control and the image object."""

    box: Optional[str] = BOX_CONTROL
    keypoint: str = KEYPOINT_CONTROL
    image: str = IMAGE_OBJECT


def person_regions(person: dict[str, Any], index: int, size: tuple[int, int],
                   keypoint_names: Sequence[Optional[str]], visibility: Optional[Sequence[int]] = None,
                   box_label: str = "person", controls: Controls = Controls()) -> list[dict[str, Any]]:
    """Regions of one person: ``person`` has 'box' (x0, y0, x1, y1) and 'keypoints' (K, >=2) in pixels and
    optionally 'score'; ``visibility`` (COCO 0/1/2, default all 2) decides which keypoints are written, and so does
    ``keypoint_names``: a keypoint whose name is None (one the project's config has no label for) is left out."""
    width, height = size
    x0, y0, x1, y1 = (float(v) for v in person["box"])
    x0, y0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
    x1, y1 = min(max(x1, x0), width), min(max(y1, y0), height)
    box_id = f"person{index}"
    common = {"to_name": controls.image, "original_width": int(width), "original_height": int(height),
              "image_rotation": 0}
    score = person.get("score")
    regions = []
    if controls.box is not None:
        regions.append({"id": box_id, "from_name": controls.box, "type": "rectanglelabels", **common,
                        "value": {"x": 100 * x0 / width, "y": 100 * y0 / height, "width": 100 * (x1 - x0) / width,
                                  "height": 100 * (y1 - y0) / height, "rotation": 0,
                                  "rectanglelabels": [box_label]}})
    parent = {"parentID": box_id} if controls.box is not None else {}
    flags = list(visibility) if visibility is not None else [2] * len(keypoint_names)
    for k, (name, point, flag) in enumerate(zip(keypoint_names, person["keypoints"], flags)):
        if flag == 0 or name is None:
            continue
        x, y = min(max(float(point[0]), 0.0), width), min(max(float(point[1]), 0.0), height)
        regions.append({"id": f"{box_id}_kp{k}", "from_name": controls.keypoint, "type": "keypointlabels",
                        **parent, **common,
                        "value": {"x": 100 * x / width, "y": 100 * y / height, "width": KEYPOINT_WIDTH,
                                  "keypointlabels": [name]}})
    if score is not None:
        for region in regions:
            region["score"] = round(float(score), 4)
    return regions


def prediction(people: Sequence[dict[str, Any]], size: tuple[int, int], keypoint_names: Sequence[str],
               model_version: str) -> dict[str, Any]:
    """One Label Studio prediction (every person's regions); its score is the mean person score."""
    result = [region for i, person in enumerate(people)
              for region in person_regions(person, i, size, keypoint_names, person.get("visibility"))]
    scores = [float(p["score"]) for p in people if "score" in p]
    return {"model_version": model_version, "score": round(sum(scores) / len(scores), 4) if scores else 0.0,
            "result": result}


def task(image_url: str, people: Sequence[dict[str, Any]], size: tuple[int, int], keypoint_names: Sequence[str],
         model_version: str) -> dict[str, Any]:
    """A task to import: the image and the model's prediction (shown pre-labelled in Label Studio)."""
    return {"data": {IMAGE_OBJECT: image_url}, "predictions": [prediction(people, size, keypoint_names,
                                                                           model_version)]}


def label_config(keypoint_names: Sequence[str], box_label: str = "person") -> str:
    """A labelling config matching the regions above: a keypoint label per keypoint (``model_index`` = its index in
    the checkpoint's layout), a person rectangle and the image. Names are XML-escaped."""
    labels = "\n".join(f"    <Label value={quoteattr(name)} model_index=\"{k}\"/>"
                       for k, name in enumerate(keypoint_names))
    return (f"<View>\n  <KeyPointLabels name=\"{KEYPOINT_CONTROL}\" toName=\"{IMAGE_OBJECT}\" smart=\"true\">\n"
            f"{labels}\n  </KeyPointLabels>\n"
            f"  <RectangleLabels name=\"{BOX_CONTROL}\" toName=\"{IMAGE_OBJECT}\">\n"
            f"    <Label value={quoteattr(box_label)}/>\n  </RectangleLabels>\n"
            f"  <Image name=\"{IMAGE_OBJECT}\" value=\"${IMAGE_OBJECT}\" zoom=\"true\"/>\n</View>\n")
