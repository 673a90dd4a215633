"""The keypoint layout type: names, OKS sigmas, left/right flip pairs, skeleton.

It lives in ``util`` so that the model can take it without importing ``datasets`` (which holds the built-in
layouts as data, ``datasets/metadata.py``). A checkpoint records the layout it was trained with as a plain dict
(``to_dict``), which loads with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class KeypointMetadata:
    name: str
    keypoint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]  # 0-based (left, right) index pairs swapped by a horizontal flip
    sigmas: tuple[float, ...]  # OKS per-keypoint falloff (already divided by 10)
    skeleton: tuple[tuple[int, int], ...] = field(default=())  # 0-based limb pairs, for drawing

    def __post_init__(self):
        if len(self.sigmas) != len(self.keypoint_names):
            raise ValueError(f"keypoint layout {self.name!r}: {len(self.sigmas)} sigmas for "
                             f"{len(self.keypoint_names)} keypoints; give one sigma per keypoint")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    def flip_permutation(self) -> list[int]:
        """Index map new_k -> old_k that swaps every left/right pair."""
        perm = list(range(self.num_keypoints))
        for left, right in self.flip_pairs:
            perm[left], perm[right] = right, left
        return perm

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and strings (what a checkpoint stores)."""
        return {"name": self.name, "keypoint_names": list(self.keypoint_names),
                "flip_pairs": [list(p) for p in self.flip_pairs], "sigmas": [float(s) for s in self.sigmas],
                "skeleton": [list(p) for p in self.skeleton]}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "KeypointMetadata":
        missing = [k for k in ("name", "keypoint_names", "flip_pairs", "sigmas") if k not in data]
        if missing:
            raise ValueError(f"keypoint metadata lacks {missing}; expected the dict written by "
                             "KeypointMetadata.to_dict")
        return KeypointMetadata(
            name=str(data["name"]), keypoint_names=tuple(str(n) for n in data["keypoint_names"]),
            flip_pairs=tuple((int(a), int(b)) for a, b in data["flip_pairs"]),
            sigmas=tuple(float(s) for s in data["sigmas"]),
            skeleton=tuple((int(a), int(b)) for a, b in data.get("skeleton", ())))


def check_keypoint_count(num_keypoints: int, metadata: KeypointMetadata, what: str = "the keypoint layout") -> None:
    """The config's keypoint count (``num_body_points``, which sets the model's shapes) must be the layout's: the
    one check of it, for the model, the datasets and the Predictor."""
    from util.errors import ConfigError

    if not isinstance(metadata, KeypointMetadata):
        raise TypeError(f"metadata must be a KeypointMetadata (datasets.get_metadata(args)), got "
                        f"{type(metadata).__name__}")
    if int(num_keypoints) != metadata.num_keypoints:
        raise ConfigError(f"{what} {metadata.name!r} has {metadata.num_keypoints} keypoints but "
                          f"num_body_points={num_keypoints}; set num_body_points={metadata.num_keypoints} "
                          f"(e.g. --options num_body_points={metadata.num_keypoints})")
