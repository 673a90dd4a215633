"""Optimiser parameter groups, learning-rate schedules and best-metric tracking (the reference's recipes)."""
from __future__ import annotations

from argparse import Namespace
from typing import Any

import torch
from torch import nn


def _matches(name: str, keywords) -> bool:
    return any(word in name for word in keywords)


def backbone_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters inside the model's backbone module(s): the ``Joiner`` (backbone + position encoding),
    found by type, so a parameter elsewhere whose name happens to contain 'backbone' is not one of them."""
    from models.clickpose.backbone import Joiner

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
    kind = getattr(args, "param_dict_type", "default")
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
    update as the per-tensor loop (equal up to rounding), in one pass over the parameters; the demo's step spends
    56 ms in AdamW with the default loop and 23 ms fused (docs/benchmarks.md)."""
    groups = param_groups(args, model)
    fused = _fused_supported([p for group in groups for p in group["params"]])
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay, fused=fused or None)


def build_lr_scheduler(args: Namespace, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Returns ``(scheduler, step_per_iteration)``: one-cycle steps per iteration, the others per epoch."""
    if args.onecyclelr:
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, steps_per_epoch=max(steps_per_epoch, 1),
                                                   epochs=args.epochs, pct_start=0.2), True
    if args.multi_step_lr:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(args.lr_drop_list)), False
    return torch.optim.lr_scheduler.StepLR(optimizer, args.lr_drop), False


class BestMetricHolder:
    """Best value (larger is better) and its epoch, overall and per kind ('regular', 'ema').

    ``summary()`` has the reference's log keys: ``best_res``/``best_ep`` without EMA; ``all_``, ``regular_`` and
    ``ema_`` prefixed ones with EMA. ``update`` returns True when this kind improved on its own best.
    """

    def __init__(self, use_ema: bool = False):
        self.use_ema = use_ema
        self.best = {kind: (0.0, -1) for kind in ("all", "regular", "ema")}

    def update(self, value: float, epoch: int, is_ema: bool = False) -> bool:
        kind = "ema" if is_ema else "regular"
        if value > self.best["all"][0]:
            self.best["all"] = (value, epoch)
        if value > self.best[kind][0]:
            self.best[kind] = (value, epoch)
            return True
        return False

    def summary(self) -> dict[str, float]:
        if not self.use_ema:
            value, epoch = self.best["all"]
            return {"best_res": value, "best_ep": epoch}
        out: dict[str, float] = {}
        for kind in ("all", "regular", "ema"):
            value, epoch = self.best[kind]
            out.update({f"{kind}_best_res": value, f"{kind}_best_ep": epoch})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"use_ema": self.use_ema, "best": dict(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = {k: tuple(v) for k, v in state["best"].items()}
