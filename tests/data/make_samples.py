"""Rebuild the tiny hand-made dataset samples in this folder: ``python tests/data/make_samples.py``.

Every value here is made up (no file, image or annotation value comes from a real dataset). Each root is laid out
as ``datasets/coco.py``'s ``DATASET_SPECS`` expects for that dataset, with 2 images per split (CrowdPose's training
file ``crowdpose_trainval.json`` is the join of its train and val splits, so it has 4), solid-colour JPEGs of
32x24 or 24x32 pixels and 1-3 annotations per image:

    coco/annotations/person_keypoints_{train,val}2017.json, coco/images/{train,val}2017/*.jpg
        17 keypoints; train holds a crowd region (iscrowd=1) and a person without keypoints, which training drops
    crowdpose/json/crowdpose_{train,val,trainval,test}.json, crowdpose/images/*.jpg
        14 keypoints, no 'area' (the box area is used), a per-image 'crowdIndex'; test image 200005 has 3 people,
        one of them without keypoints
    humanart/HumanArt/annotations/{training,validation}_humanart.json, humanart/HumanArt/images/<group>/<kind>/*.jpg
        'keypoints' (17) and 'keypoints_21' (21: + fingers and toes) with their num_ counts; file_name values start
        with HumanArt/images/; image and annotation ids above 2**31
    ochuman/annotations/ochuman_coco_format_{val,test}_range_0.00_1.00.json, ochuman/images/*.jpg
        17 keypoints, overlapping people, integer areas, RLE segmentations (val is the training split)

Each person is one template pose scaled into its box; its ``labelled`` keypoints get visibility 2 (or 1 where listed
in ``occluded``), the rest (0, 0, 0). ``num_keypoints`` is always the labelled count.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent

COCO_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
              "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
              "right_knee", "left_ankle", "right_ankle"]
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9], [8, 10],
                 [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]  # 1-based, as in COCO files
HUMANART_NAMES = COCO_NAMES + ["left_finger", "right_finger", "left_toe", "right_toe"]
HUMANART_SKELETON = [[20, 16], [16, 14], [14, 12], [21, 17], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7],
                     [6, 8], [7, 9], [10, 18], [8, 10], [11, 19], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5],
                     [4, 6], [5, 7]]
CROWDPOSE_NAMES = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                   "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck"]
CROWDPOSE_SKELETON = [[13, 14], [14, 1], [14, 2], [1, 3], [3, 5], [2, 4], [4, 6], [14, 7], [14, 8], [7, 9], [9, 11],
                      [8, 10], [10, 12]]

# a person facing the camera, in box-relative (u, v) coordinates
POSE = {"nose": (0.5, 0.08), "left_eye": (0.56, 0.05), "right_eye": (0.44, 0.05), "left_ear": (0.62, 0.07),
        "right_ear": (0.38, 0.07), "left_shoulder": (0.72, 0.22), "right_shoulder": (0.28, 0.22),
        "left_elbow": (0.82, 0.38), "right_elbow": (0.18, 0.38), "left_wrist": (0.86, 0.52),
        "right_wrist": (0.14, 0.52), "left_hip": (0.62, 0.55), "right_hip": (0.38, 0.55), "left_knee": (0.64, 0.75),
        "right_knee": (0.36, 0.75), "left_ankle": (0.66, 0.94), "right_ankle": (0.34, 0.94),
        "left_finger": (0.9, 0.58), "right_finger": (0.1, 0.58), "left_toe": (0.7, 0.98), "right_toe": (0.3, 0.98),
        "head": (0.5, 0.04), "neck": (0.5, 0.16)}

ALL, UPPER, NONE = "all", "upper", "none"
UPPER_NAMES = set(COCO_NAMES[:11]) | {"head", "neck", "left_finger", "right_finger"}


def keypoints(names: list[str], bbox: list[float], labelled=ALL, occluded=()) -> tuple[list, int]:
    """(flat [x, y, v] * K, labelled count) of the template pose in ``bbox``."""
    x0, y0, w, h = bbox
    flat, count = [], 0
    for name in names:
        on = labelled == ALL or (labelled == UPPER and name in UPPER_NAMES) or (
            isinstance(labelled, (set, list, tuple)) and name in labelled)
        if not on:
            flat += [0, 0, 0]
            continue
        u, v = POSE[name]
        flat += [round(x0 + u * w, 1), round(y0 + v * h, 1), 1 if name in occluded else 2]
        count += 1
    return flat, count


def polygon(bbox: list[float]) -> list[list[float]]:
    x0, y0, w, h = bbox
    return [[x0 + 0.2 * w, y0, x0 + 0.8 * w, y0, x0 + w, y0 + h, x0, y0 + h]]


def rle(bbox: list[float], height: int, width: int, compressed: bool) -> dict:
    """Run-length mask of the box (column-major, as pycocotools); ``compressed``: the string form."""
    import numpy as np
    from pycocotools import mask as mask_utils

    x0, y0, w, h = (int(round(v)) for v in bbox)
    pixels = np.zeros((height, width), dtype=np.uint8, order="F")
    pixels[y0:y0 + h, x0:x0 + w] = 1
    if compressed:
        encoded = mask_utils.encode(pixels)
        return {"counts": encoded["counts"].decode("ascii"), "size": [height, width]}
    flat = pixels.flatten(order="F").tolist()
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"counts": counts, "size": [height, width]}


def write_json(path: Path, data: dict) -> None:
    """One record per line: small diffs, still easy to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for key, value in data.items():
        if isinstance(value, list) and value:
            rows = ",\n".join("  " + json.dumps(item) for item in value)
            parts.append(f"{json.dumps(key)}: [\n{rows}\n ]")
        else:
            parts.append(f"{json.dumps(key)}: {json.dumps(value)}")
    path.write_text("{\n " + ",\n ".join(parts) + "\n}\n")


