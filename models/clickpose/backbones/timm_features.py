"""Any timm feature backbone by name (``backbone = 'timm:NAME'``): channels and strides come from timm.

Levels are chosen by stride: ``return_interm_indices`` 0..3 mean strides 4, 8, 16, 32, as for the ResNets.
timm is always asked for ``pretrained=False`` (nothing downloads); weights come from ``backbone_weights``.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from util.config import ConfigError
from util.misc import NestedTensor

from .common import convert_batch_norm, with_masks
from .weights import load_fitting, read_state_dict

LEVEL_STRIDES = (4, 8, 16, 32)
WEIGHTS_HINT = ("expected a state dict of the timm model (e.g. timm.create_model(NAME, pretrained=True).state_dict() "
                "saved with torch.save); the classifier may be included or not")


def _feature_key(key: str, own: set[str]) -> Optional[str]:
    """A full-model key in the features-only model: timm flattens the first sequential level ('stages.0' ->
    'stages_0')."""
    if key in own:
        return key
    flattened = key.replace(".", "_", 1)
    return flattened if flattened in own else None


class TimmBackbone(nn.Module):
    """``timm.create_model(name, features_only=True)`` as a multi-scale backbone (state-dict keys ``body.*``)."""

    default_trainable = None  # every parameter trains

    def __init__(self, name: str, return_interm_indices: Sequence[int], dilation: bool = False,
                 weights_path: Optional[str] = None, batch_norm: str = "FrozenBatchNorm2d",
                 use_checkpoint: bool = False):
        super().__init__()
        import timm

        if dilation:
            raise ConfigError(f"dilation=True is not supported for the timm backbone {name!r} (only ResNets and Swins "
                              "have the original's dilated last stage); set dilation=False")
        if use_checkpoint:
            raise ConfigError(f"use_checkpoint=True is not supported for the timm backbone {name!r}; it is "
                              "implemented for the ResNets and Swins; set use_checkpoint=False")
        if name not in timm.list_models():
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            similar = f" (similar: {', '.join(close)})" if close else ""
            raise ConfigError(f"backbone='timm:{name}': timm has no model {name!r}{similar}; set backbone='timm:NAME' "
                              "with a NAME from timm.list_models()")
        probe = timm.create_model(name, pretrained=False, features_only=True)
        strides = list(probe.feature_info.reduction())
        wanted = [LEVEL_STRIDES[int(i)] for i in return_interm_indices]
        if any(stride not in strides for stride in wanted):
            raise ConfigError(f"timm model {name!r} has feature strides {strides}; return_interm_indices "
                              f"{list(return_interm_indices)} asks for strides {wanted} (index i = stride 4 * 2**i)")
        out_indices = [strides.index(stride) for stride in wanted]
        body = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
        if weights_path is not None:
            self._load_weights(body, weights_path)
        self.body = convert_batch_norm(body, batch_norm)
        self.names = [str(int(i)) for i in return_interm_indices]
        self.num_channels = list(self.body.feature_info.channels())

    @staticmethod
    def _load_weights(body: nn.Module, path: str) -> None:
        own = set(body.state_dict())
        state = {}
        for key, value in read_state_dict(path, WEIGHTS_HINT).items():
            mapped = _feature_key(key, own)
            if mapped is not None:
                state[mapped] = value
        load_fitting(body, state, path, WEIGHTS_HINT)

    def forward(self, samples: NestedTensor) -> dict[str, NestedTensor]:
        features: list[Tensor] = self.body(samples.tensors)
        return with_masks(zip(self.names, features), samples.mask)
