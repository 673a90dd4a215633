"""The JSON API and the page, over a :class:`Workspace` (the API is documented in docs/annotate.md).

Images are named by their path relative to the image folder, exactly as ``GET /api/images`` lists them; any other
name is refused with 404, so no file outside the folder (or the annotation file the tool writes) can be reached.
Malformed requests get 422 (FastAPI's validation in strict mode, naming the field: ``"1"`` is not a number),
impossible edits 400, an image that cannot be used 422, a full disk 507 (the edit is taken back), anything else 500;
every error is a JSON object whose ``detail`` is a sentence. Requests pass ``guard.RequestGuard`` first (Host,
Origin, JSON writes, body size, Content-Security-Policy).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from tools.annotate.guard import LOCAL_HOSTS, MAX_BODY_BYTES, RequestGuard
from tools.annotate.workspace import UnknownImageError, UnusableImageError, Workspace
from util.files import DiskFullError

STATIC = Path(__file__).resolve().parent / "static"


class _Body(BaseModel):
    # a misspelt field is an error, not silently ignored; strict: "1" is not an int, 1 is not a bool
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageBody(_Body):
    image: str = Field(description="image name as listed by GET /api/images")


class Click(_Body):
    person: int = Field(ge=0, description="the person's 'index'")
    keypoint: int = Field(ge=0)
    x: float = Field(description="pixels of the original image")
    y: float


class RefineBody(ImageBody):
    clicks: Annotated[list[Click], Field(min_length=1)]


class PersonBody(ImageBody):
    person: int = Field(ge=0)


class VisibilityBody(PersonBody):
    keypoint: int = Field(ge=0)
    visibility: Literal[0, 1, 2] = Field(description="COCO: 0 not labelled, 1 occluded, 2 visible")


class BoxBody(ImageBody):
    box: Annotated[list[float], Field(min_length=4, max_length=4, description="x0, y0, x1, y1 in pixels")]


class ThresholdBody(ImageBody):
    threshold: float = Field(ge=0.0, le=1.0)


class AcceptBody(ImageBody):
    done: bool = True


class ModelBody(_Body):
    checkpoint: str = Field(min_length=1, description="the new model's weights (.pth), a path on the server")
    config: Optional[str] = Field(default=None, min_length=1,
                                  description="its config (default: the config the tool was started with)")


def create_app(workspace: Workspace, allowed_hosts: Iterable[str] = LOCAL_HOSTS,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The page and its API; ``allowed_hosts``: the host names the server answers to (see ``guard``)."""
    app = FastAPI(title="Click-Pose annotation tool", docs_url="/api/docs", redoc_url=None)
    app.add_middleware(RequestGuard, allowed_hosts=allowed_hosts, max_body_bytes=max_body_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _error_answers(app)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    _reading_routes(app, workspace)
    _editing_routes(app, workspace)
    return app


def _error_answers(app: FastAPI) -> None:
    """Exceptions -> a status and a JSON sentence; never a traceback or a bare text body."""
    def answer(status: int):
        async def handler(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse(status_code=status, content={"detail": str(exc)})
        return handler

    app.add_exception_handler(UnknownImageError, answer(404))
    app.add_exception_handler(UnusableImageError, answer(422))
    app.add_exception_handler(ValueError, answer(400))
    app.add_exception_handler(DiskFullError, answer(507))

    async def failed(_: Request, exc: Exception) -> JSONResponse:
        logging.getLogger(__name__).exception("request failed")
        what = "could not write the annotation file" if isinstance(exc, OSError) else "internal error"
        return JSONResponse(status_code=500, content={
            "detail": f"{what} ({type(exc).__name__}: {exc}); the edit was not applied and the saved file is as "
                      "before"})
    # OSError by name: handled like the others; Exception: answered by Starlette's outermost layer, which re-raises
    # afterwards so that the server logs it
    app.add_exception_handler(OSError, failed)
    app.add_exception_handler(Exception, failed)


def _reading_routes(app: FastAPI, workspace: Workspace) -> None:
    @app.get("/api/meta")
    def meta() -> dict[str, Any]:
        """Keypoint layout (names, skeleton, left/right pairs), the annotation file and the default threshold."""
        md = workspace.metadata
        return {"keypoint_names": list(md.keypoint_names), "skeleton": [list(p) for p in md.skeleton],
                "flip_pairs": [list(p) for p in md.flip_pairs], "annotations": str(workspace.path),
                "threshold": workspace.threshold, "checkpoint": workspace.checkpoint, "config": workspace.config}

    @app.get("/api/model")
    def model() -> dict[str, Any]:
        """The model in use: checkpoint, config, keypoint count and names."""
        return workspace.model_info()

    @app.get("/api/images")
    def images() -> dict[str, Any]:
        """Every image in order with its status ('unreadable' and a ``problem`` for an image that cannot be used);
        the image to resume at; progress."""
        with workspace.lock:
            return {"images": workspace.listing(), "current": workspace.current, "progress": workspace.progress()}

    @app.get("/api/file/{name:path}")
    def image_file(name: str) -> FileResponse:
        """The image's bytes (only names from /api/images)."""
        return FileResponse(workspace.paths[workspace.check_name(name)])

    @app.get("/api/effort")
    def effort_log() -> dict[str, Any]:
        """Clicks, rounds and seconds per image and in total (see tools/annotate/effort.py)."""
        return workspace.effort_summary()


def _editing_routes(app: FastAPI, workspace: Workspace) -> None:
    @app.post("/api/open")
    def open_image(body: ImageBody) -> dict[str, Any]:
        """Predict (first time) or resume an image and make it the current one; prefetches the next image."""
        return workspace.open(body.image)

    @app.post("/api/refine")
    def refine(body: RefineBody) -> dict[str, Any]:
        """Place keypoints (person, keypoint, x, y) and let the model refine those people's other keypoints."""
        return workspace.refine(body.image, [(c.person, c.keypoint, c.x, c.y) for c in body.clicks])

    @app.post("/api/visibility")
    def visibility(body: VisibilityBody) -> dict[str, Any]:
        return workspace.set_visibility(body.image, body.person, body.keypoint, body.visibility)

    @app.post("/api/add_person")
    def add_person(body: BoxBody) -> dict[str, Any]:
        """A missed person from its box: the model proposes the keypoints."""
        return workspace.add_person(body.image, body.box)

    @app.post("/api/delete_person")
    def delete_person(body: PersonBody) -> dict[str, Any]:
        return workspace.delete_person(body.image, body.person)

    @app.post("/api/swap")
    def swap(body: PersonBody) -> dict[str, Any]:
        """Exchange a person's left and right keypoints."""
        return workspace.swap_left_right(body.image, body.person)

    @app.post("/api/undo")
    def undo(body: ImageBody) -> dict[str, Any]:
        return workspace.undo(body.image)

    @app.post("/api/redo")
    def redo(body: ImageBody) -> dict[str, Any]:
        return workspace.redo(body.image)

    @app.post("/api/threshold")
    def threshold(body: ThresholdBody) -> dict[str, Any]:
        return workspace.set_threshold(body.image, body.threshold)

    @app.post("/api/accept")
    def accept(body: AcceptBody) -> dict[str, Any]:
        """Mark the image done (``done: false`` reopens it)."""
        return workspace.accept(body.image, body.done)

    @app.post("/api/model")
    def switch_model(body: ModelBody) -> dict[str, Any]:
        """Load another checkpoint and use it for every image opened from now on (annotations, clicks and effort
        logs stay; the open image keeps the previous model until the next open). 400, and the model in use stays,
        for a file that cannot be loaded or a model of another keypoint layout."""
        return workspace.switch_model(body.checkpoint, body.config)

    @app.post("/api/save")
    def save() -> dict[str, Any]:
        """Write the annotation file now (every change already does)."""
        return {"saved": str(workspace.save())}
