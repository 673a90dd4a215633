"""Joint image + target augmentations of the reference, for any number of keypoints.

Targets travel in pixel space until ``Normalize``:
``boxes`` (N, 4) xyxy, ``keypoints`` (N, K, 3) [x, y, v], ``area`` (N,), ``labels``/``iscrowd`` (N,),
``size`` tensor([h, w]). ``Normalize`` converts them to the model layout (normalised cxcywh boxes,
``[x1/w, y1/h, ..., xK/w, yK/h, v1..vK]`` keypoints with v in {0, 1}, area / (w * h)).

Random draws use Python ``random`` and torchvision's crop sampler in the reference's order, so a seeded run makes
the same choices as the reference.
"""
from __future__ import annotations

import random
from typing import Callable, Optional, Sequence

import torch
import torchvision.transforms as tv_transforms
import torchvision.transforms.functional as tv_functional
from PIL import Image

from util import keypoint_codec as kp
from util.box_ops import box_xyxy_to_cxcywh
from util.settings import as_data_settings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# fields indexed by instance; a crop drops the same rows from all of them
_INSTANCE_FIELDS = ("boxes", "labels", "area", "iscrowd", "keypoints")

Transform = Callable[[Image.Image, Optional[dict]], tuple]


def hflip(image: Image.Image, target: Optional[dict], flip_permutation: Sequence[int],
          exact: bool = False) -> tuple[Image.Image, Optional[dict]]:
    """Mirror left-right. Boxes map x -> w - x; keypoints x -> w - x - 1 (reference) or w - x (``exact``),
    then left/right keypoints swap places via ``flip_permutation`` (new index -> old index)."""
    width = image.width
    flipped = image.transpose(Image.FLIP_LEFT_RIGHT)
    if target is None:
        return flipped, None
    target = dict(target)
    if "boxes" in target:
        x1, y1, x2, y2 = target["boxes"].unbind(-1)
        target["boxes"] = torch.stack((width - x2, y1, width - x1, y2), dim=-1)
    if "keypoints" in target:
        kpts = target["keypoints"].clone()
        kpts[..., 0] = width - kpts[..., 0] - (0 if exact else 1)
        target["keypoints"] = kpts[:, list(flip_permutation)]
    return flipped, target


def resized_hw(width: int, height: int, size: int, max_size: Optional[int] = None) -> tuple[int, int]:
    """(h, w) after scaling the short side to ``size``, lowering ``size`` first so the long side stays within
    ``max_size`` (reference rule: round for the cap, truncate the long side)."""
    if max_size is not None:
        short_side, long_side = float(min(width, height)), float(max(width, height))
        if long_side / short_side * size > max_size:
            size = int(round(max_size * short_side / long_side))
    if min(width, height) == size:
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize(image: Image.Image, target: Optional[dict], size, max_size: Optional[int] = None
           ) -> tuple[Image.Image, Optional[dict]]:
    """Resize (bilinear) to a short side of ``size`` (int) or to exactly (h, w) (pair); scale the target."""
    if isinstance(size, (list, tuple)):
        new_h, new_w = int(size[0]), int(size[1])
    else:
        new_h, new_w = resized_hw(image.width, image.height, size, max_size)
    resized_image = image.resize((new_w, new_h), Image.BILINEAR)
    if target is None:
        return resized_image, None
    sx, sy = new_w / image.width, new_h / image.height
    target = dict(target)
    if "boxes" in target:
        # boxes lie within the image (clamped on load and by the crop); float32 scaling can put an edge on the
        # border one ulp beyond the new size, so it is clamped back
        limit = torch.tensor([new_w, new_h, new_w, new_h], dtype=target["boxes"].dtype)
        target["boxes"] = torch.minimum(target["boxes"] * torch.tensor([sx, sy, sx, sy]), limit)
    if "area" in target:
        target["area"] = target["area"] * (sx * sy)
    if "keypoints" in target:
        target["keypoints"] = target["keypoints"] * torch.tensor([sx, sy, 1.0])
    target["size"] = torch.tensor([new_h, new_w])
    return resized_image, target


