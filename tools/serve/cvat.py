"""CVAT: an auto-annotation function for ``cvat-cli task auto-annotate`` and the conversions of CVAT's serverless
(Nuclio) ``detector`` function in ``tools/serve/nuclio`` (see docs/cvat.md).

``cvat-cli ... task auto-annotate TASK_ID --function-module tools.serve.cvat -p config=str:CFG -p
checkpoint=str:CKPT`` imports this module and calls :func:`create` with the ``-p NAME=TYPE:VALUE`` values (types
``str``, ``int``, ``float``, ``bool``). The function declares one skeleton label, ``person``, whose sublabels are
the checkpoint's keypoints (in order, ids 0..K-1) and whose SVG draws its skeleton; ``detect`` returns one skeleton
per person whose score is at least the threshold (``--conf-threshold`` when given, else ``create``'s ``threshold``).

Visibility follows the service's COCO flags (tools/serve/core.py): the quality head's prediction when the checkpoint
has one, else every keypoint visible (2). A keypoint flagged 0 (not labelled) is ``outside``, 1 (labelled but
occluded) is ``occluded``; a person with no keypoint labelled is left out (CVAT's server drops such skeletons too).

CVAT's protocols send only the image (and a threshold): no existing shapes and no clicks, so in CVAT the model
pre-labels and the corrections are made by hand; the interactive refinement is the service's (tools/serve) alone.

The conversions (metadata -> spec, skeleton -> SVG, people -> shapes) are plain functions of their inputs, apart from
the model; :func:`predicted_people` is the one model call.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import PIL.Image

import cvat_sdk.auto_annotation as cvataa
import cvat_sdk.models as models

PERSON_LABEL = "person"
PERSON_LABEL_ID = 0  # the spec's id of the person label (CVAT maps it to the task's label of that name)
DEFAULT_THRESHOLD = 0.3
REPO = Path(__file__).resolve().parents[2]

# Where the skeleton template draws each known keypoint, in CVAT's 100 x 100 template canvas: a person facing the
# viewer (so their left is on the right). A layout with a name not listed here is drawn on a circle instead.
TEMPLATE_POSITIONS: dict[str, tuple[float, float]] = {
    "head": (50, 4), "nose": (50, 10), "left_eye": (53, 8), "right_eye": (47, 8), "left_ear": (56, 10),
    "right_ear": (44, 10), "neck": (50, 18), "left_shoulder": (60, 20), "right_shoulder": (40, 20),
    "left_elbow": (64, 35), "right_elbow": (36, 35), "left_wrist": (67, 48), "right_wrist": (33, 48),
    "left_finger": (69, 55), "right_finger": (31, 55), "left_hip": (57, 50), "right_hip": (43, 50),
    "left_knee": (58, 70), "right_knee": (42, 70), "left_ankle": (58, 88), "right_ankle": (42, 88),
    "left_toe": (62, 95), "right_toe": (38, 95),
}


# ---- metadata -> spec ------------------------------------------------------------------------------------------
def template_positions(names: Sequence[str]) -> list[tuple[float, float]]:
    """(x, y) of each keypoint in the skeleton template: :data:`TEMPLATE_POSITIONS` when every name is there, else
    evenly on a circle (in keypoint order)."""
    if all(name in TEMPLATE_POSITIONS for name in names):
        return [TEMPLATE_POSITIONS[name] for name in names]
    angles = [2 * math.pi * k / max(len(names), 1) for k in range(len(names))]
    return [(round(50 + 40 * math.sin(a), 3), round(50 - 40 * math.cos(a), 3)) for a in angles]


def skeleton_svg(names: Sequence[str], skeleton: Sequence[tuple[int, int]]) -> str:
    """CVAT's skeleton SVG: one ``<line data-type="edge">`` per limb, then one ``<circle data-type="element node">``
    per keypoint. Nodes are numbered 1..K in keypoint order (``data-node-id``, which the edges'
    ``data-node-from``/``data-node-to`` name); ``data-label-name`` is the sublabel's name, which CVAT's server
    replaces by the sublabel's id when it creates the label. ``skeleton``: 0-based keypoint pairs (the metadata's)."""
    count = len(names)
    for a, b in skeleton:
        if not (0 <= a < count and 0 <= b < count) or a == b:
            raise ValueError(f"skeleton edge ({a}, {b}) does not join two of the {count} keypoints (0-based)")
    positions = template_positions(names)
    lines = [f'<line x1="{positions[a][0]}" y1="{positions[a][1]}" x2="{positions[b][0]}" y2="{positions[b][1]}" '
             f'data-type="edge" data-node-from="{a + 1}" data-node-to="{b + 1}"></line>' for a, b in skeleton]
    circles = [f'<circle r="0.75" cx="{x}" cy="{y}" data-type="element node" data-element-id="{k + 1}" '
               f'data-node-id="{k + 1}" data-label-name="{html.escape(name, quote=True)}"></circle>'
               for k, (name, (x, y)) in enumerate(zip(names, positions))]
    return "\n".join(lines + circles)


def detection_spec(metadata: Any) -> cvataa.DetectionFunctionSpec:
    """The SDK function's spec: one skeleton label ``person`` (id 0) whose sublabels are the keypoints (id = index).
    ``metadata``: a ``KeypointMetadata`` (``keypoint_names``, 0-based ``skeleton``)."""
    names = tuple(metadata.keypoint_names)
    return cvataa.DetectionFunctionSpec(labels=[cvataa.skeleton_label_spec(
        PERSON_LABEL, PERSON_LABEL_ID, [cvataa.keypoint_spec(name, k) for k, name in enumerate(names)],
        svg=skeleton_svg(names, metadata.skeleton))])


def nuclio_spec(metadata: Any) -> list[dict[str, Any]]:
    """The Nuclio function's ``metadata.annotations.spec`` (as JSON data): the same label as :func:`detection_spec`.
    No ids: the same JSON creates a task's label (``cvat-cli task create ... --labels FILE``), where an id would name
    an existing label."""
    names = tuple(metadata.keypoint_names)
    return [{"name": PERSON_LABEL, "type": "skeleton",
             "sublabels": [{"name": name, "type": "points"} for name in names],
             "svg": skeleton_svg(names, metadata.skeleton)}]


# ---- people -> shapes ------------------------------------------------------------------------------------------
def _unit(value: Any) -> float:
    return min(max(float(value), 0.0), 1.0)


def _labelled(person: Mapping[str, Any]) -> bool:
    return any(flag != 0 for flag in person["visibility"])


def _with_score(model: type, score: float) -> dict[str, float]:
    """``{'score': score}`` when this cvat_sdk's model has the field (older SDKs lack it), else nothing."""
    return {"score": score} if "score" in model.attribute_map else {}


