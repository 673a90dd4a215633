"""Interactive annotation from Python: predict people, then correct keypoints with clicks.

    predictor = Predictor("config/clickpose.cfg.py", "checkpoint.pth", device="cpu")
    people = predictor.predict("image.jpg")
    people = predictor.correct(person=0, keypoint=9, x=120.0, y=88.5)   # pixels of the original image

A session keeps the image's encoder state, so a correction runs only the box+keypoint decoder layers. Clicked
keypoints stay exactly where clicked (``click_freeze='all'``), through later corrections too.

The people are the config's postprocessor's (``PostProcess``: its top ``num_select``, its NMS, person class only),
the decoding that AP is measured on, at most ``top_k`` of them (default ``num_group_refine``), best first.

For a tool that works on many images (the annotation app, ``tools/annotate/session.py`` keeps its undo, visibility
and records): ``prediction(image)`` gives an image's :class:`Prediction` (``prefetch(image)`` starts it in the
background), ``refine_people`` / ``propose_person`` are the model calls of an edit, and ``predict_batch(images)`` /
``predict_folder(folder)`` predict many images in batches. The encoder states of the ``max_cached_states`` most
recently used images (objects with ``image`` and ``state``, see :meth:`Predictor.hold`) are kept; older ones
re-encode their image when refined again.
"""
from __future__ import annotations

import argparse
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
import math
import numbers
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Protocol, Sequence, TypeVar, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from util import keypoint_codec as kp
from util.box_ops import box_cxcywh_to_xyxy
from models.keypoint_quality import CHECKPOINT_KEY as QUALITY_KEY, KeypointQualityHead, quality_from_checkpoint
from models.pose_prior import CHECKPOINT_KEY as PRIOR_KEY, PosePrior

ImageLike = Union[str, Path, np.ndarray, Image.Image]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_PENDING = 2  # background predictions kept waiting for their image to be opened
CROP_MASK = True  # a box-added person: the margin around the user's box is painted in the crop's mean colour
# A crop candidate this close to a present person (mean keypoint distance / the user box's diagonal) is that person
# again. Two people who overlap closely can stand at 0.09 of each other (docs/benchmarks.md, adding a person).
DUPLICATE_DISTANCE = 0.05
CROP_MARGIN = 0.3  # a box-added person: the crop around the user's box, as a fraction of its longer side
BORDER = 0.005  # a drawn box's edge this close to the image's (a fraction of its size) is at the border
PERSON_LABEL = 1  # the person class of the two-class head (COCO's category id 1; label 0 is never a person)


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted by relative path. A symbolic
    link is listed only when its target is inside the folder too, so a tool serving these files serves nothing
    from elsewhere."""
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder not found: {root}")
    real_root = root.resolve()
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)
             and p.resolve().is_relative_to(real_root)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


class UnreadableImageError(ValueError):
    """A file that is not a readable image, or one with more pixels than the caller allows; the message names it."""


def image_size(path: str | Path, max_pixels: Optional[int] = None, name: Optional[str] = None) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding it. Raises ``UnreadableImageError`` for a file that
    is not a readable image, or that has more than ``max_pixels`` pixels (default: PIL's decompression-bomb limit,
    under which PIL itself only warns): such a file is refused before its data is decoded. ``name``: how messages
    call the file (default: its path)."""
    import warnings

    label = name or str(path)
    limit = max_pixels if max_pixels is not None else int(Image.MAX_IMAGE_PIXELS or 2 ** 31)
    try:
        with warnings.catch_warnings():  # PIL warns above its limit; the check below refuses instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                size = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(f"cannot read image {label}: {exc}") from exc
    if size[0] * size[1] > limit:
        raise UnreadableImageError(f"image {label} is {size[0]}x{size[1]} pixels, more than the limit of {limit} (a "
                                   "decompression bomb, or a scan to downscale); --max-pixels raises the limit")
    return size


def keypoint_metadata(args: argparse.Namespace, checkpoint: Optional[Mapping[str, Any]] = None):
    """Names, skeleton, flip pairs and OKS sigmas of the model's keypoints (the one place that decides them): the
    layout the checkpoint was trained with when it records one, else the config's (its dataset's, or its custom_*
    keys, or the built-in layout with ``num_body_points`` keypoints)."""
    from datasets import get_metadata
    from util.keypoint_metadata import KeypointMetadata
    from util.settings import data_settings

    recorded = checkpoint.get("keypoint_metadata") if checkpoint is not None else None
    if recorded:
        return KeypointMetadata.from_dict(recorded)
    keys = vars(args)
    # a config names no dataset: its custom_* keys, else the built-in layout with num_body_points keypoints
    return get_metadata(data_settings({**keys, "dataset_file": keys.get("dataset_file") or "custom"}))