def crop(image: Image.Image, target: Optional[dict], region: tuple[int, int, int, int],
         mark_invisible: bool = False) -> tuple[Image.Image, Optional[dict]]:
    """Cut ``region`` = (top, left, height, width). Boxes are shifted and clipped, collapsed instances dropped and
    ``area`` replaced by the clipped box area (reference). Keypoints are shifted and clamped to the window; outside
    ones keep their visibility (reference) unless ``mark_invisible``."""
    top, left, height, width = region
    cropped = image.crop((left, top, left + width, top + height))
    if target is None:
        return cropped, None
    target = dict(target)
    target["size"] = torch.tensor([height, width])
    if "boxes" in target:
        limit = torch.tensor([width, height], dtype=torch.float32)
        corners = (target["boxes"] - torch.tensor([left, top, left, top])).reshape(-1, 2, 2)
        corners = torch.minimum(corners, limit).clamp(min=0)
        target["boxes"] = corners.reshape(-1, 4)
        target["area"] = (corners[:, 1] - corners[:, 0]).prod(dim=1)
        keep = (corners[:, 1] > corners[:, 0]).all(dim=1)
        for field in _INSTANCE_FIELDS:
            if field in target:
                target[field] = target[field][keep]
    if "keypoints" in target:
        kpts = target["keypoints"].clone()
        xy = kpts[..., :2] - torch.tensor([left, top], dtype=kpts.dtype)
        if mark_invisible:
            outside = (xy < 0).any(-1) | (xy[..., 0] > width) | (xy[..., 1] > height)
            kpts[..., 2] = kpts[..., 2].masked_fill(outside, 0)
        kpts[..., :2] = torch.minimum(xy, torch.tensor([width, height], dtype=kpts.dtype)).clamp(min=0)
        target["keypoints"] = kpts
    return cropped, target


def to_model_target(target: dict, height: int, width: int) -> dict:
    """Pixel-space target -> model layout (see module docstring). Pure; ``target`` is not modified."""
    out = dict(target)
    if "boxes" in target:
        out["boxes"] = box_xyxy_to_cxcywh(target["boxes"]) / torch.tensor([width, height, width, height],
                                                                           dtype=torch.float32)
    if "area" in target:
        out["area"] = target["area"] / (float(width) * float(height))
    if "keypoints" in target:  # (N, K, 3) pixels -> the codec's flat (N, 3K) layout; visibility 2 (seen) -> 1
        kpts = target["keypoints"]
        vis = kpts[..., 2].masked_fill(kpts[..., 2] == 2, 1)
        out["keypoints"] = kp.encode(kp.from_pixels(kpts[..., :2], width, height), vis)
    return out


class Compose:
    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}" for t in self.transforms)
        return f"{type(self).__name__}({inner}\n)"


class RandomHorizontalFlip:
    def __init__(self, flip_permutation: Sequence[int], p: float = 0.5, exact: bool = False):
        self.flip_permutation = list(flip_permutation)
        self.p = p
        self.exact = exact

    def __call__(self, image, target):
        if random.random() < self.p:
            return hflip(image, target, self.flip_permutation, self.exact)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p}, exact={self.exact})"


class RandomResize:
    """Short side drawn from ``sizes``; long side capped at ``max_size``."""

    def __init__(self, sizes: Sequence, max_size: Optional[int] = None):
        if not isinstance(sizes, (list, tuple)) or len(sizes) == 0:
            raise ValueError(f"RandomResize needs a non-empty list of sizes, got {sizes!r}")
        self.sizes = list(sizes)
        self.max_size = max_size

    def __call__(self, image, target=None):
        return resize(image, target, random.choice(self.sizes), self.max_size)

    def __repr__(self) -> str:
        return f"RandomResize(sizes={self.sizes}, max_size={self.max_size})"


