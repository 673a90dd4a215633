"""A box-added person is refined on its box's crop (models/crop_view.py), and keeps that window across a restart."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from models.crop_view import CropView, CropWindow
from models.predictor import People
from tools.annotate.session import PoseSession, open_session

from .test_predictor import image_and_checkpoint, shared_predictor  # noqa: F401  (the module fixtures)


def _added(predictor, image):
    session = open_session(predictor, image)
    width, height = session.size
    box = [0.2 * width, 0.25 * height, 0.6 * width, 0.9 * height]
    return session, box, session.add_person(box)


def _by_hand_on_the_crop(predictor, image, session, index, box, click):
    """The refinement of ``index`` with ``click`` (keypoint, x, y pixels) made on a fresh crop of ``box``."""
    window = CropWindow.around(box, session.size)
    poses, (width, height) = session.poses, session.size
    rows = [index]
    crop_people = People(boxes=window.boxes_to_crop(poses.boxes[rows]),
                         keypoints=window.points_to_crop(poses.keypoints[rows]), scores=poses.scores[rows],
                         confidence=poses.confidence[rows], pinned=poses.pinned[rows])
    k, x, y = click
    cx, cy = window.points_to_crop(torch.tensor([x / width, y / height])).tolist()
    crop = CropView(window.image(Image.open(image).convert("RGB")))
    result = predictor.run_refinement(crop, crop_people, [0], [[0, k, cx, cy]], window.size)
    return window.points_to_image(result["keypoints"][0]) * torch.tensor([width, height])


def _keypoints(people, index):
    return torch.tensor(next(p for p in people if p["index"] == index)["keypoints"])[:, :2]


def test_a_box_added_person_is_refined_on_its_crop(image_and_checkpoint, shared_predictor):
    image, _ = image_and_checkpoint
    predictor = shared_predictor
    session, box, index = _added(predictor, image)
    person = next(p for p in session.people(include_deleted=True) if p["index"] == index)
    assert person["window"] == pytest.approx(box, abs=1e-3)
    assert all(p["window"] is None for p in session.people(include_deleted=True) if p["index"] != index)
    x, y = (box[0] + box[2]) / 2, box[1] + 0.2 * (box[3] - box[1])
    expected = _by_hand_on_the_crop(predictor, image, session, index, box, (3, x, y))
    whole = predictor.run_refinement(session, session.poses, [index], [[0, 3, x / session.size[0],
                                                                        y / session.size[1]]], session.size)
    refined = _keypoints(session.refine([(index, 3, x, y)]), index)
    torch.testing.assert_close(refined, expected, atol=1e-3, rtol=0)
    assert refined[3].tolist() == pytest.approx([x, y], abs=1e-3)
    whole_xy = whole["keypoints"][0] * torch.tensor(session.size, dtype=torch.float32)
    assert not torch.allclose(refined, whole_xy, atol=0.5)  # not what the whole image gives


def test_a_click_outside_the_crop_refines_on_the_whole_image(image_and_checkpoint, shared_predictor):
    image, _ = image_and_checkpoint
    predictor = shared_predictor
    session, box, index = _added(predictor, image)
    width, height = session.size
    x, y = width - 1.0, 1.0  # outside the box and its margin
    whole = predictor.run_refinement(session, session.poses, [index], [[0, 5, x / width, y / height]], session.size)
    refined = _keypoints(session.refine([(index, 5, x, y)]), index)
    torch.testing.assert_close(refined, whole["keypoints"][0] * torch.tensor([width, height], dtype=torch.float32),
                               atol=1e-3, rtol=0)


def test_the_window_survives_a_restart_with_the_same_refinement(image_and_checkpoint, shared_predictor):
    image, _ = image_and_checkpoint
    predictor = shared_predictor
    session, box, index = _added(predictor, image)
    record = session.to_record()
    poses = PoseSession.poses_from_record(record, session.size, predictor.num_keypoints)
    torch.testing.assert_close(poses.windows, session.poses.windows, equal_nan=True, atol=1e-5, rtol=0)
    resumed = open_session(predictor, image, people=record)  # its crop is encoded anew, not the proposal's
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    first = _keypoints(session.refine([(index, 9, x, y)]), index)
    again = _keypoints(resumed.refine([(index, 9, x, y)]), index)
    torch.testing.assert_close(again, first, atol=1e-3, rtol=0)
    older = [{k: v for k, v in p.items() if k != "window"} for p in record]  # a record without windows
    assert torch.isnan(PoseSession.poses_from_record(older, session.size, predictor.num_keypoints).windows).all()
