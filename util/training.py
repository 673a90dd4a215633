"""Learning-rate schedules (the reference's recipes). The optimiser's parameter groups need the model's structure:
``models.optim``; the best metric so far: ``util.run_folder.BestMetricHolder`` (re-exported here)."""
from __future__ import annotations

from argparse import Namespace

import torch

from util.run_folder import BestMetricHolder  # noqa: F401  (re-exported)


def build_lr_scheduler(args: Namespace, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Returns ``(scheduler, step_per_iteration)``: one-cycle steps per iteration, the others per epoch."""
    if args.onecyclelr:
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, steps_per_epoch=max(steps_per_epoch, 1),
                                                   epochs=args.epochs, pct_start=0.2), True
    if args.multi_step_lr:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(args.lr_drop_list)), False
    return torch.optim.lr_scheduler.StepLR(optimizer, args.lr_drop), False
