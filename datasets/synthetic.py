"""Deterministic synthetic COCO-format people dataset (the embedded default data of the demo and the tests).

Each image has a textured background and front-facing stick figures with the 17 COCO keypoints (the person's left
is on the image's right); a :class:`Scene` says how many, how large, in which palette, and whether occluding boxes
are drawn. Limb types have fixed, distinct colours (left and right share them, so a horizontal flip stays consistent)
and every joint carries a small bright dot. Figures vary in scale, lean and limb angles, overlap each other, may be
cut by the image border, and occluding shapes may cover them. Visibility follows COCO: 2 = visible, 1 = labelled but
hidden by another figure or an occluder, 0 = outside the image (stored as 0, 0, 0).

Layout written by ``write_synthetic_dataset`` (loads with ``--dataset_file coco --coco_path OUT``)::

    OUT/annotations/person_keypoints_{train,val}2017.json
    OUT/images/{train,val}2017/<id:012d>.jpg
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from datasets.metadata import COCO_KEYPOINTS

# COCO-17 indices used to build the figure
NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SHO, R_SHO, L_ELB, R_ELB, L_WRI, R_WRI, L_HIP, R_HIP, L_KNE, R_KNE, L_ANK, \
    R_ANK = range(17)

# RGB colour per body part; both sides share a colour so that mirroring an image keeps the colour/part relation
PART_COLOURS = {
    "torso": (205, 55, 50), "head": (240, 195, 145), "upper_arm": (50, 170, 60), "forearm": (40, 200, 215),
    "thigh": (55, 70, 210), "shin": (190, 60, 200), "joint": (255, 235, 40), "face": (30, 30, 30),
}


def _hue_turned(colours: dict, degrees: int) -> dict:
    """The colours with their hue turned by ``degrees`` (saturation and value kept)."""
    rgb = np.asarray(list(colours.values()), dtype=np.uint8)[None]
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # OpenCV hue: 0..179 for 0..358 degrees
    hsv[..., 0] = (hsv[..., 0].astype(int) + degrees // 2) % 180
    turned = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
    return {part: tuple(int(c) for c in value) for part, value in zip(colours, turned)}


# Part colours by palette name. 'default' is what the demo model learns; 'hue120' (every part's hue turned by 120
# degrees: red torso -> green, green arms -> blue, ...) is another domain for tools/benchmark_adapt.py.
PALETTES = {"default": PART_COLOURS, "hue120": _hue_turned(PART_COLOURS, 120)}
# (part, from keypoint, to keypoint, thickness as a fraction of body height). Limbs and head are as thick as a
# person's: a figure's silhouette area is about 0.22 of its box height squared, as for the people of the COCO sample
# (0.23-0.25); OKS scales its tolerance with that area (thinner figures, 0.18, made the metric stricter than COCO's).
LIMBS = (
    ("thigh", L_HIP, L_KNE, 0.090), ("thigh", R_HIP, R_KNE, 0.090),
    ("shin", L_KNE, L_ANK, 0.075), ("shin", R_KNE, R_ANK, 0.075),
    ("upper_arm", L_SHO, L_ELB, 0.0675), ("upper_arm", R_SHO, R_ELB, 0.0675),
    ("forearm", L_ELB, L_WRI, 0.057), ("forearm", R_ELB, R_WRI, 0.057),
)
HEAD_RADIUS = 0.0715  # of body height
# Bumped whenever the same (seed, index, scene) renders differently; recorded in the annotation info, so that a folder
# written by an older release is recognised (tools/demo.py rewrites it). 2: human-thick limbs and head.
RENDER_VERSION = 2
MIN_SIDE, MAX_SIDE = 320, 640


@dataclass(frozen=True)
class Scene:
    """What one image may contain: 1..max_people figures, each body_height (a fraction of the image height, drawn
    uniformly from the range) tall, painted in the part colours of ``palette`` (a name of ``PALETTES``), and with
    occluders, up to two boxes in half of the images."""
    max_people: int = 4
    body_height: tuple[float, float] = (0.3, 1.0)
    occluders: bool = True
    palette: str = "default"

    def __post_init__(self):
        if self.palette not in PALETTES:
            raise ValueError(f"unknown palette {self.palette!r}: one of {', '.join(PALETTES)}")


# The default scene (tests, `tools/make_synthetic_dataset.py`), and the demo's: fewer, larger people, no occluding
# boxes (figures still overlap and are cut by the border), which a small model learns in CPU minutes.
FULL_SCENE = Scene()
DEMO_SCENE = Scene(max_people=3, body_height=(0.55, 0.95), occluders=False)
SCENES = {"full": FULL_SCENE, "demo": DEMO_SCENE}


@dataclass
class Figure:
    keypoints: np.ndarray  # (17, 2) float pixel coordinates, unclipped
    head_centre: np.ndarray  # (2,)
    height: float  # body height in pixels (head top to ankles is about 0.9 of it)
    colours: dict


def _rotate_down(up: np.ndarray, side_axis: np.ndarray, angle: float) -> np.ndarray:
    """Unit vector pointing down the body, turned by ``angle`` towards ``side_axis``."""
    return np.cos(angle) * -up + np.sin(angle) * side_axis


def sample_figure(rng: np.random.Generator, centre: tuple[float, float], height: float,
                  palette: str = "default") -> Figure:
    """Joint positions of one front-facing figure with its hip centre at ``centre``, coloured by ``palette``."""
    lean = rng.normal(0.0, 0.15)
    up = np.array([np.sin(lean), -np.cos(lean)])
    to_left = np.array([np.cos(lean), np.sin(lean)])  # the person's left = image right when facing the camera
    hip = np.asarray(centre, dtype=np.float64)
    kp = np.zeros((17, 2))
    neck = hip + up * 0.30 * height
    kp[L_SHO], kp[R_SHO] = neck + to_left * 0.11 * height, neck - to_left * 0.11 * height
    kp[L_HIP], kp[R_HIP] = hip + to_left * 0.07 * height, hip - to_left * 0.07 * height
    tilt = rng.normal(0.0, 0.12)
    head_up = np.array([np.sin(lean + tilt), -np.cos(lean + tilt)])
    head_left = np.array([np.cos(lean + tilt), np.sin(lean + tilt)])
    head = neck + head_up * 0.10 * height
    kp[NOSE] = head - head_up * 0.012 * height
    kp[L_EYE], kp[R_EYE] = (head + head_up * 0.02 * height + s * head_left * 0.026 * height for s in (1, -1))
    kp[L_EAR], kp[R_EAR] = (head + head_up * 0.005 * height + s * head_left * 0.058 * height for s in (1, -1))
    for side, (sho, elb, wri, hip_k, kne, ank) in ((1, (L_SHO, L_ELB, L_WRI, L_HIP, L_KNE, L_ANK)),
                                                    (-1, (R_SHO, R_ELB, R_WRI, R_HIP, R_KNE, R_ANK))):
        axis = side * to_left
        arm = rng.uniform(-0.2, 2.6)
        kp[elb] = kp[sho] + _rotate_down(up, axis, arm) * 0.16 * height
        kp[wri] = kp[elb] + _rotate_down(up, axis, arm + rng.uniform(-0.4, 2.0)) * 0.14 * height
        leg = rng.uniform(-0.15, 0.6)
        kp[kne] = kp[hip_k] + _rotate_down(up, axis, leg) * 0.23 * height
        kp[ank] = kp[kne] + _rotate_down(up, axis, leg + rng.uniform(-0.6, 0.3)) * 0.22 * height
    colours = {part: tuple(int(np.clip(c + rng.integers(-18, 19), 0, 255)) for c in rgb)
               for part, rgb in PALETTES[palette].items()}
    return Figure(kp, head, height, colours)


def draw_figure(canvas: np.ndarray, figure: Figure, colour: Optional[int] = None) -> None:
    """Paint ``figure`` on an RGB image (part colours) or, with ``colour``, as a silhouette on a 2-D mask."""
    def paint(part: str):
        return colour if colour is not None else figure.colours[part]

    kp, h = figure.keypoints, figure.height
    pt = lambda xy: (int(round(xy[0])), int(round(xy[1])))  # noqa: E731
    for part, a, b, thickness in LIMBS[:4]:
        cv2.line(canvas, pt(kp[a]), pt(kp[b]), paint(part), max(2, int(thickness * h)), cv2.LINE_AA)
    torso = np.array([pt(kp[L_SHO]), pt(kp[R_SHO]), pt(kp[R_HIP]), pt(kp[L_HIP])], dtype=np.int32)
    cv2.fillConvexPoly(canvas, torso, paint("torso"), cv2.LINE_AA)
    neck = (kp[L_SHO] + kp[R_SHO]) / 2
    cv2.line(canvas, pt(neck), pt(figure.head_centre), paint("head"), max(2, int(0.04 * h)), cv2.LINE_AA)
    for part, a, b, thickness in LIMBS[4:]:
        cv2.line(canvas, pt(kp[a]), pt(kp[b]), paint(part), max(2, int(thickness * h)), cv2.LINE_AA)
    cv2.circle(canvas, pt(figure.head_centre), max(3, int(HEAD_RADIUS * h)), paint("head"), -1, cv2.LINE_AA)
    if colour is not None:
        return
    dot = max(1, int(0.012 * h))
    for k in (L_EYE, R_EYE, NOSE):
        cv2.circle(canvas, pt(kp[k]), dot, paint("face"), -1, cv2.LINE_AA)
    for k in range(L_SHO, R_ANK + 1):
        cv2.circle(canvas, pt(kp[k]), max(2, int(0.016 * h)), paint("joint"), -1, cv2.LINE_AA)


def draw_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Gradient + low-saturation shapes + noise, (H, W, 3) uint8 RGB."""
    start, end = rng.uniform(40, 215, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    image = (start[None, None] * (1 - ramp[..., None]) + end[None, None] * ramp[..., None])
    for _ in range(rng.integers(2, 7)):
        grey = rng.uniform(30, 225)
        colour = tuple(float(np.clip(grey + rng.uniform(-25, 25), 0, 255)) for _ in range(3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        size = int(rng.integers(15, max(16, min(width, height) // 3)))
        if rng.random() < 0.5:
            cv2.circle(image, centre, size, colour, -1)
        else:
            cv2.rectangle(image, centre, (centre[0] + size, centre[1] + int(size * rng.uniform(0.3, 2))), colour, -1)
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def render_image(rng: np.random.Generator, width: int, height: int,
                 scene: Scene = FULL_SCENE) -> tuple[np.ndarray, list[dict]]:
    """One image and its people as COCO annotation dicts (without ids). (H, W, 3) uint8 RGB."""
    image = draw_background(rng, height, width)
    num_people = int(rng.integers(1, scene.max_people + 1))
    figures = []
    for _ in range(num_people):
        body = rng.uniform(*scene.body_height) * height
        centre = (rng.uniform(0.05, 0.95) * width, rng.uniform(0.35, 0.75) * height + rng.normal(0, 0.1) * height)
        figures.append(sample_figure(rng, centre, body, scene.palette))
    figures.sort(key=lambda f: f.height)  # smaller (farther) figures first, so nearer ones cover them
    owner = np.zeros((height, width), dtype=np.int16)
    silhouettes = []
    for index, figure in enumerate(figures, start=1):
        mask = np.zeros((height, width), dtype=np.uint8)
        draw_figure(mask, figure, colour=255)
        silhouettes.append(mask > 127)
        owner[silhouettes[-1]] = index
        draw_figure(image, figure)
    for _ in range(int(rng.integers(0, 3)) if scene.occluders and rng.random() < 0.5 else 0):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = x0 + int(rng.uniform(0.08, 0.3) * width)
        y1 = y0 + int(rng.uniform(0.08, 0.3) * height)
        colour = tuple(float(c) for c in rng.uniform(20, 235, size=3))
        cv2.rectangle(image, (x0, y0), (x1, y1), colour, -1)
        owner[y0:y1, x0:x1] = 0
    people = []
    for index, (figure, silhouette) in enumerate(zip(figures, silhouettes), start=1):
        ys, xs = np.nonzero(silhouette)
        if len(xs) == 0:
            continue
        x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
        triplets = []
        for x, y in figure.keypoints:
            if not (0 <= x < width and 0 <= y < height):
                triplets += [0, 0, 0]
                continue
            visible = owner[int(y), int(x)] == index
            triplets += [round(float(x), 2), round(float(y), 2), 2 if visible else 1]
        num_labelled = sum(1 for v in triplets[2::3] if v > 0)
        if num_labelled == 0 or x1 - x0 < 4 or y1 - y0 < 4:
            continue
        people.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(silhouette.sum()), "iscrowd": 0,
                       "category_id": 1, "keypoints": triplets, "num_keypoints": num_labelled})
    return image, people


def _category() -> dict:
    meta = COCO_KEYPOINTS
    return {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(meta.keypoint_names),
            "skeleton": [[a + 1, b + 1] for a, b in meta.skeleton]}


def provenance(scene: Scene) -> dict:
    """What decides the pixels of a dataset besides seed and image index, as its annotation info stores it (JSON
    types: tuples become lists). A folder whose info differs was written by another scene or an older release.
    The default palette is left out: it is what every render version drew, so folders that record no palette match."""
    fields = asdict(scene)
    if fields["palette"] == "default":
        del fields["palette"]
    return json.loads(json.dumps({"scene": fields, "render_version": RENDER_VERSION}))


def write_synthetic_dataset(out_dir, num_images: int, seed: int = 0, num_val: Optional[int] = None,
                            jpeg_quality: int = 92, scene: Scene = FULL_SCENE) -> dict[str, Path]:
    """Render ``num_images`` images of ``scene``; the last ``num_val`` (default max(1, N // 5)) form the val split.

    Image ``i`` depends only on (seed, i, scene), so a larger N extends a smaller one. Returns the annotation paths.
    """
    if num_val is None:
        num_val = max(1, num_images // 5)
    if num_images < 1 or not 0 <= num_val < num_images:
        raise ValueError(f"need num_images >= 1 and 0 <= num_val < num_images, got {num_images} and {num_val}")
    out = Path(out_dir)
    splits = {"train": range(0, num_images - num_val), "val": range(num_images - num_val, num_images)}
    written = {}
    ann_id = 1
    for split, indices in splits.items():
        folder = out / "images" / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in indices:
            rng = np.random.default_rng([seed, i])
            width, height = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
            pixels, people = render_image(rng, width, height, scene)
            image_id = i + 1
            file_name = f"{image_id:012d}.jpg"
            cv2.imwrite(str(folder / file_name), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for person in people:
                annotations.append({"id": ann_id, "image_id": image_id, **person})
                ann_id += 1
        ann_path = out / "annotations" / f"person_keypoints_{split}2017.json"
        ann_path.parent.mkdir(parents=True, exist_ok=True)
        with open(ann_path, "w") as handle:
            json.dump({"info": {"description": f"Click-Pose synthetic people (seed {seed})",
                                **provenance(scene)}, "images": images,
                       "annotations": annotations, "categories": [_category()]}, handle)
        written[split] = ann_path
    return written