def skeleton_shapes(people: Sequence[Mapping[str, Any]]) -> list[models.LabeledShapeRequest]:
    """The SDK function's output for people as :func:`predicted_people` gives them (pixels; 'visibility' COCO
    0/1/2): one ``person`` skeleton each with every keypoint (the SDK wants them all), 0 -> outside, 1 -> occluded."""
    shapes = []
    for person in people:
        if not _labelled(person):
            continue
        elements = [cvataa.keypoint(k, [float(point[0]), float(point[1])], outside=flag == 0, occluded=flag == 1,
                                    **_with_score(models.SubLabeledShapeRequest, _unit(confidence)))
                    for k, (point, flag, confidence) in enumerate(zip(person["keypoints"], person["visibility"],
                                                                      person["confidence"]))]
        shapes.append(cvataa.skeleton(PERSON_LABEL_ID, elements,
                                      **_with_score(models.LabeledShapeRequest, _unit(person["score"]))))
    return shapes


def detector_results(people: Sequence[Mapping[str, Any]], keypoint_names: Sequence[str]) -> list[dict[str, Any]]:
    """The Nuclio ``detector`` answer for the same people: ``[{confidence, label, type: 'skeleton', elements:
    [{label, type: 'points', points: [x, y], outside, occluded, confidence}]}]`` (CVAT's server reads ``outside``;
    ``occluded`` and ``confidence`` are there for other readers)."""
    results = []
    for person in people:
        if not _labelled(person):
            continue
        elements = [{"label": name, "type": "points", "points": [float(point[0]), float(point[1])],
                     "outside": flag == 0, "occluded": flag == 1, "confidence": _unit(confidence)}
                    for name, point, flag, confidence in zip(keypoint_names, person["keypoints"],
                                                             person["visibility"], person["confidence"])]
        results.append({"confidence": _unit(person["score"]), "label": PERSON_LABEL, "type": "skeleton",
                        "elements": elements})
    return results


# ---- the model -------------------------------------------------------------------------------------------------
def check_threshold(value: Any, what: str = "threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")
    return float(value)