P = TypeVar("P", bound="People")


@dataclass(frozen=True)
class People:
    """The model's view of everyone in one image (R rows, K keypoints), normalised to [0, 1] by the image size.
    A value: every change makes a new one (``dataclasses.replace`` keeps a subclass's extra fields)."""

    boxes: Tensor  # (R, 4) cx, cy, w, h
    keypoints: Tensor  # (R, K, 2) x, y
    scores: Tensor  # (R,) person score (the postprocessor's, or 1 for people loaded from a file)
    confidence: Tensor  # (R, K) keypoint confidence in [0, 1] (the quality head's, else keypoint_confidence)
    pinned: Tensor  # (R, K) bool: placed by the user; later refinements keep them where they are
    predicted_visibility: Optional[Tensor] = None  # (R, K) long COCO flags from the quality head (None: no head)
    drawn_boxes: Optional[Tensor] = None  # (R, 4) cx, cy, w, h of the box the user drew around the person (NaN: none)

    @property
    def num_people(self) -> int:
        return self.boxes.shape[0]

    def rows(self: P, index: Tensor | Sequence[int], **changes: Tensor) -> P:
        """A copy with rows ``index`` of the named fields replaced by ``changes`` (out of place)."""
        index = torch.as_tensor(index, dtype=torch.long)
        updated = {}
        for name, value in changes.items():
            current = getattr(self, name).clone()
            current[index] = value.to(current.dtype)
            updated[name] = current
        return replace(self, **updated)


def keypoint_confidence(before: Tensor, after: Tensor, boxes: Tensor, sigmas: Tensor, size: tuple[int, int]) -> Tensor:
    """How much the model agrees with itself about each keypoint, in [0, 1].

    The model has no keypoint-confidence head (its visibility slot is a constant), so confidence is the OKS term
    ``exp(-d^2 / (2 s^2 (2 sigma)^2))`` between two successive estimates of the keypoint (the last two refinement
    layers, or the refinement's input and output when it has one layer), with s^2 the box area in pixels: a
    keypoint the model keeps moving is one it is unsure about. before/after: (..., K, 2) in [0, 1]; boxes (..., 4).
    """
    scale = torch.tensor(size, dtype=before.dtype, device=before.device)
    squared = (((after - before) * scale) ** 2).sum(-1)
    area = (boxes[..., 2] * boxes[..., 3] * scale.prod()).clamp(min=1.0)[..., None]
    return torch.exp(-squared / (2 * area * (2 * sigmas) ** 2))


# ---- checks of user input (pixels of the original image) ------------------------------------------------------
def check_person(person: Any, count: int) -> int:
    if isinstance(person, bool) or not isinstance(person, numbers.Integral) or not 0 <= person < count:
        raise ValueError(f"person {person!r} does not exist: people are numbered 0..{count - 1} ('index')")
    return int(person)


def check_keypoint(keypoint: Any, count: int) -> int:
    if isinstance(keypoint, bool) or not isinstance(keypoint, numbers.Integral) or not 0 <= keypoint < count:
        raise ValueError(f"keypoint {keypoint!r} does not exist: keypoints are numbered 0..{count - 1}")
    return int(keypoint)


def check_point(x: Any, y: Any, size: tuple[int, int]) -> tuple[float, float]:
    width, height = size
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y)):
        raise ValueError(f"a position needs finite numbers x, y (pixels), got {x!r}, {y!r}")
    if not (0 <= x <= width and 0 <= y <= height):
        raise ValueError(f"position ({x}, {y}) is outside the {width}x{height} image")
    return float(x), float(y)


