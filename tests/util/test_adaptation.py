"""Keypoint adaptation: a 17-keypoint checkpoint starts a 21-keypoint (and a 14-keypoint) model."""
from __future__ import annotations

import pytest
import torch

from datasets.metadata import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, HUMANART21_KEYPOINTS
from models import build_model
from util.adaptation import PER_KEYPOINT_TENSORS, adapt_state_dict, load_pretrained
from util.checkpoint import read_checkpoint, save_checkpoint
from tests.models.conftest import load_args

EMBED = "transformer.decoder.keypoint_embed.weight"
HW = "transformer.decoder.hw.weight"
LABEL = "label_enc_pose.weight"


def _model(metadata):
    return build_model(load_args(num_body_points=metadata.num_keypoints), metadata)[0]


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    model = _model(COCO_KEYPOINTS)
    path = tmp_path_factory.mktemp("adapt") / "coco17.pth"
    save_checkpoint(path, model, epoch=0, with_rng=False)
    return read_checkpoint(path)


def test_17_to_21_copies_known_keypoints_and_initialises_new_ones(source_checkpoint):
    src = source_checkpoint["model"]
    assert source_checkpoint["keypoint_metadata"] == COCO_KEYPOINTS.to_dict()  # recorded at save time
    torch.manual_seed(4)
    model = _model(HUMANART21_KEYPOINTS)
    report = load_pretrained(model, source_checkpoint, HUMANART21_KEYPOINTS,
                             init_from={"left_finger": "left_wrist", "left_toe": "left_ankle"})
    out = model.state_dict()
    groups = load_args().num_group
    # every weight that does not depend on K loads unchanged
    for key, value in src.items():
        if key not in PER_KEYPOINT_TENSORS:
            assert torch.equal(out[key], value), key
    # the 17 known keypoints keep exactly the source's rows
    assert torch.equal(out[HW][:17], src[HW])
    assert torch.equal(out[EMBED].view(groups, 21, -1)[:, :17], src[EMBED].view(groups, 17, -1))
    assert torch.equal(out[LABEL][:18], src[LABEL])  # row 0 (shared) + rows 1..17
    # new ones: a chosen neighbour, else the mean of the source's keypoints
    wrist, ankle = COCO_KEYPOINTS.keypoint_names.index("left_wrist"), COCO_KEYPOINTS.keypoint_names.index("left_ankle")
    assert torch.equal(out[HW][17], src[HW][wrist]) and torch.equal(out[HW][19], src[HW][ankle])
    assert torch.equal(out[EMBED].view(groups, 21, -1)[:, 17], src[EMBED].view(groups, 17, -1)[:, wrist])
    assert torch.equal(out[LABEL][1 + 17], src[LABEL][1 + wrist])
    assert torch.allclose(out[HW][18], src[HW].mean(0)) and torch.allclose(out[HW][20], src[HW].mean(0))
    assert torch.allclose(out[EMBED].view(groups, 21, -1)[:, 18], src[EMBED].view(groups, 17, -1).mean(1))
    assert torch.allclose(out[LABEL][1 + 18], src[LABEL][1:].mean(0))
    # the report says what happened
    assert len(report.copied) == 17 and all(s == d for _, s, d in report.copied)
    assert dict(report.initialised) == {"left_finger": "copy of source keypoint 'left_wrist'",
                                        "right_finger": "mean of the source's keypoints",
                                        "left_toe": "copy of source keypoint 'left_ankle'",
                                        "right_toe": "mean of the source's keypoints"}
    assert report.dropped == [] and sorted(report.tensors) == sorted(PER_KEYPOINT_TENSORS)
    assert "4 initialised" in report.format()


def test_released_checkpoints_without_recorded_layout_are_coco(source_checkpoint):
    model = _model(HUMANART21_KEYPOINTS)
    report = load_pretrained(model, {"model": source_checkpoint["model"]}, HUMANART21_KEYPOINTS)
    assert report.source == "coco" and len(report.copied) == 17


def test_17_to_crowdpose_14_matches_by_name(source_checkpoint):
    adapted, report = adapt_state_dict(source_checkpoint["model"], COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS)
    assert adapted[HW].shape == (14, 2)
    assert [name for name, _ in report.initialised] == ["head", "neck"]
    assert report.dropped == ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
    assert torch.equal(adapted[HW][0], source_checkpoint["model"][HW][5])  # left_shoulder: COCO #5 -> CrowdPose #0


def test_same_layout_loads_without_adaptation(source_checkpoint):
    model = _model(COCO_KEYPOINTS)
    assert load_pretrained(model, source_checkpoint, COCO_KEYPOINTS) is None
    assert torch.equal(model.state_dict()[HW], source_checkpoint["model"][HW])


def test_bad_init_mapping_is_an_error(source_checkpoint):
    with pytest.raises(ValueError, match="adapt_keypoint_init maps"):
        adapt_state_dict(source_checkpoint["model"], COCO_KEYPOINTS, HUMANART21_KEYPOINTS,
                         init_from={"left_finger": "left_thumb"})