def parse_options(text: Optional[str], what: str = "options") -> dict[str, Any]:
    """Config overrides given as a JSON object (``{"num_queries": 100}``); empty -> none."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} must be a JSON object of config overrides, e.g. '{{\"num_queries\": 100}}': "
                         f"{exc}") from None
    if not isinstance(options, dict):
        raise ValueError(f"{what} must be a JSON object of config overrides, got {text!r}")
    return options


def resolve(path: str | Path) -> Path:
    """``path`` as given when it exists, else relative to the repository (a Nuclio function's paths)."""
    given = Path(path).expanduser()
    return given if given.is_absolute() or given.exists() else REPO / given


def load_predictor(config: str | Path, checkpoint: str | Path, device: str = "cpu",
                   options: Optional[Mapping[str, Any]] = None, trust_checkpoint: bool = False, hint: str = ""):
    """The Predictor of ``config`` + ``checkpoint``; a missing file or a bad config says which, plus ``hint`` (where
    the value came from)."""
    from models.predictor import Predictor
    from util.errors import CheckpointError, ConfigError

    if not config or not checkpoint:
        raise ValueError(f"a config and a checkpoint are needed{hint}")
    try:
        return Predictor(resolve(config), resolve(checkpoint), device=device, options=options,
                         trust_checkpoint=trust_checkpoint)
    except (CheckpointError, ConfigError) as exc:
        raise type(exc)(f"{exc}{hint}") from exc


def predicted_people(predictor: Any, image: PIL.Image.Image, threshold: float) -> list[dict[str, Any]]:
    """The model's people on ``image`` with score >= ``threshold``, best first, as ``people_dicts`` gives them
    plus 'visibility' (COCO flags: the quality head's, else all 2, as the service's sessions start)."""
    from models.predictor import people_dicts

    prediction = predictor.prediction(image.convert("RGB"))
    people = prediction.people
    if people.predicted_visibility is not None:
        visibility = people.predicted_visibility.tolist()
    else:
        visibility = [[2] * people.keypoints.shape[1] for _ in range(people.num_people)]
    return people_dicts(people, prediction.size, threshold, fields={"visibility": visibility})


class ClickPoseFunction:
    """A CVAT SDK detection function over a Predictor (``cvat_sdk.auto_annotation.DetectionFunction``)."""

    def __init__(self, predictor: Any, threshold: float = DEFAULT_THRESHOLD):
        self.predictor = predictor
        self.threshold = check_threshold(threshold)
        self.spec = detection_spec(predictor.metadata)

    def detect(self, context: cvataa.DetectionFunctionContext, image: PIL.Image.Image
               ) -> list[models.LabeledShapeRequest]:
        # cvat-cli's --conf-threshold (context.conf_threshold, where the SDK has it) wins over create()'s threshold
        given = getattr(context, "conf_threshold", None)
        threshold = self.threshold if given is None else check_threshold(given, "conf_threshold")
        return skeleton_shapes(predicted_people(self.predictor, image, threshold))


def create(config: str, checkpoint: str, device: str = "cpu", threshold: float = DEFAULT_THRESHOLD,
           options: str = "", trust_checkpoint: bool = False) -> ClickPoseFunction:
    """cvat-cli's factory: ``-p config=str:CFG -p checkpoint=str:CKPT`` [``-p device=str:cuda``]
    [``-p threshold=float:0.3``] [``-p options=str:'{"key": value}'``] [``-p trust_checkpoint=bool:true``]."""
    predictor = load_predictor(config, checkpoint, device, parse_options(options, "-p options"), trust_checkpoint,
                               hint=" (cvat-cli: -p config=str:CFG -p checkpoint=str:CKPT)")
    return ClickPoseFunction(predictor, threshold)


# ---- python -m tools.serve.cvat spec: the Nuclio spec of a checkpoint's layout ---------------------------------
def layout(config: str | Path, checkpoint: Optional[str | Path] = None, options: Optional[Mapping[str, Any]] = None,
           trust_checkpoint: bool = False):
    """The keypoint metadata the Predictor would use (the checkpoint's recorded layout, else the config's), without
    building the model."""
    from models.predictor import keypoint_metadata
    from util.checkpoint import read_checkpoint
    from util.config import Config, apply_config_to_args

    cfg = Config.fromfile(resolve(config))
    if options:
        cfg.merge_from_dict(dict(options))
    args = apply_config_to_args(cfg, argparse.Namespace())
    ckpt = read_checkpoint(resolve(checkpoint), trust=trust_checkpoint) if checkpoint else None
    return keypoint_metadata(args, ckpt)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.serve.cvat", description=(
        "Print the CVAT Nuclio spec (metadata.annotations.spec of tools/serve/nuclio/function.yaml) of a model's "
        "keypoint layout: paste it into the yaml when the checkpoint's keypoints are not COCO's 17."))
    parser.add_argument("command", choices=["spec"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", help="read its recorded keypoint layout (else the config's)")
    parser.add_argument("--options", default="", help="config overrides as a JSON object")
    parser.add_argument("--trust-checkpoint", action="store_true")
    args = parser.parse_args(argv)
    from util.errors import CheckpointError, ConfigError

    try:
        metadata = layout(args.config, args.checkpoint, parse_options(args.options, "--options"),
                          args.trust_checkpoint)
    except (CheckpointError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(nuclio_spec(metadata), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
