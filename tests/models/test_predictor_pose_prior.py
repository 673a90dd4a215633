"""How the Predictor and the annotation session use a checkpoint's pose prior: only people added from a drawn box
start their refinements from it; the drawn box is kept in the session's record."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.pose_prior import CHECKPOINT_KEY, PosePrior
from models.predictor import Predictor
from tools.annotate.session import PoseSession, open_session

from .test_predictor import CONFIG, OPTIONS, image_and_checkpoint  # noqa: F401  (the module fixture)


def standing_prior(num_keypoints: int = 17, count: int = 200) -> PosePrior:
    """A prior of people standing in their boxes: keypoints spread top to bottom, a little noise."""
    rng = np.random.default_rng(0)
    base = np.column_stack((np.linspace(0.3, 0.7, num_keypoints) % 1.0, np.linspace(0.05, 0.95, num_keypoints)))
    poses = base + rng.normal(scale=0.03, size=(count, num_keypoints, 2))
    boxes = np.column_stack((rng.uniform(0, 50, count), rng.uniform(0, 50, count), np.full(count, 40.0),
                             np.full(count, 100.0)))
    pixels = poses * boxes[:, None, 2:] + boxes[:, None, :2]
    keypoints = np.concatenate((pixels, np.full((count, num_keypoints, 1), 2.0)), -1)
    return PosePrior.fit(keypoints, boxes)


@pytest.fixture(scope="module")
def predictors(image_and_checkpoint, tmp_path_factory):  # noqa: F811
    image, path = image_and_checkpoint
    checkpoint = torch.load(path, weights_only=True)
    checkpoint[CHECKPOINT_KEY] = standing_prior().to_checkpoint()
    with_prior = tmp_path_factory.mktemp("prior") / "with_prior.pth"
    torch.save(checkpoint, with_prior)
    plain, primed = Predictor(CONFIG, path, options=OPTIONS), Predictor(CONFIG, with_prior, options=OPTIONS)
    yield image, plain, primed
    plain.close()
    primed.close()


def test_the_prior_is_loaded_beside_the_unchanged_model(predictors):
    _, plain, primed = predictors
    assert plain.pose_prior is None and primed.pose_prior is not None
    for a, b in zip(plain.model.state_dict().values(), primed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_only_a_drawn_person_starts_its_refinement_from_the_prior(predictors):
    image, plain, primed = predictors
    sessions = [open_session(p, image) for p in (plain, primed)]
    width, height = sessions[0].size
    box = [0.25 * width, 0.2 * height, 0.55 * width, 0.85 * height]
    added = [s.add_person(box) for s in sessions]
    assert added[0] == added[1]
    index = added[0]
    people = sessions[1].people()
    drawn = next(p for p in people if p["index"] == index)["drawn_box"]
    np.testing.assert_allclose(drawn, box, atol=1e-3)
    assert all(p["drawn_box"] is None for p in people if p["index"] != index)
    # the same proposal from both (the prior plays no part in proposing), different refinements of it
    torch.testing.assert_close(sessions[0].poses.keypoints, sessions[1].poses.keypoints)
    model_person = next(p["index"] for p in people if p["index"] != index)
    poses = sessions[1].poses
    click = [[0, 9, 0.4, 0.5]]
    start = primed.start_from_prior(poses, [index], click)[0]
    drawn_box = torch.tensor([box[0] / width, box[1] / height, box[2] / width, box[3] / height], dtype=torch.float64)
    placed = torch.zeros(17, dtype=torch.bool)
    placed[9] = True
    current = poses.keypoints[index].clone()
    current[9] = torch.tensor([0.4, 0.5])
    torch.testing.assert_close(start, primed.pose_prior.condition(drawn_box, current, placed).clamp(0, 1))
    assert (start - poses.keypoints[index]).abs().max() > 1e-3
    torch.testing.assert_close(primed.start_from_prior(poses, [model_person], click)[0][~placed],
                               poses.keypoints[model_person][~placed])  # the model's people: as they are
    torch.testing.assert_close(plain.start_from_prior(poses, [index], click)[0][~placed],
                               poses.keypoints[index][~placed])  # no prior: as they are
    # through the session: the drawn person's refinement differs, the model's person's does not
    for person in (index, model_person):
        x, y = 0.4 * width, 0.5 * height
        refined = [s.refine([(person, 9, x, y)]) for s in sessions]
        keypoints = [np.asarray(next(p for p in r if p["index"] == person)["keypoints"])[:, :2] for r in refined]
        if person == index:
            assert np.abs(keypoints[0] - keypoints[1]).max() > 0.5
        else:
            np.testing.assert_allclose(keypoints[0], keypoints[1], atol=1e-4)
        for s in sessions:
            s.undo()


def test_a_box_at_the_image_border_is_open_there(predictors, monkeypatch):
    image, _, primed = predictors
    seen = []
    original = PosePrior.condition

    def spy(self, box, keypoints, placed, noise=0.15, open_edges=(False,) * 4):
        seen.append(tuple(open_edges))
        return original(self, box, keypoints, placed, noise, open_edges)

    monkeypatch.setattr(PosePrior, "condition", spy)
    session = open_session(primed, image)
    width, height = session.size
    index = session.add_person([0.0, 0.3 * height, 0.4 * width, height])  # cut by the left and bottom borders
    session.refine([(index, 0, 0.2 * width, 0.4 * height)])
    assert seen == [(True, False, False, True)]


def test_the_drawn_box_survives_the_record_and_old_records_load(predictors):
    image, _, primed = predictors
    session = open_session(primed, image)
    width, height = session.size
    box = [0.1 * width, 0.1 * height, 0.5 * width, 0.9 * height]
    index = session.add_person(box)
    record = session.to_record()
    poses = PoseSession.poses_from_record(record, session.size, 17)
    torch.testing.assert_close(poses.drawn_boxes, session.poses.drawn_boxes, equal_nan=True)
    assert math.isnan(float(poses.drawn_boxes[0, 0])) and not math.isnan(float(poses.drawn_boxes[index, 0]))
    for person in record:
        person.pop("drawn_box")  # a record written before drawn boxes were kept
    assert torch.isnan(PoseSession.poses_from_record(record, session.size, 17).drawn_boxes).all()
    record[0]["drawn_box"] = [1, 2, 3]
    with pytest.raises(ValueError, match="'drawn_box' is \\[x0, y0, x1, y1\\]"):
        PoseSession.poses_from_record(record, session.size, 17)
