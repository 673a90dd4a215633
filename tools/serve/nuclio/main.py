"""The Nuclio handler of CVAT's serverless ``detector`` function (``function.yaml`` beside it; see docs/cvat.md).

CVAT posts ``{"image": base64, "threshold": t}`` (``threshold`` only when the user set one) and reads back
``[{confidence, label, type: "skeleton", elements: [{label, type: "points", points: [x, y], outside, ...}]}]``;
the conversion is ``tools.serve.cvat.detector_results``. The model is loaded once per worker from the environment:

* ``CLICKPOSE_CONFIG``, ``CLICKPOSE_CHECKPOINT`` (required; a relative path is taken from the repository root,
  ``/opt/nuclio`` in the function's image),
* ``CLICKPOSE_DEVICE`` (default ``cpu``), ``CLICKPOSE_THRESHOLD`` (the person-score threshold when a request gives
  none; default 0.3), ``CLICKPOSE_OPTIONS`` (config overrides as a JSON object), ``CLICKPOSE_TRUST_CHECKPOINT``
  (``1`` to unpickle the checkpoint fully: only for files you trust).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

from tools.serve.cvat import (DEFAULT_THRESHOLD, check_threshold, detector_results, load_predictor, parse_options,
                              predicted_people)
from tools.serve.errors import RequestError
from tools.serve.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS, decode_base64, decode_image

ENV_HINT = " (set CLICKPOSE_CONFIG and CLICKPOSE_CHECKPOINT in function.yaml's spec.env)"


@dataclass(frozen=True)
class Settings:
    config: str
    checkpoint: str
    device: str
    threshold: float
    options: dict
    trust_checkpoint: bool


def settings_from_env(env: Mapping[str, str]) -> Settings:
    missing = [name for name in ("CLICKPOSE_CONFIG", "CLICKPOSE_CHECKPOINT") if not env.get(name)]
    if missing:
        raise ValueError(f"{' and '.join(missing)} not set{ENV_HINT}")
    text = env.get("CLICKPOSE_THRESHOLD") or str(DEFAULT_THRESHOLD)
    try:
        threshold = float(text)
    except ValueError:
        raise ValueError(f"CLICKPOSE_THRESHOLD must be a number in [0, 1], got {text!r}") from None
    return Settings(config=env["CLICKPOSE_CONFIG"], checkpoint=env["CLICKPOSE_CHECKPOINT"],
                    device=env.get("CLICKPOSE_DEVICE") or "cpu",
                    threshold=check_threshold(threshold, "CLICKPOSE_THRESHOLD"),
                    options=parse_options(env.get("CLICKPOSE_OPTIONS"), "CLICKPOSE_OPTIONS"),
                    trust_checkpoint=env.get("CLICKPOSE_TRUST_CHECKPOINT", "").lower() in ("1", "true", "yes"))


def init_context(context: Any) -> None:
    """Load the Predictor into ``context.user_data`` (once per worker, before any request)."""
    settings = settings_from_env(os.environ)
    context.logger.info(f"Click-Pose: loading {settings.checkpoint} ({settings.config}) on {settings.device}")
    predictor = load_predictor(settings.config, settings.checkpoint, settings.device, settings.options,
                               settings.trust_checkpoint, hint=ENV_HINT)
    context.user_data.model = predictor
    context.user_data.threshold = settings.threshold
    # CVAT matches the answer's element labels to the task's sublabels by name: they must be these
    context.logger.info(f"Click-Pose ready; keypoints {', '.join(predictor.metadata.keypoint_names)}")


def request_body(body: Any) -> dict[str, Any]:
    """The request as a dict: Nuclio decodes a JSON body itself, but bytes or text may come too."""
    if isinstance(body, (bytes, bytearray, str)):
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"the request body is not JSON ({exc}); send {{\"image\": base64, "
                               "\"threshold\": number}") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object {\"image\": base64, \"threshold\": number}")
    return body


def request_threshold(body: Mapping[str, Any], default: float) -> float:
    value = body.get("threshold")
    if value is None:
        return default
    try:
        return check_threshold(value)
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def _respond(context: Any, data: Any, status: int) -> Any:
    return context.Response(body=json.dumps(data), headers={}, content_type="application/json", status_code=status)


def handler(context: Any, event: Any) -> Any:
    """One image -> the people on it as CVAT skeletons (a 4xx answer with ``{"error": ...}`` for a bad request)."""
    try:
        body = request_body(event.body)
        image = body.get("image")
        if not isinstance(image, str) or not image:
            raise RequestError("the request has no image (base64 text in \"image\")")
        pixels = decode_image(decode_base64(image, DEFAULT_MAX_IMAGE_BYTES), "(request image)",
                              DEFAULT_MAX_PIXELS).image
        threshold = request_threshold(body, context.user_data.threshold)
    except RequestError as exc:
        context.logger.warn(f"refused: {exc}")
        return _respond(context, {"error": str(exc)}, exc.status)
    predictor = context.user_data.model
    people = predicted_people(predictor, pixels, threshold)
    return _respond(context, detector_results(people, predictor.metadata.keypoint_names), 200)
