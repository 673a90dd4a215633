"""Builders from the config namespace ``args`` and the keypoint layout ``metadata``."""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from util.config import ConfigError
from util.keypoint_metadata import KeypointMetadata

from .backbone import build_backbone
from .clickpose import ClickPose
from .feedback import build_click_simulator
from .postprocess import PostProcess
from .transformer import build_transformer


def check_layout(args: Any, metadata: KeypointMetadata) -> None:
    """``num_body_points`` must be the layout's keypoint count (the config sets the model's shapes)."""
    if not isinstance(metadata, KeypointMetadata):
        raise TypeError(f"metadata must be a KeypointMetadata (datasets.get_metadata(args)), got "
                        f"{type(metadata).__name__}")
    if int(args.num_body_points) != metadata.num_keypoints:
        raise ConfigError(f"the keypoint layout {metadata.name!r} has {metadata.num_keypoints} keypoints but "
                          f"num_body_points={args.num_body_points}; set num_body_points={metadata.num_keypoints}")


def check_feature_levels(num_feature_levels: int, backbone_channels: list[int], indices: Any) -> None:
    """The encoder's ``num_feature_levels`` must cover the backbone's levels (extra ones are strided convolutions on
    the last); fewer would leave backbone maps without a level embedding."""
    if num_feature_levels < len(backbone_channels):
        raise ConfigError(f"num_feature_levels={num_feature_levels} is fewer than the {len(backbone_channels)} "
                          f"backbone levels of return_interm_indices={list(indices)}; set num_feature_levels >= "
                          f"{len(backbone_channels)} (each level beyond the backbone's adds a stride-2 map; the "
                          f"reference: 4 over [1,2,3]) or return fewer levels")


def build_clickpose(args: Any, metadata: KeypointMetadata, matcher: Optional[nn.Module] = None) -> ClickPose:
    """The model for the keypoint layout ``metadata`` (its flip pairs and sigmas drive the pose error modeling).
    ``matcher`` drives the training click loop and the simulated clicks (the criterion's matcher can be shared;
    built from the config when None). The model keeps ``metadata`` as ``keypoint_metadata`` (saved with it)."""
    check_layout(args, metadata)
    expected_refine_layers = args.dec_layers - args.num_box_decoder_layers
    if getattr(args, "num_humanfeedback_layers", expected_refine_layers) != expected_refine_layers:
        raise ConfigError(f"num_humanfeedback_layers ({args.num_humanfeedback_layers}) must equal dec_layers - "
                          f"num_box_decoder_layers ({expected_refine_layers}): the refinement runs those layers")
    if matcher is None:
        from .matcher import build_matcher
        matcher = build_matcher(args, metadata.sigmas)
    backbone = build_backbone(args)  # before the transformer, as always: the random streams stay the same
    check_feature_levels(args.num_feature_levels, backbone.num_channels, args.return_interm_indices)
    model = ClickPose(
        backbone, build_transformer(args), num_classes=args.num_classes,
        num_feature_levels=args.num_feature_levels, num_body_points=args.num_body_points, num_group=args.num_group,
        num_group_refine=args.num_group_refine, dn_number=args.dn_number if args.use_dn else 0,
        dn_labelbook_size=args.dn_labelbook_size, dn_box_noise_scale=args.dn_box_noise_scale,
        dn_kpt_noise_scale=args.dn_kpt_noise_scale, dn_box_label_noise_ratio=args.dn_box_label_noise_ratio,
        dn_kpt_label_noise_ratio=args.dn_kpt_label_noise_ratio, human_feedback=args.human_feedback,
        click_freeze=getattr(args, "click_freeze", "none"), only_correction=args.only_correction,
        pem_error_types=getattr(args, "pem_error_types", ()), pem_error_prob=getattr(args, "pem_error_prob", 0.0),
        flip_pairs=metadata.flip_pairs, keypoint_sigmas=metadata.sigmas,
        click_simulator=build_click_simulator(args, matcher))
    model.keypoint_metadata = metadata
    return model


def build_postprocessors(args: Any) -> dict[str, PostProcess]:
    """{'pose': PostProcess, 'bbox': the same object}: it returns boxes AND keypoints; 'bbox' is the reference's key,
    kept for compatibility."""
    pose = PostProcess(num_select=args.num_select, nms_iou_threshold=args.nms_iou_threshold,
                       num_body_points=args.num_body_points)
    return {"bbox": pose, "pose": pose}
