"""Datasets, transforms and evaluators.

Entry points: ``build_dataset(image_set, args)``, ``get_metadata(args)``, ``build_evaluator(dataset, args,
output_dir)``. ``args`` carries the config keys (``dataset_file``, ``coco_path``, ``num_body_points``,
``noc_filter``, ``data_aug_*``, ``flip_exact``, ``crop_marks_invisible``, ``custom_*``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from datasets.coco import (AnnotationFormatError, CocoKeypointDataset, DATASET_SPECS, DatasetLayoutError,
                           DatasetSpec, UnreadableImageError, resolve_split, spec_from_args)
from datasets.evaluation import KeypointEvaluator, evaluate_results_file
from datasets.metadata import KEYPOINT_METADATA, KeypointMetadata, build_custom_metadata, \
    default_metadata_for_num_keypoints
from datasets.transforms import build_transforms_from_args

__all__ = ["build_dataset", "get_metadata", "build_evaluator", "get_evaluator", "CocoKeypointDataset",
           "KeypointEvaluator", "evaluate_results_file", "DatasetLayoutError", "AnnotationFormatError",
           "UnreadableImageError", "DATASET_SPECS", "DatasetSpec", "KeypointMetadata"]


def get_metadata(args) -> KeypointMetadata:
    """Keypoint layout of ``args.dataset_file`` (custom: from ``custom_keypoint_names`` / ``custom_flip_pairs`` /
    ``custom_sigmas`` / ``custom_skeleton``, or the built-in layout with ``num_body_points`` keypoints)."""
    name = getattr(args, "dataset_file", "coco")
    if name != "custom":
        spec = spec_from_args(args)
        return KEYPOINT_METADATA[spec.metadata_key]
    names = getattr(args, "custom_keypoint_names", None)
    if not names:
        return default_metadata_for_num_keypoints(int(args.num_body_points))
    return build_custom_metadata(names, getattr(args, "custom_flip_pairs", None) or (),
                                 getattr(args, "custom_sigmas", None), getattr(args, "custom_skeleton", None) or ())


def check_num_body_points(args, metadata: KeypointMetadata) -> None:
    configured = getattr(args, "num_body_points", None)
    if configured is not None and int(configured) != metadata.num_keypoints:
        raise ValueError(
            f"dataset_file={getattr(args, 'dataset_file', 'coco')!r} has {metadata.num_keypoints} keypoints but "
            f"num_body_points={configured}; set num_body_points={metadata.num_keypoints} "
            f"(e.g. --options num_body_points={metadata.num_keypoints})")


def build_dataset(image_set: str, args, *, skip_unreadable: Optional[bool] = None,
                  transforms="default") -> CocoKeypointDataset:
    """The ``image_set`` ('train' | 'val') split of ``args.dataset_file`` under ``args.coco_path``.

    Train keeps images with at least one annotation and a positive keypoint count; val keeps every image, or
    applies the train filter when ``args.noc_filter`` (the reference's CLICKPOSE_NoC_Test=TRUE).
    Unreadable images are skipped (with a warning) in training and raise in evaluation unless ``skip_unreadable``
    says otherwise. ``transforms=None`` returns untransformed PIL images and pixel-space targets.
    """
    if image_set not in ("train", "val", "test"):
        raise ValueError(f"unknown image_set {image_set!r}: expected 'train' or 'val'")
    metadata = get_metadata(args)
    check_num_body_points(args, metadata)
    spec = spec_from_args(args)
    root = getattr(args, "coco_path", None)
    if not root:
        raise DatasetLayoutError(f"no dataset root given: set --coco_path (or the dataset's environment variable).\n"
                                 f"Expected layout of '{spec.name}':\n{spec.describe_layout()}")
    ann_file, img_folder = resolve_split(Path(root), spec, image_set)
    if transforms == "default":
        transforms = build_transforms_from_args(image_set, args, metadata.flip_permutation())
    training = image_set == "train"
    return CocoKeypointDataset(
        ann_file, img_folder, metadata, transforms=transforms, image_set=image_set,
        filter_images=training or bool(getattr(args, "noc_filter", False)),
        skip_unreadable=training if skip_unreadable is None else skip_unreadable, spec=spec,
        check_image_size=not getattr(args, "trust_image_sizes", False))


def build_evaluator(dataset: CocoKeypointDataset, args=None, output_dir: Optional[Union[str, Path]] = None,
                    **kwargs) -> KeypointEvaluator:
    """Evaluator for ``dataset``'s ground truth with its metadata's OKS sigmas and its dataset's scorer."""
    backend = dataset.spec.evaluator if dataset.spec is not None else "coco"
    gt = dataset.coco if backend == "coco" else dataset.ann_file
    return KeypointEvaluator(gt, backend=backend, sigmas=dataset.metadata.sigmas, output_dir=output_dir, **kwargs)


get_evaluator = build_evaluator
