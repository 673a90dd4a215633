"""One image's interactive annotation state: its people, the user's clicks and flags, and undo/redo.

:func:`open_session` opens a :class:`PoseSession` over a :class:`models.predictor.Predictor` (which makes the model
calls and caches the image's encoder state). Every edit replaces the session's :class:`Poses` with a new value
(tensors are never changed in place), so undo/redo are stacks of earlier values. People keep their row ('index')
for the whole session: deleting a person only flags it, so undo restores it and indices sent by a client stay valid.
Coordinates in and out are pixels of the original image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Optional, Protocol, Sequence

import torch
from torch import Tensor

from models.predictor import People, Prediction, check_keypoint, check_person, check_point, people_dicts
from util.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh

COCO_VISIBILITY = (0, 1, 2)  # not labelled, labelled but occluded, labelled and visible
SOURCES = ("model", "user", "file")  # who proposed the person: the model, a box drawn by the user, a loaded file
MAX_UNDO = 200


class PosePredictor(Protocol):
    """What a session needs of :class:`models.predictor.Predictor`."""

    metadata: Any
    num_keypoints: int

    def prediction(self, image: Any) -> Prediction: ...

    def hold(self, holder: Any) -> None: ...

    def refine_people(self, holder: Any, people: "Poses", size: tuple[int, int],
                      clicks: Sequence[tuple[int, int, float, float]], rows: Optional[Sequence[int]] = None
                      ) -> "Poses": ...

    def propose_person(self, holder: Any, box: Tensor, size: tuple[int, int],
                       present: Optional[Tensor] = None) -> People: ...


@dataclass(frozen=True, kw_only=True)
class Poses(People):
    """Everyone in one image with the annotation's flags (R rows, K keypoints), normalised to [0, 1]."""

    visibility: Tensor  # (R, K) long, COCO flags 0/1/2
    deleted: Tensor  # (R,) bool
    touched: Tensor  # (R,) bool: edited by the user, kept whatever the score threshold
    sources: tuple[str, ...] = field(default=())

    def append(self, other: "Poses") -> "Poses":
        tensors = {name: torch.cat((getattr(self, name), getattr(other, name))) for name in TENSOR_FIELDS}
        return Poses(**tensors, sources=self.sources + other.sources)


TENSOR_FIELDS = ("boxes", "keypoints", "scores", "confidence", "pinned", "visibility", "deleted", "touched",
                 "drawn_boxes")


def _initial_visibility(people: People, visibility: Optional[Tensor]) -> Tensor:
    """The given flags, else the quality head's prediction, else every keypoint visible (2)."""
    if visibility is not None:
        return visibility
    if people.predicted_visibility is not None:
        return people.predicted_visibility.to(torch.long)
    return torch.full(people.keypoints.shape[:2], 2, dtype=torch.long, device=people.boxes.device)


def new_poses(people: People, source: str, visibility: Optional[Tensor] = None) -> Poses:
    """Poses of the model's R new people: their visibility as given, or as predicted (the quality head), or all
    visible (2); touched unless the model's."""
    rows = people.keypoints.shape[0]
    flags = torch.zeros(rows, dtype=torch.bool, device=people.boxes.device)
    drawn = people.drawn_boxes if people.drawn_boxes is not None else torch.full_like(people.boxes, math.nan)
    return Poses(boxes=people.boxes, keypoints=people.keypoints, scores=people.scores, confidence=people.confidence,
                 pinned=people.pinned, drawn_boxes=drawn,
                 visibility=_initial_visibility(people, visibility),
                 deleted=flags, touched=flags if source == "model" else ~flags, sources=(source,) * rows)


def open_session(predictor: PosePredictor, image: Any, people: Optional[Sequence[dict[str, Any]]] = None
                 ) -> "PoseSession":
    """A new session on ``image``: the model's people, or ``people`` as saved by ``PoseSession.to_record``
    (resuming earlier work: the model only encodes the image). A prefetched prediction is picked up."""
    prediction = predictor.prediction(image)
    poses = new_poses(prediction.people, "model")
    if people is not None:
        poses = PoseSession.poses_from_record(people, prediction.size, predictor.num_keypoints)
    session = PoseSession(predictor, image, prediction.size, poses, prediction.state)
    predictor.hold(session)
    return session


