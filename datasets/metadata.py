"""Per-dataset keypoint metadata, as data: names, left/right flip pairs, OKS sigmas, skeleton.

One ``KeypointMetadata`` per keypoint layout; datasets, transforms, the matcher, the criterion and the evaluators
read from here so that nothing hard-codes 17 keypoints.
"""
from __future__ import annotations

from util.keypoint_metadata import KeypointMetadata

__all__ = ["KeypointMetadata", "COCO_KEYPOINTS", "CROWDPOSE_KEYPOINTS", "HUMANART21_KEYPOINTS", "KEYPOINT_METADATA",
           "FIELD_LAYOUTS", "default_metadata_for_num_keypoints", "build_custom_metadata"]


COCO_KEYPOINTS = KeypointMetadata(
    name="coco",
    keypoint_names=("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                    "right_knee", "left_ankle", "right_ankle"),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    sigmas=tuple(s / 10.0 for s in (.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87,
                                    .89, .89)),
    skeleton=((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
              (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)),
)

CROWDPOSE_KEYPOINTS = KeypointMetadata(
    name="crowdpose",
    keypoint_names=("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck"),
    flip_pairs=((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)),
    sigmas=tuple(s / 10.0 for s in (.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89, .79, .79)),
    skeleton=((12, 13), (13, 0), (13, 1), (0, 2), (2, 4), (1, 3), (3, 5), (13, 6), (13, 7), (6, 8), (8, 10), (7, 9),
              (9, 11)),
)

# Human-Art's 21-keypoint layout (annotation field ``keypoints_21``): COCO's 17, then left/right finger and
# left/right toe, each with sigma 0.089 (as the ankles); skeleton = the dataset's 23 links, 0-based.
HUMANART21_KEYPOINTS = KeypointMetadata(
    name="humanart21",
    keypoint_names=COCO_KEYPOINTS.keypoint_names + ("left_finger", "right_finger", "left_toe", "right_toe"),
    flip_pairs=COCO_KEYPOINTS.flip_pairs + ((17, 18), (19, 20)),
    sigmas=COCO_KEYPOINTS.sigmas + (0.089,) * 4,
    skeleton=tuple((a - 1, b - 1) for a, b in (
        (20, 16), (16, 14), (14, 12), (21, 17), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
        (7, 9), (10, 18), (8, 10), (11, 19), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))),
)

# COCO-17 layouts share one metadata object; crowdpose has its own 14-keypoint layout.
KEYPOINT_METADATA: dict[str, KeypointMetadata] = {
    "coco": COCO_KEYPOINTS,
    "humanart": COCO_KEYPOINTS,
    "ochuman": COCO_KEYPOINTS,
    "synthetic": COCO_KEYPOINTS,
    "crowdpose": CROWDPOSE_KEYPOINTS,
}


# Layouts read from another annotation field than ``keypoints``: (dataset metadata key, field) -> layout.
FIELD_LAYOUTS: dict[tuple[str, str], KeypointMetadata] = {
    ("humanart", "keypoints_21"): HUMANART21_KEYPOINTS,
}


def default_metadata_for_num_keypoints(num_keypoints: int) -> KeypointMetadata:
    """The standard layout with this many keypoints (17: COCO, 14: CrowdPose, 21: Human-Art's keypoints_21)."""
    for meta in (COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, HUMANART21_KEYPOINTS):
        if meta.num_keypoints == num_keypoints:
            return meta
    raise ValueError(f"no built-in keypoint layout has {num_keypoints} keypoints (17: COCO, 14: CrowdPose, 21: "
                     "Human-Art); with --dataset_file custom give custom_keypoint_names (and custom_flip_pairs, "
                     "custom_sigmas) in the config")


def build_custom_metadata(keypoint_names, flip_pairs=(), sigmas=None, skeleton=(),
                          name: str = "custom") -> KeypointMetadata:
    """Validated metadata for a user-defined layout (config keys ``custom_keypoint_names`` etc.).

    ``sigmas`` default to 0.05 per keypoint (a mid-range COCO value) when not given; flip pairs and skeleton are
    0-based index pairs.
    """
    names = tuple(str(n) for n in keypoint_names)
    num = len(names)
    if num == 0:
        raise ValueError("custom_keypoint_names is empty: list the keypoint names of your dataset in order")
    if len(set(names)) != num:
        raise ValueError(f"custom_keypoint_names has duplicates: {list(names)}")
    pairs = tuple((int(a), int(b)) for a, b in (flip_pairs or ()))
    links = tuple((int(a), int(b)) for a, b in (skeleton or ()))
    for what, items in (("custom_flip_pairs", pairs), ("custom_skeleton", links)):
        bad = [p for p in items if not (0 <= p[0] < num and 0 <= p[1] < num) or p[0] == p[1]]
        if bad:
            raise ValueError(f"{what} has pairs {bad} outside 0..{num - 1} or joining a keypoint to itself")
    used = [k for p in pairs for k in p]
    if len(used) != len(set(used)):
        raise ValueError(f"custom_flip_pairs uses a keypoint twice: {list(pairs)}")
    values = (0.05,) * num if sigmas is None else tuple(float(s) for s in sigmas)
    if len(values) != num or any(s <= 0 for s in values):
        raise ValueError(f"custom_sigmas needs {num} positive values (one per keypoint), got {list(values)}")
    return KeypointMetadata(name=name, keypoint_names=names, flip_pairs=pairs, sigmas=values, skeleton=links)
