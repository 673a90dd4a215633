"""Interactive annotation from Python: predict people, then correct keypoints with clicks.

    predictor = Predictor("config/clickpose.cfg.py", "checkpoint.pth", device="cpu")
    people = predictor.predict("image.jpg")
    people = predictor.correct(person=0, keypoint=9, x=120.0, y=88.5)   # pixels of the original image

A session keeps the image's encoder state, so a correction runs only the box+keypoint decoder layers. Clicked
keypoints stay exactly where clicked (``click_freeze='all'``), through later corrections too.

For a tool that works on many images (``tools/annotate``): ``open(image)`` returns a :class:`PoseSession` per image
(people, pinned clicks, visibility flags, undo/redo; see ``models/pose_session.py``), ``prefetch(image)`` predicts
the next image in the background, and ``predict_batch(images)`` / ``predict_folder(folder)`` predict many images
in batches. The encoder states of the ``max_cached_states`` most recently used sessions are kept; older sessions
keep their poses and re-encode their image when refined again.
"""
from __future__ import annotations

import argparse
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from models.clickpose import keypoints as kp
from models.pose_session import PoseSession, Poses, keypoint_confidence, new_poses

ImageLike = Union[str, Path, np.ndarray, Image.Image]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_PENDING = 2  # background predictions kept waiting for their image to be opened
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

    recorded = checkpoint.get("keypoint_metadata") if checkpoint is not None else None
    if recorded:
        return KeypointMetadata.from_dict(recorded)
    if getattr(args, "dataset_file", None) is None:
        # a config names no dataset: its custom_* keys, else the built-in layout with num_body_points keypoints
        args = argparse.Namespace(**{**vars(args), "dataset_file": "custom"})
    return get_metadata(args)