def people_dicts(people: People, size: tuple[int, int], score_threshold: float = 0.0,
                 fields: Optional[Mapping[str, list]] = None, shown: Optional[Sequence[bool]] = None,
                 kept: Optional[Sequence[bool]] = None) -> list[dict[str, Any]]:
    """People in pixels, best score first: 'index', 'score', 'box' (x0, y0, x1, y1), 'keypoints' (K, 3) as
    (x, y, confidence), 'confidence', 'pinned', plus one entry per ``fields`` name (a list with one value per row).
    Rows below ``score_threshold`` are left out unless ``kept[row]``; rows with ``shown[row]`` False always."""
    scale = torch.tensor(size, dtype=torch.float32, device=people.boxes.device)
    boxes = (box_cxcywh_to_xyxy(people.boxes) * scale.repeat(2)).tolist()
    keypoints = torch.cat((people.keypoints * scale, people.confidence[..., None]), -1).tolist()
    # one conversion per field, not one per person and field
    scores, confidence, pinned = people.scores.tolist(), people.confidence.tolist(), people.pinned.tolist()
    extra = dict(fields or {})
    result = []
    for i in range(people.num_people):
        if (shown is not None and not shown[i]) or (scores[i] < score_threshold and not (kept and kept[i])):
            continue
        person = {"index": i, "score": scores[i], "box": boxes[i], "keypoints": keypoints[i],
                  "confidence": confidence[i], "pinned": pinned[i]}
        person.update({name: values[i] for name, values in extra.items()})
        result.append(person)
    return sorted(result, key=lambda p: -p["score"])


@dataclass
class Prediction:
    """One image's model output: its people, encoder state (None after a batched pass), (width, height)."""

    people: People
    state: Any
    size: tuple[int, int]


class HoldsState(Protocol):
    """What the Predictor caches an encoder state on: the image to re-encode from, and the state (or None)."""

    image: Any
    state: Any


@dataclass
class PredictedImage:
    """The image of the last ``Predictor.predict``, the one ``correct`` works on (no undo: see tools/annotate)."""

    image: Any
    size: tuple[int, int]
    state: Any
    people: People
    touched: Tensor  # (R,) bool: people clicked, shown whatever the score threshold


