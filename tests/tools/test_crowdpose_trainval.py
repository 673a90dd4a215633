"""tools/crowdpose_trainval.py joins CrowdPose train and val into the file the crowdpose dataset trains on."""
from __future__ import annotations

import json

import pytest

from tools.crowdpose_trainval import main

CATEGORIES = [{"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(14)]}]


def _split(image_ids: list[int], ann_ids: list[int]) -> dict:
    return {"info": {"description": "split"}, "categories": CATEGORIES,
            "images": [{"id": i, "file_name": f"{i}.jpg", "height": 10, "width": 10} for i in image_ids],
            "annotations": [{"id": a, "image_id": image_ids[0], "category_id": 1, "iscrowd": 0,
                             "keypoints": [0] * 42, "num_keypoints": 0, "bbox": [0, 0, 1, 1]} for a in ann_ids]}


def _write_root(root, train: dict, val: dict):
    (root / "json").mkdir(parents=True)
    (root / "json" / "crowdpose_train.json").write_text(json.dumps(train))
    (root / "json" / "crowdpose_val.json").write_text(json.dumps(val))


def test_joins_train_then_val(tmp_path):
    _write_root(tmp_path, _split([1, 2], [10, 11]), _split([3], [12]))
    assert main([str(tmp_path)]) == 0
    joined = json.loads((tmp_path / "json" / "crowdpose_trainval.json").read_text())
    assert [i["id"] for i in joined["images"]] == [1, 2, 3]
    assert [a["id"] for a in joined["annotations"]] == [10, 11, 12]
    assert joined["categories"] == CATEGORIES and joined["info"] == {"description": "split"}
    assert not list((tmp_path / "json").glob("*.partial"))


def test_sample_train_and_val_join_into_the_training_split(tmp_path, sample_data, make_args):
    from datasets import build_dataset

    sample_root = sample_data / "crowdpose"
    train, val = (json.loads((sample_root / "json" / f"crowdpose_{s}.json").read_text()) for s in ("train", "val"))
    _write_root(tmp_path, train, val)
    (tmp_path / "images").symlink_to(sample_root / "images")
    assert main([str(tmp_path)]) == 0
    written = json.loads((tmp_path / "json" / "crowdpose_trainval.json").read_text())
    assert written == json.loads((sample_root / "json" / "crowdpose_trainval.json").read_text())
    joined = build_dataset("train", make_args("crowdpose", tmp_path))
    original = build_dataset("train", make_args("crowdpose", sample_root))
    assert sorted(joined.ids) == sorted(original.ids) and len(joined) == 4
    assert len(joined.coco.getAnnIds()) == len(train["annotations"]) + len(val["annotations"])


def test_identical_copies_are_refused(tmp_path, sample_data):
    # the same file given as train and val: every id collides
    train = sample_data / "crowdpose" / "json" / "crowdpose_train.json"
    assert main(["--train", str(train), "--val", str(train), "--out", str(tmp_path / "out.json")]) == 2
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("key", ["images", "annotations"])
def test_colliding_ids_are_refused_and_nothing_is_written(tmp_path, capsys, key):
    train, val = _split([1, 2], [10, 11]), _split([3], [12])
    val[key][0]["id"] = train[key][0]["id"]
    _write_root(tmp_path, train, val)
    assert main([str(tmp_path)]) == 2
    assert f"{key[:-1]} id(s) occur in both splits" in capsys.readouterr().err
    assert not (tmp_path / "json" / "crowdpose_trainval.json").exists()


def test_missing_or_malformed_input_names_the_file(tmp_path):
    (tmp_path / "json").mkdir()
    with pytest.raises(SystemExit, match="crowdpose_train.json does not exist"):
        main([str(tmp_path)])
    (tmp_path / "json" / "crowdpose_train.json").write_text("{not json")
    with pytest.raises(SystemExit, match="is not valid JSON"):
        main([str(tmp_path)])
