"""AdamW over the reference's parameter groups: the backbone module at ``lr_backbone``, the rest at ``lr``.

It lives in ``models`` because the groups need the model's structure (the backbone is found by its type).
"""
from __future__ import annotations

from argparse import Namespace
from typing import Any

import torch
from torch import nn

from models.clickpose.backbone import Joiner


def _matches(name: str, keywords) -> bool:
    return any(word in name for word in keywords)


def backbone_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters inside the model's backbone module(s): the ``Joiner`` (backbone + position encoding),
    found by type, so a parameter elsewhere whose name happens to contain 'backbone' is not one of them."""
    joiners = [m for m in model.modules() if isinstance(m, Joiner)]
    if not joiners:
        raise ValueError(f"{type(model).__name__} has no backbone (a models.clickpose.backbone.Joiner module); "
                         "the parameter groups need one to give it lr_backbone")
    return {id(p) for joiner in joiners for p in joiner.parameters()}


def param_groups(args: Namespace, model: nn.Module) -> list[dict[str, Any]]:
    """'default': every non-backbone parameter at ``lr``, the backbone module's at ``lr_backbone`` (the original's
    groups); 'ddetr_in_mmdet': ``lr_backbone_names`` / ``lr_linear_proj_names`` matched in parameter names, as the
    original does for that recipe."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    kind = args.param_dict_type
    if kind == "default":
        backbone = backbone_parameter_ids(model)
        return [{"params": [p for _, p in named if id(p) not in backbone]},
                {"params": [p for _, p in named if id(p) in backbone], "lr": args.lr_backbone}]
    if kind == "ddetr_in_mmdet":
        backbone, proj = args.lr_backbone_names, args.lr_linear_proj_names
        return [
            {"params": [p for n, p in named if not _matches(n, backbone) and not _matches(n, proj)], "lr": args.lr},
            {"params": [p for n, p in named if _matches(n, backbone)], "lr": args.lr_backbone},
            {"params": [p for n, p in named if _matches(n, proj)], "lr": args.lr * args.lr_linear_proj_mult},
        ]
    raise ValueError(f"param_dict_type must be 'default' or 'ddetr_in_mmdet', got {kind!r}")


def _fused_supported(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters: floating point, all on one CPU or CUDA device
    (False for none)."""
    devices = {p.device for p in params}
    return (len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
            and all(p.is_floating_point() for p in params))


def build_optimizer(args: Namespace, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`. The fused kernel where torch has one for the parameters' device: the same
    update as the per-tensor loop (equal up to rounding), in one pass over the parameters (timings in
    docs/benchmarks.md)."""
    groups = param_groups(args, model)
    fused = _fused_supported([p for group in groups for p in group["params"]])
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay, fused=fused or None)
