"""The Predictor API and tools/predict.py: predict, correct with clicks, pinned keypoints, errors; the annotation
sessions over it (tools/annotate/session.py); its people are the postprocessor's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.predictor import PERSON_LABEL, Predictor
from tools.annotate.session import open_session

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "config" / "demo.cfg.py")
OPTIONS = {"num_queries": 100, "num_group": 8, "num_group_refine": 4, "dn_number": 4, "nms_iou_threshold": -1.0}


@pytest.fixture(scope="module")
def image_and_checkpoint(tmp_path_factory):
    from datasets.synthetic import write_synthetic_dataset
    from datasets import get_metadata
    from models import build_model
    from util.config import Config, apply_config_to_args
    import argparse

    root = tmp_path_factory.mktemp("predictor")
    write_synthetic_dataset(root / "data", 2, seed=5, num_val=1)
    image = next((root / "data" / "images" / "val2017").glob("*.jpg"))
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict(OPTIONS)
    torch.manual_seed(0)
    args = apply_config_to_args(cfg, argparse.Namespace())
    model, _, _ = build_model(args, get_metadata(args))
    with torch.no_grad():  # the zero-initialised keypoint heads would put every keypoint at its box centre
        for name, param in model.named_parameters():
            if "pose_embed" in name:
                param.add_(torch.randn_like(param) * 0.05)
    torch.save({"model": model.state_dict(), "epoch": 0}, root / "ckpt.pth")
    return image, root / "ckpt.pth"


@pytest.fixture(scope="module")
def shared_predictor(image_and_checkpoint):
    """One loaded model for the tests that start with predict/open (each opens its own session)."""
    predictor = Predictor(CONFIG, image_and_checkpoint[1], options=OPTIONS)
    yield predictor
    predictor.close()


def test_predict_then_clicks_are_pinned_and_others_move(image_and_checkpoint, shared_predictor):
    image, _ = image_and_checkpoint
    predictor = shared_predictor
    people = predictor.predict(image)
    assert len(people) == 4 and people == sorted(people, key=lambda p: -p["score"])
    width, height = predictor.session.size
    person = people[0]
    assert np.asarray(person["keypoints"]).shape == (17, 3) and len(person["box"]) == 4
    before = np.asarray(person["keypoints"])[:, :2]
    after1 = predictor.correct(person=person["index"], keypoint=9, x=0.4 * width, y=0.3 * height)
    kp1 = np.asarray(next(p for p in after1 if p["index"] == person["index"])["keypoints"])
    np.testing.assert_allclose(kp1[9, :2], [0.4 * width, 0.3 * height], rtol=0, atol=1e-3)
    assert np.abs(np.delete(kp1[:, :2], 9, 0) - np.delete(before, 9, 0)).max() > 1e-3  # the rest is re-predicted
    after2 = predictor.correct(clicks=[(person["index"], 0, 0.5 * width, 0.2 * height)])
    kp2 = np.asarray(next(p for p in after2 if p["index"] == person["index"])["keypoints"])
    # both clicks stay exactly where they were made (click_freeze='all')
    np.testing.assert_allclose(kp2[[9, 0], :2], [[0.4 * width, 0.3 * height], [0.5 * width, 0.2 * height]], atol=1e-3)


def test_errors_are_clear(image_and_checkpoint, tmp_path):
    image, ckpt = image_and_checkpoint
    predictor = Predictor(CONFIG, ckpt, options=OPTIONS)
    with pytest.raises(RuntimeError, match="predict"):
        predictor.correct(person=0, keypoint=0, x=1, y=1)
    with pytest.raises(OSError, match="cannot read image"):
        predictor.predict(tmp_path / "missing.jpg")
    predictor.predict(image)
    with pytest.raises(ValueError, match="person 99 does not exist"):
        predictor.correct(person=99, keypoint=0, x=1, y=1)
    with pytest.raises(ValueError, match="outside the"):
        predictor.correct(person=0, keypoint=0, x=-5, y=1)
    with pytest.raises(ValueError, match="person, keypoint, x and y"):
        predictor.correct(person=0, keypoint=0, x=1)


def test_predict_tool_writes_image_and_json(image_and_checkpoint, tmp_path):
    image, ckpt = image_and_checkpoint
    cfg = tmp_path / "small.cfg.py"  # the tool takes a config file: one with the small settings
    cfg.write_text(f"_base_ = ['{CONFIG}']\n" + "".join(f"{k} = {v}\n" for k, v in OPTIONS.items()))
    result = subprocess.run([sys.executable, "-m", "tools.predict", str(image), "--config", str(cfg),
                             "--checkpoint", str(ckpt), "--click", "0,5,10,12", "--out-dir", str(tmp_path / "out"),
                             "--score-threshold", "0"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads((tmp_path / "out" / f"{image.stem}_poses.json").read_text())
    assert payload["clicks"] == [[0, 5, 10.0, 12.0]] and len(payload["people"]) == 4
    clicked = next(p for p in payload["people"] if p["index"] == 0)
    np.testing.assert_allclose(clicked["keypoints"][5][:2], [10.0, 12.0], atol=1e-3)
    assert (tmp_path / "out" / f"{image.stem}_poses.jpg").stat().st_size > 1000


def _xy(people, index):
    return np.asarray(next(p for p in people if p["index"] == index)["keypoints"])[:, :2]


def test_session_refines_only_the_clicked_people_with_the_same_result(image_and_checkpoint, shared_predictor):
    """The refinement groups are independent: re-running only the clicked person (the session's and
    Predictor.correct's default) gives it the same poses as re-running everyone (refine_all=True), and leaves the
    others untouched."""
    image, _ = image_and_checkpoint
    predictor = shared_predictor
    everyone = predictor.predict(image)
    target = everyone[1]["index"]
    click = (target, 5, 30.0, 40.0)
    all_people = predictor.correct(clicks=[click], refine_all=True)
    predictor.predict(image)
    clicked_only = predictor.correct(clicks=[click])
    session = open_session(predictor, image)
    only = session.refine([click])
    np.testing.assert_allclose(_xy(only, target), _xy(all_people, target), atol=1e-4)
    np.testing.assert_allclose(_xy(clicked_only, target), _xy(all_people, target), atol=1e-4)
    for person in everyone:
        if person["index"] != target:
            np.testing.assert_array_equal(_xy(only, person["index"]), np.asarray(person["keypoints"])[:, :2])
            np.testing.assert_array_equal(_xy(clicked_only, person["index"]), np.asarray(person["keypoints"])[:, :2])
            assert np.abs(_xy(all_people, person["index"]) - np.asarray(person["keypoints"])[:, :2]).max() > 1e-3


def test_session_edits_undo_redo_and_record_round_trip(image_and_checkpoint, shared_predictor):
    image, _ = image_and_checkpoint
    predictor = shared_predictor
    session = open_session(predictor, image)
    start = session.people()
    assert not session.can_undo and len(start) == 4
    first = start[0]["index"]
    session.refine([(first, 9, 20.0, 30.0)])
    session.set_visibility(first, 9, 1)
    session.swap_left_right(first)  # keypoint 9 (left wrist) and its flags move to 10 (right wrist)
    moved = next(p for p in session.people() if p["index"] == first)
    np.testing.assert_allclose(moved["keypoints"][10][:2], [20.0, 30.0], atol=1e-3)
    assert moved["pinned"][10] and not moved["pinned"][9] and moved["visibility"][10] == 1
    added = session.add_person([5.0, 5.0, 60.0, 90.0])
    assert added == 4 and session.people(include_deleted=True)[0]["source"] in ("model", "user")
    session.delete_person(first)
    assert first not in [p["index"] for p in session.people()]
    with pytest.raises(ValueError, match="was deleted"):
        session.refine([(first, 0, 1.0, 1.0)])
    record = session.to_record()
    assert [p["index"] for p in record] == list(range(5)) and record[first]["deleted"]
    for _ in range(5):
        session.undo()
    assert not session.can_undo and session.people() == start
    with pytest.raises(ValueError, match="nothing to undo"):
        session.undo()
    for _ in range(5):
        session.redo()
    assert [p["index"] for p in session.people()] == [p["index"] for p in session.people(include_deleted=True)
                                                      if not p["deleted"]]
    resumed = open_session(predictor, image, people=record)
    for old, new in zip(record, resumed.to_record()):
        np.testing.assert_allclose(np.asarray(new["keypoints"])[:, :2], np.asarray(old["keypoints"])[:, :2],
                                   atol=1e-3)
        assert (new["pinned"], new["visibility"], new["deleted"], new["source"]) == \
            (old["pinned"], old["visibility"], old["deleted"], old["source"])


def test_dropped_encoder_state_is_rebuilt_with_the_same_result(image_and_checkpoint):
    from PIL import Image

    image, ckpt = image_and_checkpoint
    predictor = Predictor(CONFIG, ckpt, options=OPTIONS, max_cached_states=1)
    kept = open_session(predictor, image)
    expected = kept.refine([(0, 3, 25.0, 35.0)])
    dropped = open_session(predictor, image)
    other = open_session(predictor, np.asarray(Image.open(image)))  # an array, not a path: evicts `dropped`
    assert dropped.state is None and other.state is not None
    again = dropped.refine([(0, 3, 25.0, 35.0)])
    np.testing.assert_allclose(_xy(again, 0), _xy(expected, 0), atol=1e-4)


def test_prefetch_and_batches_give_the_same_predictions(image_and_checkpoint, shared_predictor, tmp_path):
    from PIL import Image, ImageOps

    image, _ = image_and_checkpoint
    mirrored = tmp_path / "mirrored.jpg"  # same size: batching pads nothing, so results must match
    ImageOps.mirror(Image.open(image)).save(mirrored, quality=95)
    predictor = shared_predictor
    single = [predictor.predict(image), predictor.predict(mirrored)]
    predictor.prefetch(mirrored)
    assert str(mirrored.resolve()) in predictor._pending
    prefetched = open_session(predictor, mirrored)
    assert not predictor._pending
    np.testing.assert_allclose(np.asarray([p["keypoints"] for p in prefetched.people()]),
                               np.asarray([p["keypoints"] for p in single[1]]), atol=1e-4)
    batched = predictor.predict_batch([image, mirrored], batch_size=2)
    folder = tmp_path / "folder"
    folder.mkdir()
    for path in (image, mirrored):
        (folder / path.name).write_bytes(path.read_bytes())
    by_folder = dict(predictor.predict_folder(folder, batch_size=2))
    for i, path in enumerate((image, mirrored)):
        for got in (batched[i], by_folder[folder / path.name]):
            assert [p["index"] for p in got] == [p["index"] for p in single[i]]
            np.testing.assert_allclose(np.asarray([p["keypoints"] for p in got]),
                                       np.asarray([p["keypoints"] for p in single[i]]), atol=1e-3)
    with pytest.raises(ValueError, match="batch_size"):
        predictor.predict_batch([image], batch_size=0)


def _postprocessed_people(predictor, image, threshold):
    """The postprocessor's person-class detections at or above ``threshold``: (scores, boxes, keypoints) in pixels."""
    from PIL import Image

    pil = Image.open(image).convert("RGB")
    with torch.no_grad():
        outputs = predictor.model(predictor._samples([pil]))
    result = predictor.postprocess(outputs, torch.tensor([[pil.height, pil.width]], dtype=torch.float32))[0]
    keep = (result["labels"] == PERSON_LABEL) & (result["scores"] >= threshold)
    return (result["scores"][keep].numpy(), result["boxes"][keep].numpy(),
            result["keypoints"][keep].view(-1, predictor.num_keypoints, 3)[..., :2].numpy())


def _worst_overlap(boxes) -> float:
    from torchvision.ops import box_iou

    boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.float32)
    return float(box_iou(boxes, boxes).fill_diagonal_(0).max())


