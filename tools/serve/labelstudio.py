"""The Label Studio ML backend door: ``/health``, ``/setup``, ``/predict``, ``/webhook`` (the contract of
label-studio-ml-backend's ``label_studio_ml/api.py``).

``/predict`` answers ``{"results": [{"result", "score", "model_version"}]}``, one per task: every person above the
threshold as a ``rectanglelabels`` region and one ``keypointlabels`` region per keypoint, named as in the project's
labelling config (``labelconfig``); coordinates are percent of the image (``tools/label_studio.person_regions``).

Interactive labelling (``<KeyPointLabels smart="true">``): Label Studio sends the keypoint the user just placed in
``params.context.result``. Its label names the joint; the person is the one whose prediction of that joint lies
nearest, and that person is refined with the click, which stays where it was placed. Clicks accumulate in the task's
session (task id + image content); a region sent again at the same place is not applied twice, and a region moved
(the same id elsewhere) corrects the same person again. A smart ``rectanglelabels`` region adds a person from its box.
Negative keypoints (``is_positive: 0``) are ignored.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Optional

from fastapi import APIRouter, Body

from tools.label_studio import person_regions
from tools.serve.annotations import AnnotationStore, people_from_result
from tools.serve.core import ServeCore, TrackedSession, nearest
from tools.serve.errors import RequestError
from tools.serve.images import ImageSource
from tools.serve.labelconfig import ProjectConfig, parse_label_config

MODEL_CLASS = "ClickPose"
STORE_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETE_EVENTS = ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED")


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def task_image(task: dict[str, Any], config: ProjectConfig) -> str:
    """The image reference of a task (its data field named by the config's ``<Image value="$...">``)."""
    data = _mapping(task.get("data"), f"task {task.get('id')}'s data")
    reference = data.get(config.image_key)
    if reference is None and len(data) == 1:
        reference = next(iter(data.values()))
    if not isinstance(reference, str):
        raise RequestError(f"task {task.get('id')} has no image in data[{config.image_key!r}]; its data has "
                           f"{sorted(data) or 'no fields'}")
    return reference


class LabelStudioBackend:
    """The door's logic over a :class:`ServeCore` (routes in :func:`router`)."""

    def __init__(self, core: ServeCore, source: ImageSource, threshold: float,
                 store: Optional[AnnotationStore] = None):
        self.core, self.source, self.threshold, self.store = core, source, threshold, store
        self.config: Callable[[str], ProjectConfig] = lru_cache(maxsize=16)(
            lambda text: parse_label_config(text, core.keypoint_names))

    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        schema = body.get("schema")
        if schema is not None:
            self.config(schema)  # refuses a config this model cannot label
        return {"model_version": self.core.model_version}

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise RequestError("the request needs 'tasks': a list of Label Studio tasks")
        config = self.config(body.get("label_config"))
        context = _mapping(_mapping(body.get("params"), "params").get("context"), "params.context")
        clicks = context.get("result") or []
        if not isinstance(clicks, list) or not all(isinstance(c, dict) for c in clicks):
            raise RequestError("params.context.result must be a list of regions")
        if clicks and len(tasks) != 1:
            raise RequestError(f"an interactive request (params.context) needs exactly one task, got {len(tasks)}")
        loaded = [self.core.prepare(self.source.load(task_image(task, config))) for task in tasks]  # unlocked
        results = []
        for task, image in zip(tasks, loaded):
            with self.core.lock:
                entry = self.core.cached(image)
                key = ("label-studio", _task_id(task, required=bool(clicks)))
                tracked = self.core.session(key, entry, create=bool(clicks)) if key[1] is not None else None
                if clicks:
                    self._apply(tracked, clicks, config)
                people = (tracked.session if tracked else self.core.view(entry)).people(self.threshold)
            results.append(self._prediction(people, entry.size, config))
        return {"results": results}

    def _apply(self, tracked: TrackedSession, clicks: list[dict[str, Any]], config: ProjectConfig) -> None:
        session = tracked.session
        width, height = session.size
        for region in clicks:
            kind = region.get("type") or ""
            value = _mapping(region.get("value"), "a context region's value")
            if kind not in ("keypointlabels", "rectanglelabels") or not region.get("is_positive", 1):
                continue
            place = tuple(_percent(value.get(n), n) for n in (("x", "y") if kind == "keypointlabels" else
                                                              ("x", "y", "width", "height")))
            key = region.get("id") or (kind, repr(value.get(kind)), place)
            previous = tracked.applied.get(key)
            if previous is not None and previous[0] == place:
                continue  # already applied
            if kind == "rectanglelabels":
                x, y, w, h = place
                person = session.add_person([x * width / 100, y * height / 100, (x + w) * width / 100,
                                             (y + h) * height / 100], self.threshold)
            else:
                labels = value.get("keypointlabels") or []
                if not labels or not isinstance(labels[0], str):
                    raise RequestError("a context keypoint has no label (value.keypointlabels); the label names the "
                                       "joint that was placed")
                keypoint = config.keypoint_index(labels[0])
                x, y = place[0] * width / 100, place[1] * height / 100
                person = previous[1] if previous is not None else nearest(
                    session.people(self.threshold), x, y, keypoint)[0]
                session.refine([(person, keypoint, x, y)])
            tracked.applied[key] = (place, person)

    def _prediction(self, people: list[dict[str, Any]], size: tuple[int, int], config: ProjectConfig
                    ) -> dict[str, Any]:
        regions = [region for person in people for region in person_regions(
            person, person["index"], size, config.names, person["visibility"], config.box_label, config.controls)]
        scores = [float(p["score"]) for p in people]
        return {"result": regions, "score": round(sum(scores) / len(scores), 4) if scores else 0.0,
                "model_version": self.core.model_version}

    def webhook(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        action = body.get("action")
        if action not in STORE_EVENTS + DELETE_EVENTS:
            return 200, {"status": "Unknown event"}
        if self.store is None:
            raise RequestError("annotations are not stored: start the service with --annotations FILE.json to keep "
                               "them as a COCO keypoints file", status=409)
        if action in DELETE_EVENTS:
            gone = body.get("annotations") or [body.get("annotation") or {}]
            ids = [a.get("id") for a in gone if isinstance(a, dict) and a.get("id") is not None]
            self.store.delete(ids)
            return 201, {"status": "ok", "result": {"deleted": len(ids)}}
        annotation = _mapping(body.get("annotation"), "annotation")
        task = _mapping(body.get("task"), "task") or {"id": annotation.get("task")}
        project = _mapping(body.get("project"), "project")
        config = self.config(project["label_config"]) if project.get("label_config") else None
        index = config.keypoint_index if config is not None else self._model_index
        result = annotation.get("result") or []
        if not isinstance(result, list):
            raise RequestError("annotation.result must be a list of regions")
        people, size = people_from_result(result, index, len(self.core.keypoint_names))
        if annotation.get("id") is None:
            raise RequestError("the webhook's annotation has no id")
        reference = task_image(task, config) if config is not None and task.get("data") else str(task.get("id"))
        stored = self.store.record(_task_id(task, required=True), annotation["id"], reference, size, people)
        return 201, {"status": "ok", "result": {"people": stored}}

    def _model_index(self, label: str) -> int:
        for k, name in enumerate(self.core.keypoint_names):
            if name == label:
                return k
        raise RequestError(f"keypoint label {label!r} is not one of the model's keypoints")


def _task_id(task: dict[str, Any], required: bool) -> Optional[int | str]:
    value = task.get("id")
    if value is None and required:
        raise RequestError("the task has no 'id'; interactive requests and annotations need Label Studio's task id")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, str))):
        raise RequestError(f"task id {value!r} is neither a number nor a string")
    return value


def _percent(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 100.0:
        raise RequestError(f"the placed region's {name} must be a percentage of the image in [0, 100], got {value!r}")
    return float(value)


def router(backend: LabelStudioBackend) -> APIRouter:
    """The door's routes (the health check is the app's: both doors share it)."""
    from fastapi.responses import JSONResponse

    routes = APIRouter()

    @routes.post("/setup")
    def setup(body: Any = Body(None)) -> dict[str, Any]:
        """Label Studio connects the backend: the project's config is checked, the model version returned."""
        return backend.setup(_mapping(body, "the request body"))

    @routes.post("/predict")
    def predict(body: Any = Body(None)) -> dict[str, Any]:
        """Predictions of tasks, or (with params.context) the refinement after the user placed a keypoint."""
        return backend.predict(_mapping(body, "the request body"))

    @routes.post("/webhook")
    def webhook(body: Any = Body(None)) -> JSONResponse:
        """ANNOTATION_CREATED / ANNOTATION_UPDATED: the annotation goes into the COCO file (--annotations)."""
        status, answer = backend.webhook(_mapping(body, "the request body"))
        return JSONResponse(status_code=status, content=answer)

    @routes.get("/metrics")
    def metrics() -> dict[str, Any]:
        return {}

    return routes
