"""The FastAPI application: both doors over one :class:`ServeCore`, behind the token and request checks.

Every refusal is a 4xx JSON answer whose ``detail`` is a sentence (under /v1: X-AnyLabeling's ``{success: false,
error: {code, message}}``); a failure of the model itself is a 500 of the same form, logged, without a traceback.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.predictor import Predictor
from tools.annotate.guard import LOCAL_HOSTS
from tools.serve import labelstudio, xanylabeling
from tools.serve.access import ServeGuard, TokenGuard, XAnyLabelingErrors
from tools.serve.annotations import AnnotationStore
from tools.serve.core import DEFAULT_MAX_IMAGES, DEFAULT_MAX_SESSIONS, ServeCore
from tools.serve.errors import RequestError
from tools.serve.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS, ImageSource
from util.files import DiskFullError

MODEL_ID = "clickpose"
ROUTES = ("GET /health", "POST /setup", "POST /predict", "POST /webhook", "GET /v1/models", "POST /v1/predict")


@dataclass(frozen=True)
class ServeSettings:
    """How the service runs: who may use it, its limits, where images may come from and annotations go."""

    token: Optional[str] = None
    allowed_hosts: Optional[tuple[str, ...]] = LOCAL_HOSTS  # None: any Host (a non-local bind, with a token)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    threshold: float = 0.3  # people below this person score are not shown (unless clicked)
    allowed_root: Optional[Path] = None
    label_studio_url: Optional[str] = None
    label_studio_api_key: Optional[str] = None
    annotations: Optional[Path] = None
    model_version: str = MODEL_ID
    max_images: int = DEFAULT_MAX_IMAGES
    max_sessions: int = DEFAULT_MAX_SESSIONS

    @property
    def max_body_bytes(self) -> int:
        """A request may carry one image as base64 (4/3 of its bytes) plus its JSON."""
        return self.max_image_bytes * 4 // 3 + (1 << 20)


def create_app(predictor: Predictor, settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The service over ``predictor`` (see the package docstring)."""
    core = ServeCore(predictor, settings.model_version, settings.max_images, settings.max_sessions)
    source = ImageSource(settings.allowed_root, settings.label_studio_url, settings.label_studio_api_key,
                         settings.max_image_bytes, settings.max_pixels)
    store = (AnnotationStore(settings.annotations, core.keypoint_names, predictor.metadata.skeleton)
             if settings.annotations else None)
    backend = labelstudio.LabelStudioBackend(core, source, settings.threshold, store)
    server = xanylabeling.XAnyLabelingServer(core, MODEL_ID, settings.threshold,
                                             f"Click-Pose ({settings.model_version})",
                                             (settings.max_image_bytes, settings.max_pixels))
    app = FastAPI(title="Click-Pose service (Label Studio ML backend, X-AnyLabeling remote server)",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.core = core
    app.add_middleware(ServeGuard, allowed_hosts=settings.allowed_hosts, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(TokenGuard, token=settings.token)
    app.add_middleware(XAnyLabelingErrors)  # outermost: also rewrites the guards' refusals under /v1
    _error_answers(app)

    @app.get("/health")
    @app.get("/")
    def health() -> dict[str, Any]:
        """Both clients' health check: Label Studio's {status: UP, model_class}, X-AnyLabeling's models_loaded."""
        return {"status": "UP", "model_class": labelstudio.MODEL_CLASS, "model_version": settings.model_version,
                "models_loaded": 1,
                "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")}

    app.include_router(labelstudio.router(backend))
    app.include_router(xanylabeling.router(server))
    return app


def _sentence(errors: Iterable[dict[str, Any]]) -> str:
    for error in errors:
        if error.get("type") == "json_invalid":
            return f"the request body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        return f"invalid request{' field ' + where if where else ''}: {error.get('msg', 'not accepted')}"
    return "invalid request"


def _error_answers(app: FastAPI) -> None:
    """Exceptions -> a status and a JSON sentence ("code" for the X-AnyLabeling door); never a traceback."""
    async def refused(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": str(exc), "code": exc.code})

    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": _sentence(exc.errors()), "code": "INVALID_PARAMS"})

    async def bad_value(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc), "code": "INVALID_PARAMS"})

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            detail = (f"there is no {request.url.path} here; this service answers {', '.join(ROUTES)}")
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see docs/serve.md for each route's method"
        else:
            detail = str(exc.detail)
        return JSONResponse(status_code=exc.status_code, content={"detail": detail}, headers=exc.headers)

    async def disk_full(_: Request, exc: DiskFullError) -> JSONResponse:
        return JSONResponse(status_code=507, content={"detail": str(exc), "code": "DISK_FULL"})

    async def failed(_: Request, exc: Exception) -> JSONResponse:
        logging.getLogger(__name__).exception("request failed")
        return JSONResponse(status_code=500, content={
            "detail": f"the model failed on this request ({type(exc).__name__}: {exc})", "code": "INFERENCE_ERROR"})

    app.add_exception_handler(RequestError, refused)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ValueError, bad_value)
    app.add_exception_handler(DiskFullError, disk_full)
    app.add_exception_handler(OSError, failed)
    app.add_exception_handler(Exception, failed)
