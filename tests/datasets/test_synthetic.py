"""Synthetic generator: COCO layout, correct annotations, determinism, loads and evaluates (GT -> AP 1.0)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from datasets import build_dataset, build_evaluator
from datasets.synthetic import DEMO_SCENE, FULL_SCENE, RENDER_VERSION, Scene, render_image, write_synthetic_dataset
from tools.make_synthetic_dataset import main as make_synthetic_main


def test_annotations_are_consistent(synthetic_root):
    for split, count in (("train", 4), ("val", 2)):
        data = json.loads((synthetic_root / "annotations" / f"person_keypoints_{split}2017.json").read_text())
        assert len(data["images"]) == count and len(data["categories"][0]["keypoints"]) == 17
        for img in data["images"]:
            with Image.open(synthetic_root / "images" / f"{split}2017" / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
                assert 320 <= min(im.size) and max(im.size) <= 640
        assert data["annotations"]
        for ann in data["annotations"]:
            img = next(i for i in data["images"] if i["id"] == ann["image_id"])
            kpts = np.asarray(ann["keypoints"], dtype=float).reshape(17, 3)
            labelled = kpts[:, 2] > 0
            assert ann["num_keypoints"] == labelled.sum() > 0 and ann["iscrowd"] == 0
            assert set(kpts[:, 2].tolist()) <= {0.0, 1.0, 2.0}
            assert (kpts[~labelled, :2] == 0).all()
            assert (kpts[labelled, 0] < img["width"]).all() and (kpts[labelled, 1] < img["height"]).all()
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
            assert 0 < ann["area"] <= w * h


def test_scenes_contain_occlusion_and_truncation():
    flags = []
    for i in range(12):
        _, people = render_image(np.random.default_rng([0, i]), 480, 400)
        flags += [v for p in people for v in p["keypoints"][2::3]]
    assert {0, 1, 2} <= set(flags)  # out of image, occluded and visible all occur


def test_demo_scene_has_fewer_larger_people_and_no_occluding_boxes():
    """The demo's scene (make demo): 1-3 figures of 55-95% of the image height, no occluding boxes; the same rng
    gives the full scene more variety (up to 4 people, small ones, boxes)."""
    demo_people, full_people, demo_heights = [], [], []
    for i in range(30):
        image, people = render_image(np.random.default_rng([0, i]), 480, 400, DEMO_SCENE)
        demo_people.append(len(people))
        # a figure is about 0.9 of its body height from head top to ankles; the box is cut by the border at most
        demo_heights += [p["bbox"][3] / 400 for p in people if all(p["keypoints"][2::3])]
        full_people.append(len(render_image(np.random.default_rng([0, i]), 480, 400, FULL_SCENE)[1]))
    assert 1 <= min(demo_people) and max(demo_people) <= 3 and max(full_people) == 4
    assert demo_heights and min(demo_heights) > 0.4
    # one figure alone, the same figures either way (boxes are drawn after them): the boxes hide keypoints (v = 1)
    # that the figure alone does not
    hidden = {flag: sum(v == 1 for i in range(30) for p in render_image(
        np.random.default_rng([0, i]), 480, 400, Scene(max_people=1, occluders=flag))[1] for v in p["keypoints"][2::3])
        for flag in (False, True)}
    assert hidden[True] > hidden[False]


def test_dataset_records_its_scene(tmp_path):
    write_synthetic_dataset(tmp_path, num_images=2, seed=1, num_val=1, scene=DEMO_SCENE)
    info = json.loads((tmp_path / "annotations" / "person_keypoints_val2017.json").read_text())["info"]
    assert info["scene"] == {"max_people": 3, "body_height": [0.55, 0.95], "occluders": False}
    assert info["render_version"] == RENDER_VERSION


def test_figures_have_human_silhouette_area():
    """OKS scales its tolerance with the annotated area: the figures' area / box height^2 is near that of the COCO
    sample's people (0.23-0.25), not the 0.18 of the stick-thin figures of render version 1."""
    ratios = [p["area"] / p["bbox"][3] ** 2 for i in range(40)
              for p in render_image(np.random.default_rng([0, i]), 480, 400, DEMO_SCENE)[1] if p["num_keypoints"] >= 12]
    assert len(ratios) > 40
    assert 0.20 < float(np.median(ratios)) < 0.26


def test_deterministic_and_prefix_stable(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_synthetic_dataset(a, num_images=3, seed=7, num_val=1)
    write_synthetic_dataset(b, num_images=3, seed=7, num_val=1)
    for rel in ("annotations/person_keypoints_train2017.json", "images/train2017/000000000001.jpg"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    c = tmp_path / "c"
    write_synthetic_dataset(c, num_images=3, seed=8, num_val=1)
    assert (a / "images/train2017/000000000001.jpg").read_bytes() != (c / "images/train2017/000000000001.jpg").read_bytes()


def test_fast_enough(tmp_path):
    start = time.perf_counter()
    write_synthetic_dataset(tmp_path, num_images=4, seed=1, num_val=1)
    assert (time.perf_counter() - start) / 4 < 1.0


def test_rejects_bad_counts(tmp_path, capsys):
    with pytest.raises(ValueError, match="num_val"):
        write_synthetic_dataset(tmp_path, num_images=2, num_val=2)
    with pytest.raises(SystemExit):
        make_synthetic_main(["--out", str(tmp_path), "--num-images", "0"])
    assert "num_images" in capsys.readouterr().err


def test_tool_writes_a_dataset_that_loads_and_scores_ap_one(tmp_path, make_args):
    out = tmp_path / "syn"
    assert make_synthetic_main(["--out", str(out), "--num-images", "4", "--seed", "2", "--split-val", "2"]) == 0
    args = make_args("coco", out)
    assert len(build_dataset("train", args)) == 2
    dataset = build_dataset("val", args, transforms=None)
    evaluator = build_evaluator(dataset, args, log=None)
    for index in range(len(dataset)):
        _, target = dataset.load_raw(index)
        n = target["boxes"].shape[0]
        kpts = target["keypoints"].clone()
        kpts[..., 2] = 1.0
        evaluator.process([dataset.ids[index]], [{"scores": [1.0] * n, "labels": [1] * n, "boxes": target["boxes"],
                                                  "keypoints": kpts}])
    stats = evaluator.evaluate()
    assert round(stats["coco_eval_keypoints_detr"][0], 4) == 1.0
    assert round(stats["coco_eval_bbox"][0], 4) == 1.0


def test_a_palette_repaints_the_same_people():
    """Another palette (a domain shift for tools/benchmark_adapt.py) changes the figures' colours, not their poses,
    and is recorded in the dataset's info; the default palette is not, so existing folders still match."""
    from datasets.synthetic import PALETTES, provenance

    rng = lambda: np.random.default_rng([0, 5])  # noqa: E731
    plain, people = render_image(rng(), 480, 400, DEMO_SCENE)
    scene = Scene(max_people=3, body_height=(0.55, 0.95), occluders=False, palette="hue120")
    turned, turned_people = render_image(rng(), 480, 400, scene)
    assert turned_people == people
    assert np.abs(plain.astype(int) - turned.astype(int)).mean() > 1.0
    assert PALETTES["hue120"]["face"] == PALETTES["default"]["face"]  # grey has no hue
    assert PALETTES["hue120"]["torso"] != PALETTES["default"]["torso"]
    assert "palette" not in provenance(DEMO_SCENE)["scene"]
    assert provenance(Scene(palette="hue120"))["scene"]["palette"] == "hue120"
    with pytest.raises(ValueError, match="unknown palette 'pink'"):
        Scene(palette="pink")
