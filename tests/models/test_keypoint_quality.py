"""The keypoint-quality head: its ranking metric, its checkpoint entry, and how the Predictor uses it (or does
without it: the original's checkpoints carry no such entry and still load strict)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from models.keypoint_quality import (CHECKPOINT_KEY, KeypointQualityHead, auroc, keypoint_off,
                                     quality_from_checkpoint, quality_to_checkpoint)
import models.predictor as mp
from models.predictor import Predictor
from tools.annotate.session import open_session

from .test_predictor import CONFIG, OPTIONS, image_and_checkpoint  # noqa: F401  (the module fixture)


def brute_force_auroc(scores, positives) -> float:
    pairs = [(p, n) for p, n in itertools.product([s for s, y in zip(scores, positives) if y],
                                                  [s for s, y in zip(scores, positives) if not y])]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_the_pair_count_with_ties_as_half(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (40,), generator=g).float()  # many ties
    positives = torch.rand(40, generator=g) < 0.3
    assert auroc(scores, positives) == pytest.approx(brute_force_auroc(scores.tolist(), positives.tolist()))
    assert auroc(torch.arange(4.0), torch.tensor([False, False, True, True])) == 1.0
    assert math.isnan(auroc(torch.ones(3), torch.zeros(3, dtype=torch.bool)))  # no positive: undefined


def test_keypoint_off_uses_the_truths_box_diagonal():
    truth = torch.zeros(1, 2, 2)
    predicted = torch.tensor([[[2.9, 0.0], [0.0, 3.1]]])
    box = torch.tensor([[0.0, 0.0, 30.0, 40.0]])  # diagonal 50: 5% is 2.5 px, 6% is 3 px
    assert keypoint_off(predicted, truth, box, 0.05).tolist() == [[True, True]]
    assert keypoint_off(predicted, truth, box, 0.06).tolist() == [[False, True]]


def test_checkpoint_entry_round_trips_and_refuses_another_model():
    torch.manual_seed(0)
    head = KeypointQualityHead(32, 5, width=16)
    entry = quality_to_checkpoint(head, {"note": "x"})
    loaded = quality_from_checkpoint(entry, 32, 5)
    hidden, agreement = torch.randn(2, 3, 5, 32), torch.rand(2, 3, 5)
    for a, b in zip(head(hidden, agreement).values(), loaded(hidden, agreement).values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="trained for 5 keypoints"):
        quality_from_checkpoint(entry, 32, 17)
    with pytest.raises(ValueError, match="not a keypoint-quality head"):
        quality_from_checkpoint({"format": 99}, 32, 5)
    with pytest.raises(ValueError, match="reads"):
        head(torch.randn(2, 4, 32), torch.rand(2, 4))


@pytest.fixture(scope="module")
def with_head(image_and_checkpoint, tmp_path_factory):  # noqa: F811
    """The test checkpoint plus a random quality head whose visibility output is not all 2."""
    image, path = image_and_checkpoint
    checkpoint = torch.load(path, weights_only=True)
    torch.manual_seed(3)
    plain = Predictor(CONFIG, path, options=OPTIONS)
    head = KeypointQualityHead(plain.args.hidden_dim, plain.num_keypoints)
    plain.close()
    with torch.no_grad():
        head.visibility.bias.copy_(torch.tensor([0.0, 0.0, 0.0]))
        head.visibility.weight.mul_(50)  # spread the argmax over the three flags
    checkpoint[CHECKPOINT_KEY] = quality_to_checkpoint(head)
    out = tmp_path_factory.mktemp("quality") / "with_head.pth"
    torch.save(checkpoint, out)
    return image, path, out, head


def test_without_the_entry_the_model_loads_strict_and_predicts_all_visible(with_head):
    image, plain_path, head_path, _ = with_head
    plain = Predictor(CONFIG, plain_path, options=OPTIONS)
    headed = Predictor(CONFIG, head_path, options=OPTIONS)
    try:
        assert not plain.has_quality and headed.has_quality
        # the head lives beside the model: the detector's keys are the original's in both
        assert plain.model.state_dict().keys() == headed.model.state_dict().keys()
        session = open_session(plain, image)
        assert (session.poses.visibility == 2).all()
        people_plain = plain.predict(image)
        people_headed = headed.predict(image)
        # same detector, same people and keypoints; only confidence and visibility come from the head
        np.testing.assert_allclose([p["box"] for p in people_plain], [p["box"] for p in people_headed])
        np.testing.assert_allclose(
                                   [[k[:2] for k in p["keypoints"]] for p in people_plain],
                                   [[k[:2] for k in p["keypoints"]] for p in people_headed])
    finally:
        plain.close()
        headed.close()


def test_the_predictor_takes_confidence_and_visibility_from_the_head(with_head):
    image, _, head_path, head = with_head
    predictor = Predictor(CONFIG, head_path, options=OPTIONS)
    try:
        prediction = predictor.prediction(image)
        people = prediction.people
        assert people.predicted_visibility is not None
        # recompute what the head says for these people: the no-click refinement from their keypoints
        result = predictor.model.refine(prediction.state, people.boxes[None], people.keypoints[None],
                                        torch.zeros(0, 5), click_freeze="all")
        agreement = predictor.agreement(result, people.keypoints[None], [prediction.size])
        confidence, visibility = head.confidence_and_visibility(result.keypoint_hidden, agreement)
        torch.testing.assert_close(people.confidence, confidence[0])
        assert torch.equal(people.predicted_visibility, visibility[0])
        assert len(set(visibility.flatten().tolist())) > 1  # the head's flags, not a constant
        # the annotation session starts from the predicted flags
        session = open_session(predictor, image)
        assert torch.equal(session.poses.visibility, visibility[0])
        # a refined person's clicked keypoint is certain; the others get the head's confidence of the refinement
        px = session.people()[0]
        refined = session.refine([(px["index"], 3, px["keypoints"][3][0] + 2, px["keypoints"][3][1] + 1)])
        clicked = next(p for p in refined if p["index"] == px["index"])
        assert clicked["confidence"][3] == 1.0 and all(0 <= c <= 1 for c in clicked["confidence"])
    finally:
        predictor.close()


def test_a_box_added_person_comes_from_the_crop_and_lies_in_the_box(with_head):
    image, _, head_path, _ = with_head
    predictor = Predictor(CONFIG, head_path, options=OPTIONS)
    try:
        session = open_session(predictor, image)
        width, height = session.size
        box = [0.2 * width, 0.25 * height, 0.6 * width, 0.9 * height]
        index = session.add_person(box)
        added = next(p for p in session.people(include_deleted=True) if p["index"] == index)
        margin = mp.CROP_MARGIN * max(box[2] - box[0], box[3] - box[1]) + 1
        x0, y0, x1, y1 = added["box"]
        assert x0 >= box[0] - margin and y0 >= box[1] - margin and x1 <= box[2] + margin and y1 <= box[3] + margin
        assert added["visibility"] == session.poses.visibility[index].tolist()
        with pytest.raises(ValueError, match="'crop' or 'queries'"):
            predictor.propose_person(session, torch.tensor([[0.5, 0.5, 0.2, 0.2]]), session.size, method="x")
        queries = predictor.propose_person(session, torch.tensor([[0.5, 0.5, 0.2, 0.2]]), session.size,
                                           method="queries")
        assert queries.keypoints.shape == (1, predictor.num_keypoints, 2)
    finally:
        predictor.close()


def test_the_page_shows_confidence_only_with_a_head_and_starts_from_predicted_visibility(with_head, tmp_path):
    from fastapi.testclient import TestClient

    from tools.annotate.server import create_app
    from tools.annotate.workspace import Workspace

    image, plain_path, head_path, _ = with_head
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(open(image, "rb").read())
    for path, shown in ((plain_path, False), (head_path, True)):
        predictor = Predictor(CONFIG, path, options=OPTIONS)
        workspace = Workspace(folder, tmp_path / f"{path.stem}.json", predictor, threshold=0.0)
        try:
            client = TestClient(create_app(workspace), base_url="http://127.0.0.1:8765")
            state = client.post("/api/open", json={"image": "a.jpg"}).json()
            assert state["confidence_shown"] is shown
            flags = {flag for p in state["people"] for flag in p["visibility"]}
            predicted = predictor.prediction(image).people.predicted_visibility
            if shown:
                assert [p["visibility"] for p in state["people"]] == [
                    predicted[p["index"]].tolist() for p in state["people"]]
                assert flags != {2}  # the head's flags, not all visible
            else:
                assert predicted is None and flags == {2}
        finally:
            workspace.close()
            predictor.close()


def test_a_box_proposal_passes_over_a_person_already_present(with_head):
    image, plain_path, _, _ = with_head
    predictor = Predictor(CONFIG, plain_path, options=OPTIONS)
    try:
        session = open_session(predictor, image)
        box = torch.tensor([[0.45, 0.55, 0.5, 0.7]])
        first = predictor.propose_person(session, box, session.size)
        again = predictor.propose_person(session, box, session.size, present=first.keypoints)
        assert not torch.allclose(again.keypoints, first.keypoints)  # another candidate of the crop
        far = predictor.propose_person(session, box, session.size, present=first.keypoints + 0.5)
        torch.testing.assert_close(far.keypoints, first.keypoints)  # someone elsewhere changes nothing
        # the page's session passes the people shown: a box over a shown person's own proposal gives another
        index = session.add_person([v * s for v, s in zip((0.2, 0.2, 0.7, 0.9), session.size * 2)])
        added = session.poses.keypoints[index]
        second = session.add_person([v * s for v, s in zip((0.2, 0.2, 0.7, 0.9), session.size * 2)], 0.0)
        assert not torch.allclose(session.poses.keypoints[second], added)
    finally:
        predictor.close()
