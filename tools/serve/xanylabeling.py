"""The X-AnyLabeling remote-server door: ``/v1/models``, ``/v1/models/{model}/info`` and ``/v1/predict`` (the
contract of X-AnyLabeling's ``services/auto_labeling/remote_server.py`` and X-AnyLabeling-Server's ``app/api``).

``/v1/predict`` takes ``{model, image: data URI, params: {conf_threshold, marks}}`` and answers
``{success: true, data: {shapes}}``: per person above ``conf_threshold`` one ``rectangle`` (label ``person``) and one
``point`` per labelled keypoint (label = the keypoint's name), sharing the person's ``group_id``; occluded keypoints
have ``difficult: true``. Errors answer ``{success: false, error: {code, message}}`` with a 4xx status (codes
``MODEL_NOT_FOUND``, ``INVALID_IMAGE``, ``INVALID_PARAMS``, ``UNAUTHORIZED``; ``INFERENCE_ERROR`` when the model
fails).

Marks: X-AnyLabeling sends every mark on the canvas each time. A positive point mark ``{type: "point", data: [x, y],
label: 1}`` is a click on the keypoint, of anyone shown, whose current position is nearest; that person is refined
with the click, which stays where it was put. A positive ``rectangle`` mark (x0, y0, x1, y1) adds a person from the
box; negative marks change nothing. The marks are applied in order, so the answer depends only on the image, the
threshold and the marks; the service keeps each image's marks so far and applies only the new ones when a request
repeats the earlier marks and adds some (``button_clear`` empties the list: the model's people again).
"""
from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Body

from tools.annotate.session import Poses
from tools.serve.core import ServeCore, TrackedSession, nearest
from tools.serve.errors import ImageError, ModelNotFoundError, RequestError
from tools.serve.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS, decode_base64, decode_image

BOX_LABEL = "person"


def shapes(people: list[dict[str, Any]], keypoint_names: tuple[str, ...]) -> list[dict[str, Any]]:
    """X-AnyLabeling shapes of people as ``PoseSession.people`` gives them (pixels; 'visibility' COCO 0/1/2)."""
    found = []
    for person in people:
        group = int(person["index"]) + 1  # X-AnyLabeling's group ids are positive
        x0, y0, x1, y1 = (float(v) for v in person["box"])
        score = min(max(float(person["score"]), 0.0), 1.0)
        found.append({"label": BOX_LABEL, "shape_type": "rectangle", "points": [[x0, y0], [x1, y0], [x1, y1],
                                                                                [x0, y1]],
                      "score": score, "group_id": group, "difficult": False, "attributes": {}})
        for k, (name, point, flag) in enumerate(zip(keypoint_names, person["keypoints"], person["visibility"])):
            if flag == 0:
                continue
            found.append({"label": name, "shape_type": "point", "points": [[float(point[0]), float(point[1])]],
                          "score": min(max(float(person["confidence"][k]), 0.0), 1.0), "group_id": group,
                          "difficult": flag == 1, "attributes": {}})
    return found


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{what} must be a number, got {value!r}")
    return float(value)


def _mark(mark: Any, size: tuple[int, int]) -> tuple:
    """A mark as a checked tuple (type, label, coordinates...)."""
    if not isinstance(mark, dict):
        raise RequestError(f"a mark must be an object {{type, data, label}}, got {mark!r}")
    kind, data, label = mark.get("type"), mark.get("data"), mark.get("label", 1)
    count = {"point": 2, "rectangle": 4}.get(kind)
    if count is None:
        raise RequestError(f"mark type {kind!r} is not supported: use 'point' (a keypoint) or 'rectangle' (a person)")
    if not isinstance(data, list) or len(data) != count:
        raise RequestError(f"a {kind} mark's data must be {count} numbers, got {data!r}")
    if label not in (0, 1) or isinstance(label, bool):
        raise RequestError(f"a mark's label must be 1 (positive) or 0 (negative), got {label!r}")
    values = [_number(v, f"a {kind} mark's coordinate") for v in data]
    width, height = size
    if not all(0 <= x <= width for x in values[0::2]) or not all(0 <= y <= height for y in values[1::2]):
        raise RequestError(f"the {kind} mark {data} is outside the {width}x{height} image")
    return (kind, label, *values)


