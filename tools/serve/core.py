"""The service's state: one Predictor behind one lock, the predictions of recently seen images, and the interactive
sessions of Label Studio tasks and X-AnyLabeling images.

Every model call and every change of a cache or a session happens while holding :attr:`ServeCore.lock`, so the model
runs one request at a time; reading and decoding an image happens before, outside the lock (:meth:`ServeCore.prepare`;
an image already predicted is not decoded again). An image is known by the
SHA-256 of its bytes (``images.LoadedImage.digest``): its prediction is computed once and shared. A Label Studio
task's session (its clicks, accumulating) belongs to that task id and that image content only; an X-AnyLabeling
request carries all its marks every time, so its result depends on the image and the marks alone (see
``xanylabeling``), whoever sends it. The encoder states are the Predictor's to keep (its ``max_cached_states`` most
recently used); a session whose state was dropped encodes its image again when refined.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Hashable, Optional, Sequence

from PIL import Image

from models.predictor import Predictor
from tools.annotate.session import PoseSession, Poses, new_poses
from tools.serve.errors import RequestError
from tools.serve.images import LoadedImage

DEFAULT_MAX_IMAGES = 32
DEFAULT_MAX_SESSIONS = 256


@dataclass(eq=False)
class CachedImage:
    """One image's prediction: the decoded image and encoder state (a holder in the Predictor's sense), its size and
    the model's people as :class:`Poses`."""

    image: Image.Image
    state: Any
    size: tuple[int, int]
    poses: Poses
    digest: str


@dataclass(eq=False)
class TrackedSession:
    """A :class:`PoseSession` on one image plus what was applied to it: ``applied`` maps a click's key (a Label
    Studio region id) to its position and person; ``history`` holds (mark, poses before it) of X-AnyLabeling marks."""

    session: PoseSession
    digest: str
    applied: dict[Hashable, tuple[Any, int]] = field(default_factory=dict)
    history: list[tuple[Hashable, Poses]] = field(default_factory=list)
    threshold: Optional[float] = None


def nearest(people: Sequence[dict[str, Any]], x: float, y: float, keypoint: Optional[int] = None
            ) -> tuple[int, int]:
    """(person 'index', keypoint) whose keypoint lies nearest to (x, y): only keypoint ``keypoint`` of each person
    when given, else any of them. ``RequestError`` when there is nobody to correct."""
    best: Optional[tuple[float, int, int]] = None
    for person in people:
        joints = [keypoint] if keypoint is not None else range(len(person["keypoints"]))
        for k in joints:
            px, py = person["keypoints"][k][:2]
            distance = math.hypot(px - x, py - y)
            if best is None or distance < best[0]:
                best = (distance, person["index"], k)
    if best is None:
        raise RequestError("there is no person to correct: the model found nobody above the score threshold in this "
                           "image (lower the threshold, or draw a box around the person first)", status=409,
                           code="NO_PERSON")
    return best[1], best[2]


class ServeCore:
    """The Predictor, its lock, the image cache and the sessions (see the module docstring)."""

    def __init__(self, predictor: Predictor, model_version: str, max_images: int = DEFAULT_MAX_IMAGES,
                 max_sessions: int = DEFAULT_MAX_SESSIONS):
        self.predictor = predictor
        self.model_version = model_version
        self.keypoint_names: tuple[str, ...] = tuple(predictor.metadata.keypoint_names)
        self.lock = threading.Lock()
        self.max_images, self.max_sessions = max(1, max_images), max(1, max_sessions)
        self._images: OrderedDict[str, CachedImage] = OrderedDict()
        self._sessions: OrderedDict[Hashable, TrackedSession] = OrderedDict()

    def prepare(self, loaded: LoadedImage) -> LoadedImage:
        """Call before taking the lock: decodes the image's pixels unless its prediction is cached (then they are
        never needed), so decoding never holds up other requests. ``ImageError`` for pixels that do not decode."""
        if loaded.digest not in self._images:
            loaded.image
        return loaded

    # ---- call these holding self.lock ---------------------------------------------------------------------------
    def cached(self, loaded: LoadedImage) -> CachedImage:
        """The image's prediction, computed now when it is not cached (the least recently used one is dropped)."""
        entry = self._images.pop(loaded.digest, None)
        if entry is None:
            prediction = self.predictor.prediction(loaded.image)
            entry = CachedImage(loaded.image, prediction.state, prediction.size,
                                new_poses(prediction.people, "model"), loaded.digest)
            self.predictor.hold(entry)
        self._images[loaded.digest] = entry
        while len(self._images) > self.max_images:
            self._images.popitem(last=False)
        return entry

    def view(self, entry: CachedImage) -> PoseSession:
        """A session on the model's people of ``entry`` that nobody keeps (for reading, or a one-off edit)."""
        return PoseSession(self.predictor, entry.image, entry.size, entry.poses, entry.state)

    def session(self, key: Hashable, entry: CachedImage, create: bool = True) -> Optional[TrackedSession]:
        """The session kept under ``key`` for this image (a new one starting from the model's people when there is
        none, or when the one there is of other image content; None then if not ``create``)."""
        tracked = self._sessions.pop(key, None)
        if tracked is not None and tracked.digest != entry.digest:
            tracked = None
        if tracked is None:
            if not create:
                return None
            session = self.view(entry)
            self.predictor.hold(session)
            tracked = TrackedSession(session, entry.digest)
        self._sessions[key] = tracked
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return tracked

    def forget(self, key: Hashable) -> None:
        """Drop the session kept under ``key`` (if any)."""
        self._sessions.pop(key, None)

    @property
    def session_count(self) -> int:
        return len(self._sessions)
