"""Transforms: the reference resize rule, flip (quirk and exact), crop, the model-layout conversion, and that every
transform keeps boxes and labelled keypoints inside the image on real samples."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import build_dataset
from datasets import transforms as T
from datasets.metadata import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS


def _toy_target(width=100, height=50):
    """Two people with 3 keypoints (0 = middle, 1/2 = a left/right pair)."""
    kpts = torch.tensor([[[10.0, 5.0, 2], [20.0, 6.0, 1], [30.0, 7.0, 2]],
                         [[60.0, 30.0, 2], [70.0, 31.0, 0], [95.0, 45.0, 2]]])
    return {"boxes": torch.tensor([[5.0, 2.0, 35.0, 20.0], [55.0, 25.0, 99.0, 49.0]]),
            "labels": torch.tensor([1, 1]), "area": torch.tensor([300.0, 700.0]), "iscrowd": torch.zeros(2),
            "keypoints": kpts, "size": torch.tensor([height, width])}


@pytest.mark.parametrize("w,h,size,max_size,expected", [
    (640, 480, 800, 1333, (800, 1066)),  # long side truncated
    (480, 640, 800, 1333, (1066, 800)),
    (640, 427, 800, 1333, (800, 1199)),
    (1280, 400, 800, 1333, (417, 1334)),  # cap: size = round(1333 * 400 / 1280) = 417, long = int(417 * 3.2)
    (800, 600, 600, None, (600, 800)),  # short side already the size: unchanged
    (500, 500, 800, 1333, (800, 800)),
])
def test_resize_rule(w, h, size, max_size, expected):
    assert T.resized_hw(w, h, size, max_size) == expected


def test_resize_scales_target():
    image = Image.new("RGB", (100, 50))
    out, target = T.resize(image, _toy_target(), 100)
    assert out.size == (200, 100) and target["size"].tolist() == [100, 200]
    assert torch.equal(target["boxes"][0], torch.tensor([10.0, 4.0, 70.0, 40.0]))
    assert torch.equal(target["area"], torch.tensor([1200.0, 2800.0]))
    assert torch.equal(target["keypoints"][0, 1], torch.tensor([40.0, 12.0, 1.0]))


@pytest.mark.parametrize("exact", [False, True])
def test_hflip_swaps_pairs_and_twice_is_identity(exact):
    image = Image.new("RGB", (100, 50))
    image.putpixel((0, 0), (255, 0, 0))
    target = _toy_target()
    perm = [0, 2, 1]
    flipped_image, flipped = T.hflip(image, target, perm, exact=exact)
    offset = 0 if exact else 1
    assert flipped_image.getpixel((99, 0)) == (255, 0, 0)
    assert torch.equal(flipped["boxes"][0], torch.tensor([65.0, 2.0, 95.0, 20.0]))  # boxes: x -> w - x
    # keypoint 1 (left) now holds the mirrored right keypoint and vice versa, visibility travels with it
    assert flipped["keypoints"][0, 1].tolist() == [100 - 30 - offset, 7.0, 2.0]
    assert flipped["keypoints"][0, 2].tolist() == [100 - 20 - offset, 6.0, 1.0]
    assert flipped["keypoints"][0, 0].tolist() == [100 - 10 - offset, 5.0, 2.0]
    back_image, back = T.hflip(flipped_image, flipped, perm, exact=exact)
    assert np.array_equal(np.asarray(back_image), np.asarray(image))
    for key in ("boxes", "keypoints"):
        assert torch.equal(back[key], target[key])
    assert torch.equal(target["keypoints"], _toy_target()["keypoints"])  # input untouched


def test_flip_permutations_of_builtin_layouts():
    coco = COCO_KEYPOINTS.flip_permutation()
    assert coco[:7] == [0, 2, 1, 4, 3, 6, 5] and coco[15:] == [16, 15]
    crowd = CROWDPOSE_KEYPOINTS.flip_permutation()
    assert crowd == [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13]


@pytest.mark.parametrize("mark_invisible", [False, True])
def test_crop(mark_invisible):
    image = Image.new("RGB", (100, 50))
    out, target = T.crop(image, _toy_target(), (0, 15, 40, 60), mark_invisible=mark_invisible)
    assert out.size == (60, 40) and target["size"].tolist() == [40, 60]
    # box 0 clipped to [0, 2, 20, 20], box 1 to [40, 25, 60, 40]; area = clipped box area
    assert target["boxes"].tolist() == [[0.0, 2.0, 20.0, 20.0], [40.0, 25.0, 60.0, 40.0]]
    assert target["area"].tolist() == [360.0, 300.0]
    kpts = target["keypoints"]
    assert kpts[0, 0, :2].tolist() == [0.0, 5.0]  # x = 10 - 15 clamped to 0
    assert kpts[1, 2, :2].tolist() == [60.0, 40.0]  # (95, 45) - (15, 0) clamped to the window
    assert kpts[0, 0, 2].item() == (0 if mark_invisible else 2)
    assert kpts[1, 2, 2].item() == (0 if mark_invisible else 2)
    assert kpts[0, 1, 2].item() == 1 and kpts[1, 0, 2].item() == 2  # inside: unchanged


def test_crop_drops_collapsed_instances_from_every_field():
    image = Image.new("RGB", (100, 50))
    _, target = T.crop(image, _toy_target(), (0, 0, 50, 40))
    assert target["boxes"].shape == (1, 4) and target["keypoints"].shape == (1, 3, 3)
    assert target["labels"].shape == (1,) and target["area"].shape == (1,) and target["iscrowd"].shape == (1,)


def test_model_layout_conversion():
    target = T.to_model_target(_toy_target(), height=50, width=100)
    assert torch.allclose(target["boxes"][0], torch.tensor([0.2, 0.22, 0.3, 0.36]))
    assert torch.allclose(target["area"], torch.tensor([0.06, 0.14]))
    kp = target["keypoints"]
    assert kp.shape == (2, 9)
    assert torch.allclose(kp[0, :6], torch.tensor([0.1, 0.1, 0.2, 0.12, 0.3, 0.14]))
    assert kp[0, 6:].tolist() == [1.0, 1.0, 1.0] and kp[1, 6:].tolist() == [1.0, 0.0, 1.0]  # v: 2 -> 1


def _assert_inside(target, tolerance):
    h, w = target["size"].tolist()
    boxes = target["boxes"]
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all()
    kpts = target["keypoints"]
    labelled = kpts[..., 2] > 0
    xy = kpts[..., :2][labelled]
    assert (xy >= -tolerance).all() and (xy[:, 0] <= w + tolerance).all() and (xy[:, 1] <= h + tolerance).all()


@pytest.mark.parametrize("name", ["coco", "crowdpose", "humanart", "ochuman"])
@pytest.mark.parametrize("flip_exact", [False, True])
def test_each_transform_keeps_targets_inside(name, flip_exact, sample_root, make_args):
    args = make_args(name, sample_root(name))
    dataset = build_dataset("train", args, transforms=None)
    perm = dataset.metadata.flip_permutation()
    random.seed(0)
    torch.manual_seed(0)
    for index in range(len(dataset)):
        image, target = dataset.load_raw(index)
        _assert_inside(target, 0)
        steps = [lambda i, t: T.hflip(i, t, perm, exact=flip_exact), T.RandomResize([400, 500, 600]),
                 T.RandomSizeCrop(384, 600), T.RandomResize([480, 800], max_size=1333)]
        for step in steps:
            image, target = step(image, target)
            assert target["size"].tolist() == [image.height, image.width]
            # the reference flip maps x = w to -1: allowed one pixel (before later resizes scale it)
            _assert_inside(target, 0 if flip_exact else 2)
        tensor, model_target = T.Compose([T.ToTensor(), T.Normalize()])(image, target)
        assert tensor.shape[1:] == (image.height, image.width)
        assert model_target["keypoints"].shape[1] == 3 * dataset.metadata.num_keypoints


def test_train_pipeline_reproducible_under_seed(sample_root, make_args):
    dataset = build_dataset("train", make_args("coco", sample_root("coco")))
    outputs = []
    for _ in range(2):
        random.seed(5)
        torch.manual_seed(5)
        outputs.append(dataset[1])
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert torch.equal(outputs[0][1]["keypoints"], outputs[1][1]["keypoints"])


def test_build_transforms_rejects_unknown_split():
    with pytest.raises(ValueError, match="image_set"):
        T.build_transforms("trian", list(range(17)))