def write_image(path: Path, width: int, height: int, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path, format="JPEG", quality=90)


LANDSCAPE, PORTRAIT = (32, 24), (24, 32)


# ---- COCO --------------------------------------------------------------------------------------------------------

def coco() -> None:
    root = HERE / "coco"
    category = {"supercategory": "person", "id": 1, "name": "person", "keypoints": COCO_NAMES,
                "skeleton": COCO_SKELETON}
    licenses = [{"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1,
                 "name": "CC0 1.0 (made-up test sample)"}]
    # split -> [(image id, (w, h), colour, [(bbox, labelled, occluded, iscrowd)])]
    splits = {
        "train": [(1001, LANDSCAPE, (200, 60, 60), [([1, 1, 14, 22], ALL, ("left_wrist",), 0),
                                                     ([16, 2, 14, 21], UPPER, (), 0),
                                                     ([0, 18, 32, 6], NONE, (), 1)]),  # a crowd region
                  (1002, PORTRAIT, (60, 160, 60), [([2, 2, 20, 28], ALL, ("right_knee", "right_ankle"), 0),
                                                   ([15, 20, 8, 10], NONE, (), 0)])],  # a person without keypoints
        "val": [(2001, LANDSCAPE, (60, 60, 200), [([2, 1, 13, 22], ALL, (), 0),
                                                  ([17, 1, 13, 22], UPPER, ("left_ear",), 0)]),
                (2002, PORTRAIT, (180, 180, 40), [([3, 2, 18, 29], ALL, ("nose", "left_eye"), 0)])],
    }
    ann_id = {"train": 11001, "val": 12001}
    for split, images in splits.items():
        data = {"info": {"description": "Made-up COCO-format test sample (Click-Pose tests)", "year": 2024,
                         "date_created": "2024/01/01"},
                "licenses": licenses, "images": [], "annotations": [], "categories": [category]}
        for image_id, (w, h), colour, people in images:
            name = f"{image_id:012d}.jpg"
            write_image(root / "images" / f"{split}2017" / name, w, h, colour)
            data["images"].append({"license": 1, "file_name": name,
                                   "coco_url": f"https://example.com/{split}2017/{name}", "height": h, "width": w,
                                   "date_captured": "2024-01-01 12:00:00",
                                   "flickr_url": f"https://example.com/flickr/{name}", "id": image_id})
            for bbox, labelled, occluded, crowd in people:
                kpts, count = keypoints(COCO_NAMES, bbox, labelled, occluded)
                segmentation = rle(bbox, h, w, compressed=False) if crowd else polygon(bbox)
                data["annotations"].append({"segmentation": segmentation, "num_keypoints": count,
                                            "area": round(bbox[2] * bbox[3] * (0.9 if crowd else 0.6), 2),
                                            "iscrowd": crowd, "keypoints": kpts, "image_id": image_id,
                                            "bbox": [float(v) for v in bbox], "category_id": 1, "id": ann_id[split]})
                ann_id[split] += 1
        write_json(root / "annotations" / f"person_keypoints_{split}2017.json", data)


