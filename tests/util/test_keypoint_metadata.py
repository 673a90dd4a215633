"""The keypoint layout type: validation and the plain-dict form a checkpoint stores."""
from __future__ import annotations

import pytest
import torch

from datasets.metadata import CROWDPOSE_KEYPOINTS, HUMANART21_KEYPOINTS
from util.keypoint_metadata import KeypointMetadata


def test_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.save({"keypoint_metadata": HUMANART21_KEYPOINTS.to_dict()}, tmp_path / "c.pth")
    loaded = torch.load(tmp_path / "c.pth", weights_only=True)["keypoint_metadata"]
    assert KeypointMetadata.from_dict(loaded) == HUMANART21_KEYPOINTS
    assert KeypointMetadata.from_dict(CROWDPOSE_KEYPOINTS.to_dict()) == CROWDPOSE_KEYPOINTS


def test_bad_metadata_is_refused():
    with pytest.raises(ValueError, match="one sigma per keypoint"):
        KeypointMetadata("x", ("a", "b"), (), (0.1,))
    with pytest.raises(ValueError, match="lacks"):
        KeypointMetadata.from_dict({"name": "x"})


def test_humanart21_layout():
    meta = HUMANART21_KEYPOINTS
    assert meta.num_keypoints == 21 and meta.keypoint_names[17:] == ("left_finger", "right_finger", "left_toe",
                                                                    "right_toe")
    assert meta.sigmas[17:] == (0.089,) * 4 and len(meta.skeleton) == 23
    perm = meta.flip_permutation()
    assert perm[17:] == [18, 17, 20, 19] and perm[15:17] == [16, 15]
