"""Models: ``build_model(args, metadata) -> (model, criterion, postprocessors)``."""
from __future__ import annotations

from typing import Any

from util.keypoint_metadata import KeypointMetadata


def build_model(args: Any, metadata: KeypointMetadata):
    """The Click-Pose model, its criterion and post-processors for the keypoint layout ``metadata``
    (``datasets.get_metadata(args)``, or a checkpoint's recorded layout); model and criterion share one matcher,
    so matching, losses and the pose error modeling use the layout's sigmas and flip pairs.

    Config keys this implementation does not support are refused here (``util.config_support``).
    """
    if getattr(args, "modelname", "clickpose") != "clickpose":
        raise ValueError(f"unknown modelname {args.modelname!r}; this project provides 'clickpose'")
    from util.config_support import refuse_unsupported_keys

    from .clickpose.build import build_clickpose, build_postprocessors, check_layout
    from .clickpose.criterion import build_criterion
    from .clickpose.matcher import build_matcher

    refuse_unsupported_keys(args)
    check_layout(args, metadata)
    matcher = build_matcher(args, metadata.sigmas)
    model = build_clickpose(args, metadata, matcher)
    criterion = build_criterion(args, matcher)
    return model, criterion, build_postprocessors(args)