class Predictor:
    """Load a config and checkpoint; ``predict(image)`` then ``correct(...)`` any number of times."""

    def __init__(self, config: str | Path, checkpoint: Optional[str | Path] = None, device: str = "cpu",
                 options: Optional[Mapping[str, Any]] = None, score_threshold: float = 0.0,
                 top_k: Optional[int] = None, use_ema: bool = False, max_cached_states: int = 4,
                 trust_checkpoint: bool = False):
        from datasets.transforms import build_transforms_from_args
        from models import build_model
        from util.checkpoint import load_model_weights, read_checkpoint
        from util.config import Config, apply_config_to_args

        cfg = Config.fromfile(config)
        if options:
            cfg.merge_from_dict(dict(options))
        args = apply_config_to_args(cfg, argparse.Namespace())
        self.args = args
        self.device = torch.device(device)
        # trust_checkpoint: full unpickling, which can run code: only for files the user trusts
        ckpt = read_checkpoint(checkpoint, trust=trust_checkpoint) if checkpoint is not None else None
        self.metadata = keypoint_metadata(args, ckpt)
        args.num_body_points = self.metadata.num_keypoints  # a recorded layout sets the model's keypoint count
        self.model, _, postprocessors = build_model(args, self.metadata)
        self.postprocess = postprocessors["pose"]  # the decoding that AP is measured on
        self.quality: Optional[KeypointQualityHead] = None  # the optional keypoint-quality head
        self.pose_prior: Optional[PosePrior] = None  # the optional prior that places keypoints from a drawn box
        if ckpt is not None:
            weights = ckpt["ema_model"] if use_ema and "ema_model" in ckpt else ckpt["model"]
            load_model_weights(self.model, weights, strict=True, source=str(checkpoint))
            if ckpt.get(QUALITY_KEY) is not None:
                self.quality = quality_from_checkpoint(ckpt[QUALITY_KEY], args.hidden_dim,
                                                       self.metadata.num_keypoints, str(checkpoint))
                self.quality.to(self.device)
            if ckpt.get(PRIOR_KEY) is not None:
                self.pose_prior = PosePrior.from_checkpoint(ckpt[PRIOR_KEY], self.metadata.num_keypoints,
                                                            str(checkpoint))
        self.model.to(self.device).eval()
        self.transform = build_transforms_from_args("val", args, self.metadata.flip_permutation())
        self.num_keypoints = args.num_body_points
        self.score_threshold = score_threshold
        self.top_k = top_k or args.num_group_refine  # at most this many of the postprocessor's people
        self.max_cached_states = max(1, max_cached_states)
        self._sigmas = torch.tensor(self.metadata.sigmas, dtype=torch.float32)
        self._current: Optional[PredictedImage] = None
        self._held: OrderedDict[int, HoldsState] = OrderedDict()  # holders of an encoder state, LRU order
        self._pending: OrderedDict[str, Future] = OrderedDict()
        self._worker: Optional[ThreadPoolExecutor] = None

    # ---- images ----------------------------------------------------------------------------------------------
    @staticmethod
    def _load(image: ImageLike) -> Image.Image:
        if isinstance(image, (str, Path)):
            try:
                return Image.open(image).convert("RGB")
            except OSError as exc:
                raise OSError(f"cannot read image {image}: {exc}") from exc
        if isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = np.stack([image] * 3, -1)
            return Image.fromarray(image.astype(np.uint8))
        return image.convert("RGB")

    def _samples(self, pils: Sequence[Image.Image]):
        """The model's input: the validation transform of each image, padded into one batch."""
        from util.misc import nested_tensor_from_tensor_list

        return nested_tensor_from_tensor_list([self.transform(pil, None)[0].to(self.device) for pil in pils])

    @staticmethod
    def _sizes(pils: Sequence[Image.Image], device: torch.device) -> Tensor:
        """(B, 2) (h, w) of the original images: the postprocessor's target sizes."""
        return torch.tensor([[pil.height, pil.width] for pil in pils], dtype=torch.float32, device=device)

    def decode(self, outputs: Mapping[str, Tensor], sizes: Tensor) -> list[Tensor]:
        """Per image the query indices of its people: the postprocessor's choice (its top ``num_select``, its NMS),
        person class only, best first, at most ``top_k``. sizes: (B, 2) (h, w)."""
        outputs = {k: outputs[k].float() for k in ("pred_logits", "pred_boxes", "pred_keypoints")}
        return [image["queries"][image["labels"] == PERSON_LABEL][:self.top_k]
                for image in self.postprocess.select(outputs, sizes)]

    @torch.no_grad()
    def predict_images(self, images: Sequence[ImageLike]) -> list[Prediction]:
        """One batched forward pass; per image its people (see :meth:`decode`) and their keypoint confidence."""
        pils = [self._load(image) for image in images]
        outputs, state = self.model(self._samples(pils), return_state=True)
        sizes = [pil.size for pil in pils]
        chosen = self.decode(outputs, self._sizes(pils, self.device))
        # the people of every image as R rows (R = the most of any image; the padding rows are copies of a valid
        # pose, and as the refinement groups are independent they change nobody else's result)
        rows = max(len(q) for q in chosen)
        padded = torch.stack([torch.cat((q, q.new_zeros(rows - len(q)))) for q in chosen])  # (B, R)
        boxes = torch.gather(outputs["pred_boxes"], 1, padded[..., None].expand(-1, -1, 4))
        flat = outputs["pred_keypoints"]
        keypoints = kp.coordinates(torch.gather(flat, 1, padded[..., None].expand(-1, -1, flat.shape[-1])),
                                   self.num_keypoints)
        person_scores = torch.gather(outputs["pred_logits"][..., PERSON_LABEL].sigmoid(), 1, padded)
        if rows:
            # a refinement without clicks gives the second estimate that confidence compares against
            check = self.model.refine(state, boxes, keypoints, torch.zeros(0, 5, device=self.device),
                                      click_freeze="all")
            confidence, visibility = self._assess(check, keypoints, sizes)
        else:
            confidence = torch.zeros(len(pils), 0, self.num_keypoints)
            visibility = torch.zeros(len(pils), 0, self.num_keypoints, dtype=torch.long)
        predictions = []
        for i, size in enumerate(sizes):
            n = len(chosen[i])
            people = People(boxes=boxes[i, :n].cpu(), keypoints=keypoints[i, :n].cpu(),
                            scores=person_scores[i, :n].cpu(), confidence=confidence[i, :n],
                            pinned=torch.zeros(n, self.num_keypoints, dtype=torch.bool),
                            predicted_visibility=None if visibility is None else visibility[i, :n])
            predictions.append(Prediction(people, state if len(pils) == 1 else None, size))
        return predictions

    @property
    def has_quality(self) -> bool:
        """Whether the checkpoint has a keypoint-quality head (a confidence that ranks wrong keypoints, and
        predicted visibility); without one, 'confidence' is only the layers' agreement."""
        return self.quality is not None

    def _assess(self, result, keypoints_in: Tensor, sizes: Sequence[tuple[int, int]]
                ) -> tuple[Tensor, Optional[Tensor]]:
        """(B, R, K) confidence and predicted visibility (None without a quality head) of a refinement's output."""
        agreement = self.agreement(result, keypoints_in, sizes)
        if self.quality is None or result.keypoint_hidden is None:
            return agreement, None
        confidence, visibility = self.quality.confidence_and_visibility(result.keypoint_hidden,
                                                                        agreement.to(self.device))
        return confidence.cpu(), visibility.cpu()

    def agreement(self, result, keypoints_in: Tensor, sizes: Sequence[tuple[int, int]]) -> Tensor:
        """(B, R, K) the layers' agreement about each keypoint of a refinement: its last layer against the layer
        before (or against its input when it has one layer); see :func:`keypoint_confidence`."""
        layers = result.layers
        after = kp.coordinates(layers[-1]["pred_keypoints"], self.num_keypoints).cpu()
        before = kp.coordinates(layers[-2]["pred_keypoints"], self.num_keypoints) if len(layers) > 1 else keypoints_in
        boxes, before = layers[-1]["pred_boxes"].cpu(), before.cpu()
        return torch.stack([keypoint_confidence(before[i], after[i], boxes[i], self._sigmas, size)
                            for i, size in enumerate(sizes)])

    # ---- encoder states --------------------------------------------------------------------------------------
    @staticmethod
    def _key(image: ImageLike) -> Optional[str]:
        return str(Path(image).resolve()) if isinstance(image, (str, Path)) else None

    def prefetch(self, image: str | Path) -> None:
        """Start predicting ``image`` in a background thread; a later ``prediction(image)`` picks the result up."""
        key = self._key(image)
        if key is None or key in self._pending:
            return
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickpose-prefetch")
        self._pending[key] = self._worker.submit(lambda: self.predict_images([key])[0])
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)[1].cancel()

    def prediction(self, image: ImageLike) -> Prediction:
        """The image's prediction with its encoder state: the prefetched one when there is one."""
        key = self._key(image)
        future = self._pending.pop(key, None) if key else None
        return future.result() if future is not None else self.predict_images([image])[0]

    def hold(self, holder: HoldsState) -> None:
        """Mark ``holder``'s encoder state as recently used; drop the states of the least recently used."""
        self._held.pop(id(holder), None)
        self._held[id(holder)] = holder
        while len(self._held) > self.max_cached_states:
            self._held.popitem(last=False)[1].state = None

    def state_of(self, holder: HoldsState):
        """``holder``'s encoder state, encoding its image again when it was dropped."""
        if holder.state is None:
            if holder.image is None:
                raise RuntimeError("these people have no image to encode (made by predict_batch)")
            holder.state = self.model(self._samples([self._load(holder.image)]), return_state=True)[1]
        self.hold(holder)
        return holder.state

    # ---- the model calls of an edit ----------------------------------------------------------------------------
    @torch.no_grad()
    def run_refinement(self, holder: HoldsState, people: People, rows: Sequence[int],
                       clicks: Sequence[Sequence[float]], size: tuple[int, int]) -> dict[str, Tensor]:
        """Refine ``people`` rows ``rows`` with ``clicks`` ``[row position in rows, keypoint, x, y]`` (x, y in
        [0, 1]). The rows are refined as independent groups, whatever their count (not the model's query slots).
        Returns their new 'boxes', 'keypoints', 'pinned' and 'confidence' (CPU tensors).

        Rows with a drawn box start, when the checkpoint has a pose prior, from the prior's estimate given that box
        and the keypoints placed (:meth:`start_from_prior`)."""
        index = torch.tensor(list(rows), dtype=torch.long)
        keypoints = self.start_from_prior(people, rows, clicks)[None].to(self.device)
        click_rows = torch.tensor(clicks, dtype=torch.float32, device=self.device).reshape(-1, 4)
        result = self.model.refine(self.state_of(holder), people.boxes[index][None].to(self.device), keypoints,
                                   [click_rows], click_freeze="all", pinned=people.pinned[index][None].to(self.device))
        last = result.layers[-1]
        pinned = result.pinned[0].cpu()
        corrected = kp.coordinates(result.corrected["pred_keypoints"], self.num_keypoints)
        confidence = self._assess(result, corrected, [size])[0][0]
        return {"boxes": last["pred_boxes"][0].cpu(), "keypoints": kp.coordinates(last["pred_keypoints"],
                                                                               self.num_keypoints)[0].cpu(),
                "pinned": pinned, "confidence": torch.where(pinned, torch.ones_like(confidence), confidence)}

    def start_from_prior(self, people: People, rows: Sequence[int], clicks: Sequence[Sequence[float]]) -> Tensor:
        """(len(rows), K, 2) the keypoints a refinement of ``rows`` starts from: as they are, except for people
        with a drawn box when the checkpoint has a pose prior. Their keypoints not placed (pinned or in ``clicks``,
        ``[row position in rows, keypoint, x, y]`` normalised) move to the prior's estimate given the box, the
        placed keypoints and the current ones (``models/pose_prior.py``): the model's refinement searches near where
        a keypoint starts, so a far-off proposal would otherwise move little as keypoints are placed."""
        index = torch.tensor(list(rows), dtype=torch.long)
        keypoints = people.keypoints[index].clone()
        if self.pose_prior is None or people.drawn_boxes is None:
            return keypoints
        placed = people.pinned[index].clone()
        for row, keypoint, x, y in clicks:
            placed[int(row), int(keypoint)] = True
            keypoints[int(row), int(keypoint)] = torch.tensor([x, y], dtype=keypoints.dtype)
        drawn = people.drawn_boxes[index]
        for n in range(len(index)):
            if bool(torch.isfinite(drawn[n]).all()) and bool(placed[n].any()):
                box = box_cxcywh_to_xyxy(drawn[n].double())
                at_border = [float(box[0]) <= BORDER, float(box[1]) <= BORDER, float(box[2]) >= 1 - BORDER,
                             float(box[3]) >= 1 - BORDER]
                keypoints[n] = self.pose_prior.condition(box, keypoints[n], placed[n],
                                                         open_edges=at_border).clamp(0.0, 1.0)
        return keypoints

    def refine_people(self, holder: HoldsState, people: P, size: tuple[int, int],
                      clicks: Sequence[tuple[int, int, float, float]], rows: Optional[Sequence[int]] = None) -> P:
        """``people`` after checked ``clicks`` ``(row, keypoint, x, y)`` (pixels): rows ``rows`` re-predicted
        (default: the clicked ones), the clicked keypoints pinned where clicked."""
        if not clicks:
            raise ValueError("a refinement needs at least one click (person, keypoint, x, y)")
        rows = sorted({p for p, _, _, _ in clicks}) if rows is None else list(rows)
        local = {row: n for n, row in enumerate(rows)}
        width, height = size
        result = self.run_refinement(holder, people, rows, [[local[p], k, x / width, y / height]
                                                            for p, k, x, y in clicks], size)
        return people.rows(rows, boxes=result["boxes"], keypoints=result["keypoints"],
                           confidence=result["confidence"], pinned=result["pinned"])

    @torch.no_grad()
    def propose_person(self, holder: HoldsState, box: Tensor, size: tuple[int, int],
                       method: str = "crop", present: Optional[Tensor] = None) -> People:
        """A person from a user's box (1, 4) cxcywh in [0, 1].

        ``present`` (M, K, 2), normalised keypoints of the people already annotated: the user adds someone missed,
        so a candidate of the crop that is one of them (``DUPLICATE_DISTANCE``) is passed over for another.

        ``method`` 'crop' (default): the model predicts the box's region (the box grown by ``CROP_MARGIN`` of its
        longer side, that margin painted in the crop's mean colour when ``CROP_MASK``, resized as any input), and
        the person whose box best overlaps the user's is mapped back, so the proposal cannot drift to a neighbour
        outside the box; with nobody found there it falls back to 'queries': the keypoints start where the decoder
        starts the learned keypoint queries of slot 0 in a box (:meth:`Decoder.initial_keypoints`), then one
        refinement over the whole image. The person's ``drawn_boxes`` is ``box``: its later refinements start
        from the pose prior given that box (:meth:`start_from_prior`)."""
        if method not in ("crop", "queries"):
            raise ValueError(f"propose_person method must be 'crop' or 'queries', got {method!r}")
        if method == "crop" and holder.image is not None:
            person = self._propose_from_crop(holder.image, box.cpu(), size, present)
            if person is not None:
                return replace(person, drawn_boxes=box.cpu().float())
        decoder = self.model.transformer.decoder
        box = box.to(self.device)
        start = decoder.initial_keypoints(box[None], torch.zeros(1, dtype=torch.long, device=self.device))
        no_clicks = torch.zeros(0, 5, device=self.device)
        result = self.model.refine(self.state_of(holder), box[None], start, no_clicks, click_freeze="all")
        last = result.layers[-1]
        confidence, visibility = self._assess(result, start, [size])
        return People(boxes=last["pred_boxes"][0].cpu(),
                      keypoints=kp.coordinates(last["pred_keypoints"], self.num_keypoints)[0].cpu(),
                      scores=last["pred_logits"][0][..., PERSON_LABEL].sigmoid().cpu(), confidence=confidence[0],
                      pinned=torch.zeros(1, self.num_keypoints, dtype=torch.bool),
                      predicted_visibility=None if visibility is None else visibility[0], drawn_boxes=box.cpu().float())

    def _propose_from_crop(self, image: ImageLike, box: Tensor, size: tuple[int, int],
                           present: Optional[Tensor] = None) -> Optional[People]:
        """The crop method of :meth:`propose_person`; None when the model finds nobody in the crop."""
        from util.box_ops import box_iou, box_xyxy_to_cxcywh

        width, height = size
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        user = box_cxcywh_to_xyxy(box.float()) * scale  # (1, 4) pixels
        x0, y0, x1, y1 = user[0].tolist()
        margin = CROP_MARGIN * max(x1 - x0, y1 - y0)
        left, top = max(0, math.floor(x0 - margin)), max(0, math.floor(y0 - margin))
        right, bottom = min(width, math.ceil(x1 + margin)), min(height, math.ceil(y1 + margin))
        if right - left < 2 or bottom - top < 2:
            return None
        pil = self._load(image)
        if pil.size != (width, height):
            return None
        crop = pil.crop((left, top, right, bottom))
        if CROP_MASK:  # a neighbour's parts outside the box are hidden, so the queries cannot lock onto it
            inside = crop.crop((round(x0) - left, round(y0) - top, round(x1) - left, round(y1) - top))
            mean = tuple(int(v) for v in np.asarray(crop).reshape(-1, 3).mean(0))
            crop = Image.new("RGB", crop.size, mean)
            crop.paste(inside, (round(x0) - left, round(y0) - top))
        found = self.predict_images([crop])[0].people
        if found.num_people == 0:
            return None
        crop_w, crop_h = right - left, bottom - top
        # crop-normalised -> image pixels -> image-normalised
        offset, crop_scale = torch.tensor([left, top]), torch.tensor([crop_w, crop_h])

        def to_image(xy: Tensor) -> Tensor:
            return (xy * crop_scale + offset) / torch.tensor([width, height], dtype=torch.float32)

        boxes_xyxy = box_cxcywh_to_xyxy(found.boxes)
        boxes_xyxy = torch.cat((to_image(boxes_xyxy[:, :2]), to_image(boxes_xyxy[:, 2:])), 1)
        overlap = box_iou(boxes_xyxy * scale, user)[0][:, 0]
        keypoints = to_image(found.keypoints)
        if present is not None and len(present):
            pixels = torch.tensor([width, height], dtype=torch.float32)
            diagonal = float(torch.hypot(user[0, 2] - user[0, 0], user[0, 3] - user[0, 1])) + 1e-6
            # mean keypoint distance of each candidate to each present person, in user-box diagonals
            apart = ((keypoints[:, None] - present[None].float().cpu()) * pixels).norm(dim=-1).mean(-1) / diagonal
            overlap = overlap - 2.0 * (apart.min(1).values < DUPLICATE_DISTANCE).float()  # last resort only
        best = int(torch.argmax(overlap + 1e-3 * found.scores))  # the best overlap; the score breaks ties
        pick = [best]
        return People(boxes=box_xyxy_to_cxcywh(boxes_xyxy[pick]), keypoints=keypoints[pick],
                      scores=found.scores[pick], confidence=found.confidence[pick],
                      pinned=torch.zeros(1, self.num_keypoints, dtype=torch.bool),
                      predicted_visibility=None if found.predicted_visibility is None
                      else found.predicted_visibility[pick])

    # ---- one image at a time (the original API) ----------------------------------------------------------------
    @property
    def session(self) -> Optional[PredictedImage]:
        """The image of the last ``predict`` (the one ``correct`` works on)."""
        return self._current

    def _people(self, current: PredictedImage) -> list[dict[str, Any]]:
        count = current.people.num_people
        touched = current.touched.tolist()
        predicted = current.people.predicted_visibility
        visibility = predicted.tolist() if predicted is not None else [[2] * self.num_keypoints] * count
        fields = {"visibility": visibility, "source": ["model"] * count, "touched": touched,
                  "deleted": [False] * count}
        return people_dicts(current.people, current.size, self.score_threshold, fields, kept=touched)

    def predict(self, image: ImageLike) -> list[dict[str, Any]]:
        """Detect people. Returns dicts with 'index' (use it in ``correct``), 'score', 'box' (x0, y0, x1, y1),
        'keypoints' (K, 3) as (x, y, confidence) in pixels and more (see :func:`people_dicts`), best first."""
        prediction = self.prediction(image)
        count = prediction.people.num_people
        self._current = PredictedImage(image, prediction.size, prediction.state, prediction.people,
                                       torch.zeros(count, dtype=torch.bool))
        self.hold(self._current)
        return self._people(self._current)

    def correct(self, person: Optional[int] = None, keypoint: Optional[int] = None, x: Optional[float] = None,
                y: Optional[float] = None, clicks: Optional[Iterable[Sequence[float]]] = None,
                refine_all: bool = False) -> list[dict[str, Any]]:
        """Move keypoints to where the user clicked (pixels) and re-predict the rest of the clicked people.

        Give one click as ``person, keypoint, x, y`` or several as ``clicks=[(person, keypoint, x, y), ...]``.
        The refinement groups are independent, so re-predicting only the clicked people gives them the same poses
        as re-predicting everyone, and people the user did not touch keep the poses already shown.
        ``refine_all=True`` re-predicts every person, as each round of the original's evaluation loop does (the
        unclicked people then move too). Returns every person.
        """
        current = self._current
        if current is None:
            raise RuntimeError("call predict(image) before correct(...)")
        given = list(clicks or [])
        if person is not None:
            given.append((person, keypoint, x, y))
        if not given or any(None in click for click in given):
            raise ValueError("a click needs person, keypoint, x and y")
        count = current.people.num_people
        checked = [(check_person(p, count), check_keypoint(k, self.num_keypoints), *check_point(px, py, current.size))
                   for p, k, px, py in given]
        rows = list(range(count)) if refine_all else None
        current.people = self.refine_people(current, current.people, current.size, checked, rows)
        current.touched = current.touched.clone()
        current.touched[[p for p, _, _, _ in checked]] = True
        return self._people(current)

    # ---- many images -------------------------------------------------------------------------------------------
    def predict_batch(self, images: Sequence[ImageLike], batch_size: int = 4) -> list[list[dict[str, Any]]]:
        """``predict`` for many images, ``batch_size`` per forward pass (images are padded to a common size, so
        results can differ from one-at-a-time prediction by float noise). One people list per image."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        people = []
        for start in range(0, len(images), batch_size):
            for prediction in self.predict_images(images[start:start + batch_size]):
                count = prediction.people.num_people
                current = PredictedImage(None, prediction.size, None, prediction.people,
                                         torch.zeros(count, dtype=torch.bool))
                people.append(self._people(current))
        return people

    @torch.no_grad()
    def detect_batch(self, images: Sequence[ImageLike], score_threshold: float = 0.0,
                     autocast_dtype: Optional[torch.dtype] = None) -> list[list[dict[str, Any]]]:
        """People of each image as the evaluation scores them: one forward pass of the batch decoded by the
        config's postprocessor (its ``num_select``, ``nms_iou_threshold``), person class only, at or above
        ``score_threshold``, best first (no ``top_k`` cap). Each person: 'score', 'box' (x0, y0, x1, y1) and
        'keypoints' (K, 2), in pixels. ``autocast_dtype`` runs the model under ``torch.autocast`` (bfloat16 on CPU
        or CUDA, float16 on CUDA); the decoding is fp32 either way. No encoder state is kept (pre-annotation)."""
        pils = [self._load(image) for image in images]
        samples = self._samples(pils)
        with torch.autocast(self.device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None and autocast_dtype != torch.float32):
            outputs = self.model(samples)
        outputs = {k: outputs[k].float() for k in ("pred_logits", "pred_boxes", "pred_keypoints")}
        people = []
        for result in self.postprocess(outputs, self._sizes(pils, self.device)):
            keep = (result["labels"] == PERSON_LABEL) & (result["scores"] >= score_threshold)
            scores, boxes = result["scores"][keep].tolist(), result["boxes"][keep].tolist()
            keypoints = result["keypoints"][keep].view(-1, self.num_keypoints, 3)[..., :2].tolist()
            people.append([{"score": s, "box": b, "keypoints": k} for s, b, k in zip(scores, boxes, keypoints)])
        return people

    def predict_folder(self, folder: str | Path, batch_size: int = 4) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
        """(image path, people) for every image under ``folder`` (see :func:`list_images`), in batches."""
        files = list_images(folder)
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            yield from zip(chunk, self.predict_batch(chunk, batch_size))

    def close(self) -> None:
        """Stop the background worker (pending predictions are dropped)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None
        self._pending.clear()
