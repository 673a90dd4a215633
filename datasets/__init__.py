"""Datasets, transforms and evaluators.

Entry points: ``build_dataset(image_set, args)``, ``get_metadata(args)``, ``build_evaluator(dataset, args,
output_dir)``. ``args`` carries the config keys (``dataset_file``, ``coco_path``, ``num_body_points``,
``noc_filter``, ``data_aug_*``, ``flip_exact``, ``crop_marks_invisible``, ``keypoint_field``, ``custom_*``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from datasets.coco import (AnnotationFormatError, CocoKeypointDataset, DATASET_SPECS, DatasetLayoutError,
                           DatasetSpec, UnreadableImageError, resolve_split, spec_from_args)
from datasets.evaluation import KeypointEvaluator, evaluate_results_file
from datasets.metadata import FIELD_LAYOUTS, KEYPOINT_METADATA, KeypointMetadata, build_custom_metadata, \
    default_metadata_for_num_keypoints
from datasets.transforms import build_transforms_from_args

__all__ = ["build_dataset", "get_metadata", "build_evaluator", "get_evaluator", "CocoKeypointDataset",
           "KeypointEvaluator", "evaluate_results_file", "DatasetLayoutError", "AnnotationFormatError",
           "UnreadableImageError", "DATASET_SPECS", "DatasetSpec", "KeypointMetadata"]


# config keys read only with dataset_file='custom', and their defaults
CUSTOM_KEY_DEFAULTS = {"custom_evaluator": "coco", "custom_flip_pairs": None, "custom_keypoint_names": None,
                       "custom_sigmas": None, "custom_skeleton": None, "custom_train_ann": None,
                       "custom_train_img": None, "custom_val_ann": None, "custom_val_img": None}


def keypoint_field(args) -> str:
    """The annotation field holding the keypoints (config ``keypoint_field``; Human-Art 21: 'keypoints_21')."""
    return getattr(args, "keypoint_field", None) or "keypoints"


def get_metadata(args) -> KeypointMetadata:
    """The keypoint layout of the run, resolved once and passed to the model, the evaluators and the Predictor.

    Built-in datasets: their layout, or the one of ``keypoint_field`` (humanart + 'keypoints_21': Human-Art's 21).
    ``dataset_file='custom'``: ``custom_keypoint_names`` / ``custom_flip_pairs`` / ``custom_sigmas`` /
    ``custom_skeleton``; without names, the built-in layout with ``num_body_points`` keypoints (17, 14 or 21) with
    any of the other three replacing its own.
    """
    name = getattr(args, "dataset_file", "coco")
    field = keypoint_field(args)
    if name != "custom":
        stray = [k for k, default in CUSTOM_KEY_DEFAULTS.items() if getattr(args, k, default) != default]
        if stray:
            raise ValueError(f"{stray} are read only with dataset_file='custom' (got dataset_file={name!r}); "
                             "remove them or use --dataset_file custom")
        spec = spec_from_args(args)
        if field == "keypoints":
            return KEYPOINT_METADATA[spec.metadata_key]
        if (spec.metadata_key, field) not in FIELD_LAYOUTS:
            known = [f"{d}: {f}" for d, f in FIELD_LAYOUTS]
            raise ValueError(f"dataset_file={name!r} has no keypoint layout for keypoint_field={field!r} "
                             f"(known: {known}); use dataset_file='custom' with custom_keypoint_names for others")
        return FIELD_LAYOUTS[(spec.metadata_key, field)]
    names = getattr(args, "custom_keypoint_names", None)
    flips, sigmas, skeleton = (getattr(args, k, None) for k in ("custom_flip_pairs", "custom_sigmas",
                                                                   "custom_skeleton"))
    if not names:
        base = default_metadata_for_num_keypoints(int(args.num_body_points))
        if flips is None and sigmas is None and skeleton is None:
            return base
        names = base.keypoint_names
        flips = base.flip_pairs if flips is None else flips
        sigmas = base.sigmas if sigmas is None else sigmas
        skeleton = base.skeleton if skeleton is None else skeleton
    return build_custom_metadata(names, flips or (), sigmas, skeleton or ())


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
        ann_file, img_folder, metadata, transforms=transforms, image_set=image_set, keypoint_field=keypoint_field(args),
        filter_images=training or bool(getattr(args, "noc_filter", False)),
        skip_unreadable=training if skip_unreadable is None else skip_unreadable, spec=spec,
        check_image_size=not getattr(args, "trust_image_sizes", False))


def build_evaluator(dataset: CocoKeypointDataset, args=None, output_dir: Optional[Union[str, Path]] = None,
                    **kwargs) -> KeypointEvaluator:
    """Evaluator for ``dataset``'s ground truth with its metadata's OKS sigmas and its dataset's scorer."""
    backend = dataset.spec.evaluator if dataset.spec is not None else "coco"
    if backend != "coco" and dataset.keypoint_field != "keypoints":
        raise ValueError(f"the {backend!r} evaluator reads the annotation file's 'keypoints' field; "
                         f"keypoint_field={dataset.keypoint_field!r} works with custom_evaluator='coco' only")
    gt = dataset.coco if backend == "coco" else dataset.ann_file
    return KeypointEvaluator(gt, backend=backend, sigmas=dataset.metadata.sigmas, output_dir=output_dir, **kwargs)


get_evaluator = build_evaluator
