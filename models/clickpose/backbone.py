"""ResNet backbones with frozen batch norm, and the ``Joiner`` that adds the position encoding.

State-dict layout (the reference's): ``backbone.0.body.*`` = torchvision ResNet without fc/avgpool,
``backbone.1`` = the (parameter-free) position encoding. ImageNet weights come only from a local file
(config ``backbone_weights``); nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter

from util.misc import NestedTensor, downsample_mask

from .position_encoding import build_position_encoding

RESNET_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}
SUPPORTED_INTERM_INDICES = ([0, 1, 2, 3], [1, 2, 3], [3])
TRAINABLE_STAGES = ("layer2", "layer3", "layer4")  # the stem and layer1 stay frozen


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


def load_backbone_weights(resnet: nn.Module, path: str | Path) -> None:
    """Load a torchvision ResNet state dict (``fc.*`` and ``num_batches_tracked`` are ignored)."""
    path = Path(path)
    hint = ("expected a torchvision ResNet state dict (e.g. torchvision.models.resnet50(weights='IMAGENET1K_V1')"
            ".state_dict() saved with torch.save), or set backbone_weights=None for a random initialisation")
    if not path.is_file():
        raise FileNotFoundError(f"backbone_weights file {path} does not exist; {hint}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"backbone_weights file {path} holds a {type(state).__name__}; {hint}")
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    try:
        result = resnet.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"backbone_weights file {path} does not fit the ResNet: {error}; {hint}") from None
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"backbone_weights file {path} does not fit the ResNet: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}; {hint}")


class ResNetBackbone(nn.Module):
    """Multi-scale ResNet features; returns ``{str(index): NestedTensor}`` with each level's padding mask."""

    def __init__(self, name: str, return_interm_indices: Sequence[int], dilation: bool = False,
                 train_backbone: bool = True, weights_path: Optional[str] = None):
        super().__init__()
        if name not in RESNET_CHANNELS:
            raise ValueError(f"backbone {name!r} is not supported; choose one of {sorted(RESNET_CHANNELS)}")
        indices = list(return_interm_indices)
        if indices not in SUPPORTED_INTERM_INDICES:
            raise ValueError(f"return_interm_indices must be one of {SUPPORTED_INTERM_INDICES}, got {indices}")
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d,
                                                   replace_stride_with_dilation=[False, False, dilation])
        if weights_path is not None:
            load_backbone_weights(resnet, weights_path)
        for param_name, param in resnet.named_parameters():
            if not train_backbone or not any(stage in param_name for stage in TRAINABLE_STAGES):
                param.requires_grad_(False)
        # layer{5-n+i} is returned under the name of its interm index, as the reference does
        return_layers = {f"layer{5 - len(indices) + i}": str(index) for i, index in enumerate(indices)}
        self.body = IntermediateLayerGetter(resnet, return_layers=return_layers)
        self.num_channels = list(RESNET_CHANNELS[name][4 - len(indices):])

    def forward(self, samples: NestedTensor) -> dict[str, NestedTensor]:
        if samples.mask is None:
            raise ValueError("the backbone needs a NestedTensor with a padding mask")
        features = self.body(samples.tensors)
        out = {}
        for name, feature in features.items():
            out[name] = NestedTensor(feature, downsample_mask(samples.mask, feature.shape[-2:]))
        return out


class Joiner(nn.Sequential):
    """``[0]`` backbone, ``[1]`` position encoding; returns (per-level features, per-level encodings)."""

    def __init__(self, backbone: ResNetBackbone, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels

    def forward(self, samples: NestedTensor) -> tuple[list[NestedTensor], list[Tensor]]:
        features = list(self[0](samples).values())
        positions = [self[1](feature).to(feature.tensors.dtype) for feature in features]
        return features, positions


def build_backbone(args: Any) -> Joiner:
    """Config: ``backbone``, ``return_interm_indices``, ``dilation``, ``lr_backbone``, ``backbone_weights``."""
    backbone = ResNetBackbone(args.backbone, args.return_interm_indices, dilation=args.dilation,
                              train_backbone=args.lr_backbone > 0,
                              weights_path=getattr(args, "backbone_weights", None))
    return Joiner(backbone, build_position_encoding(args))
