"""The annotation work on one image folder: sessions per image, the effort log, and saving after every change.

All methods that change anything hold one lock, apply the change to the image's ``PoseSession``, update the effort
log and rewrite the annotation file atomically before returning, so a killed browser or server loses nothing. A
change whose file could not be written (a full disk) is taken back before the error reaches the client, so what
the page shows is always what the file holds.

An image that cannot be used (not decodable, over ``max_pixels``, or changed since the annotation file was written)
is listed with its problem and refused when opened; the other images work as before, and what the file held for
it is written back unchanged. So are the records of images that are missing from the folder for a while.

The model can be replaced while the tool runs (:meth:`Workspace.switch_model`, e.g. by one fine-tuned on the
corrections made so far): people already predicted, clicks and effort logs stay as they are; images opened from then
on are predicted by the new model. The image open at the switch keeps the previous model for its refinements until
the next ``open`` (of any image, itself included); every other image's session refines with the new one.
"""
from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from PIL import Image

from models.predictor import IMAGE_SUFFIXES, Predictor, UnreadableImageError, image_size, list_images
from tools.annotate import effort, store
from tools.annotate.session import PoseSession, open_session
from util.files import atomic_write_text

STATUSES = ("todo", "in_progress", "done")


class UnknownImageError(LookupError):
    """An image name that is not one of the folder's images (this is also how path traversal is refused)."""


class UnusableImageError(ValueError):
    """An image of the folder that cannot be annotated: unreadable, too large, or not the image the file describes."""


class ModelSwitchError(ValueError):
    """A checkpoint that cannot replace the model: unreadable, not fitting the config, or another keypoint layout.
    The model in use stays."""


def describe_layout(metadata: Any) -> str:
    """'coco (17 keypoints: nose, left_eye, ...)': how an error names a keypoint layout."""
    names = list(metadata.keypoint_names)
    return f"{getattr(metadata, 'name', '?')!s} ({len(names)} keypoints: {', '.join(names)})"


UNUSABLE = "unreadable"  # the status /api/images lists for such an image


@dataclass(frozen=True)
class ModelSource:
    """Where the workspace's model comes from: ``config`` / ``checkpoint`` (shown by /api/meta; ``config`` is the
    default of :meth:`Workspace.switch_model`) and ``load(config, checkpoint)``, how a new model is built (the
    command line's device; None: a ``Predictor`` on the current one's device)."""
    config: Optional[str | Path] = None
    checkpoint: Optional[str | Path] = None
    load: Optional[Callable[[str, str], Predictor]] = None


