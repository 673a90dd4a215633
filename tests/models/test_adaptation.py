"""Keypoint adaptation: a 17-keypoint checkpoint starts a 21-keypoint (and a 14-keypoint) model."""
from __future__ import annotations

import pytest
import torch

from datasets.metadata import (COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, HUMANART21_KEYPOINTS,
                               default_metadata_for_num_keypoints)
from models import build_model
from models.adaptation import PER_KEYPOINT_TENSORS, adapt_state_dict, load_pretrained
from util.checkpoint import read_checkpoint, save_checkpoint
from tests.helpers import load_args


def _load(model, ckpt, target, **kwargs):
    """load_pretrained as main.py calls it: checkpoints without a recorded layout have the built-in one."""
    return load_pretrained(model, ckpt, target, legacy_layout=default_metadata_for_num_keypoints, **kwargs)


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
    report = _load(model, source_checkpoint, HUMANART21_KEYPOINTS,
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
    report = _load(model, {"model": source_checkpoint["model"]}, HUMANART21_KEYPOINTS)
    assert report.source == "coco" and len(report.copied) == 17


def test_17_to_crowdpose_14_matches_by_name(source_checkpoint):
    adapted, report = adapt_state_dict(source_checkpoint["model"], COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS)
    assert adapted[HW].shape == (14, 2)
    assert [name for name, _ in report.initialised] == ["head", "neck"]
    assert report.dropped == ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
    assert torch.equal(adapted[HW][0], source_checkpoint["model"][HW][5])  # left_shoulder: COCO #5 -> CrowdPose #0


def test_same_layout_loads_without_adaptation(source_checkpoint):
    model = _model(COCO_KEYPOINTS)
    assert _load(model, source_checkpoint, COCO_KEYPOINTS) is None
    assert torch.equal(model.state_dict()[HW], source_checkpoint["model"][HW])


def test_bad_init_mapping_is_an_error(source_checkpoint):
    with pytest.raises(ValueError, match="adapt_keypoint_init maps"):
        adapt_state_dict(source_checkpoint["model"], COCO_KEYPOINTS, HUMANART21_KEYPOINTS,
                         init_from={"left_finger": "left_thumb"})


@pytest.fixture
def clickpose_log(caplog, monkeypatch):
    """The project logger's records (main.py's setup_logger stops it propagating to pytest's handler)."""
    import logging

    monkeypatch.setattr(logging.getLogger("clickpose"), "propagate", True)
    caplog.set_level(logging.INFO, logger="clickpose")
    return caplog


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "clickpose" and r.levelname == "WARNING"]


def test_17_to_21_is_an_info_line_not_a_warning(source_checkpoint, clickpose_log):
    """Every source keypoint is in the target: the adaptation the paper describes, nothing to warn about."""
    _load(_model(HUMANART21_KEYPOINTS), source_checkpoint, HUMANART21_KEYPOINTS)
    assert _warnings(clickpose_log) == []
    assert any("17 keypoints copied, 4 initialised" in r.getMessage() for r in clickpose_log.records)


def test_partly_shared_layouts_warn_with_the_untrained_keypoints(source_checkpoint, clickpose_log):
    """CrowdPose 14 -> 21: 12 names are shared; the other 9 target keypoints start untrained, head and neck go."""
    crowdpose, _ = adapt_state_dict(source_checkpoint["model"], COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS)
    clickpose_log.clear()
    adapted, report = adapt_state_dict(crowdpose, CROWDPOSE_KEYPOINTS, HUMANART21_KEYPOINTS)
    assert adapted[HW].shape == (21, 2) and len(report.copied) == 12
    (warning,) = _warnings(clickpose_log)
    untrained = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_finger", "right_finger", "left_toe",
                 "right_toe"]
    assert "crowdpose -> humanart21" in warning and "12 of the 21 keypoints are copied" in warning, warning
    assert f"9 start untrained (initialised from other keypoints): {', '.join(untrained)}" in warning and "head, neck" in warning, warning
    assert "adapt_keypoint_init" in warning


def test_layouts_without_a_shared_name_are_an_error_unless_the_keypoint_weights_are_ignored(source_checkpoint):
    from util.checkpoint import CheckpointError
    from util.keypoint_metadata import KeypointMetadata

    names = tuple(f"animal_{k}" for k in range(17))
    animal = KeypointMetadata("animal", names, flip_pairs=(), sigmas=(0.05,) * 17)
    with pytest.raises(CheckpointError, match=r"share no keypoint name.*custom_keypoint_names.*adapt_keypoint_init"
                                              r".*--finetune_ignore"):
        adapt_state_dict(source_checkpoint["model"], COCO_KEYPOINTS, animal)
    # the fix the message gives: train the per-keypoint weights from scratch, keep the rest
    model = _model(animal)
    before = {k: v.clone() for k, v in model.state_dict().items() if k in PER_KEYPOINT_TENSORS}
    _load(model, source_checkpoint, animal, ignore_keywords=list(PER_KEYPOINT_TENSORS))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    backbone = "backbone.0.body.layer2.0.conv1.weight"
    assert torch.equal(after[backbone], source_checkpoint["model"][backbone])
