"""Models: ``build_model(args) -> (model, criterion, postprocessors)``."""
from __future__ import annotations

from typing import Any


def build_model(args: Any):
    """Click-Pose, its SetCriterion and the post-processors; the model's click simulator and the criterion share
    one Hungarian matcher (as in the reference)."""
    from .clickpose.build import build_clickpose, build_postprocessors
    from .clickpose.criterion import build_criterion
    from .clickpose.matcher import build_matcher

    matcher = build_matcher(args)
    return build_clickpose(args, matcher=matcher), build_criterion(args, matcher), build_postprocessors(args)