@dataclass
class _Prediction:
    """One image's model output, before it becomes a session: poses in [0, 1], encoder state, (width, height)."""

    poses: Poses
    state: Any
    size: tuple[int, int]


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
        if ckpt is not None:
            weights = ckpt["ema_model"] if use_ema and "ema_model" in ckpt else ckpt["model"]
            load_model_weights(self.model, weights, strict=True, source=str(checkpoint))
        self.model.to(self.device).eval()
        self.transform = build_transforms_from_args("val", args, self.metadata.flip_permutation())
        self.num_keypoints = args.num_body_points
        self.score_threshold = score_threshold
        self.top_k = top_k or args.num_group_refine
        self.max_cached_states = max(1, max_cached_states)
        self._sigmas = torch.tensor(self.metadata.sigmas, dtype=torch.float32)
        self._session: Optional[PoseSession] = None
        self._held: OrderedDict[int, PoseSession] = OrderedDict()  # sessions holding an encoder state, LRU order
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

    @torch.no_grad()
    def _predict_images(self, images: Sequence[ImageLike]) -> list[_Prediction]:
        """One batched forward pass; per image the top ``top_k`` people and their keypoint confidence."""
        from models.clickpose.feedback import select_top

        pils = [self._load(image) for image in images]
        outputs, state = self.model(self._samples(pils), return_state=True)
        top = select_top({k: outputs[k] for k in ("pred_logits", "pred_boxes", "pred_keypoints")}, self.top_k)
        keypoints = kp.coordinates(top["pred_keypoints"], self.num_keypoints)
        # a refinement without clicks gives the second estimate that confidence compares against
        check = self.model.refine(state, top["pred_boxes"], keypoints, torch.zeros(0, 5, device=self.device),
                                  click_freeze="all")
        confidence = self._confidence(check, keypoints, [pil.size for pil in pils])
        scores = top["pred_logits"].sigmoid().max(-1).values
        predictions = []
        for i, pil in enumerate(pils):
            size = pil.size
            rows = self._kept_rows(top["pred_boxes"][i], scores[i])
            poses = new_poses(top["pred_boxes"][i][rows].cpu(), keypoints[i][rows].cpu(), scores[i][rows].cpu(),
                              confidence[i][rows.cpu()], "model")
            predictions.append(_Prediction(poses, state if len(pils) == 1 else None, size))
        return predictions

    def _kept_rows(self, boxes: Tensor, scores: Tensor) -> Tensor:
        """Rows of one image's top people that survive the config's box NMS (``nms_iou_threshold`` > 0; all rows
        otherwise), best first. boxes: (R, 4) cxcywh."""
        threshold = getattr(self.args, "nms_iou_threshold", -1)
        if threshold is None or threshold <= 0:
            return torch.arange(len(scores), device=scores.device)
        from models.clickpose.postprocess import nms_keep
        from util.box_ops import box_cxcywh_to_xyxy

        return nms_keep(box_cxcywh_to_xyxy(boxes), scores, torch.ones_like(scores, dtype=torch.long), threshold)

    def _confidence(self, result, keypoints_in: Tensor, sizes: Sequence[tuple[int, int]]) -> Tensor:
        """(B, R, K) keypoint confidence of a refinement: its last layer against the layer before (or against its
        input when it has one layer); see :func:`models.pose_session.keypoint_confidence`."""
        layers = result.layers
        after = kp.coordinates(layers[-1]["pred_keypoints"], self.num_keypoints).cpu()
        before = kp.coordinates(layers[-2]["pred_keypoints"], self.num_keypoints) if len(layers) > 1 else keypoints_in
        boxes, before = layers[-1]["pred_boxes"].cpu(), before.cpu()
        return torch.stack([keypoint_confidence(before[i], after[i], boxes[i], self._sigmas, size)
                            for i, size in enumerate(sizes)])

    # ---- sessions --------------------------------------------------------------------------------------------
    @staticmethod
    def _key(image: ImageLike) -> Optional[str]:
        return str(Path(image).resolve()) if isinstance(image, (str, Path)) else None

    def prefetch(self, image: str | Path) -> None:
        """Start predicting ``image`` in a background thread; a later ``open(image)`` picks the result up."""
        key = self._key(image)
        if key is None or key in self._pending:
            return
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickpose-prefetch")
        self._pending[key] = self._worker.submit(lambda: self._predict_images([key])[0])
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)[1].cancel()

    def open(self, image: ImageLike, people: Optional[Sequence[dict[str, Any]]] = None) -> PoseSession:
        """A new session on ``image``: the model's people, or ``people`` as saved by ``PoseSession.to_record``
        (resuming earlier work: the model only encodes the image)."""
        future = self._pending.pop(self._key(image), None) if self._key(image) else None
        prediction = future.result() if future is not None else self._predict_images([image])[0]
        poses = prediction.poses
        if people is not None:
            poses = PoseSession.poses_from_record(people, prediction.size, self.num_keypoints)
        session = PoseSession(self, image, prediction.size, poses, prediction.state)
        self._hold(session)
        return session

    def _hold(self, session: PoseSession) -> None:
        """Mark ``session``'s encoder state as recently used; drop the states of the least recently used."""
        self._held.pop(id(session), None)
        self._held[id(session)] = session
        while len(self._held) > self.max_cached_states:
            self._held.popitem(last=False)[1].state = None

    def _state_of(self, session: PoseSession):
        if session.state is None:
            if session.image is None:
                raise RuntimeError("this session has no image to encode (made by predict_batch)")
            session.state = self.model(self._samples([self._load(session.image)]), return_state=True)[1]
        self._hold(session)
        return session.state

    def _samples(self, pils: Sequence[Image.Image]):
        """The model's input: the validation transform of each image, padded into one batch."""
        from util.misc import nested_tensor_from_tensor_list

        return nested_tensor_from_tensor_list([self.transform(pil, None)[0].to(self.device) for pil in pils])

    # ---- the model calls of a session --------------------------------------------------------------------------
    @torch.no_grad()
    def run_refinement(self, session: PoseSession, rows: Sequence[int], clicks: Sequence[Sequence[float]]
                       ) -> dict[str, Tensor]:
        """Refine people ``rows`` of a session with ``clicks`` ``[row position in rows, keypoint, x, y]`` (x, y in
        [0, 1]). Returns their new 'boxes', 'keypoints', 'pinned' and 'confidence' (CPU tensors)."""
        poses, index = session.poses, torch.tensor(list(rows), dtype=torch.long)
        keypoints = poses.keypoints[index][None].to(self.device)
        click_rows = torch.tensor(clicks, dtype=torch.float32, device=self.device).reshape(-1, 4)
        result = self.model.refine(self._state_of(session), poses.boxes[index][None].to(self.device), keypoints,
                                   [click_rows], click_freeze="all", pinned=poses.pinned[index][None].to(self.device))
        last = result.layers[-1]
        pinned = result.pinned[0].cpu()
        corrected = kp.coordinates(result.corrected["pred_keypoints"], self.num_keypoints)
        confidence = self._confidence(result, corrected, [session.size])[0]
        return {"boxes": last["pred_boxes"][0].cpu(), "keypoints": kp.coordinates(last["pred_keypoints"],
                                                                               self.num_keypoints)[0].cpu(),
                "pinned": pinned, "confidence": torch.where(pinned, torch.ones_like(confidence), confidence)}

    @torch.no_grad()
    def propose_person(self, session: PoseSession, box: Tensor) -> Poses:
        """A person from a user's box (1, 4) cxcywh in [0, 1]: the keypoints start where the model's learned
        keypoint queries put them in a box (what its decoder does for a detected box), then one refinement."""
        from util.misc import inverse_sigmoid

        decoder = self.model.transformer.decoder
        box = box.to(self.device)
        content = decoder.keypoint_embed.weight.view(decoder.num_group, self.num_keypoints, -1)[0]
        start = (inverse_sigmoid(box[:, None, :2]) + decoder.pose_embed[-1](content)[..., :2]).sigmoid()
        no_clicks = torch.zeros(0, 5, device=self.device)
        result = self.model.refine(self._state_of(session), box[None], start[None], no_clicks, click_freeze="all")
        last = result.layers[-1]
        confidence = self._confidence(result, start[None], [session.size])[0]
        return new_poses(last["pred_boxes"][0].cpu(), kp.coordinates(last["pred_keypoints"], self.num_keypoints)[0].cpu(),
                         last["pred_logits"][0].sigmoid().max(-1).values.cpu(), confidence, "user")

    # ---- one image at a time (the original API) ----------------------------------------------------------------
    @property
    def session(self) -> Optional[PoseSession]:
        """The session of the last ``predict`` (the one ``correct`` works on)."""
        return self._session

    def predict(self, image: ImageLike) -> list[dict[str, Any]]:
        """Detect people. Returns dicts with 'index' (use it in ``correct``), 'score', 'box' (x0, y0, x1, y1),
        'keypoints' (K, 3) as (x, y, confidence) in pixels and more (see ``PoseSession.people``), best first."""
        self._session = self.open(image)
        return self._session.people(self.score_threshold)

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
        if self._session is None:
            raise RuntimeError("call predict(image) before correct(...)")
        given = list(clicks or [])
        if person is not None:
            given.append((person, keypoint, x, y))
        if not given or any(None in click for click in given):
            raise ValueError("a click needs person, keypoint, x and y")
        self._session.refine(given, only_clicked=not refine_all)
        return self._session.people(self.score_threshold)

    # ---- many images -------------------------------------------------------------------------------------------
    def predict_batch(self, images: Sequence[ImageLike], batch_size: int = 4) -> list[list[dict[str, Any]]]:
        """``predict`` for many images, ``batch_size`` per forward pass (images are padded to a common size, so
        results can differ from one-at-a-time prediction by float noise). One people list per image."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        people = []
        for start in range(0, len(images), batch_size):
            for prediction in self._predict_images(images[start:start + batch_size]):
                people.append(PoseSession(self, None, prediction.size, prediction.poses).people(self.score_threshold))
        return people

    @torch.no_grad()
    def detect_batch(self, images: Sequence[ImageLike], score_threshold: float = 0.0,
                     autocast_dtype: Optional[torch.dtype] = None) -> list[list[dict[str, Any]]]:
        """People of each image as the evaluation scores them: one forward pass of the batch decoded by the
        config's postprocessor (its ``num_select``, ``nms_iou_threshold``), person class only, at or above
        ``score_threshold``, best first. Each person: 'score', 'box' (x0, y0, x1, y1) and 'keypoints' (K, 2), in
        pixels. ``autocast_dtype`` runs the model under ``torch.autocast`` (bfloat16 on CPU or CUDA, float16 on
        CUDA); the decoding is fp32 either way. No session or encoder state is kept (pre-annotation)."""
        pils = [self._load(image) for image in images]
        samples = self._samples(pils)
        with torch.autocast(self.device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None and autocast_dtype != torch.float32):
            outputs = self.model(samples)
        outputs = {k: outputs[k].float() for k in ("pred_logits", "pred_boxes", "pred_keypoints")}
        sizes = torch.tensor([[pil.height, pil.width] for pil in pils], dtype=torch.float32, device=self.device)
        people = []
        for result in self.postprocess(outputs, sizes):
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
