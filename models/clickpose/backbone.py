"""Backbones by name, and the ``Joiner`` that adds the position encoding.

One table maps a name to its family's builder: the ResNets (torchvision), the original's Swin Transformers, and any
timm feature model as ``'timm:NAME'``. Adding a backbone is one entry. Every backbone returns
``{str(level index): NestedTensor}`` with each level's padding mask and has ``num_channels``.

State-dict layout (the original's): ``backbone.0.body.*`` for a ResNet (torchvision, no fc/avgpool),
``backbone.0.{patch_embed,layers,norm*}.*`` for a Swin, ``backbone.0.body.*`` for a timm model;
``backbone.1`` = the (parameter-free) position encoding. Weights come only from a local file (``backbone_weights``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from torch import Tensor, nn

from util.config import ConfigError
from util.misc import NestedTensor, downsample_mask
from util.settings import BackboneCfg

from .backbones.common import FrozenBatchNorm2d, check_batch_norm_type
from .backbones.resnet import RESNET_CHANNELS, ResNetBackbone, load_resnet_weights
from .backbones.swin import SWIN_CONFIGS, SwinBackbone
from .backbones.timm_features import TimmBackbone
from .position_encoding import build_position_encoding

TIMM_PREFIX = "timm:"
DEFAULT_BATCH_NORM = "FrozenBatchNorm2d"


@dataclass(frozen=True)
class BackboneOptions:
    """The config keys every family reads."""
    return_interm_indices: Sequence[int]
    dilation: bool = False
    weights_path: Optional[str] = None
    batch_norm: str = DEFAULT_BATCH_NORM
    use_checkpoint: bool = False


def _resnet(name: str, opts: BackboneOptions) -> nn.Module:
    return ResNetBackbone(name, opts.return_interm_indices, dilation=opts.dilation, weights_path=opts.weights_path,
                          batch_norm=opts.batch_norm, use_checkpoint=opts.use_checkpoint)


def _swin(name: str, opts: BackboneOptions) -> nn.Module:
    if opts.batch_norm != DEFAULT_BATCH_NORM:
        raise ConfigError(f"batch_norm_type={opts.batch_norm!r} has no effect on {name}: a Swin has only layer norms; "
                          f"leave batch_norm_type at {DEFAULT_BATCH_NORM!r}")
    return SwinBackbone(name, opts.return_interm_indices, dilation=opts.dilation, weights_path=opts.weights_path,
                        use_checkpoint=opts.use_checkpoint)


def _timm(name: str, opts: BackboneOptions) -> nn.Module:
    return TimmBackbone(name[len(TIMM_PREFIX):], opts.return_interm_indices, dilation=opts.dilation,
                        weights_path=opts.weights_path, batch_norm=opts.batch_norm,
                        use_checkpoint=opts.use_checkpoint)


BACKBONES: dict[str, Callable[[str, BackboneOptions], nn.Module]] = {
    **{name: _resnet for name in RESNET_CHANNELS},
    **{name: _swin for name in SWIN_CONFIGS},
}


def check_interm_indices(indices: Sequence[int]) -> None:
    """``return_interm_indices`` name distinct backbone levels in increasing order (0..3: strides 4, 8, 16, 32);
    a repeated or out-of-order level would give the encoder feature maps that do not match its level count."""
    values = list(indices) if isinstance(indices, (list, tuple)) else None
    if not values or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= 3 for i in values) \
            or values != sorted(set(values)):
        raise ConfigError(f"return_interm_indices={indices!r}: the backbone levels must be distinct, increasing "
                          f"indices in 0..3 (0 = stride 4, 1 = stride 8, 2 = stride 16, 3 = stride 32); set e.g. "
                          f"return_interm_indices=[1,2,3] (the reference's) or [0,1,2,3]")


def make_backbone(name: str, opts: BackboneOptions) -> nn.Module:
    """The backbone called ``name`` ('resnet50', 'swin_L_384_22k', 'timm:convnext_tiny', ...)."""
    check_batch_norm_type(opts.batch_norm)
    check_interm_indices(opts.return_interm_indices)
    if name.startswith(TIMM_PREFIX):
        return _timm(name, opts)
    if name not in BACKBONES:
        raise ConfigError(f"backbone {name!r} is not supported; choose one of {sorted(BACKBONES)} or "
                          f"'{TIMM_PREFIX}NAME' for a timm model")
    return BACKBONES[name](name, opts)


def set_trainable(backbone: nn.Module, train: bool, stages: Any = None,
                  freeze_keywords: Optional[Sequence[str]] = None) -> None:
    """Which backbone parameters train. ``stages``: None = the family's default (``default_trainable``: the ResNets
    train layer2-4, as the original; the others everything), 'all', or a list of name parts (a parameter trains
    when its name contains one). Then ``freeze_keywords`` freeze every parameter whose name contains one (the
    original's ``backbone_freeze_keywords``). ``train=False`` (lr_backbone <= 0) freezes everything."""
    if stages is None:
        stages = getattr(backbone, "default_trainable", None) or "all"
    if stages != "all" and (isinstance(stages, str) or not all(isinstance(s, str) for s in stages)):
        raise ConfigError(f"backbone_trainable_stages must be None, 'all' or a list of name parts such as "
                          f"['layer3', 'layer4'], got {stages!r}")
    if isinstance(freeze_keywords, str):
        raise ConfigError(f"backbone_freeze_keywords must be a list of name parts, got the string {freeze_keywords!r}")
    names = [name for name, _ in backbone.named_parameters()]
    for part in [] if stages == "all" else stages:
        if not any(part in name for name in names):
            raise ConfigError(f"backbone_trainable_stages entry {part!r} matches no backbone parameter "
                              f"(names look like {names[0]!r}, {names[-1]!r})")
    for name, param in backbone.named_parameters():
        trainable = train and (stages == "all" or any(part in name for part in stages))
        if freeze_keywords and any(word in name for word in freeze_keywords):
            trainable = False
        param.requires_grad_(trainable)


class Joiner(nn.Sequential):
    """``[0]`` backbone, ``[1]`` position encoding; returns (per-level features, per-level encodings)."""

    def __init__(self, backbone: nn.Module, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.num_channels = list(backbone.num_channels)

    def forward(self, samples: NestedTensor) -> tuple[list[NestedTensor], list[Tensor]]:
        features = list(self[0](samples).values())
        positions = [self[1](feature).to(feature.tensors.dtype) for feature in features]
        return features, positions


def build_backbone(cfg: BackboneCfg) -> Joiner:
    """The backbone section's backbone (weights, batch norm, checkpointing, trainable parameters) joined with its
    position encoding."""
    opts = BackboneOptions(list(cfg.return_interm_indices), dilation=cfg.dilation, weights_path=cfg.weights,
                           batch_norm=cfg.batch_norm, use_checkpoint=cfg.use_checkpoint)
    backbone = make_backbone(cfg.name, opts)
    set_trainable(backbone, cfg.trainable, cfg.trainable_stages, cfg.freeze_keywords)
    return Joiner(backbone, build_position_encoding(cfg))


# kept importable from here: the one home of backbones
__all__ = ["BACKBONES", "BackboneOptions", "FrozenBatchNorm2d", "Joiner", "ResNetBackbone", "SwinBackbone",
           "TimmBackbone", "build_backbone", "load_resnet_weights", "make_backbone", "set_trainable"]
