"""Draw people (box, skeleton, keypoints) and clicks on an image with OpenCV."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import cv2
import numpy as np

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]


def draw_people(image: np.ndarray, people: Iterable[dict], skeleton: Sequence[tuple[int, int]] = (),
                clicks: Optional[Iterable[tuple[int, int, float, float]]] = None, min_score: float = 0.0,
                keypoint_radius: int = 3) -> np.ndarray:
    """Return a copy of an RGB ``image`` (H, W, 3 uint8) with each person drawn in its own colour.

    people: dicts with 'box' (x0, y0, x1, y1) and 'keypoints' (K, 3) as (x, y, score) in pixels, optional 'score'.
    clicks: (person index, keypoint index, x, y) drawn as white rings.
    """
    canvas = np.ascontiguousarray(image.copy())
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for index, person in enumerate(people):
        if person.get("score", 1.0) < min_score:
            continue
        colour = _PALETTE[index % len(_PALETTE)]
        x0, y0, x1, y1 = (int(round(v)) for v in person["box"])
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thickness)
        points = np.asarray(person["keypoints"], dtype=np.float64).reshape(-1, 3)
        for a, b in skeleton:
            pa, pb = points[a, :2], points[b, :2]
            cv2.line(canvas, (int(pa[0]), int(pa[1])), (int(pb[0]), int(pb[1])), colour, thickness, cv2.LINE_AA)
        for x, y, _ in points:
            cv2.circle(canvas, (int(x), int(y)), keypoint_radius + thickness - 1, colour, -1, cv2.LINE_AA)
    for _, _, x, y in clicks or ():
        cv2.circle(canvas, (int(x), int(y)), keypoint_radius + 4 * thickness, (255, 255, 255), thickness + 1,
                   cv2.LINE_AA)
    return canvas


def save_rgb(path: str, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path}")
