"""Builders from the model settings (``util.settings``; flat config keys are converted once) and the keypoint
layout ``metadata``."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from torch import nn

from util.config import ConfigError
from util.keypoint_metadata import KeypointMetadata, check_keypoint_count
from util.settings import ModelSettings, as_model_settings

from .backbone import build_backbone
from .clickpose import ClickPose
from .feedback import build_click_simulator
from .postprocess import PostProcess
from .transformer import build_transformer


def check_feature_levels(num_feature_levels: int, backbone_channels: list[int], indices: Sequence[int]) -> None:
    """The encoder's ``num_feature_levels`` must cover the backbone's levels (extra ones are strided convolutions on
    the last); fewer would leave backbone maps without a level embedding."""
    if num_feature_levels < len(backbone_channels):
        raise ConfigError(f"num_feature_levels={num_feature_levels} is fewer than the {len(backbone_channels)} "
                          f"backbone levels of return_interm_indices={list(indices)}; set num_feature_levels >= "
                          f"{len(backbone_channels)} (each level beyond the backbone's adds a stride-2 map; the "
                          f"reference: 4 over [1,2,3]) or return fewer levels")


def build_clickpose(settings: Union[ModelSettings, Any], metadata: KeypointMetadata,
                    matcher: Optional[nn.Module] = None) -> ClickPose:
    """The model for the keypoint layout ``metadata`` (its flip pairs and sigmas drive the pose error modeling).
    ``settings``: a ``ModelSettings``, or flat config keys (converted by ``util.settings.model_settings``).
    ``matcher`` drives the training click loop and the simulated clicks (the criterion's matcher can be shared;
    built from the settings when None). The model keeps ``metadata`` as ``keypoint_metadata`` (saved with it)."""
    settings = as_model_settings(settings)
    check_keypoint_count(settings.num_keypoints, metadata)
    if matcher is None:
        from .matcher import build_matcher
        matcher = build_matcher(settings.matcher, metadata.sigmas)
    backbone = build_backbone(settings.backbone)  # before the transformer, as always: the random streams stay the same
    check_feature_levels(settings.transformer.num_feature_levels, backbone.num_channels,
                         settings.backbone.return_interm_indices)
    return ClickPose(backbone, build_transformer(settings.transformer), settings.denoising, settings.feedback,
                     metadata, click_simulator=build_click_simulator(settings.feedback, matcher))


def build_postprocessors(settings: Union[ModelSettings, Any]) -> dict[str, PostProcess]:
    """{'pose': PostProcess, 'bbox': the same object}: it returns boxes AND keypoints; 'bbox' is the reference's key,
    kept for compatibility. ``settings``: a ``ModelSettings`` or flat config keys."""
    cfg = as_model_settings(settings).postprocess
    pose = PostProcess(num_select=cfg.num_select, nms_iou_threshold=cfg.nms_iou_threshold,
                       num_keypoints=cfg.num_keypoints)
    return {"bbox": pose, "pose": pose}
