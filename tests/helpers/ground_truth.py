"""Random ground truth for tests: COCO-format annotations (the evaluation side) and model targets (normalised
cxcywh boxes and keypoints, as the dataset code hands them to the model, criterion and matcher)."""
from __future__ import annotations

import numpy as np
import torch


# ------------------------------------------------------------------------------------------------ COCO format
def random_gt(rng: np.random.Generator, num_images: int, cats=(1,), k: int = 17, first_id: int = 1) -> dict:
    """A COCO keypoint ground truth: images with 0..6 people, partly labelled, unlabelled, crowd, num_keypoints=0,
    out-of-range area."""
    images, anns, ann_id = [], [], first_id
    for i in range(num_images):
        img_id = 7 * i + 3
        images.append({"id": img_id, "width": 640, "height": 480})
        for _ in range(int(rng.integers(0, 7))):
            x, y, w, h = rng.uniform(0, 590), rng.uniform(0, 430), rng.uniform(5, 200), rng.uniform(5, 300)
            vis = rng.choice([0, 1, 2], size=k, p=[0.3, 0.2, 0.5])
            if rng.random() < 0.15:
                vis[:] = 0
            xs, ys = x + rng.uniform(0, w, k), y + rng.uniform(0, h, k)
            kp = np.stack([np.where(vis > 0, xs, 0), np.where(vis > 0, ys, 0), vis], axis=1)
            num_kp = 0 if rng.random() < 0.05 else int((vis > 0).sum())
            area = 2e10 if rng.random() < 0.03 else w * h * rng.uniform(0.3, 0.9)
            anns.append({"id": ann_id, "image_id": img_id, "category_id": int(rng.choice(cats)),
                         "keypoints": [float(v) if j % 3 < 2 else int(v) for j, v in enumerate(kp.reshape(-1))],
                         "num_keypoints": num_kp, "area": float(area), "bbox": [x, y, w, h],
                         "iscrowd": int(rng.random() < 0.1)})
            ann_id += 1
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in cats]}


# ------------------------------------------------------------------------------------------------ model targets
def random_boxes(*shape) -> torch.Tensor:
    """Normalised cxcywh boxes inside the image (torch's global generator)."""
    return torch.cat([torch.rand(*shape, 2) * 0.6 + 0.2, torch.rand(*shape, 2) * 0.3 + 0.05], -1)


def random_keypoints(*shape, k: int = 17) -> torch.Tensor:
    """Flat ``[x1, y1, ..., xK, yK, v1, ..., vK]`` keypoints, ~70% visible (torch's global generator)."""
    return torch.cat([torch.rand(*shape, 2 * k), (torch.rand(*shape, k) > 0.3).float()], -1)


def random_targets(counts, k: int = 17) -> list[dict]:
    """Minimal targets (labels, boxes, keypoints, area) of ``counts[i]`` people per image, for the matcher and
    criterion (torch's global generator)."""
    out = []
    for n in counts:
        boxes = random_boxes(n)
        out.append({"labels": torch.ones(n, dtype=torch.int64), "boxes": boxes, "keypoints": random_keypoints(n, k=k),
                    "area": boxes[:, 2] * boxes[:, 3]})
    return out


def make_targets(num_people: list[int], num_keypoints: int, generator: torch.Generator) -> list[dict]:
    """Full targets as the dataset code gives them (normalised cxcywh boxes, keypoints inside them, ~80% labelled,
    area, iscrowd, image_id, sizes) from ``generator``."""
    targets = []
    for image, n in enumerate(num_people):
        centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        size = torch.rand(n, 2, generator=generator) * 0.3 + 0.1
        boxes = torch.cat((centre, size), 1)
        xy = centre[:, None] + (torch.rand(n, num_keypoints, 2, generator=generator) - 0.5) * size[:, None]
        visible = (torch.rand(n, num_keypoints, generator=generator) < 0.8).float()
        visible[:, 0] = 1.0
        xy = xy * visible[..., None]
        keypoints = torch.cat((xy.flatten(1), visible), 1)
        targets.append({"boxes": boxes, "labels": torch.ones(n, dtype=torch.int64), "keypoints": keypoints,
                        "area": size.prod(1) * 0.7, "iscrowd": torch.zeros(n, dtype=torch.int64),
                        "image_id": torch.tensor([image]), "orig_size": torch.tensor([256, 320]),
                        "size": torch.tensor([256, 320])})
    return targets
