"""Models: ``build_model(args) -> (model, criterion, postprocessors)``."""
from __future__ import annotations

from typing import Any


def build_model(args: Any):
    """The Click-Pose model, its criterion and post-processors; model and criterion share one matcher."""
    if getattr(args, "modelname", "clickpose") != "clickpose":
        raise ValueError(f"unknown modelname {args.modelname!r}; this project provides 'clickpose'")
    from .clickpose.build import build_clickpose, build_postprocessors
    from .clickpose.criterion import build_criterion
    from .clickpose.matcher import build_matcher

    matcher = build_matcher(args)
    model = build_clickpose(args, matcher)
    criterion = build_criterion(args, matcher)
    return model, criterion, build_postprocessors(args)
