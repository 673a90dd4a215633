"""A Label Studio labelling config as the ML backend reads it: which controls name the person box and the keypoints,
the image they label, and which model keypoint each keypoint label stands for.

A keypoint label (``<Label value="..."/>`` inside ``<KeyPointLabels>``) is the model's keypoint ``model_index`` when
it has that attribute, else the model keypoint of the same name (case, spaces, dashes and underscores ignored:
"Left Wrist" is ``left_wrist``). Labels matching no model keypoint are ignored; a config where none matches is refused.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from tools.label_studio import Controls
from tools.serve.errors import RequestError

MAX_CONFIG_CHARS = 1 << 20


def normalise(name: str) -> str:
    """How names are compared: lower case, without spaces, dashes and underscores."""
    return re.sub(r"[\s_\-]+", "", name).lower()


@dataclass(frozen=True)
class ProjectConfig:
    """What the backend needs of a project's labelling config."""

    controls: Controls  # the rectangle control (None: no person box), the keypoint control, the image object
    image_key: str  # the task data field that holds the image ("image" for value="$image")
    box_label: str  # the rectangle label written for a person
    names: tuple[Optional[str], ...]  # per model keypoint its label in this config (None: the config has none)
    smart: bool  # the keypoint control has smart="true" (Label Studio sends the clicks of the user)

    def keypoint_index(self, label: str) -> int:
        """The model keypoint a label of this config stands for (``RequestError`` for one it has not)."""
        for k, name in enumerate(self.names):
            if name == label:
                return k
        known = ", ".join(n for n in self.names if n is not None)
        raise RequestError(f"keypoint label {label!r} is not one of the project's keypoints of this model ({known})")


def _tag(element: ElementTree.Element) -> str:
    return element.tag.lower()


def parse_label_config(text: Any, model_names: Sequence[str]) -> ProjectConfig:
    """Read a labelling config (XML text) against the model's keypoint names; ``RequestError`` with a sentence for
    a config that cannot be used with this model."""
    if not isinstance(text, str) or not text.strip():
        raise RequestError("the request has no label_config (the project's labelling config XML)")
    if len(text) > MAX_CONFIG_CHARS or "<!doctype" in text.lower() or "<!entity" in text.lower():
        raise RequestError("the labelling config is too large or declares a DOCTYPE/ENTITY; send the project's "
                           "plain labelling config")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise RequestError(f"the labelling config is not valid XML ({exc})") from exc
    keypoint_tags = [e for e in root.iter() if _tag(e) == "keypointlabels"]
    if not keypoint_tags:
        raise RequestError("the labelling config has no <KeyPointLabels> control; add one whose labels are the "
                           f"model's keypoints ({', '.join(model_names)})")
    control = keypoint_tags[0]
    image_name = control.get("toName") or ""
    images = {e.get("name"): e for e in root.iter() if _tag(e) == "image"}
    if image_name not in images:
        raise RequestError(f"the <KeyPointLabels> control labels {image_name!r}, which is no <Image> of the config")
    value = images[image_name].get("value") or ""
    image_key = value[1:] if value.startswith("$") else value
    rectangles = [e for e in root.iter() if _tag(e) == "rectanglelabels" and e.get("toName") == image_name]
    box_labels = [lab.get("value") for lab in rectangles[0].iter() if _tag(lab) == "label"] if rectangles else []
    box_label = next((b for b in box_labels if b and normalise(b) == "person"), box_labels[0] if box_labels else
                     "person")
    names = _keypoint_names(control, model_names)
    controls = Controls(box=rectangles[0].get("name") if rectangles else None, keypoint=control.get("name") or "",
                        image=image_name)
    return ProjectConfig(controls, image_key, box_label or "person", names,
                         (control.get("smart") or "").lower() == "true")


def _keypoint_names(control: ElementTree.Element, model_names: Sequence[str]) -> tuple[Optional[str], ...]:
    by_name = {normalise(n): k for k, n in enumerate(model_names)}
    names: list[Optional[str]] = [None] * len(model_names)
    for label in (e for e in control.iter() if _tag(e) == "label"):
        value = label.get("value")
        if not value:
            continue
        index = label.get("model_index")
        if index is not None:
            if not index.strip().isdigit() or int(index) >= len(model_names):
                raise RequestError(f"keypoint label {value!r} has model_index={index!r}, but the model's keypoints "
                                   f"are numbered 0..{len(model_names) - 1}")
            k: Optional[int] = int(index)
        else:
            k = by_name.get(normalise(value))
        if k is not None and names[k] is None:
            names[k] = value
    if all(n is None for n in names):
        raise RequestError("the labelling config names none of the model's keypoints: give the <KeyPointLabels> "
                           f"labels these names ({', '.join(model_names)}) or model_index attributes")
    return tuple(names)
