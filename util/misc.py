"""Padded image batches (``NestedTensor``), the data-loader collate function and small tensor helpers.

Distributed helpers live in :mod:`util.distributed`, progress logging in :mod:`util.metric_logger`;
they are re-exported here because the reference code imported everything from ``util.misc``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor


class NestedTensor:
    """A batch of images zero-padded to a common size plus a mask that is True on padding.

    tensors: (B, C, H, W); mask: (B, H, W) bool.
    """

    def __init__(self, tensors: Tensor, mask: Optional[Tensor]):
        self.tensors = tensors
        self.mask = mask

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "NestedTensor":
        mask = None if self.mask is None else self.mask.to(device, non_blocking=non_blocking)
        return NestedTensor(self.tensors.to(device, non_blocking=non_blocking), mask)

    def decompose(self) -> tuple[Tensor, Optional[Tensor]]:
        return self.tensors, self.mask

    @property
    def device(self) -> torch.device:
        return self.tensors.device

    @property
    def shape(self) -> dict[str, torch.Size]:
        return {"tensors.shape": self.tensors.shape, "mask.shape": self.mask.shape if self.mask is not None else None}

    def image_sizes(self) -> list[tuple[int, int]]:
        """(h, w) of the unpadded image of each batch element."""
        if self.mask is None:
            h, w = self.tensors.shape[-2:]
            return [(h, w)] * self.tensors.shape[0]
        valid = ~self.mask
        heights = valid.any(dim=2).sum(dim=1)
        widths = valid.any(dim=1).sum(dim=1)
        return [(int(h), int(w)) for h, w in zip(heights, widths)]

    def __repr__(self) -> str:
        return f"NestedTensor(tensors={tuple(self.tensors.shape)}, mask={None if self.mask is None else tuple(self.mask.shape)})"


def downsample_mask(mask: Tensor, size: Sequence[int]) -> Tensor:
    """(B, H, W) bool padding mask -> (B, h, w) at a feature map's size (nearest neighbour, as DETR)."""
    return torch.nn.functional.interpolate(mask[None].float(), size=tuple(size)).to(torch.bool)[0]


def nested_tensor_from_tensor_list(images: Sequence[Tensor]) -> NestedTensor:
    """Pad (C, H_i, W_i) images at the bottom/right to the largest H and W of the list."""
    if len(images) == 0:
        raise ValueError("cannot batch an empty list of images")
    if any(img.ndim != 3 for img in images):
        raise ValueError(f"expected (C, H, W) images, got shapes {[tuple(i.shape) for i in images]}")
    channels = images[0].shape[0]
    max_h = max(img.shape[1] for img in images)
    max_w = max(img.shape[2] for img in images)
    first = images[0]
    batch = first.new_zeros((len(images), channels, max_h, max_w))
    mask = torch.ones((len(images), max_h, max_w), dtype=torch.bool, device=first.device)
    for i, img in enumerate(images):
        h, w = img.shape[1:]
        batch[i, :, :h, :w].copy_(img)
        mask[i, :h, :w] = False
    return NestedTensor(batch, mask)


def collate_fn(batch: Sequence[tuple[Tensor, Any]]) -> tuple[NestedTensor, tuple[Any, ...]]:
    """Data-loader collate: (image, target) pairs -> (NestedTensor, tuple of targets)."""
    images, targets = zip(*batch)
    return nested_tensor_from_tensor_list(list(images)), targets


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """Logit of ``x`` clamped to [0, 1]; both sides are floored at ``eps`` (1e-3, as the reference)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


# Re-exports: the reference imported these from util.misc.
from .distributed import (all_gather, barrier, get_rank, get_world_size, init_distributed_mode,  # noqa: E402,F401
                          is_dist_avail_and_initialized, is_main_process, reduce_dict, save_on_master)
from .metric_logger import MetricLogger, SmoothedValue  # noqa: E402,F401
