"""torchvision ResNets as multi-scale backbones (state-dict keys ``body.*``, the original's layout)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models._utils import IntermediateLayerGetter

from util.config import ConfigError
from util.misc import NestedTensor

from .common import FrozenBatchNorm2d, batch_norm_layer, with_masks
from .weights import load_fitting, read_state_dict

RESNET_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}
SUPPORTED_INTERM_INDICES = ([0, 1, 2, 3], [1, 2, 3], [3])
STAGES = ("layer1", "layer2", "layer3", "layer4")
WEIGHTS_HINT = ("expected a torchvision ResNet state dict (e.g. torchvision.models.resnet50(weights='IMAGENET1K_V1')"
                ".state_dict() saved with torch.save), or set backbone_weights=None for a random initialisation")


def load_resnet_weights(resnet: nn.Module, path: str) -> None:
    """A torchvision ResNet state dict (``fc.*`` and ``num_batches_tracked`` are ignored)."""
    load_fitting(resnet, read_state_dict(path, WEIGHTS_HINT), path, WEIGHTS_HINT,
                 ignore=lambda key: key.startswith("fc."), may_miss=lambda key: key.startswith("fc."))


class ResNetBackbone(nn.Module):
    """Multi-scale ResNet features; returns ``{str(index): NestedTensor}`` with each level's padding mask.

    ``use_checkpoint`` recomputes each stage (layer1-4) in the backward pass instead of storing its activations.
    """

    # trained when backbone_trainable_stages is None: the original keeps the stem and layer1 frozen
    default_trainable = ("layer2", "layer3", "layer4")

    def __init__(self, name: str, return_interm_indices: Sequence[int], dilation: bool = False,
                 weights_path: Optional[str] = None, batch_norm: str = "FrozenBatchNorm2d",
                 use_checkpoint: bool = False):
        super().__init__()
        if name not in RESNET_CHANNELS:
            raise ConfigError(f"backbone {name!r} is not supported; choose one of {sorted(RESNET_CHANNELS)}")
        indices = list(return_interm_indices)
        if indices not in SUPPORTED_INTERM_INDICES:
            raise ConfigError(f"return_interm_indices={indices}: a ResNet backbone returns one of "
                              f"{list(SUPPORTED_INTERM_INDICES)} (its last stages); set one of them")
        if dilation and RESNET_CHANNELS[name][0] == 64:
            raise ConfigError(f"dilation=True needs a bottleneck ResNet (resnet50/resnet101); {name} has basic blocks, "
                              "which torchvision cannot dilate")
        if use_checkpoint and batch_norm != "FrozenBatchNorm2d":
            raise ConfigError(f"use_checkpoint=True with batch_norm_type={batch_norm!r} is not supported for a ResNet: "
                              "recomputing a stage in the backward pass would update the batch-norm running "
                              "statistics twice; use batch_norm_type='FrozenBatchNorm2d' or use_checkpoint=False")
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=batch_norm_layer(batch_norm),
                                                   replace_stride_with_dilation=[False, False, dilation])
        if weights_path is not None:
            load_resnet_weights(resnet, weights_path)
        # layer{5-n+i} is returned under the name of its interm index, as the original does
        return_layers = {f"layer{5 - len(indices) + i}": str(index) for i, index in enumerate(indices)}
        self.body = IntermediateLayerGetter(resnet, return_layers=return_layers)
        self.return_layers = return_layers
        self.num_channels = list(RESNET_CHANNELS[name][4 - len(indices):])
        self.use_checkpoint = use_checkpoint

    def forward(self, samples: NestedTensor) -> dict[str, NestedTensor]:
        x = samples.tensors
        features = []
        recompute = self.use_checkpoint and self.training and torch.is_grad_enabled()
        for name, module in self.body.named_children():
            if recompute and name in STAGES:
                x = checkpoint(module, x, use_reentrant=False)
            else:
                x = module(x)
            if name in self.return_layers:
                features.append((self.return_layers[name], x))
        return with_masks(features, samples.mask)


__all__ = ["FrozenBatchNorm2d", "RESNET_CHANNELS", "ResNetBackbone", "load_resnet_weights"]
