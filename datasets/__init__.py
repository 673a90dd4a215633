"""Datasets, transforms and evaluators.

Entry points: ``build_dataset(image_set, args)``, ``get_metadata(args)``, ``build_evaluator(dataset, args,
output_dir)``. ``args`` is a ``util.settings.DataCfg`` or the flat config keys it is built from
(``util.settings.data_settings``: ``dataset_file``, ``coco_path``, ``num_body_points``, ``noc_filter``,
``data_aug_*``, ``flip_exact``, ``crop_marks_invisible``, ``keypoint_field``, ``custom_*``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from datasets.coco import (AnnotationFormatError, CocoKeypointDataset, DATASET_SPECS, DatasetLayoutError,
                           DatasetSpec, UnreadableImageError, resolve_split, spec_from_args)
from datasets.evaluation import GroundTruth, KeypointEvaluator, evaluate_results_file
from datasets.metadata import FIELD_LAYOUTS, KEYPOINT_METADATA, KeypointMetadata, build_custom_metadata, \
    default_metadata_for_num_keypoints
from datasets.transforms import build_transforms_from_args
from util.keypoint_metadata import check_keypoint_count
from util.settings import DataCfg, as_data_settings, data_settings  # noqa: F401  (DataCfg, data_settings: re-exported)

__all__ = ["build_dataset", "get_metadata", "build_evaluator", "get_evaluator", "CocoKeypointDataset",
           "KeypointEvaluator", "evaluate_results_file", "DatasetLayoutError", "AnnotationFormatError",
           "UnreadableImageError", "DATASET_SPECS", "DatasetSpec", "KeypointMetadata"]


def keypoint_field(args) -> str:
    """The annotation field holding the keypoints (config ``keypoint_field``; Human-Art 21: 'keypoints_21')."""
    return as_data_settings(args).keypoint_field


def get_metadata(args) -> KeypointMetadata:
    """The keypoint layout of the run, resolved once and passed to the model, the evaluators and the Predictor.

    ``args``: a ``util.settings.DataCfg`` or the flat config keys. Built-in datasets: their layout, or the one of
    ``keypoint_field`` (humanart + 'keypoints_21': Human-Art's 21). ``dataset_file='custom'``:
    ``custom_keypoint_names`` / ``custom_flip_pairs`` / ``custom_sigmas`` / ``custom_skeleton``; without names, the
    built-in layout with ``num_body_points`` keypoints (17, 14 or 21) with any of the other three replacing its own.
    """
    cfg = as_data_settings(args)
    name, field, custom = cfg.dataset_file, cfg.keypoint_field, cfg.custom
    if name != "custom":
        stray = custom.stray_keys()
        if stray:
            raise ValueError(f"{stray} are read only with dataset_file='custom' (got dataset_file={name!r}); "
                             "remove them or use --dataset_file custom")
        spec = spec_from_args(cfg)
        if field == "keypoints":
            return KEYPOINT_METADATA[spec.metadata_key]
        if (spec.metadata_key, field) not in FIELD_LAYOUTS:
            known = [f"{d}: {f}" for d, f in FIELD_LAYOUTS]
            raise ValueError(f"dataset_file={name!r} has no keypoint layout for keypoint_field={field!r} "
                             f"(known: {known}); use dataset_file='custom' with custom_keypoint_names for others")
        return FIELD_LAYOUTS[(spec.metadata_key, field)]
    names, flips, sigmas, skeleton = custom.keypoint_names, custom.flip_pairs, custom.sigmas, custom.skeleton
    if not names:
        base = default_metadata_for_num_keypoints(cfg.num_keypoints if cfg.num_keypoints is not None else 17)
        if flips is None and sigmas is None and skeleton is None:
            return base
        names = base.keypoint_names
        flips = base.flip_pairs if flips is None else flips
        sigmas = base.sigmas if sigmas is None else sigmas
        skeleton = base.skeleton if skeleton is None else skeleton
    return build_custom_metadata(list(names), [list(p) for p in flips or ()], None if sigmas is None else list(sigmas),
                                 [list(p) for p in skeleton or ()])


def check_num_body_points(args, metadata: KeypointMetadata) -> None:
    """A configured ``num_body_points`` must be the dataset's keypoint count (none configured: nothing to check)."""
    cfg = as_data_settings(args)
    if cfg.num_keypoints is not None:
        check_keypoint_count(cfg.num_keypoints, metadata, what=f"dataset_file={cfg.dataset_file!r} with the layout")


def build_dataset(image_set: str, args, *, skip_unreadable: Optional[bool] = None,
                  transforms="default") -> CocoKeypointDataset:
    """The ``image_set`` ('train' | 'val') split of the dataset under its root (``args``: a ``DataCfg`` or the
    flat config keys: ``dataset_file``, ``coco_path`` / ``data_root``, ...).

    Train keeps images with at least one annotation and a positive keypoint count; val keeps every image, or
    applies the train filter when ``noc_filter`` (the reference's CLICKPOSE_NoC_Test=TRUE).
    Unreadable images are skipped (with a warning) in training and raise in evaluation unless ``skip_unreadable``
    says otherwise. ``transforms=None`` returns untransformed PIL images and pixel-space targets.
    """
    if image_set not in ("train", "val", "test"):
        raise ValueError(f"unknown image_set {image_set!r}: expected 'train' or 'val'")
    cfg = as_data_settings(args)
    metadata = get_metadata(cfg)
    check_num_body_points(cfg, metadata)
    spec = spec_from_args(cfg)
    if not cfg.root:
        raise DatasetLayoutError(f"no dataset root given: set --coco_path (or the dataset's environment variable).\n"
                                 f"Expected layout of '{spec.name}':\n{spec.describe_layout()}")
    ann_file, img_folder = resolve_split(Path(cfg.root), spec, image_set)
    if transforms == "default":
        transforms = build_transforms_from_args(image_set, cfg, metadata.flip_permutation())
    training = image_set == "train"
    return CocoKeypointDataset(
        ann_file, img_folder, metadata, transforms=transforms, image_set=image_set, keypoint_field=cfg.keypoint_field,
        filter_images=training or cfg.noc_filter,
        skip_unreadable=training if skip_unreadable is None else skip_unreadable, spec=spec,
        check_image_size=not cfg.trust_image_sizes)


def build_evaluator(dataset: CocoKeypointDataset, args=None, output_dir: Optional[Union[str, Path]] = None,
                    *, ground_truth: Optional[GroundTruth] = None, **kwargs) -> KeypointEvaluator:
    """Evaluator for ``dataset``'s ground truth with its metadata's OKS sigmas and its dataset's scorer.

    ``ground_truth``: one already loaded for ``dataset`` (another evaluator's ``.ground_truth``), shared instead of
    read again; ``kwargs`` go to ``KeypointEvaluator`` (``iou_types``, ``log``).
    """
    if ground_truth is None:
        backend = dataset.spec.evaluator if dataset.spec is not None else "coco"
        if backend != "coco" and dataset.keypoint_field != "keypoints":
            raise ValueError(f"the {backend!r} evaluator reads the annotation file's 'keypoints' field; "
                             f"keypoint_field={dataset.keypoint_field!r} works with custom_evaluator='coco' only")
        gt = dataset.coco if backend == "coco" else dataset.ann_file
        ground_truth = GroundTruth.load(gt, backend, dataset.metadata.sigmas)
    return KeypointEvaluator(ground_truth, output_dir=output_dir, **kwargs)


get_evaluator = build_evaluator