@pytest.mark.parametrize("with_nms", [False, True])
def test_the_people_are_the_postprocessors_detections(image_and_checkpoint, shared_predictor, monkeypatch, with_nms):
    """One decoding for the tool and for AP: the Predictor's people are the postprocessor's person detections
    (its top num_select, its NMS, the same score threshold), best first; ``top_k`` only cuts that list."""
    image, _ = image_and_checkpoint
    predictor = shared_predictor
    monkeypatch.setattr(predictor, "top_k", 1000)
    if with_nms:  # an IoU threshold below the worst overlap, so NMS drops someone
        before = _postprocessed_people(predictor, image, 0.0)[1]
        monkeypatch.setattr(predictor.postprocess, "nms_iou_threshold", _worst_overlap(before) / 2)
        assert len(_postprocessed_people(predictor, image, 0.0)[1]) < len(before)
    everyone = _postprocessed_people(predictor, image, 0.0)[0]
    threshold = float(np.median(everyone))  # a threshold that leaves some people out
    monkeypatch.setattr(predictor, "score_threshold", threshold)
    scores, boxes, keypoints = _postprocessed_people(predictor, image, threshold)
    assert 0 < len(scores) < len(everyone)
    people = predictor.predict(image)
    np.testing.assert_allclose([p["score"] for p in people], scores, atol=1e-5)
    np.testing.assert_allclose([p["box"] for p in people], boxes, atol=1e-3)
    np.testing.assert_allclose([np.asarray(p["keypoints"])[:, :2] for p in people], keypoints, atol=1e-3)
    assert [p["index"] for p in people] == list(range(len(people)))  # rows in the postprocessor's order
    monkeypatch.setattr(predictor, "top_k", 2)
    cut = predictor.predict(image)
    assert [p["score"] for p in cut] == [p["score"] for p in people[:2]]
    detected = predictor.detect_batch([image], threshold)[0]
    np.testing.assert_allclose([p["score"] for p in detected], scores, atol=1e-5)


def test_nms_drops_overlapping_people(image_and_checkpoint, shared_predictor, monkeypatch):
    """With nms_iou_threshold > 0 no two of the Predictor's people overlap by more than it; off, some do."""
    image, _ = image_and_checkpoint
    monkeypatch.setattr(shared_predictor, "top_k", 1000)
    everyone = shared_predictor.predict(image)
    off = _worst_overlap([p["box"] for p in everyone])
    assert off > 0
    monkeypatch.setattr(shared_predictor.postprocess, "nms_iou_threshold", off / 2)
    kept = shared_predictor.predict(image)
    assert _worst_overlap([p["box"] for p in kept]) <= off / 2 and 0 < len(kept) < len(everyone)
