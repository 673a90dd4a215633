"""Switching the annotation tool's model while it runs (POST /api/model and --watch), on tiny random-weight models:
the work done stays, unopened images get the new model's people, the open image keeps its own, and a checkpoint
that cannot be used is refused with the old model kept."""
from __future__ import annotations

import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the annotation tool needs fastapi (pip install -r requirements.txt)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (pip install -r requirements.txt)")

from fastapi.testclient import TestClient  # noqa: E402

from models.predictor import Predictor  # noqa: E402
from tools.annotate.cli import CheckpointWatcher, parse_args  # noqa: E402
from tools.annotate.server import create_app  # noqa: E402
from tools.annotate.workspace import ModelSource, Workspace  # noqa: E402

from .conftest import ANNOTATE_CONFIG, ANNOTATE_OPTIONS, make_checkpoint  # noqa: E402

LOCAL = "http://127.0.0.1:8765"


def load(config: str, checkpoint: str) -> Predictor:
    return Predictor(config, checkpoint, options=ANNOTATE_OPTIONS)


def ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def refused(response, *words):
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail
    return detail


@pytest.fixture(scope="module")
def other_weights(annotate_assets, tmp_path_factory):
    """The test checkpoint with its heads moved: the same architecture and layout, other people and scores."""
    ckpt = torch.load(annotate_assets["checkpoint"], weights_only=True)
    generator = torch.Generator().manual_seed(7)
    for name, value in ckpt["model"].items():
        if value.is_floating_point() and any(head in name for head in ("class_embed", "pose_embed", "bbox_embed")):
            value.add_(torch.randn(value.shape, generator=generator) * 0.2)
    path = tmp_path_factory.mktemp("switch") / "finetuned.pth"
    torch.save(ckpt, path)
    return path


@pytest.fixture()
def tool(annotate_assets, tmp_path):
    predictor = load(ANNOTATE_CONFIG, str(annotate_assets["checkpoint"]))
    workspace = Workspace(annotate_assets["images"], tmp_path / "ann.json", predictor, threshold=0.0,
                          source=ModelSource(ANNOTATE_CONFIG, annotate_assets["checkpoint"], load))
    yield workspace, TestClient(create_app(workspace), base_url=LOCAL)
    workspace.close()


def by_index(state, index):
    return next(p for p in state["people"] if p["index"] == index)


def people_of(state):
    return [(p["index"], p["keypoints"], p["score"]) for p in state["people"]]


