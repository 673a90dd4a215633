"""Models: ``build_model(args, metadata) -> (model, criterion, postprocessors)``."""
from __future__ import annotations

from typing import Any

from util.keypoint_metadata import KeypointMetadata


def build_model(args: Any, metadata: KeypointMetadata):
    """The Click-Pose model, its criterion and post-processors for the keypoint layout ``metadata``
    (``datasets.get_metadata(args)``, or a checkpoint's recorded layout); model and criterion share one matcher,
    so matching, losses and the pose error modeling use the layout's sigmas and flip pairs.

    ``args``: the flat config keys (a namespace or mapping; keys it lacks take ``config/clickpose.cfg.py``'s
    values), converted once by ``util.settings.model_settings``, which also refuses the config keys this
    implementation does not support (``util.config_support``).
    """
    from util.keypoint_metadata import check_keypoint_count
    from util.settings import model_settings

    from .clickpose.build import build_clickpose, build_postprocessors
    from .clickpose.criterion import build_criterion
    from .clickpose.matcher import build_matcher

    settings = model_settings(args)
    if settings.modelname != "clickpose":
        raise ValueError(f"unknown modelname {settings.modelname!r}; this project provides 'clickpose'")
    check_keypoint_count(settings.num_keypoints, metadata)  # before the matcher reads the layout's sigmas
    matcher = build_matcher(settings.matcher, metadata.sigmas)
    model = build_clickpose(settings, metadata, matcher)
    criterion = build_criterion(settings.loss, matcher)
    return model, criterion, build_postprocessors(settings)