# ---- CrowdPose ---------------------------------------------------------------------------------------------------

def crowdpose() -> None:
    root = HERE / "crowdpose"
    category = {"supercategory": "person", "id": 1, "name": "person", "keypoints": CROWDPOSE_NAMES,
                "skeleton": CROWDPOSE_SKELETON}
    splits = {
        "train": [(200001, LANDSCAPE, 0.31, (90, 40, 140), [([1, 1, 14, 22], ALL, ()),
                                                            ([14, 2, 15, 21], ALL, ("left_hip", "left_knee"))]),
                  (200002, PORTRAIT, 0.0, (40, 140, 140), [([2, 1, 20, 30], ALL, ("head",))])],
        "val": [(200003, LANDSCAPE, 0.52, (140, 90, 40), [([0, 1, 13, 22], ALL, ()),
                                                          ([10, 1, 12, 22], UPPER, ()),
                                                          ([19, 2, 12, 21], ALL, ("right_wrist",))]),
                (200004, PORTRAIT, 0.12, (40, 90, 40), [([3, 2, 18, 28], UPPER, ("neck",))])],
        "test": [(200005, LANDSCAPE, 0.44, (120, 120, 120), [([1, 1, 14, 22], ALL, ("left_ankle",)),
                                                             ([15, 1, 15, 22], UPPER, ()),
                                                             ([9, 4, 8, 16], NONE, ())]),  # no keypoints: dropped
                 (200006, PORTRAIT, 0.0, (200, 120, 160), [([2, 2, 20, 28], ALL, ())])],
    }
    ann_id = {"train": 210001, "val": 220001, "test": 230001}
    written = {}
    for split, images in splits.items():
        data = {"images": [], "annotations": [], "categories": [category]}
        for image_id, (w, h), crowd_index, colour, people in images:
            name = f"{image_id}.jpg"
            write_image(root / "images" / name, w, h, colour)
            data["images"].append({"file_name": name, "id": image_id, "height": h, "width": w,
                                   "crowdIndex": crowd_index})
            for bbox, labelled, occluded in people:
                kpts, count = keypoints(CROWDPOSE_NAMES, bbox, labelled, occluded)
                data["annotations"].append({"num_keypoints": count, "iscrowd": 0, "keypoints": kpts,
                                            "image_id": image_id, "bbox": [float(v) for v in bbox],
                                            "category_id": 1, "id": ann_id[split]})
                ann_id[split] += 1
        write_json(root / "json" / f"crowdpose_{split}.json", data)
        written[split] = data
    train, val = written["train"], written["val"]  # as tools/crowdpose_trainval.py joins them
    write_json(root / "json" / "crowdpose_trainval.json",
               {**train, "images": train["images"] + val["images"],
                "annotations": train["annotations"] + val["annotations"]})


# ---- Human-Art ---------------------------------------------------------------------------------------------------