def test_switch_keeps_the_work_and_predicts_unopened_images_with_the_new_model(tool, annotate_assets, other_weights,
                                                                            tmp_path):
    workspace, client = tool
    old = workspace.predictor
    assert ok(client.get("/api/meta"))["checkpoint"] == str(annotate_assets["checkpoint"].resolve())
    state = ok(client.post("/api/open", json={"image": "a.jpg"}))
    index = state["people"][0]["index"]
    state = ok(client.post("/api/refine", json={"image": "a.jpg", "clicks": [
        {"person": index, "keypoint": 9, "x": 30.0, "y": 40.0}]}))
    before_file = json.loads(workspace.path.read_text())
    before_effort = copy.deepcopy(workspace.records["a.jpg"]["effort"])

    info = ok(client.post("/api/model", json={"checkpoint": str(other_weights)}))
    assert info["checkpoint"] == str(other_weights.resolve()) and info["num_keypoints"] == 17
    assert info["config"] == str(os.path.realpath(ANNOTATE_CONFIG))  # the config the tool started with
    assert info["previous_model_until_next_open"] == "a.jpg"
    assert ok(client.get("/api/meta"))["checkpoint"] == str(other_weights.resolve())
    assert ok(client.get("/api/model"))["checkpoint"] == str(other_weights.resolve())
    assert workspace.predictor is not old
    # nothing done so far changed: the file, the open image's people, its effort log
    assert json.loads(workspace.path.read_text()) == before_file
    assert workspace.records["a.jpg"]["effort"] == before_effort
    assert people_of(workspace.state("a.jpg")) == people_of(state)
    # the open image goes on refining with the model its people came from
    assert workspace.sessions["a.jpg"].predictor is old
    state = ok(client.post("/api/refine", json={"image": "a.jpg", "clicks": [
        {"person": index, "keypoint": 0, "x": 35.0, "y": 20.0}]}))
    np.testing.assert_allclose(np.asarray(by_index(state, index)["keypoints"])[[9, 0], :2],
                               [[30.0, 40.0], [35.0, 20.0]], atol=1e-3)
    assert workspace.records["a.jpg"]["effort"]["people"][str(index)]["clicks"] == 2

    # an image not opened yet: the new model's people, not the old one's
    new_state = ok(client.post("/api/open", json={"image": "b.jpg"}))
    reference = {}
    for label, checkpoint in (("old", annotate_assets["checkpoint"]), ("new", other_weights)):
        predictor = load(ANNOTATE_CONFIG, str(checkpoint))
        ref = Workspace(annotate_assets["images"], tmp_path / f"{label}.json", predictor, threshold=0.0)
        reference[label] = people_of(ref.open("b.jpg"))
        predictor.close()
    assert people_of(new_state) == reference["new"] and people_of(new_state) != reference["old"]
    # opening another image moved the previously open one to the new model, people and clicks kept
    assert workspace.sessions["a.jpg"].predictor is workspace.predictor
    assert ok(client.get("/api/model"))["previous_model_until_next_open"] is None
    state = ok(client.post("/api/open", json={"image": "a.jpg"}))
    np.testing.assert_allclose(np.asarray(by_index(state, index)["keypoints"])[[9, 0], :2],
                               [[30.0, 40.0], [35.0, 20.0]], atol=1e-3)
    state = ok(client.post("/api/refine", json={"image": "a.jpg", "clicks": [
        {"person": index, "keypoint": 5, "x": 50.0, "y": 50.0}]}))  # re-encoded by the new model
    np.testing.assert_allclose(np.asarray(by_index(state, index)["keypoints"])[[9, 0, 5], :2],
                               [[30.0, 40.0], [35.0, 20.0], [50.0, 50.0]], atol=1e-3)
    assert workspace.records["a.jpg"]["effort"]["people"][str(index)]["clicks"] == 3
    assert ok(client.post("/api/undo", json={"image": "a.jpg"}))["can_undo"]  # the undo history survived too


def test_a_checkpoint_of_another_keypoint_layout_is_refused_and_the_old_model_stays(tool, tmp_path):
    from datasets.metadata import CROWDPOSE_KEYPOINTS

    workspace, client = tool
    old, old_checkpoint = workspace.predictor, workspace.checkpoint
    state = ok(client.post("/api/open", json={"image": "a.jpg"}))
    k14 = make_checkpoint(tmp_path / "k14.pth", {**ANNOTATE_OPTIONS, "num_body_points": 14})
    ckpt = torch.load(k14, weights_only=True)
    ckpt["keypoint_metadata"] = CROWDPOSE_KEYPOINTS.to_dict()  # a checkpoint that records its layout
    torch.save(ckpt, tmp_path / "crowdpose.pth")
    refused(client.post("/api/model", json={"checkpoint": str(tmp_path / "crowdpose.pth")}),
                     "another keypoint layout", "crowdpose (14 keypoints: left_shoulder", "coco (17 keypoints: nose",
                     f"stays (loaded from {old_checkpoint})")
    # one that does not record it does not fit the config's 17-keypoint model
    refused(client.post("/api/model", json={"checkpoint": str(k14)}), "cannot load", "num_body_points")
    assert workspace.predictor is old and workspace.checkpoint == old_checkpoint
    assert ok(client.get("/api/meta"))["checkpoint"] == old_checkpoint
    assert people_of(ok(client.post("/api/open", json={"image": "a.jpg"}))) == people_of(state)


