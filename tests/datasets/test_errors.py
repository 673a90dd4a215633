"""Bad input gets an error that names the problem and shows the fix."""
from __future__ import annotations

import json
import logging
import shutil

import pytest

from datasets import (AnnotationFormatError, DatasetLayoutError, UnreadableImageError, build_dataset,
                      get_metadata)


def test_missing_root_shows_layout(tmp_path, make_args):
    with pytest.raises(DatasetLayoutError, match="not a directory") as info:
        build_dataset("val", make_args("crowdpose", tmp_path / "nowhere"))
    assert "json/crowdpose_test.json" in str(info.value) and "images" in str(info.value)


def test_no_root_given(make_args):
    with pytest.raises(DatasetLayoutError, match="--coco_path"):
        build_dataset("val", make_args("coco", ""))


def test_missing_annotation_file(tmp_path, make_args):
    with pytest.raises(DatasetLayoutError, match="annotation file not found") as info:
        build_dataset("train", make_args("humanart", tmp_path))
    assert "HumanArt/annotations/training_humanart.json" in str(info.value)


def test_missing_image_folder(tmp_path, synthetic_root, make_args):
    root = tmp_path / "coco"
    shutil.copytree(synthetic_root / "annotations", root / "annotations")
    with pytest.raises(DatasetLayoutError, match="image folder not found") as info:
        build_dataset("val", make_args("coco", root))
    assert "images/val2017" in str(info.value) and "val2017" in str(info.value)


def _root_with_val_json(tmp_path, synthetic_root, text: str):
    root = tmp_path / "coco"
    shutil.copytree(synthetic_root, root)
    (root / "annotations" / "person_keypoints_val2017.json").write_text(text)
    return root


def test_malformed_json_names_file(tmp_path, synthetic_root, make_args):
    root = _root_with_val_json(tmp_path, synthetic_root, '{"images": [')
    with pytest.raises(AnnotationFormatError, match="person_keypoints_val2017.json: not valid JSON"):
        build_dataset("val", make_args("coco", root))


def test_missing_field_names_file_and_field(tmp_path, synthetic_root, make_args):
    data = json.loads((synthetic_root / "annotations" / "person_keypoints_val2017.json").read_text())
    del data["annotations"][0]["bbox"]
    root = _root_with_val_json(tmp_path, synthetic_root, json.dumps(data))
    with pytest.raises(AnnotationFormatError, match=r"val2017.json: annotations\[0\].*missing field 'bbox'"):
        build_dataset("val", make_args("coco", root))


def test_wrong_keypoint_count_is_explained(sample_data, make_args):
    # CrowdPose files read as a 17-keypoint custom dataset
    args = make_args("custom", sample_data / "crowdpose", num_body_points=17,
                     custom_train_ann="json/crowdpose_train.json", custom_train_img="images",
                     custom_val_ann="json/crowdpose_test.json", custom_val_img="images")
    with pytest.raises(AnnotationFormatError, match="has 42 values, expected 51"):
        build_dataset("val", args)


def test_num_body_points_mismatch(sample_data, make_args):
    with pytest.raises(ValueError, match="num_body_points=14"):
        build_dataset("val", make_args("crowdpose", sample_data / "crowdpose", num_body_points=17))


def test_unknown_dataset_and_missing_custom_keys(tmp_path, make_args):
    with pytest.raises(ValueError, match="not supported"):
        build_dataset("val", make_args("mpii", tmp_path))
    with pytest.raises(ValueError, match="custom_val_ann"):
        build_dataset("val", make_args("custom", tmp_path, custom_train_ann="a", custom_train_img="b"))


def test_custom_dataset_with_own_layout(sample_data, make_args):
    args = make_args("custom", sample_data / "crowdpose", num_body_points=14,
                     custom_train_ann="json/crowdpose_train.json", custom_train_img="images",
                     custom_val_ann="json/crowdpose_test.json", custom_val_img="images",
                     custom_keypoint_names=[f"k{i}" for i in range(14)], custom_flip_pairs=[[0, 1]],
                     custom_sigmas=[0.07] * 14)
    assert get_metadata(args).flip_permutation()[:3] == [1, 0, 2]
    image, target = build_dataset("train", args)[0]
    assert target["keypoints"].shape[1] == 42
    with pytest.raises(ValueError, match="custom_sigmas needs 14"):
        get_metadata(make_args("custom", "x", custom_keypoint_names=[f"k{i}" for i in range(14)],
                               custom_sigmas=[0.1]))