class RandomSizeCrop:
    """Crop a window with sides drawn uniformly from [min_size, min(image side, max_size)] at a random place."""

    def __init__(self, min_size: int, max_size: int, mark_invisible: bool = False):
        self.min_size = min_size
        self.max_size = max_size
        self.mark_invisible = mark_invisible

    def __call__(self, image, target):
        if min(image.width, image.height) < self.min_size:
            raise ValueError(f"RandomSizeCrop({self.min_size}, {self.max_size}) got a {image.width}x{image.height} "
                             "image; resize it to a short side >= min_size first")
        crop_w = random.randint(self.min_size, min(image.width, self.max_size))
        crop_h = random.randint(self.min_size, min(image.height, self.max_size))
        region = tv_transforms.RandomCrop.get_params(image, [crop_h, crop_w])
        return crop(image, target, region, self.mark_invisible)

    def __repr__(self) -> str:
        return f"RandomSizeCrop({self.min_size}, {self.max_size}, mark_invisible={self.mark_invisible})"


class RandomSelect:
    """``first`` with probability p, else ``second``."""

    def __init__(self, first: Transform, second: Transform, p: float = 0.5):
        self.first, self.second, self.p = first, second, p

    def __call__(self, image, target):
        return self.first(image, target) if random.random() < self.p else self.second(image, target)

    def __repr__(self) -> str:
        return f"RandomSelect(p={self.p},\n  {self.first!r},\n  {self.second!r})"


class ToTensor:
    def __call__(self, image, target):
        return tv_functional.to_tensor(image), target

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """Standardise the (3, H, W) image and convert the target to the model layout."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image: torch.Tensor, target=None):
        image = tv_functional.normalize(image, mean=self.mean, std=self.std)
        if target is None:
            return image, None
        height, width = image.shape[-2:]
        return image, to_model_target(target, height, width)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def build_transforms(image_set: str, flip_permutation: Sequence[int], *,
                     scales: Sequence[int] = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
                     max_size: int = 1333, scales2_resize: Sequence[int] = (400, 500, 600),
                     scales2_crop: Sequence[int] = (384, 600), scale_overlap: Optional[float] = None,
                     flip_exact: bool = False, crop_marks_invisible: bool = False) -> Compose:
    """The reference pipeline: train = flip, then either a multi-scale resize or resize -> random crop -> multi-scale
    resize, then tensor + normalise; val = resize the short side to max(scales)."""
    if scale_overlap:  # one factor rescales every size of the recipe
        scales, scales2_resize, scales2_crop = ([int(v * float(scale_overlap)) for v in sizes]
                                                for sizes in (scales, scales2_resize, scales2_crop))
        max_size = int(max_size * float(scale_overlap))
    finish = [ToTensor(), Normalize()]
    if image_set == "train":
        return Compose([
            RandomHorizontalFlip(flip_permutation, exact=flip_exact),
            RandomSelect(
                RandomResize(list(scales), max_size=max_size),
                Compose([RandomResize(list(scales2_resize)),
                         RandomSizeCrop(*scales2_crop, mark_invisible=crop_marks_invisible),
                         RandomResize(list(scales), max_size=max_size)]),
            ),
            *finish,
        ])
    if image_set in ("val", "test"):
        return Compose([RandomResize([max(scales)], max_size=max_size), *finish])
    raise ValueError(f"unknown image_set {image_set!r}: expected 'train' or 'val'")


def build_transforms_from_args(image_set: str, args, flip_permutation: Sequence[int]) -> Compose:
    """``build_transforms`` with the data section's augmentation (``args``: a ``util.settings.DataCfg`` or the flat
    keys ``data_aug_*``, ``flip_exact``, ``crop_marks_invisible``)."""
    a = as_data_settings(args).augment
    return build_transforms(image_set, flip_permutation, scales=a.scales, max_size=a.max_size,
                            scales2_resize=a.scales2_resize, scales2_crop=a.scales2_crop,
                            scale_overlap=a.scale_overlap, flip_exact=a.flip_exact,
                            crop_marks_invisible=a.crop_marks_invisible)