class Workspace:
    """See the module docstring. ``clock`` is injectable for tests of the effort log."""

    def __init__(self, images_dir: str | Path, annotations: str | Path, predictor: Predictor,
                 threshold: float = 0.3, pin_existing: bool = True, clock: Callable[[], float] = time.monotonic,
                 max_pixels: Optional[int] = None, folder_moved: bool = False,
                 source: Optional[ModelSource] = None):
        """``source``: what ``predictor`` was built from and how :meth:`switch_model` builds a new one."""
        self.root = Path(images_dir).resolve()
        self.paths = {p.relative_to(self.root).as_posix(): p for p in list_images(self.root)}
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {self.root}")
        self.names = list(self.paths)
        self.path = Path(annotations).resolve()
        self.predictor = predictor
        self.metadata = predictor.metadata
        source = source or ModelSource()
        self.config = str(Path(source.config).resolve()) if source.config is not None else None
        self.checkpoint = str(Path(source.checkpoint).resolve()) if source.checkpoint is not None else None
        self.load_predictor = source.load or (
            lambda cfg, ckpt: Predictor(cfg, ckpt, device=str(getattr(predictor, "device", "cpu"))))
        self._switching = threading.Lock()  # one model load at a time (outside ``lock``: edits go on meanwhile)
        self.lock = threading.RLock()
        self.clock = clock
        self.sessions: dict[str, PoseSession] = {}
        self._last_action: Optional[tuple[str, float]] = None
        self._sizes: dict[str, tuple[int, int]] = {}
        self.problems: dict[str, str] = {}  # name -> why the image cannot be used
        self.max_pixels = max_pixels  # larger images are refused before decoding (None: image_size's default)
        self._load(threshold, pin_existing, folder_moved)

    # ---- the file ------------------------------------------------------------------------------------------------
    def _load(self, threshold: float, pin_existing: bool, folder_moved: bool) -> None:
        data = store.read_document(self.path, self.metadata.keypoint_names) if self.path.exists() else {}
        tool = data.get(store.TOOL_KEY) or {}
        recorded_dir = tool.get("images_dir")
        if recorded_dir and Path(recorded_dir).resolve() != self.root and not folder_moved:
            raise store.AnnotationFileError(
                f"{self.path} holds the annotations of the images in {recorded_dir}, not of {self.root}: images of "
                "the same name would open with another image's people. Pass the folder it was written for, another "
                "--annotations file, or --folder-moved if these are the same images in a new place")
        # top-level keys of other programs (e.g. tools/preannotate.py's report) are written back as they were
        self.extra = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories", store.TOOL_KEY)}
        saved = tool.get("images") or {}
        self.records: dict[str, dict[str, Any]] = {name: rec for name, rec in saved.items() if name in self.paths}
        # images missing from the folder now: their records are written back unchanged (they may come back)
        self.absent_records = {name: rec for name, rec in saved.items() if name not in self.paths}
        self.threshold = float(tool.get("threshold", threshold))
        self.current = tool.get("current") if tool.get("current") in self.paths else self.names[0]
        images = data.get("images", [])
        by_name = {image.get("file_name"): image for image in images}
        self._file_images = {name: by_name[name] for name in self.names if name in by_name}
        # the sizes this tool wrote for its own records: an image of another size is not the one annotated
        self._recorded_sizes = {name: (entry.get("width"), entry.get("height"))
                                for name, entry in self._file_images.items() if name in self.records}
        self.image_ids = {name: by_name[name]["id"] for name in self.names if name in by_name}
        ours = set(self.image_ids.values())
        self.foreign_images = [image for image in images if image.get("id") not in ours]
        annotations = data.get("annotations", [])
        self.foreign_annotations = [a for a in annotations if a.get("image_id") not in ours]
        self.category = store.category(self.metadata.keypoint_names, self.metadata.skeleton,
                                       (data.get("categories") or [None])[0])
        next_id = max([i for i in self.image_ids.values() if isinstance(i, int)] +
                      [i.get("id") for i in self.foreign_images if isinstance(i.get("id"), int)] + [0]) + 1
        for name in self.names:
            if name not in self.image_ids:
                self.image_ids[name], next_id = next_id, next_id + 1
            if name not in self.records and name in by_name:  # another tool's labels: review them, keep their ids
                mine = [a for a in annotations if a.get("image_id") == self.image_ids[name]]
                if mine:
                    self.records[name] = {"status": "todo", "threshold": self.threshold,
                                          "effort": effort.new_image_log(),
                                          "people": store.people_from_annotations(mine, pin_existing)}
        self._next_ann_id = max([a.get("id") for a in annotations if isinstance(a.get("id"), int)] +
                                [p.get("ann_id") or 0 for r in self.records.values() for p in r.get("people", [])]
                                + [0]) + 1

    def size(self, name: str) -> tuple[int, int]:
        """(width, height) from the image's header, read once; ``UnusableImageError`` for an image that cannot be
        used (the reason is kept in ``problems`` and listed by /api/images)."""
        if name in self.problems:  # also an image whose header was fine but whose data was not
            raise UnusableImageError(self.problems[name])
        if name in self._sizes:
            return self._sizes[name]
        try:
            size = image_size(self.paths[name], self.max_pixels, name)
        except UnreadableImageError as exc:
            raise self._unusable(name, str(exc)) from exc
        recorded = self._recorded_sizes.get(name)
        if recorded is not None and tuple(recorded) != size:
            raise self._unusable(name, f"image {name} is {size[0]}x{size[1]} but {self.path} annotated an image of "
                                       f"{recorded[0]}x{recorded[1]} under that name: it is another image, so its "
                                       "saved people are kept and not shown on it")
        self._sizes[name] = size
        return size

    def _unusable(self, name: str, reason: str) -> UnusableImageError:
        self.problems[name] = reason
        return UnusableImageError(reason)

    def known_size(self, name: str) -> Optional[tuple[int, int]]:
        """``size(name)``, or None for an image that cannot be used."""
        try:
            return self.size(name)
        except UnusableImageError:
            return None

    def usable(self, name: str) -> bool:
        return self.known_size(name) is not None

    def document(self) -> dict[str, Any]:
        """The whole annotation file as it is saved (see ``store``)."""
        images, annotations = list(self.foreign_images), list(self.foreign_annotations)
        for name in self.names:
            size = self.known_size(name)
            if size is not None:
                width, height = size
                images.append({"id": self.image_ids[name], "file_name": name, "width": width, "height": height})
            elif name in self._file_images:  # what the file said about it, unchanged
                entry = self._file_images[name]
                images.append(entry)
                width, height = entry.get("width") or 0, entry.get("height") or 0
            else:
                continue
            record = self.records.get(name)
            if record is None or not store.exported(record):  # unreviewed guesses stay in the tool's section only
                continue
            for person in record.get("people", []):
                if store.kept(person, record["threshold"]):
                    if not person.get("ann_id"):
                        person["ann_id"], self._next_ann_id = self._next_ann_id, self._next_ann_id + 1
                    annotations.append(store.annotation(person, person["ann_id"], self.image_ids[name],
                                                        self.category["id"], (width, height)))
        return {"info": {"description": "keypoints annotated with the Click-Pose annotation tool"}, **self.extra,
                "images": images, "annotations": annotations, "categories": [self.category],
                store.TOOL_KEY: store.tool_state(self.root, self.current, self.threshold,
                                                 {**self.absent_records, **self.records})}

    def save(self) -> Path:
        with self.lock:
            atomic_write_text(self.path, json.dumps(self.document(), separators=(",", ":")))
            return self.path

    # ---- sessions ------------------------------------------------------------------------------------------------
    def check_name(self, name: str) -> str:
        if name not in self.paths:
            raise UnknownImageError(f"no image named {name!r} in {self.root} (names come from GET /api/images)")
        return name

    def session(self, name: str) -> PoseSession:
        """The image's session, opened (predicted, or resumed from the file) on first use."""
        name = self.check_name(name)
        if name not in self.sessions:
            self.size(name)  # refuses an unusable image before it is decoded
            record = self.records.get(name)
            saved = record.get("people") if record else None
            try:
                self.sessions[name] = open_session(self.predictor, self.paths[name], saved)
            except (OSError, Image.DecompressionBombError) as exc:  # e.g. a truncated JPEG: its header was fine
                raise self._unusable(name, f"cannot decode image {name}: {exc.__cause__ or exc}") from exc
            if record is None:
                self.records[name] = {"status": "in_progress", "threshold": self.threshold,
                                      "effort": effort.new_image_log(), "people": []}
            self._sync(name)
        return self.sessions[name]

    def _sync(self, name: str) -> None:
        """Copy the session's people into the record (keeping annotation ids) and save."""
        # rows keep their position in the record (to_record is in row order), so annotation ids follow positions
        ids = [p.get("ann_id") for p in self.records[name].get("people", [])]
        people = self.sessions[name].to_record()
        for person in people:
            person["ann_id"] = ids[person["index"]] if person["index"] < len(ids) else None
        self.records[name]["people"] = people
        self.save()

    def state(self, name: str) -> dict[str, Any]:
        """What the page draws: the image's people (all scores; the page applies the threshold), status, and
        whether their keypoint confidence means anything ('confidence_shown')."""
        session, record = self.session(name), self.records[name]
        width, height = session.size
        return {"image": name, "position": self.names.index(name), "width": width, "height": height,
                "status": record["status"], "threshold": record["threshold"], "people": session.people(),
                "can_undo": session.can_undo, "can_redo": session.can_redo, "progress": self.progress(),
                # a confidence that ranks wrong keypoints exists only with the model's quality head; without one
                # the page shows none (the layers' agreement is not an error signal)
                "confidence_shown": bool(getattr(session.predictor, "has_quality", False))}

    def listing(self) -> list[dict[str, Any]]:
        """Every image in order with its status ('unreadable' with the ``problem`` for an unusable image)."""
        rows = []
        for name in self.names:
            if self.usable(name):
                rows.append({"image": name, "status": self.records.get(name, {}).get("status", "todo")})
            else:
                rows.append({"image": name, "status": UNUSABLE, "problem": self.problems[name]})
        return rows

    def progress(self) -> dict[str, int]:
        done = sum(1 for rec in self.records.values() if rec.get("status") == "done")
        return {"done": done, "total": len(self.names)}

    # ---- actions -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _all_or_nothing(self, name: str) -> Iterator[None]:
        """Take back everything done inside when it raises (a save that failed: the edit is not in the file, so
        it must not stay on the page either, nor be written later by another edit)."""
        session = self.sessions.get(name)
        before = (session.snapshot() if session is not None else None, copy.deepcopy(self.records.get(name)),
                  self.threshold, self.current, self._last_action)
        try:
            yield
        except BaseException:
            snapshot, record, self.threshold, self.current, self._last_action = before
            if session is None:
                self.sessions.pop(name, None)
            else:
                session.restore(snapshot)
            if record is None:
                self.records.pop(name, None)
            else:
                self.records[name] = record
            raise

    def _act(self, name: str, change: Callable[[PoseSession], Any], edit: Optional[str] = None,
             person: Optional[int] = None, clicks: Optional[dict[int, int]] = None) -> dict[str, Any]:
        with self.lock, self._all_or_nothing(self.check_name(name)):
            session = self.session(name)
            started = time.perf_counter()
            change(session)
            model_ms = (time.perf_counter() - started) * 1000
            now = self.clock()
            since = now - self._last_action[1] if self._last_action and self._last_action[0] == name else 0.0
            self._last_action = (name, now)
            record = self.records[name]
            effort.record(record["effort"], since, person, edit, clicks)
            if record["status"] == "todo":
                record["status"] = "in_progress"
            self._sync(name)
            return {**self.state(name), "model_ms": round(model_ms, 2)}

    def open(self, name: str) -> dict[str, Any]:
        """Show an image: predicted (or taken from the prefetch) on first use; the next image is prefetched."""
        with self.lock, self._all_or_nothing(self.check_name(name)):
            self._adopt_model()  # the image open at a model switch leaves the previous model now
            self.current = name
            self._last_action = (name, self.clock())
            state = self.state(name)  # opens and saves
            following = self.names.index(name) + 1
            if following < len(self.names) and self.names[following] not in self.sessions:
                upcoming = self.names[following]
                if self.usable(upcoming):  # never decode a refused image, not even in the background
                    self.predictor.prefetch(self.paths[upcoming])
            return state

    def refine(self, name: str, clicks: Sequence[Sequence[Any]]) -> dict[str, Any]:
        counts: dict[int, int] = {}
        for click in clicks:
            counts[click[0]] = counts.get(click[0], 0) + 1
        return self._act(name, lambda s: s.refine(clicks), clicks=counts)

    def set_visibility(self, name: str, person: int, keypoint: int, visibility: int) -> dict[str, Any]:
        return self._act(name, lambda s: s.set_visibility(person, keypoint, visibility), "visibility", person)

    def add_person(self, name: str, box: Sequence[float]) -> dict[str, Any]:
        return self._act(name, lambda s: s.add_person(box, self.records[name]["threshold"]), "add_person")

    def delete_person(self, name: str, person: int) -> dict[str, Any]:
        return self._act(name, lambda s: s.delete_person(person), "delete_person", person)

    def swap_left_right(self, name: str, person: int) -> dict[str, Any]:
        return self._act(name, lambda s: s.swap_left_right(person), "swap", person)

    def undo(self, name: str) -> dict[str, Any]:
        return self._act(name, lambda s: s.undo(), "undo")

    def redo(self, name: str) -> dict[str, Any]:
        return self._act(name, lambda s: s.redo(), "redo")

    def set_threshold(self, name: str, threshold: float) -> dict[str, Any]:
        """The score threshold of one image (people below it, untouched, are not written); also the default for
        images opened later."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        with self.lock, self._all_or_nothing(self.check_name(name)):
            self.session(name)
            self.records[name]["threshold"] = self.threshold = float(threshold)
            self.save()
            return self.state(name)

    def accept(self, name: str, done: bool = True) -> dict[str, Any]:
        """Mark an image done (or back in progress)."""
        def mark(_: PoseSession) -> None:
            self.records[name]["status"] = "done" if done else "in_progress"
        return self._act(name, mark, "accept")  # which opens the image first, all or nothing

    # ---- the model ---------------------------------------------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        """The model in use: its checkpoint and config (None when not known) and its keypoint layout."""
        with self.lock:
            md = self.predictor.metadata
            current = self.sessions.get(self.current)
            return {"checkpoint": self.checkpoint, "config": self.config, "num_keypoints": len(md.keypoint_names),
                    "keypoint_names": list(md.keypoint_names), "layout": getattr(md, "name", None),
                    "device": str(getattr(self.predictor, "device", "cpu")),
                    # the image open at the switch refines with the previous model until the next open
                    "previous_model_until_next_open": (self.current if current is not None
                                                       and current.predictor is not self.predictor else None)}

    def switch_model(self, checkpoint: str | Path, config: Optional[str | Path] = None) -> dict[str, Any]:
        """Load ``checkpoint`` (with ``config``, default: the one the tool started with) and make it the model of
        every image opened from now on. Annotations, clicks and effort logs are untouched; the open image keeps
        the previous model until the next ``open``, every other opened image refines with the new one (its
        encoder state is computed again when next needed). ``ModelSwitchError`` (the model in use stays) for a
        file that cannot be loaded or a model of another keypoint layout. Returns :meth:`model_info`."""
        with self._switching:
            keep = f"the model in use stays (loaded from {self.checkpoint or 'a checkpoint not named'})"
            config = config if config is not None else self.config
            if config is None:
                raise ModelSwitchError(f"no config to load {checkpoint} with (the tool was started without one); "
                                       f"give 'config'; {keep}")
            ckpt_path, cfg_path = Path(checkpoint).expanduser().resolve(), Path(config).expanduser().resolve()
            if not cfg_path.is_file():
                raise ModelSwitchError(f"config not found: {cfg_path}; {keep}")
            try:
                new = self.load_predictor(str(cfg_path), str(ckpt_path))
            except Exception as exc:  # anything a load can raise: not found, damaged, another architecture, ...
                raise ModelSwitchError(f"cannot load checkpoint {ckpt_path} with config {cfg_path}: {exc}; "
                                       f"{keep}") from exc
            if tuple(new.metadata.keypoint_names) != tuple(self.metadata.keypoint_names):
                new.close()
                raise ModelSwitchError(
                    f"checkpoint {ckpt_path} has another keypoint layout than this annotation file: the checkpoint "
                    f"has {describe_layout(new.metadata)}, the annotations have {describe_layout(self.metadata)}; "
                    f"{keep}")
            with self.lock:
                old, self.predictor = self.predictor, new
                self.checkpoint, self.config = str(ckpt_path), str(cfg_path)
                old.close()  # its prefetches were of the previous model: dropped
                still_open = self.sessions.get(self.current)
                for session in self.sessions.values():
                    if session is not still_open:
                        self._rebind(session)
                following = self.names.index(self.current) + 1
                if (still_open is not None and following < len(self.names)
                        and self.names[following] not in self.sessions and self.usable(self.names[following])):
                    new.prefetch(self.paths[self.names[following]])
                return self.model_info()

    def _rebind(self, session: PoseSession) -> None:
        """Let ``session`` refine with the model in use; its encoder state (of the previous model) is dropped."""
        if session.predictor is not self.predictor:
            session.predictor = self.predictor
            session.state = None

    def _adopt_model(self) -> None:
        for session in self.sessions.values():
            self._rebind(session)

    def close(self) -> None:
        """Stop the background work of the model in use and of any previous one still held by a session."""
        with self.lock:
            for predictor in {id(p): p for p in [self.predictor, *(s.predictor for s in self.sessions.values())]
                              }.values():
                predictor.close()

    def effort_summary(self) -> dict[str, Any]:
        with self.lock:
            return effort.summarize(self.records, len(self.names))