def test_unreadable_image_skipped_in_training_fatal_in_evaluation(tmp_path, synthetic_root, make_args, caplog):
    root = tmp_path / "coco"
    shutil.copytree(synthetic_root, root)
    train = build_dataset("train", make_args("coco", root))
    broken = train.image_path(0)
    broken.write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        image, target = train[0]
    assert train.num_skipped == 1 and str(broken) in caplog.text
    assert target["image_id"].item() == train.ids[1]
    val = build_dataset("val", make_args("coco", root))
    val.image_path(0).write_bytes(b"")
    with pytest.raises(UnreadableImageError, match=str(val.image_path(0))):
        val[0]


# ---- issue 13: files that would silently corrupt labels or metrics are refused on load ----------------------------

def _val(synthetic_root) -> dict:
    return json.loads((synthetic_root / "annotations" / "person_keypoints_val2017.json").read_text())


def _load_val(tmp_path, synthetic_root, make_args, data, **overrides):
    root = _root_with_val_json(tmp_path, synthetic_root, json.dumps(data))
    return build_dataset("val", make_args("coco", root, **overrides))


def _mutations():
    def dup_ann(d):
        d["annotations"][1]["id"] = d["annotations"][0]["id"]

    def dup_img(d):
        d["images"].append(dict(d["images"][0], file_name=d["images"][1]["file_name"]))

    def orphan(d):
        d["annotations"][0]["image_id"] = 987654

    def nan_kp(d):
        d["annotations"][0]["keypoints"][3] = float("nan")

    def null_kp(d):
        d["annotations"][0]["keypoints"] = None

    def str_kp(d):
        d["annotations"][0]["keypoints"][0] = "12"

    def no_id(d):
        del d["annotations"][0]["id"]

    def inf_box(d):
        d["annotations"][0]["bbox"][2] = float("inf")

    def area(value):
        def set_area(d):
            d["annotations"][0]["area"] = value
        return set_area

    return [
        ("duplicate annotation id", dup_ann, r"annotation id (\d+) appears twice .*renumber"),
        ("duplicate image id", dup_img, r"image id (\d+) appears twice"),
        ("annotation of a missing image", orphan, r"annotation id \d+: its image_id 987654 is not in 'images'"),
        ("NaN keypoint", nan_kp, r"annotation id \d+: field 'keypoints' holds NaN or infinity"),
        ("null keypoints", null_kp, r"annotation id \d+: field 'keypoints' has the value None, expected 51"),
        ("string keypoint", str_kp, r"annotation id \d+: field 'keypoints' holds a value that is not a number"),
        ("annotation without id", no_id, r"annotations\[0\]: missing field 'id'"),
        ("infinite box", inf_box, r"annotation id \d+: field 'bbox' holds NaN or infinity"),
        ("area 0", area(0), r"annotation id \d+: field 'area' is 0, expected a positive number"),
        ("area -5", area(-5), r"field 'area' is -5"),
        ("area NaN", area(float("nan")), r"field 'area' holds NaN"),
    ]


@pytest.mark.parametrize("name, mutate, message", _mutations(), ids=[m[0] for m in _mutations()])
def test_corrupt_annotation_file_is_refused_naming_file_and_id(tmp_path, synthetic_root, make_args, name, mutate,
                                                               message):
    data = _val(synthetic_root)
    mutate(data)
    with pytest.raises(AnnotationFormatError, match=r"person_keypoints_val2017.json: .*" + message) as info:
        _load_val(tmp_path, synthetic_root, make_args, data)
    assert "Traceback" not in str(info.value)


def test_zero_area_of_an_unlabelled_person_is_accepted(tmp_path, synthetic_root, make_args):
    data = _val(synthetic_root)
    ann = data["annotations"][0]
    ann["keypoints"][2::3] = [0] * (len(ann["keypoints"]) // 3)
    ann["num_keypoints"], ann["area"] = 0, 0
    assert len(_load_val(tmp_path, synthetic_root, make_args, data)) == len(data["images"])


def test_image_size_that_differs_from_the_file_is_an_error_unless_trusted(tmp_path, synthetic_root, make_args):
    data = _val(synthetic_root)
    data["images"][0]["width"] += 7
    dataset = _load_val(tmp_path, synthetic_root, make_args, data)
    index = dataset.ids.index(data["images"][0]["id"])
    with pytest.raises(AnnotationFormatError, match=rf"image id {data['images'][0]['id']}: .* but the file says "
                                                    r".*--trust_image_sizes"):
        dataset[index]
    trusted = build_dataset("val", make_args("coco", tmp_path / "coco", trust_image_sizes=True))
    image, target = trusted[index]
    assert target["image_id"].item() == data["images"][0]["id"]