def humanart() -> None:
    root = HERE / "humanart"
    category = {"supercategory": "person", "id": 1, "name": "person", "keypoints": HUMANART_NAMES,
                "skeleton": HUMANART_SKELETON}
    big = 10_000_000_000_000  # ids beyond 32 bits, as in Human-Art
    splits = {
        "training": [(big + 11, "real_human", "dance", LANDSCAPE, (220, 140, 80),
                      [([1, 1, 14, 22], ALL, ("left_toe",), [[8.0, 12.0]]), ([17, 2, 13, 21], UPPER, (), [])]),
                     (big + 12, "2D_virtual_human", "cartoon", PORTRAIT, (80, 200, 220),
                      [([2, 2, 20, 28], ALL, (), [])])],
        "validation": [(big + 21, "3D_virtual_human", "sculpture", PORTRAIT, (150, 150, 210),
                        [([2, 1, 20, 29], ALL, ("right_finger",), [])]),
                       (big + 22, "2D_virtual_human", "watercolor", LANDSCAPE, (210, 150, 150),
                        [([1, 1, 14, 22], UPPER, (), []), ([16, 1, 14, 22], ALL, (), [[22.0, 9.5]])])],
    }
    ann_id = {"training": big + 1001, "validation": big + 2001}
    for split, images in splits.items():
        data = {"info": {"description": "Made-up Human-Art-format test sample (Click-Pose tests)", "year": 2024,
                         "date_created": "2024/01/01"},
                "images": [], "annotations": [], "categories": [category]}
        for image_id, group, kind, (w, h), colour, people in images:
            name = f"HumanArt/images/{group}/{kind}/{image_id % 10 ** 12:012d}.jpg"
            write_image(root / name, w, h, colour)
            data["images"].append({"file_name": name, "height": h, "width": w, "id": image_id,
                                   "page_url": "https://example.com/page", "image_url": "https://example.com/image",
                                   "picture_name": f"made-up {kind}", "author": "nobody",
                                   "description": "a solid colour test image", "category": kind.replace("_", " ")})
            for bbox, labelled, occluded, contact in people:
                kpts21, count21 = keypoints(HUMANART_NAMES, bbox, labelled, occluded)
                kpts17, count17 = keypoints(COCO_NAMES, bbox, labelled, occluded)
                assert kpts21[:51] == kpts17
                data["annotations"].append({"keypoints": kpts17, "keypoints_21": kpts21, "self_contact": contact,
                                            "num_keypoints": count17, "num_keypoints_21": count21, "iscrowd": 0,
                                            "image_id": image_id, "area": round(bbox[2] * bbox[3] * 0.55, 2),
                                            "bbox": [float(v) for v in bbox], "category_id": 1,
                                            "id": ann_id[split], "annotator": 7})
                ann_id[split] += 1
        write_json(root / "HumanArt" / "annotations" / f"{split}_humanart.json", data)


# ---- OCHuman -----------------------------------------------------------------------------------------------------

def ochuman() -> None:
    root = HERE / "ochuman"
    category = {"keypoints": COCO_NAMES, "skeleton": COCO_SKELETON, "id": 1, "supercategory": "person",
                "name": "person"}
    # heavily overlapping people, as in OCHuman
    splits = {
        "val": [(1, LANDSCAPE, (100, 100, 30), [([2, 1, 16, 22], ALL, ("left_elbow", "left_wrist")),
                                                ([10, 2, 16, 21], ALL, ("right_shoulder", "right_hip"))]),
                (2, PORTRAIT, (30, 100, 100), [([1, 2, 18, 28], ALL, ()),
                                               ([5, 4, 17, 27], UPPER, ("right_eye",)),
                                               ([9, 3, 14, 26], ALL, ("left_knee",))])],
        "test": [(3, LANDSCAPE, (100, 30, 100), [([3, 1, 15, 22], ALL, ()),
                                                 ([11, 1, 15, 22], UPPER, ("nose",))]),
                 (4, PORTRAIT, (160, 90, 30), [([2, 2, 19, 29], ALL, ("left_ankle",))])],
    }
    ann_id = {"val": 1, "test": 1}
    for split, images in splits.items():
        data = {"info": {"description": "Made-up OCHuman-format test sample (Click-Pose tests)", "version": "1.0",
                         "year": 2024, "date_created": "2024/01/01"},
                "images": [], "annotations": [], "categories": [category]}
        for image_id, (w, h), colour, people in images:
            name = f"{image_id:06d}.jpg"
            write_image(root / "images" / name, w, h, colour)
            data["images"].append({"file_name": name, "width": w, "height": h, "id": image_id})
            for bbox, labelled, occluded in people:
                kpts, count = keypoints(COCO_NAMES, bbox, labelled, occluded)
                data["annotations"].append({"area": int(bbox[2] * bbox[3] * 0.6), "image_id": image_id,
                                            "iscrowd": 0, "category_id": 1, "bbox": [float(v) for v in bbox],
                                            "segmentation": rle(bbox, h, w, compressed=True),
                                            "num_keypoints": count, "id": ann_id[split], "keypoints": kpts})
                ann_id[split] += 1
        write_json(root / "annotations" / f"ochuman_coco_format_{split}_range_0.00_1.00.json", data)


def main() -> None:
    for make in (coco, crowdpose, humanart, ochuman):
        make()


if __name__ == "__main__":
    main()
