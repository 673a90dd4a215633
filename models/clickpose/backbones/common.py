"""What every backbone family shares: batch-norm choice, per-level padding masks."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from util.config import ConfigError
from util.misc import NestedTensor, downsample_mask

BATCH_NORM_TYPES = ("FrozenBatchNorm2d", "BatchNorm2d", "SyncBatchNorm")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (all buffers, none trained).

    Buffers: weight, bias, running_mean, running_var (no ``num_batches_tracked``; dropped when loading).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def check_batch_norm_type(kind: str) -> None:
    if kind not in BATCH_NORM_TYPES:
        raise ConfigError(f"batch_norm_type must be one of {BATCH_NORM_TYPES}, got {kind!r}")


def batch_norm_layer(kind: str) -> type[nn.Module]:
    """The norm class for ``batch_norm_type``. SyncBatchNorm behaves as BatchNorm2d outside a process group."""
    check_batch_norm_type(kind)
    return {"FrozenBatchNorm2d": FrozenBatchNorm2d, "BatchNorm2d": nn.BatchNorm2d,
            "SyncBatchNorm": nn.SyncBatchNorm}[kind]


def convert_batch_norm(module: nn.Module, kind: str) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by ``kind``, keeping statistics and affine values."""
    check_batch_norm_type(kind)
    if kind == "BatchNorm2d":
        return module
    if kind == "SyncBatchNorm":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and child.track_running_stats and child.affine:
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for buffer in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, buffer).copy_(getattr(child, buffer).detach())
            setattr(module, name, frozen)
        else:
            convert_batch_norm(child, kind)
    return module


def with_masks(features: Iterable[tuple[str, Tensor]], mask: Tensor | None) -> dict[str, NestedTensor]:
    """Each level's padding mask: the image mask resized (nearest) to the level's size."""
    if mask is None:
        raise ValueError("the backbone needs a NestedTensor with a padding mask")
    out = {}
    for name, feature in features:
        out[name] = NestedTensor(feature, downsample_mask(mask, feature.shape[-2:]))
    return out
