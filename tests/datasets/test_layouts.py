"""Keypoint layouts from the config: Human-Art's keypoints_21 field, custom K, custom sigmas, stray keys."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from datasets import build_dataset, build_evaluator, get_metadata
from datasets.metadata import COCO_KEYPOINTS, HUMANART21_KEYPOINTS


def _args(**kw) -> argparse.Namespace:
    values = dict(dataset_file="coco", num_body_points=17, noc_filter=False, data_aug_scales=[256],
                  data_aug_max_size=400, data_aug_scales2_resize=[256], data_aug_scales2_crop=[200, 256],
                  data_aug_scale_overlap=None, flip_exact=False, crop_marks_invisible=False)
    values.update(kw)
    return argparse.Namespace(**values)


def test_humanart_keypoints_21_field(sample_data):
    args = _args(dataset_file="humanart", coco_path=str(sample_data / "humanart"), keypoint_field="keypoints_21",
                 num_body_points=21)
    assert get_metadata(args) is HUMANART21_KEYPOINTS
    dataset = build_dataset("val", args, transforms=None)
    _, target = dataset.load_raw(0)
    assert target["keypoints"].shape[1:] == (21, 3)
    raw = json.loads(dataset.ann_file.read_text())
    ann = next(a for a in raw["annotations"] if a["image_id"] == dataset.ids[0])
    assert ann["num_keypoints_21"] != ann["num_keypoints"]  # the sample labels fingers or toes
    assert dataset.coco.imgToAnns[dataset.ids[0]][0]["keypoints"] == ann["keypoints_21"]
    assert dataset.coco.imgToAnns[dataset.ids[0]][0]["num_keypoints"] == ann["num_keypoints_21"]
    build_evaluator(dataset, args)  # the COCO evaluator scores the 21-keypoint ground truth


def test_unknown_field_layout_and_missing_field_are_errors(sample_data):
    with pytest.raises(ValueError, match="no keypoint layout for keypoint_field='keypoints_21'"):
        get_metadata(_args(keypoint_field="keypoints_21", num_body_points=21))
    args = _args(dataset_file="custom", coco_path=str(sample_data / "coco"), keypoint_field="keypoints_21",
                 num_body_points=21, custom_train_ann="annotations/person_keypoints_val2017.json",
                 custom_train_img="images/val2017", custom_val_ann="annotations/person_keypoints_val2017.json",
                 custom_val_img="images/val2017")
    from datasets import AnnotationFormatError
    with pytest.raises(AnnotationFormatError, match="missing field 'keypoints_21'"):
        build_dataset("val", args, transforms=None)


def _five_keypoint_file(sample_data, tmp_path):
    """The Human-Art sample cut to 5 of its keypoints_21 keypoints (a custom K=5 dataset)."""
    src = sample_data / "humanart" / "HumanArt" / "annotations" / "validation_humanart.json"
    data = json.loads(src.read_text())
    for ann in data["annotations"]:
        ann["keypoints"] = ann["keypoints_21"][:3 * 5]
        ann["num_keypoints"] = sum(1 for v in ann["keypoints"][2::3] if v > 0)
    path = tmp_path / "five.json"
    path.write_text(json.dumps(data))
    return path


def test_custom_five_keypoints(sample_data, tmp_path):
    ann = _five_keypoint_file(sample_data, tmp_path)
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
    args = _args(dataset_file="custom", coco_path=str(sample_data / "humanart"), num_body_points=5,
                 custom_keypoint_names=names, custom_flip_pairs=[[1, 2], [3, 4]], custom_sigmas=[0.05] * 5,
                 custom_train_ann=str(ann), custom_train_img=".", custom_val_ann=str(ann), custom_val_img=".")
    meta = get_metadata(args)
    assert meta.num_keypoints == 5 and meta.flip_permutation() == [0, 2, 1, 4, 3]
    image, target = build_dataset("train", args)[0]
    assert target["keypoints"].shape[-1] == 15  # model layout: [x1, y1, ..., x5, y5, v1..v5]


def test_custom_sigmas_replace_the_builtin_ones_without_names():
    args = _args(dataset_file="custom", custom_sigmas=[0.2] * 17)
    meta = get_metadata(args)
    assert meta.sigmas == (0.2,) * 17 and meta.keypoint_names == COCO_KEYPOINTS.keypoint_names
    assert meta.flip_pairs == COCO_KEYPOINTS.flip_pairs
    assert get_metadata(_args(dataset_file="custom")) is COCO_KEYPOINTS


def test_custom_keys_on_a_builtin_dataset_are_refused():
    with pytest.raises(ValueError, match="read only with dataset_file='custom'"):
        get_metadata(_args(custom_sigmas=[0.2] * 17))
