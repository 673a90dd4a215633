"""The keypoint layout codec: the ONE place that knows how K keypoints are packed into a tensor.

Model outputs, targets and denoising inputs store a person's keypoints flat, as the reference does:
``[x1, y1, x2, y2, ..., xK, yK, v1, ..., vK]`` (last dim 3K; x, y normalised to [0, 1] by the image size; v a
visibility, or a score for predictions). Encoding (the dataset's targets, ``datasets.transforms``), decoding (the
post-processing and the Predictor, to pixels) and everything between (losses, matcher, decoder heads, the click
loop) go through the functions below instead of slicing ``[..., :2K]`` by hand. It lives in ``util`` so that the
datasets and the model share it.

Shapes: ``flat`` (..., 3K); ``xy`` (..., K, 2); ``flat_xy`` (..., 2K) (the first 2K entries); ``visibility``
(..., K). K is never assumed: it is passed, or read from a tensor whose last dim is 3K.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def num_keypoints_of(flat: Tensor) -> int:
    """K of a flat (..., 3K) tensor; a clear error when the last dim is not a multiple of 3."""
    if flat.shape[-1] % 3:
        raise ValueError(f"keypoint tensor has last dim {flat.shape[-1]}, not 3*K: the layout is "
                         "[x1, y1, ..., xK, yK, v1, ..., vK]")
    return flat.shape[-1] // 3


def _checked(flat: Tensor, num_keypoints: Optional[int]) -> int:
    k = num_keypoints_of(flat) if num_keypoints is None else num_keypoints
    if flat.shape[-1] != 3 * k:
        raise ValueError(f"keypoint tensor has last dim {flat.shape[-1]}, expected 3*K = {3 * k} for K = {k}; "
                         "check num_body_points against the dataset")
    return k


def split(flat: Tensor, num_keypoints: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """(..., 3K) -> flat coordinates (..., 2K) and visibilities (..., K) (views)."""
    k = _checked(flat, num_keypoints)
    return flat[..., :2 * k], flat[..., 2 * k:]


def coordinates(flat: Tensor, num_keypoints: Optional[int] = None) -> Tensor:
    """(..., 3K) -> (..., K, 2) x, y (a view)."""
    k = _checked(flat, num_keypoints)
    return flat[..., :2 * k].unflatten(-1, (k, 2))


def visibility(flat: Tensor, num_keypoints: Optional[int] = None) -> Tensor:
    """(..., 3K) -> (..., K) visibilities / scores (a view)."""
    k = _checked(flat, num_keypoints)
    return flat[..., 2 * k:]


def encode(xy: Tensor, vis: Optional[Tensor] = None, fill: float = 1.0) -> Tensor:
    """(..., K, 2) coordinates + (..., K) visibilities -> (..., 3K); ``vis`` None = every keypoint ``fill``."""
    if xy.shape[-1] != 2:
        raise ValueError(f"keypoint coordinates must end in (K, 2), got {tuple(xy.shape)}")
    if vis is None:
        vis = xy.new_full(xy.shape[:-1], fill)
    if vis.shape != xy.shape[:-1]:
        raise ValueError(f"visibilities {tuple(vis.shape)} do not match coordinates {tuple(xy.shape)}")
    return torch.cat((xy.flatten(-2), vis), -1)


def zeros(leading: tuple[int, ...] | torch.Size, num_keypoints: int, like: Tensor) -> Tensor:
    """An all-zero (*leading, 3K) keypoint tensor with ``like``'s dtype and device (box-only layers)."""
    return like.new_zeros(tuple(leading) + (3 * num_keypoints,))


def to_pixels(xy: Tensor, sizes: Tensor) -> Tensor:
    """(B, ..., K, 2) normalised -> pixels; sizes (B, 2) as (height, width), per image of the batch."""
    scale = sizes.flip(-1).to(xy.dtype)  # (w, h)
    return xy * scale.view(scale.shape[0], *([1] * (xy.dim() - 2)), 2)


def from_pixels(xy: Tensor, width: float, height: float) -> Tensor:
    """(..., 2) pixels of one image -> normalised [0, 1] coordinates."""
    return xy / xy.new_tensor([width, height])


def to_coco_triplets(flat: Tensor, sizes: Tensor, num_keypoints: Optional[int] = None) -> Tensor:
    """(B, N, 3K) normalised -> (B, N, 3K) COCO ``[x, y, v, x, y, v, ...]`` in pixels; sizes (B, 2) (h, w)."""
    k = _checked(flat, num_keypoints)
    xy = to_pixels(coordinates(flat, k), sizes)
    return torch.cat((xy, visibility(flat, k)[..., None]), -1).flatten(-2)
