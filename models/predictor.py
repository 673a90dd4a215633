"""Interactive annotation from Python: predict people, then correct keypoints with clicks.

    predictor = Predictor("config/clickpose.cfg.py", "checkpoint.pth", device="cpu")
    people = predictor.predict("image.jpg")
    people = predictor.correct(person=0, keypoint=9, x=120.0, y=88.5)   # pixels of the original image

A session keeps the image's encoder state, so a correction runs only the box+keypoint decoder layers. Clicked
keypoints stay exactly where clicked (``click_freeze='all'``), through later corrections too.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from models.clickpose import keypoints as kp

ImageLike = Union[str, Path, np.ndarray, Image.Image]


class Predictor:
    """Load a config and checkpoint; ``predict(image)`` then ``correct(...)`` any number of times."""

    def __init__(self, config: str | Path, checkpoint: Optional[str | Path] = None, device: str = "cpu",
                 options: Optional[Mapping[str, Any]] = None, score_threshold: float = 0.0,
                 top_k: Optional[int] = None, use_ema: bool = False):
        from datasets.metadata import default_metadata_for_num_keypoints
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
        self.model, _, _ = build_model(args)
        if checkpoint is not None:
            ckpt = read_checkpoint(checkpoint)
            weights = ckpt["ema_model"] if use_ema and "ema_model" in ckpt else ckpt["model"]
            load_model_weights(self.model, weights, strict=True, source=str(checkpoint))
        self.model.to(self.device).eval()
        self.metadata = default_metadata_for_num_keypoints(args.num_body_points)
        self.transform = build_transforms_from_args("val", args, self.metadata.flip_permutation())
        self.num_keypoints = args.num_body_points
        self.score_threshold = score_threshold
        self.top_k = top_k or args.num_group_refine
        self._session: Optional[dict[str, Any]] = None

    # ---------------------------------------------------------------------------------------------------------
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
    def predict(self, image: ImageLike) -> list[dict[str, Any]]:
        """Detect people. Returns dicts with 'index' (use it in ``correct``), 'score', 'box' (x0, y0, x1, y1) and
        'keypoints' (K, 3) as (x, y, score) in pixels, best first."""
        from models.clickpose.feedback import select_top
        from util.misc import nested_tensor_from_tensor_list

        pil = self._load(image)
        width, height = pil.size
        tensor, _ = self.transform(pil, None)
        samples = nested_tensor_from_tensor_list([tensor.to(self.device)])
        outputs, state = self.model(samples, return_state=True)
        top = select_top({k: outputs[k] for k in ("pred_logits", "pred_boxes", "pred_keypoints")}, self.top_k)
        self._session = {
            "state": state, "size": (width, height), "logits": top["pred_logits"], "boxes": top["pred_boxes"],
            "keypoints": kp.coordinates(top["pred_keypoints"], self.num_keypoints), "pinned": None,
            "visibility": kp.visibility(top["pred_keypoints"], self.num_keypoints),
        }
        return self._people()

    @torch.no_grad()
    def correct(self, person: Optional[int] = None, keypoint: Optional[int] = None, x: Optional[float] = None,
                y: Optional[float] = None, clicks: Optional[Iterable[Sequence[float]]] = None) -> list[dict[str, Any]]:
        """Move keypoints to where the user clicked (pixels) and re-predict everything else.

        Give one click as ``person, keypoint, x, y`` or several as ``clicks=[(person, keypoint, x, y), ...]``.
        """
        if self._session is None:
            raise RuntimeError("call predict(image) before correct(...)")
        given = list(clicks or [])
        if person is not None:
            given.append((person, keypoint, x, y))
        if not given or any(None in click for click in given):
            raise ValueError("a click needs person, keypoint, x and y")
        width, height = self._session["size"]
        rows = torch.tensor([[p, k, cx / width, cy / height] for p, k, cx, cy in given], dtype=torch.float32,
                            device=self.device)
        session = self._session
        result = self.model.refine(session["state"], session["boxes"], session["keypoints"], [rows],
                                   click_freeze="all", pinned=session["pinned"], logits=session["logits"])
        last = result.layers[-1]
        session["boxes"] = last["pred_boxes"]
        session["keypoints"] = kp.coordinates(last["pred_keypoints"], self.num_keypoints)
        session["visibility"] = kp.visibility(last["pred_keypoints"], self.num_keypoints)
        session["pinned"] = result.pinned
        return self._people()

    def _people(self) -> list[dict[str, Any]]:
        from util.box_ops import box_cxcywh_to_xyxy

        session = self._session
        width, height = session["size"]
        scale = torch.tensor([width, height], dtype=torch.float32, device=self.device)
        scores = session["logits"][0].sigmoid().max(-1).values
        boxes = box_cxcywh_to_xyxy(session["boxes"][0]) * scale.repeat(2)
        keypoints = torch.cat((session["keypoints"][0] * scale, session["visibility"][0][..., None]), -1)
        people = [{"index": i, "score": float(scores[i]), "box": boxes[i].tolist(), "keypoints": keypoints[i].tolist()}
                  for i in range(len(scores)) if float(scores[i]) >= self.score_threshold]
        return sorted(people, key=lambda p: -p["score"])
