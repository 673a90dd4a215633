"""The dataset on every sample format (the made-up ones in tests/data): target layout, keypoint counts, filters and
data quirks."""
from __future__ import annotations

import json

import pytest
import torch

from datasets import build_dataset, get_metadata
from datasets.coco import annotations_to_target

# crowdpose trains on crowdpose_trainval.json, the join of its 2-image train and val splits
SAMPLES = [("coco", "train", 2), ("coco", "val", 2), ("crowdpose", "train", 4), ("crowdpose", "val", 2),
           ("humanart", "train", 2), ("humanart", "val", 2), ("ochuman", "train", 2), ("ochuman", "val", 2)]


@pytest.mark.parametrize("name,split,num_images", SAMPLES)
def test_sample_loads_in_model_layout(name, split, num_images, sample_data, make_args):
    args = make_args(name, sample_data / name)
    dataset = build_dataset(split, args)
    num_kpts = get_metadata(args).num_keypoints
    assert num_kpts == args.num_body_points
    assert len(dataset) == num_images
    assert all(isinstance(i, int) for i in dataset.ids)
    image, target = dataset[0]
    h, w = target["size"].tolist()
    assert image.shape == (3, h, w) and image.dtype == torch.float32
    n = target["boxes"].shape[0]
    assert n > 0
    assert target["boxes"].shape == (n, 4) and target["keypoints"].shape == (n, 3 * num_kpts)
    assert target["labels"].dtype == torch.int64 and (target["labels"] == 1).all()
    assert target["image_id"].dtype == torch.int64 and target["image_id"].item() == dataset.ids[0]
    assert target["iscrowd"].eq(0).all() and target["area"].shape == (n,)
    assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
    assert ((target["area"] > 0) & (target["area"] <= 1)).all()
    vis = target["keypoints"][:, 2 * num_kpts:]
    assert set(vis.unique().tolist()) <= {0.0, 1.0} and vis.sum() > 0
    if split == "val":  # val: short side 800 (long side <= 1333)
        assert min(h, w) == 800 or max(h, w) == 1333


def test_humanart_ids_exceed_int32(sample_data, make_args):
    dataset = build_dataset("val", make_args("humanart", sample_data / "humanart"))
    assert max(dataset.ids) > 2 ** 31
    _, target = dataset[dataset.ids.index(max(dataset.ids))]
    assert target["image_id"].item() == max(dataset.ids)


def test_coco_train_drops_crowd_and_zero_keypoint_people(sample_data, make_args):
    dataset = build_dataset("train", make_args("coco", sample_data / "coco"))
    anns = json.loads(dataset.ann_file.read_text())["annotations"]
    expected = sum(1 for a in anns if not a["iscrowd"] and a["num_keypoints"] > 0)
    got = sum(dataset.load_raw(i)[1]["boxes"].shape[0] for i in range(len(dataset)))
    assert 0 < expected < len(anns) and got == expected


def test_crowdpose_area_from_box_and_num_keypoints_filter(sample_data, make_args):
    dataset = build_dataset("val", make_args("crowdpose", sample_data / "crowdpose"), transforms=None)
    image, target = dataset.load_raw(dataset.ids.index(200005))
    boxes = target["boxes"]
    assert torch.allclose(target["area"], (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    # image 200005: ann 230003 has num_keypoints 0 and is dropped; 230001 (14 labelled) and 230002 (8) are kept
    anns = dataset.coco.imgToAnns[200005]
    assert [a["num_keypoints"] for a in anns] == [14, 8, 0] and all("area" not in a for a in anns)
    assert len(anns) == 3 and target["keypoints"].shape == (2, 14, 3)


def test_noc_filter_drops_images_without_keypoints(tmp_path, sample_data, make_args):
    src = json.loads((sample_data / "coco" / "annotations" / "person_keypoints_val2017.json").read_text())
    empty_id = 999999
    src["images"].append(dict(src["images"][0], id=empty_id))
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(src))
    (root / "val2017").symlink_to(sample_data / "coco" / "images" / "val2017")  # the reference's layout
    assert empty_id in build_dataset("val", make_args("coco", root)).ids
    assert empty_id not in build_dataset("val", make_args("coco", root, noc_filter=True)).ids


def test_pixel_target_clamps_boxes_and_drops_degenerate():
    anns = [{"bbox": [-5, 10, 20, 30], "keypoints": [1, 2, 2, 0, 0, 0], "num_keypoints": 1, "category_id": 1,
             "area": 50.0},
            {"bbox": [40, 10, 10, 10], "keypoints": [45, 12, 2, 0, 0, 0], "num_keypoints": 1, "category_id": 1,
             "area": 9.0},  # starts right of a 30-px-wide image: collapses
            {"bbox": [1, 1, 5, 5], "keypoints": [2, 2, 1, 0, 0, 0], "num_keypoints": 1, "category_id": 1,
             "iscrowd": 1, "area": 1.0}]
    target = annotations_to_target(anns, 7, width=30, height=60, num_keypoints=2)
    assert target["boxes"].tolist() == [[0.0, 10.0, 15.0, 40.0]]
    assert target["area"].tolist() == [50.0] and target["keypoints"].shape == (1, 2, 3)
    assert target["orig_size"].tolist() == [60, 30]


def test_grayscale_image_becomes_rgb(tmp_path, synthetic_root, make_args):
    import shutil
    from PIL import Image
    root = tmp_path / "gray"
    shutil.copytree(synthetic_root, root)
    dataset = build_dataset("val", make_args("coco", root))
    path = dataset.image_path(0)
    Image.open(path).convert("L").save(path)
    assert Image.open(path).mode == "L"
    image, _ = dataset[0]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = image * std[:, None, None] + mean[:, None, None]
    assert image.shape[0] == 3
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[0], pixels[2], atol=1e-5)
    raw, _ = dataset.load_raw(0)
    assert raw.mode == "RGB"