def test_missing_damaged_or_malformed_requests_are_refused(tool, tmp_path):
    workspace, client = tool
    old, old_checkpoint = workspace.predictor, workspace.checkpoint
    refused(client.post("/api/model", json={"checkpoint": str(tmp_path / "none.pth")}),
            "checkpoint not found", str(tmp_path / "none.pth"), f"stays (loaded from {old_checkpoint})")
    refused(client.post("/api/model", json={"checkpoint": str(tmp_path)}), "is a directory")
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(open(old_checkpoint, "rb").read()[:5000])
    refused(client.post("/api/model", json={"checkpoint": str(damaged)}), "damaged")
    refused(client.post("/api/model", json={"checkpoint": old_checkpoint, "config": str(tmp_path / "x.cfg.py")}),
            "config not found")
    assert client.post("/api/model", json={"checkpoint": old_checkpoint, "device": "cuda"}).status_code == 422
    assert client.post("/api/model", json={"checkpoint": ""}).status_code == 422
    assert client.post("/api/model", json={}).status_code == 422
    # guarded like every other write: another page, another host name, a form post
    assert client.post("/api/model", json={"checkpoint": old_checkpoint},
                       headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/api/model", content=json.dumps({"checkpoint": old_checkpoint}),
                       headers={"Content-Type": "text/plain"}).status_code == 415
    assert TestClient(create_app(workspace), base_url="http://evil.example").post(
        "/api/model", json={"checkpoint": old_checkpoint}).status_code == 421
    assert workspace.predictor is old and workspace.checkpoint == old_checkpoint


def replace_file(source, target):
    """Write ``target`` anew as a trainer would (a new file renamed over it), with a later mtime."""
    temporary = target.with_suffix(".tmp")
    shutil.copyfile(source, temporary)
    stat = target.stat() if target.exists() else None
    os.replace(temporary, target)
    if stat is not None:
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_watch_switches_when_the_file_changed_and_settled(tool, annotate_assets, other_weights, tmp_path):
    workspace, client = tool
    watched = tmp_path / "watched.pth"
    shutil.copyfile(annotate_assets["checkpoint"], watched)
    logged = []
    watcher = CheckpointWatcher(watched, workspace.switch_model, log=logged.append)
    old = workspace.predictor
    assert watcher.poll() == "unchanged"  # the file as it was at the start is no change

    replace_file(other_weights, watched)
    assert watcher.poll() == "changing"  # not used before it looks the same twice
    assert workspace.predictor is old
    assert watcher.poll() == "switched"
    assert workspace.checkpoint == str(watched.resolve()) and workspace.predictor is not old
    assert ok(client.get("/api/meta"))["checkpoint"] == str(watched.resolve())
    assert "switched to" in logged[-1] and "17 keypoints" in logged[-1]
    assert watcher.poll() == "unchanged"

    # a damaged file is refused (logged, the model stays) and not tried again until it changes
    current = workspace.predictor
    broken = tmp_path / "broken.pth"
    broken.write_bytes(annotate_assets["checkpoint"].read_bytes()[:5000])  # a copy cut short
    replace_file(broken, watched)
    assert [watcher.poll(), watcher.poll(), watcher.poll()] == ["changing", "refused", "unchanged"]
    assert "not switching" in logged[-1] and "damaged" in logged[-1] and workspace.predictor is current
    watched.unlink()
    assert watcher.poll() == "missing"
    replace_file(annotate_assets["checkpoint"], watched)  # back again
    assert [watcher.poll(), watcher.poll()] == ["changing", "switched"]
    assert workspace.predictor is not current

    def explode(_):
        raise RuntimeError("out of memory")
    failing = CheckpointWatcher(watched, explode, log=logged.append)
    replace_file(other_weights, watched)
    assert [failing.poll(), failing.poll()] == ["changing", "failed"]
    assert "out of memory" in logged[-1]
    failing.interval = 3600
    failing.start().stop()  # the thread ends when told, without a poll


def test_watch_flags():
    args = parse_args(["imgs", "--config", "c.py", "--checkpoint", "a.pth", "--watch", "b.pth"])
    assert args.watch == "b.pth" and args.watch_interval == 2.0
    with pytest.raises(SystemExit):
        parse_args(["imgs", "--config", "c.py", "--checkpoint", "a.pth", "--watch", "b.pth", "--watch-interval", "0"])