class XAnyLabelingServer:
    """The door's logic over a :class:`ServeCore` (routes in :func:`router`); images are refused above
    ``max_bytes`` bytes or ``max_pixels`` pixels."""

    def __init__(self, core: ServeCore, model_id: str, threshold: float, display_name: str,
                 limits: tuple[int, int] = (DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS)):
        self.core, self.model_id, self.threshold, self.display_name = core, model_id, threshold, display_name
        self.max_bytes, self.max_pixels = limits

    def models(self) -> dict[str, Any]:
        widgets = [{"name": "button_run", "value": None}, {"name": "button_add_point", "value": None},
                   {"name": "button_clear", "value": None}, {"name": "input_conf", "value": None},
                   {"name": "edit_conf", "value": self.threshold}]
        return {self.model_id: {"display_name": self.display_name, "widgets": widgets,
                                "params": {"conf_threshold": self.threshold,
                                           "keypoints": list(self.core.keypoint_names)},
                                "capabilities": {"keypoints": True, "point_prompts": True},
                                "batch_processing_mode": "default"}}

    def info(self, model: str) -> dict[str, Any]:
        self._check_model(model)
        return {"model_id": model, **self.models()[model]}

    def _check_model(self, model: Any) -> None:
        if model != self.model_id:
            raise ModelNotFoundError(f"model {model!r} is not served here; the model is {self.model_id!r} "
                                     "(GET /v1/models)")

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check_model(body.get("model"))
        image = body.get("image")
        if not isinstance(image, str) or not image:
            raise ImageError("the request has no image (a data URI 'data:image/png;base64,...')")
        loaded = self.core.prepare(decode_image(decode_base64(image, self.max_bytes), "(request image)",
                                                self.max_pixels))
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise RequestError("params must be a JSON object")
        threshold = _number(params.get("conf_threshold", self.threshold), "conf_threshold")
        if not 0.0 <= threshold <= 1.0:
            raise RequestError(f"conf_threshold must be in [0, 1], got {threshold}")
        marks = params.get("marks") or []
        if not isinstance(marks, list):
            raise RequestError("params.marks must be a list of marks")
        checked = [_mark(m, loaded.size) for m in marks]
        with self.core.lock:
            entry = self.core.cached(loaded)
            tracked = self.core.session(("x-anylabeling", entry.digest), entry)
            self._apply(tracked, entry.poses, checked, threshold)
            people = tracked.session.people(threshold)
        return {"shapes": shapes(people, self.core.keypoint_names), "description": ""}

    @staticmethod
    def _apply(tracked: TrackedSession, model_poses: Poses, marks: list[tuple], threshold: float) -> None:
        """Bring the session to the model's people (``model_poses``) after ``marks``, reusing the longest prefix of
        marks already applied at this threshold."""
        session = tracked.session
        history = tracked.history if tracked.threshold == threshold else []
        if not history:
            session.restore((model_poses, (), ()))
        common = 0
        while common < min(len(history), len(marks)) and history[common][0] == marks[common]:
            common += 1
        if common < len(history):
            session.restore((history[common][1], (), ()))  # the poses before mark `common`: after the ones kept
        tracked.history, tracked.threshold = history[:common], threshold
        for mark in marks[common:]:
            before = session.poses
            kind, label, *values = mark
            try:
                if label == 1 and kind == "point":
                    person, keypoint = nearest(session.people(threshold), values[0], values[1])
                    session.refine([(person, keypoint, values[0], values[1])])
                elif label == 1:
                    session.add_person(values, threshold)
            except Exception:
                session.restore((before, (), ()))
                raise
            tracked.history.append((mark, before))


def router(server: XAnyLabelingServer) -> APIRouter:
    """The door's routes under /v1."""
    routes = APIRouter()

    @routes.get("/v1/models")
    def models() -> dict[str, Any]:
        """The model and the widgets X-AnyLabeling shows for it."""
        return {"success": True, "data": server.models()}

    @routes.get("/v1/models/{model}/info")
    def info(model: str) -> dict[str, Any]:
        return {"success": True, "data": server.info(model)}

    @routes.post("/v1/predict")
    def predict(body: Any = Body(None)) -> dict[str, Any]:
        """People on the image as shapes, after the marks (clicks on keypoints) in params.marks."""
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object {model, image, params}")
        return {"success": True, "data": server.predict(body)}

    return routes