class PoseSession:
    """One image's people and the user's edits on them; see the module docstring."""

    def __init__(self, predictor: PosePredictor, image: Any, size: tuple[int, int], poses: Poses,
                 state: Any = None):
        self.predictor = predictor
        self.image = image  # what to re-encode from when the cached encoder state was dropped
        self.size = size  # (width, height) of the original image
        self.state = state  # the model's encoder state of this image (None until needed again)
        self.poses = poses
        self._undo: list[Poses] = []
        self._redo: list[Poses] = []

    def snapshot(self) -> tuple[Poses, tuple[Poses, ...], tuple[Poses, ...]]:
        """Everything an edit can change (poses are immutable values, so this copies no tensor)."""
        return self.poses, tuple(self._undo), tuple(self._redo)

    def restore(self, snapshot: tuple[Poses, tuple[Poses, ...], tuple[Poses, ...]]) -> None:
        """Go back to a :meth:`snapshot` (an edit whose saving failed is taken back this way)."""
        self.poses, undo, redo = snapshot
        self._undo, self._redo = list(undo), list(redo)

    # ---- reading ---------------------------------------------------------------------------------------------
    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def people(self, score_threshold: float = 0.0, include_deleted: bool = False) -> list[dict[str, Any]]:
        """People in pixels, best score first: 'index', 'score', 'box' (x0, y0, x1, y1), 'keypoints' (K, 3) as
        (x, y, confidence), 'confidence', 'pinned', 'visibility' (COCO 0/1/2), 'source', 'touched', 'deleted',
        'drawn_box' (x0, y0, x1, y1 of the box the user added the person with, or None).
        People below ``score_threshold`` are left out unless the user touched them."""
        poses = self.poses
        touched, deleted = poses.touched.tolist(), poses.deleted.tolist()
        fields = {"visibility": poses.visibility.tolist(), "source": list(poses.sources), "touched": touched,
                  "deleted": deleted, "drawn_box": self._drawn_boxes()}
        shown = None if include_deleted else [not d for d in deleted]
        return people_dicts(poses, self.size, score_threshold, fields, shown=shown, kept=touched)

    def _drawn_boxes(self) -> list[Optional[list[float]]]:
        width, height = self.size
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = (box_cxcywh_to_xyxy(self.poses.drawn_boxes.float().cpu()) * scale).tolist()
        return [box if all(math.isfinite(v) for v in box) else None for box in boxes]

    # ---- checks ----------------------------------------------------------------------------------------------
    def _person(self, person: Any) -> int:
        person = check_person(person, self.poses.num_people)
        if bool(self.poses.deleted[person]):
            raise ValueError(f"person {person} was deleted (undo restores it)")
        return person

    def _keypoint(self, keypoint: Any) -> int:
        return check_keypoint(keypoint, self.poses.keypoints.shape[1])

    def _point(self, x: Any, y: Any) -> tuple[float, float]:
        return check_point(x, y, self.size)

    def _commit(self, poses: Poses) -> None:
        self._undo = (self._undo + [self.poses])[-MAX_UNDO:]
        self._redo = []
        self.poses = poses

    # ---- edits -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def refine(self, clicks: Iterable[Sequence[Any]], only_clicked: bool = True) -> list[dict[str, Any]]:
        """Place keypoints where the user clicked and let the model re-predict the rest.

        clicks: ``(person, keypoint, x, y)`` in pixels. Clicked keypoints stay where they are put, through later
        refinements too. ``only_clicked``: re-run only the clicked people (the refinement groups are independent,
        so the others would only drift); False re-runs everyone not deleted (``Predictor.correct(refine_all=True)``).
        """
        given = [(self._person(p), self._keypoint(k), *self._point(x, y)) for p, k, x, y in clicks]
        if not given:
            raise ValueError("refine needs at least one click (person, keypoint, x, y)")
        poses = self.poses
        clicked_people = sorted({p for p, _, _, _ in given})
        rows = clicked_people if only_clicked else [i for i in range(poses.num_people) if not poses.deleted[i]]
        updated = self.predictor.refine_people(self, poses, self.size, given, rows)
        clicked = torch.zeros_like(poses.pinned)
        for p, k, _, _ in given:
            clicked[p, k] = True
        # a keypoint the user places is labelled: 'not labelled' becomes 'visible'; 'occluded' stays
        visibility = torch.where(clicked & (poses.visibility == 0), torch.full_like(poses.visibility, 2),
                                 poses.visibility)
        touched = poses.touched.clone()
        touched[clicked_people] = True
        self._commit(replace(updated, visibility=visibility, touched=touched))
        return self.people()

    @torch.no_grad()
    def add_person(self, box: Sequence[float], shown_threshold: Optional[float] = None) -> int:
        """Add a missed person from a box (x0, y0, x1, y1) in pixels: the model proposes its keypoints from the box
        (``Predictor.propose_person``), not one of the people already shown (not deleted, and touched or scored at
        least ``shown_threshold``; None: every person not deleted). Returns the new person's index."""
        if len(box) != 4:
            raise ValueError(f"a box is [x0, y0, x1, y1] in pixels, got {list(box)!r}")
        x0, y0 = self._point(box[0], box[1])
        x1, y1 = self._point(box[2], box[3])
        x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise ValueError(f"the box {list(box)} is too small: draw it around the whole person (>= 2 pixels)")
        width, height = self.size
        norm = torch.tensor([[x0 / width, y0 / height, x1 / width, y1 / height]], device=self.poses.boxes.device)
        poses = self.poses
        shown = ~poses.deleted
        if shown_threshold is not None:
            shown &= poses.touched | (poses.scores >= shown_threshold)
        added = new_poses(self.predictor.propose_person(self, box_xyxy_to_cxcywh(norm), self.size,
                                                        present=poses.keypoints[shown]), "user")
        self._commit(self.poses.append(added))
        return self.poses.num_people - 1

    def delete_person(self, person: int) -> None:
        person = self._person(person)
        self._commit(self.poses.rows([person], deleted=torch.ones(1, dtype=torch.bool)))

    def set_visibility(self, person: int, keypoint: int, visibility: int) -> None:
        """COCO visibility of one keypoint: 0 not labelled, 1 labelled but occluded, 2 labelled and visible."""
        person, keypoint = self._person(person), self._keypoint(keypoint)
        if isinstance(visibility, bool) or visibility not in COCO_VISIBILITY:
            raise ValueError(f"visibility must be 0 (not labelled), 1 (occluded) or 2 (visible), got {visibility!r}")
        flags = self.poses.visibility[person].clone()
        flags[keypoint] = visibility
        self._commit(self.poses.rows([person], visibility=flags[None], touched=torch.ones(1, dtype=torch.bool)))

    def swap_left_right(self, person: int) -> None:
        """Exchange every left/right keypoint pair of one person (a person seen from behind)."""
        person = self._person(person)
        order = torch.tensor(self.predictor.metadata.flip_permutation(), dtype=torch.long)
        poses = self.poses
        self._commit(poses.rows([person], **{name: getattr(poses, name)[person][order][None]
                                             for name in ("keypoints", "confidence", "pinned", "visibility")},
                                touched=torch.ones(1, dtype=torch.bool)))

    def undo(self) -> None:
        if not self._undo:
            raise ValueError("nothing to undo")
        self._redo.append(self.poses)
        self.poses = self._undo.pop()

    def redo(self) -> None:
        if not self._redo:
            raise ValueError("nothing to redo")
        self._undo.append(self.poses)
        self.poses = self._redo.pop()

    # ---- persistence -----------------------------------------------------------------------------------------
    def to_record(self) -> list[dict[str, Any]]:
        """Every person (deleted ones too, so undo survives a restart as far as deletions go) as plain JSON data,
        in row order: position i is the person with 'index' i, as :meth:`poses_from_record` reads it back."""
        return sorted(self.people(include_deleted=True), key=lambda p: p["index"])

    @staticmethod
    def poses_from_record(people: Sequence[dict[str, Any]], size: tuple[int, int], num_keypoints: int) -> Poses:
        """Inverse of :meth:`to_record` (pixels -> normalised). Missing optional fields get defaults."""
        scale = torch.tensor(size, dtype=torch.float32)
        count = len(people)
        if count == 0:
            return new_poses(People(torch.zeros(0, 4), torch.zeros(0, num_keypoints, 2), torch.zeros(0),
                                    torch.zeros(0, num_keypoints), torch.zeros(0, num_keypoints, dtype=torch.bool)),
                             "model")
        keypoints = torch.tensor([[kp[:2] for kp in p["keypoints"]] for p in people], dtype=torch.float32)
        if keypoints.shape[1:] != (num_keypoints, 2):
            raise ValueError(f"saved people have {keypoints.shape[1]} keypoints, the model {num_keypoints}")
        boxes = box_xyxy_to_cxcywh(torch.tensor([p["box"] for p in people], dtype=torch.float32) / scale.repeat(2))
        ones = torch.ones(count, num_keypoints)

        def column(name: str, default: Tensor, dtype: torch.dtype) -> Tensor:
            return torch.tensor([p[name] for p in people], dtype=dtype) if all(name in p for p in people) \
                else default.to(dtype)

        drawn = [p.get("drawn_box") or [math.nan] * 4 for p in people]
        if any(len(box) != 4 for box in drawn):
            raise ValueError("a saved person's 'drawn_box' is [x0, y0, x1, y1] in pixels, or null")
        drawn_boxes = box_xyxy_to_cxcywh(torch.tensor(drawn, dtype=torch.float32) / scale.repeat(2))
        sources = tuple(p.get("source", "file") for p in people)
        bad = [s for s in sources if s not in SOURCES]
        if bad:
            raise ValueError(f"unknown person source {bad[0]!r}: expected one of {SOURCES}")
        return Poses(boxes=boxes, keypoints=keypoints / scale,
                     scores=column("score", torch.ones(count), torch.float32),
                     confidence=column("confidence", ones, torch.float32),
                     pinned=column("pinned", ones * 0, torch.bool),
                     visibility=column("visibility", ones * 2, torch.long),
                     deleted=column("deleted", torch.zeros(count), torch.bool),
                     touched=column("touched", torch.ones(count), torch.bool), drawn_boxes=drawn_boxes,
                     sources=sources)
