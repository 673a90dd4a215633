"""Exponential moving average of a model's weights: ``e <- d * e + (1 - d) * m`` after every optimiser step.

The reference applies the update once per ``state_dict()`` key. Shared (aliased) head modules appear under several
keys, so their tensors get the update several times per step (effective decay ``d ** n`` for a tensor with ``n``
keys: class/box/pose heads 2, ``pose_hw_embed`` 8). That is the default here, for parity; ``unique_params=True``
updates every distinct tensor exactly once.
"""
from __future__ import annotations

from copy import deepcopy
from typing import Optional

import torch
from torch import Tensor, nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel / DataParallel wrapper (or the model itself)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def _storage_key(tensor: Tensor) -> tuple:
    """Identifies the memory a tensor views: aliased state-dict entries share it."""
    return tensor.device, tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype


class ModelEma(nn.Module):
    """EMA copy of ``model`` in ``self.module`` (its state dict keys are ``module.<model key>``, as the reference's).

    ``update(model)`` after each optimiser step; ``set(model)`` copies the weights. ``device`` keeps the copy
    elsewhere (e.g. CPU) if given.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9997, unique_params: bool = False,
                 device: Optional[torch.device | str] = None):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay} (ema_decay in the config)")
        self.module = deepcopy(unwrap_model(model))
        self.module.eval()
        self.module.requires_grad_(False)
        if device is not None:
            self.module.to(device=device)
        self.decay = decay
        self.device = device
        self.unique_params = unique_params
        self._groups = self._update_groups()

    def _update_groups(self) -> list[list[str]]:
        """Keys to update in pass 1, 2, ...: one key per distinct tensor, and in pass p only tensors with >= p keys
        (unique_params: a single pass)."""
        keys_of: dict[tuple, list[str]] = {}
        for key, value in self.module.state_dict(keep_vars=True).items():
            keys_of.setdefault(_storage_key(value), []).append(key)
        passes = 1 if self.unique_params else max((len(keys) for keys in keys_of.values()), default=1)
        return [[keys[0] for keys in keys_of.values() if len(keys) > p] for p in range(passes)]

    @torch.no_grad()
    def _blend_from(self, model: nn.Module, blend: bool) -> None:
        ema_state = self.module.state_dict()
        model_state = unwrap_model(model).state_dict()
        missing = [k for k in ema_state if k not in model_state]
        if missing:
            raise ValueError(f"ModelEma: the model lacks {len(missing)} state-dict keys of the EMA copy "
                             f"(e.g. {missing[:3]}); update the EMA with the model it was created from")
        for keys in self._groups if blend else self._groups[:1]:
            floats = [k for k in keys if ema_state[k].is_floating_point()]
            others = [k for k in keys if not ema_state[k].is_floating_point()]
            ema = [ema_state[k] for k in floats]
            new = [model_state[k].to(device=ema_state[k].device) for k in floats]
            if blend and ema:
                # same arithmetic as d * e + (1 - d) * m per tensor, batched into a few multi-tensor kernels
                scaled_ema = torch._foreach_mul(ema, self.decay)
                scaled_new = torch._foreach_mul(new, 1.0 - self.decay)
                torch._foreach_add_(scaled_ema, scaled_new)
                torch._foreach_copy_(ema, scaled_ema)
            elif ema:
                torch._foreach_copy_(ema, new)
            for k in others:  # integer/bool buffers (counters, flags) are copied, not averaged
                ema_state[k].copy_(model_state[k])

    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model`` (DDP-wrapped or bare)."""
        self._blend_from(model, blend=True)

    def set(self, model: nn.Module) -> None:
        """Copy ``model``'s weights into the EMA."""
        self._blend_from(model, blend=False)
