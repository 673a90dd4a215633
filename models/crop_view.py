"""The crop a box-added person lives in: its window on the image, the image the model sees, the coordinate maps.

A person added from a user's box is predicted on a crop of that box (grown by ``CROP_MARGIN`` of its longer side,
clipped to the image; the margin painted in the crop's mean colour when ``CROP_MASK``): there the person fills the
model's input, and neighbours outside the box are hidden. The person's later refinements run on the same crop
(:meth:`models.predictor.Predictor.refine_people`), so a click refines the person the proposal found, at the crop's
scale, instead of letting the whole image's attention drift back to a neighbour.

Coordinates: "image" ones are normalised by the image size, "crop" ones by the crop's (both in [0, 1] inside).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

CROP_MASK = True  # the margin around the user's box is painted in the crop's mean colour
CROP_MARGIN = 0.3  # the crop around the user's box, as a fraction of its longer side
INSIDE_SLACK = 0.02  # a point this far outside the crop (crop units) still counts as inside


@dataclass(frozen=True)
class CropWindow:
    """The crop of one user box: ``user`` (x0, y0, x1, y1) and the crop ``left, top, right, bottom``, in pixels of
    an image of ``image_size`` (width, height)."""

    user: tuple[float, float, float, float]
    left: int
    top: int
    right: int
    bottom: int
    image_size: tuple[int, int]

    @classmethod
    def around(cls, user: Sequence[float], image_size: tuple[int, int]) -> Optional["CropWindow"]:
        """The window of a user box in pixels; None when it leaves less than 2 x 2 pixels of the image."""
        x0, y0, x1, y1 = (float(v) for v in user)
        width, height = image_size
        margin = CROP_MARGIN * max(x1 - x0, y1 - y0)
        left, top = max(0, math.floor(x0 - margin)), max(0, math.floor(y0 - margin))
        right, bottom = min(width, math.ceil(x1 + margin)), min(height, math.ceil(y1 + margin))
        if right - left < 2 or bottom - top < 2:
            return None
        return cls((x0, y0, x1, y1), left, top, right, bottom, (int(width), int(height)))

    @classmethod
    def from_normalised(cls, user: Tensor, image_size: tuple[int, int]) -> Optional["CropWindow"]:
        """The window of a user box (4,) x0, y0, x1, y1 in image units (as :attr:`normalised_user` gives it)."""
        width, height = image_size
        x0, y0, x1, y1 = user.tolist()
        return cls.around((x0 * width, y0 * height, x1 * width, y1 * height), image_size)

    @property
    def normalised_user(self) -> Tensor:
        """(4,) the user box in image units: what a person stores to find its window again."""
        width, height = self.image_size
        x0, y0, x1, y1 = self.user
        return torch.tensor([x0 / width, y0 / height, x1 / width, y1 / height], dtype=torch.float32)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the crop in pixels."""
        return self.right - self.left, self.bottom - self.top

    def image(self, pil: Image.Image) -> Image.Image:
        """The crop the model sees: the window of ``pil``, its margin outside the user box masked (``CROP_MASK``)."""
        crop = pil.crop((self.left, self.top, self.right, self.bottom))
        if not CROP_MASK:
            return crop
        x0, y0, x1, y1 = (round(v) for v in self.user)
        inside = crop.crop((x0 - self.left, y0 - self.top, x1 - self.left, y1 - self.top))
        mean = tuple(int(v) for v in np.asarray(crop).reshape(-1, 3).mean(0))
        masked = Image.new("RGB", crop.size, mean)
        masked.paste(inside, (x0 - self.left, y0 - self.top))
        return masked

    def _affine(self) -> tuple[Tensor, Tensor]:
        """(scale, offset) with image = crop * scale + offset, per axis, in normalised units."""
        width, height = self.image_size
        crop_w, crop_h = self.size
        scale = torch.tensor([crop_w / width, crop_h / height], dtype=torch.float32)
        offset = torch.tensor([self.left / width, self.top / height], dtype=torch.float32)
        return scale, offset

    def points_to_image(self, xy: Tensor) -> Tensor:
        """(..., 2) crop units -> image units."""
        scale, offset = self._affine()
        return xy.float() * scale.to(xy.device) + offset.to(xy.device)

    def points_to_crop(self, xy: Tensor) -> Tensor:
        """(..., 2) image units -> crop units."""
        scale, offset = self._affine()
        return (xy.float() - offset.to(xy.device)) / scale.to(xy.device)

    def boxes_to_image(self, cxcywh: Tensor) -> Tensor:
        """(..., 4) cx, cy, w, h in crop units -> image units."""
        scale, _ = self._affine()
        return torch.cat((self.points_to_image(cxcywh[..., :2]), cxcywh[..., 2:] * scale.to(cxcywh.device)), -1)

    def boxes_to_crop(self, cxcywh: Tensor) -> Tensor:
        """(..., 4) cx, cy, w, h in image units -> crop units."""
        scale, _ = self._affine()
        return torch.cat((self.points_to_crop(cxcywh[..., :2]), cxcywh[..., 2:] / scale.to(cxcywh.device)), -1)

    @staticmethod
    def holds(crop_xy: Tensor) -> bool:
        """Whether every point (..., 2), in crop units, lies in the crop (within ``INSIDE_SLACK``)."""
        return bool(((crop_xy >= -INSIDE_SLACK) & (crop_xy <= 1 + INSIDE_SLACK)).all())


@dataclass(eq=False)
class CropView:
    """A window's crop as the Predictor caches an encoder state on it (see ``Predictor.hold``)."""

    image: Any  # the masked crop (PIL image)
    state: Any = None
