"""The annotation tool's JSON API through FastAPI's TestClient, on a tiny random-weight model."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the annotation tool needs fastapi (pip install -r requirements.txt)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (pip install -r requirements.txt)")

from fastapi.testclient import TestClient  # noqa: E402

from tools.annotate.server import create_app  # noqa: E402
from tools.annotate.workspace import Workspace  # noqa: E402

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
LOCAL = "http://127.0.0.1:8765"  # the Host the guard accepts (TestClient's default, testserver, is refused)


@pytest.fixture()
def tool(annotate_assets, annotate_predictor, tmp_path):
    """A fresh workspace and client writing to tmp_path/ann.json; threshold 0 so every predicted person is kept."""
    workspace = Workspace(annotate_assets["images"], tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    return workspace, TestClient(create_app(workspace), base_url=LOCAL)


def ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def saved(workspace):
    return json.loads(workspace.path.read_text())


def by_index(state, index):
    return next(p for p in state["people"] if p["index"] == index)


def test_listing_open_and_image_bytes(tool):
    workspace, client = tool
    listing = ok(client.get("/api/images"))
    assert [row["image"] for row in listing["images"]] == ["a.jpg", "b.jpg", "sub/c.jpg"]
    assert listing["current"] == "a.jpg" and listing["progress"] == {"done": 0, "total": 3}
    meta = ok(client.get("/api/meta"))
    assert len(meta["keypoint_names"]) == 17 and [5, 6] in meta["flip_pairs"]
    state = ok(client.post("/api/open", json={"image": "sub/c.jpg"}))
    assert len(state["people"]) == 4 and state["status"] == "in_progress"
    person = state["people"][0]
    assert np.asarray(person["keypoints"]).shape == (17, 3) and len(person["box"]) == 4
    assert all(0.0 <= c <= 1.0 for c in person["confidence"]) and person["visibility"] == [2] * 17
    assert client.get("/api/file/sub/c.jpg").content[:2] == b"\xff\xd8"  # the JPEG itself
    # opening saved at once: a valid COCO file with the images; the predicted people (not reviewed: the image is
    # not done) are in the tool's section only, not in the COCO annotations
    data = saved(workspace)
    assert {img["file_name"] for img in data["images"]} == {"a.jpg", "b.jpg", "sub/c.jpg"}
    assert data["annotations"] == [] and len(data["clickpose_annotate"]["images"]["sub/c.jpg"]["people"]) == 4


def test_refine_moves_the_clicked_keypoint_exactly_and_the_rest_follows(tool):
    workspace, client = tool
    state = ok(client.post("/api/open", json={"image": "a.jpg"}))
    target, other = state["people"][0], state["people"][1]
    x, y = 0.4 * state["width"], 0.3 * state["height"]
    after = ok(client.post("/api/refine", json={"image": "a.jpg", "clicks": [
        {"person": target["index"], "keypoint": 9, "x": x, "y": y}]}))
    moved = by_index(after, target["index"])
    kp, before = np.asarray(moved["keypoints"])[:, :2], np.asarray(target["keypoints"])[:, :2]
    np.testing.assert_allclose(kp[9], [x, y], atol=1e-3)
    assert np.abs(np.delete(kp, 9, 0) - np.delete(before, 9, 0)).max() > 1e-2  # the model re-predicted the rest
    assert moved["pinned"][9] and sum(moved["pinned"]) == 1 and moved["touched"]
    assert by_index(after, other["index"])["keypoints"] == other["keypoints"]  # nobody else drifts
    assert after["model_ms"] > 0 and after["can_undo"]
    # a second click keeps the first where it was
    after2 = ok(client.post("/api/refine", json={"image": "a.jpg", "clicks": [
        {"person": target["index"], "keypoint": 0, "x": x + 5, "y": y - 5}]}))
    np.testing.assert_allclose(np.asarray(by_index(after2, target["index"])["keypoints"])[[9, 0], :2],
                               [[x, y], [x + 5, y - 5]], atol=1e-3)
    ok(client.post("/api/accept", json={"image": "a.jpg"}))  # done: its people are now COCO annotations
    ann = next(a for a in saved(workspace)["annotations"] if a["id"] == moved_id(workspace, "a.jpg", target["index"]))
    np.testing.assert_allclose(ann["keypoints"][27:29], [x, y], atol=0.01)


def moved_id(workspace, image, index):
    return workspace.records[image]["people"][index]["ann_id"]


def test_visibility_delete_add_swap_and_undo_redo(tool):
    workspace, client = tool
    state = ok(client.post("/api/open", json={"image": "b.jpg"}))
    ok(client.post("/api/accept", json={"image": "b.jpg"}))  # done first: every edit below reaches the annotations
    first, second = state["people"][0]["index"], state["people"][1]["index"]
    ok(client.post("/api/visibility", json={"image": "b.jpg", "person": first, "keypoint": 3, "visibility": 1}))
    state = ok(client.post("/api/visibility", json={"image": "b.jpg", "person": first, "keypoint": 4, "visibility": 0}))
    assert by_index(state, first)["visibility"][3:5] == [1, 0]
    ann = next(a for a in saved(workspace)["annotations"] if a["id"] == moved_id(workspace, "b.jpg", first))
    assert ann["keypoints"][11] == 1 and ann["keypoints"][12:15] == [0, 0, 0] and ann["num_keypoints"] == 16

    before_swap = by_index(state, first)
    state = ok(client.post("/api/swap", json={"image": "b.jpg", "person": first}))
    swapped = by_index(state, first)
    assert swapped["keypoints"][5] == before_swap["keypoints"][6] and swapped["keypoints"][0] == before_swap["keypoints"][0]
    assert swapped["visibility"][3:5] == [0, 1]  # flags travel with their keypoints

    state = ok(client.post("/api/delete_person", json={"image": "b.jpg", "person": second}))
    assert second not in [p["index"] for p in state["people"]]
    assert len(saved(workspace)["annotations"]) == 3

    box = [10.0, 20.0, 0.6 * state["width"], 0.8 * state["height"]]
    state = ok(client.post("/api/add_person", json={"image": "b.jpg", "box": box}))
    added = by_index(state, 4)
    assert added["source"] == "user" and added["touched"] and len(saved(workspace)["annotations"]) == 4
    kp = np.asarray(added["keypoints"])[:, :2]
    assert kp[:, 0].min() > box[0] - 0.5 * box[2] and kp[:, 0].max() < box[2] * 1.5  # proposed around the box

    state = ok(client.post("/api/undo", json={"image": "b.jpg"}))  # removes the added person
    assert 4 not in [p["index"] for p in state["people"]] and state["can_redo"]
    state = ok(client.post("/api/undo", json={"image": "b.jpg"}))  # restores the deleted one
    assert second in [p["index"] for p in state["people"]]
    state = ok(client.post("/api/redo", json={"image": "b.jpg"}))
    assert second not in [p["index"] for p in state["people"]]
    assert len(saved(workspace)["annotations"]) == 3


def test_save_reload_round_trip_through_pycocotools(tool, annotate_predictor):
    from pycocotools.coco import COCO

    workspace, client = tool
    state = ok(client.post("/api/open", json={"image": "a.jpg"}))
    index = state["people"][0]["index"]
    ok(client.post("/api/refine", json={"image": "a.jpg", "clicks": [{"person": index, "keypoint": 2, "x": 30, "y": 40}]}))
    ok(client.post("/api/visibility", json={"image": "a.jpg", "person": index, "keypoint": 16, "visibility": 1}))
    ok(client.post("/api/accept", json={"image": "a.jpg"}))
    ok(client.post("/api/open", json={"image": "b.jpg"}))
    assert ok(client.post("/api/save", json={}))["saved"] == str(workspace.path)

    coco = COCO(str(workspace.path))
    cat = coco.loadCats(coco.getCatIds())[0]
    assert cat["keypoints"][0] == "nose" and [16, 14] in cat["skeleton"] and min(min(s) for s in cat["skeleton"]) == 1
    image_id = next(i["id"] for i in coco.dataset["images"] if i["file_name"] == "a.jpg")
    anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
    assert len(anns) == 4 and all(len(a["keypoints"]) == 51 and a["area"] > 0 for a in anns)
    mine = next(a for a in anns if a["keypoints"][6:8] == [30.0, 40.0])
    assert mine["keypoints"][50] == 1 and mine["num_keypoints"] == 17
    x, y, w, h = mine["bbox"]
    assert w > 0 and h > 0 and mine["area"] == pytest.approx(w * h, rel=1e-3)

    # a restart resumes: same people, same flags, the last image current, the accepted image done
    again = Workspace(workspace.root, workspace.path, annotate_predictor, threshold=0.0)
    assert again.current == "b.jpg" and again.records["a.jpg"]["status"] == "done"
    resumed = again.state("a.jpg")
    for old in state_people(workspace, "a.jpg"):
        new = by_index(resumed, old["index"])
        np.testing.assert_allclose(new["keypoints"], old["keypoints"], atol=1e-3)
        assert new["pinned"] == old["pinned"] and new["visibility"] == old["visibility"]
    # refinement works on the resumed session (the image is encoded again) and the ids stay
    ids = sorted(a["id"] for a in saved(again)["annotations"])
    again.refine("a.jpg", [(index, 5, 50.0, 60.0)])
    assert sorted(a["id"] for a in saved(again)["annotations"]) == ids


def state_people(workspace, image):
    return workspace.state(image)["people"]


def test_threshold_decides_who_is_written_except_edited_people(tool):
    workspace, client = tool
    state = ok(client.post("/api/open", json={"image": "a.jpg"}))
    scores = sorted(p["score"] for p in state["people"])
    low = min(state["people"], key=lambda p: p["score"])
    ok(client.post("/api/visibility", json={"image": "a.jpg", "person": low["index"], "keypoint": 0, "visibility": 1}))
    ok(client.post("/api/threshold", json={"image": "a.jpg", "threshold": scores[-1] + 1e-6 if scores[-1] < 1 else 1.0}))
    ok(client.post("/api/accept", json={"image": "a.jpg"}))
    anns = saved(workspace)["annotations"]
    assert [a["id"] for a in anns] == [moved_id(workspace, "a.jpg", low["index"])]  # only the edited person


def test_path_traversal_is_refused(tool, annotate_assets):
    _, client = tool
    for name in ("../secret.txt", "sub/../../secret.txt", "/etc/passwd", "%2e%2e/secret.txt", "sub"):
        response = client.get(f"/api/file/{name}")
        assert response.status_code == 404 and "outside" not in response.text
        assert b"outside the image folder" not in response.content
    response = client.post("/api/open", json={"image": "../secret.txt"})
    assert response.status_code == 404 and "no image named" in response.json()["detail"]
    for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py"):
        assert client.get(path).status_code == 404


@pytest.mark.parametrize("path, body, status, words", [
    ("/api/refine", {"image": "a.jpg"}, 422, "clicks"),
    ("/api/refine", {"image": "a.jpg", "clicks": []}, 422, "clicks"),
    ("/api/refine", {"image": "a.jpg", "clicks": [{"person": 0, "keypoint": 0, "x": "left", "y": 1}]}, 422, "x"),
    ("/api/refine", {"image": "a.jpg", "clicks": [{"person": 99, "keypoint": 0, "x": 1, "y": 1}]}, 400,
     "person 99 does not exist"),
    ("/api/refine", {"image": "a.jpg", "clicks": [{"person": 0, "keypoint": 17, "x": 1, "y": 1}]}, 400,
     "keypoint 17 does not exist"),
    ("/api/refine", {"image": "a.jpg", "clicks": [{"person": 0, "keypoint": 0, "x": 1e6, "y": 1}]}, 400,
     "outside the"),
    ("/api/visibility", {"image": "a.jpg", "person": 0, "keypoint": 0, "visibility": 3}, 422, "visibility"),
    ("/api/visibility", {"image": "a.jpg", "person": 0, "keypoint": 0, "visibility": 1, "colour": "red"}, 422,
     "colour"),
    ("/api/add_person", {"image": "a.jpg", "box": [1, 2, 3]}, 422, "box"),
    ("/api/add_person", {"image": "a.jpg", "box": [10, 10, 10.5, 40]}, 400, "too small"),
    ("/api/threshold", {"image": "a.jpg", "threshold": 2}, 422, "threshold"),
    ("/api/undo", {"image": "a.jpg"}, 400, "nothing to undo"),
    ("/api/open", {}, 422, "image"),
])
def test_malformed_requests_get_4xx_with_a_message(tool, path, body, status, words):
    _, client = tool
    ok(client.post("/api/open", json={"image": "a.jpg"}))
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert words in json.dumps(response.json()["detail"])
    bad_json = client.post("/api/open", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 422


def test_effort_log_and_summary_command(annotate_assets, annotate_predictor, tmp_path):
    times = iter([0.0, 4.0, 10.0, 100.0, 101.0, 103.0])
    workspace = Workspace(annotate_assets["images"], tmp_path / "ann.json", annotate_predictor, threshold=0.0,
                          clock=lambda: next(times))
    state = workspace.open("a.jpg")  # t=0
    p, q = state["people"][0]["index"], state["people"][1]["index"]
    workspace.refine("a.jpg", [(p, 1, 20.0, 20.0), (p, 2, 30.0, 20.0)])  # t=4: 2 clicks, 1 round, 4 s
    workspace.refine("a.jpg", [(p, 3, 25.0, 25.0), (q, 3, 60.0, 60.0)])  # t=10: 6 s shared by p and q
    workspace.set_visibility("a.jpg", q, 0, 1)  # t=100: a 90 s pause counts as 30
    workspace.accept("a.jpg")  # t=101
    log = workspace.records["a.jpg"]["effort"]
    assert log["people"][str(p)] == {"clicks": 3, "rounds": 2, "seconds": 7.0}
    assert log["people"][str(q)] == {"clicks": 1, "rounds": 1, "seconds": 33.0}
    assert log["seconds"] == 41.0 and log["edits"]["visibility"] == 1 and log["edits"]["accept"] == 1
    summary = workspace.effort_summary()
    assert summary["images_done"] == 1 and summary["images_total"] == 3 and summary["clicks"] == 4
    assert summary["clicks_per_person"] == pytest.approx(4 / 4)
    result = subprocess.run([sys.executable, "-m", "tools.annotate", "--summary",
                             str(workspace.path)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "images done: 1 / 3" in result.stdout and "clicks per kept person (compare with NoC): 1.0" in result.stdout


def test_existing_coco_file_opens_for_review(annotate_assets, annotate_predictor, tmp_path):
    from tools.annotate.store import AnnotationFileError

    keypoints = [v for k in range(17) for v in (20.0 + k, 30.0 + 2 * k, 2 if k != 4 else 0)]
    foreign = {"id": 77, "image_id": 900, "category_id": 1, "keypoints": [0] * 51, "num_keypoints": 0,
               "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}
    data = {"images": [{"id": 5, "file_name": "b.jpg", "width": 1, "height": 1},
                       {"id": 900, "file_name": "elsewhere.jpg", "width": 5, "height": 5}],
            "annotations": [{"id": 41, "image_id": 5, "category_id": 1, "keypoints": keypoints, "num_keypoints": 16,
                             "bbox": [15, 25, 40, 50], "area": 2000, "iscrowd": 0}, foreign],
            "categories": [{"id": 1, "name": "person", "keypoints": ["k"] * 17, "skeleton": []}]}
    path = tmp_path / "theirs.json"
    path.write_text(json.dumps(data))
    workspace = Workspace(annotate_assets["images"], path, annotate_predictor, threshold=0.0)
    state = workspace.open("b.jpg")
    assert len(state["people"]) == 1 and state["people"][0]["source"] == "file"
    person = state["people"][0]
    assert person["pinned"] == [k != 4 for k in range(17)] and person["visibility"][4] == 0
    after = workspace.refine("b.jpg", [(0, 4, 26.0, 40.0)])
    moved = np.asarray(after["people"][0]["keypoints"])[:, :2]
    np.testing.assert_allclose(moved[:4], [[20.0 + k, 30.0 + 2 * k] for k in range(4)], atol=1e-3)  # labels stay
    written = saved(workspace)
    assert next(i for i in written["images"] if i["file_name"] == "b.jpg")["id"] == 5
    assert [a["id"] for a in written["annotations"] if a["image_id"] == 5] == [41]
    assert foreign in written["annotations"] and {"id": 900, "file_name": "elsewhere.jpg", "width": 5,
                                                   "height": 5} in written["images"]
    assert next(a for a in written["annotations"] if a["id"] == 41)["keypoints"][12:15] == [26.0, 40.0, 2]

    data["categories"][0]["keypoints"] = ["k"] * 14
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationFileError, match="14 keypoints but the model has 17"):
        Workspace(annotate_assets["images"], path, annotate_predictor)
    path.write_text("{broken")
    with pytest.raises(AnnotationFileError, match="cannot read annotation file"):
        Workspace(annotate_assets["images"], path, annotate_predictor)


def test_cli_refuses_bad_arguments(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tools.annotate", str(tmp_path / "none")],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 2 and "missing --config, --checkpoint" in result.stderr


def test_any_keypoint_layout_crowdpose_14(annotate_assets, tmp_path):
    """Names, skeleton and left/right pairs come from the model's layout, not from a hard-coded 17."""
    from pycocotools.coco import COCO

    from datasets.metadata import CROWDPOSE_KEYPOINTS
    from models.predictor import Predictor

    from .conftest import ANNOTATE_CONFIG, ANNOTATE_OPTIONS, make_checkpoint

    options = {**ANNOTATE_OPTIONS, "num_body_points": 14}
    predictor = Predictor(ANNOTATE_CONFIG, make_checkpoint(tmp_path / "k14.pth", options), options=options)
    workspace = Workspace(annotate_assets["images"], tmp_path / "ann.json", predictor, threshold=0.0)
    client = TestClient(create_app(workspace), base_url=LOCAL)
    meta = ok(client.get("/api/meta"))
    assert meta["keypoint_names"] == list(CROWDPOSE_KEYPOINTS.keypoint_names) and [0, 1] in meta["flip_pairs"]
    state = ok(client.post("/api/open", json={"image": "a.jpg"}))
    index = state["people"][0]["index"]
    assert len(state["people"][0]["keypoints"]) == 14
    state = ok(client.post("/api/refine", json={"image": "a.jpg", "clicks": [
        {"person": index, "keypoint": 12, "x": 40.0, "y": 30.0}]}))  # 'head'
    np.testing.assert_allclose(by_index(state, index)["keypoints"][12][:2], [40.0, 30.0], atol=1e-3)
    before = by_index(state, index)["keypoints"]
    swapped = by_index(ok(client.post("/api/swap", json={"image": "a.jpg", "person": index})), index)["keypoints"]
    assert swapped[0] == before[1] and swapped[12] == before[12]  # shoulders swap, the head stays
    coco = COCO(str(workspace.path))
    category = coco.loadCats(coco.getCatIds())[0]
    assert category["keypoints"] == list(CROWDPOSE_KEYPOINTS.keypoint_names)
    assert category["skeleton"] == [[a + 1, b + 1] for a, b in CROWDPOSE_KEYPOINTS.skeleton]
    assert all(len(a["keypoints"]) == 42 for a in coco.dataset["annotations"])
    predictor.close()


# ---- the COCO annotations hold what was reviewed ------------------------------------------------------------------
def test_browsed_images_export_nothing_until_done_and_resume_exactly(tool, annotate_predictor):
    """Opening images (→, or the next one after Enter) saves their predicted people in the tool's section only:
    the COCO annotations hold the people of images marked done, and a restart shows exactly what was shown."""
    from pycocotools.coco import COCO

    workspace, client = tool
    shown = {name: ok(client.post("/api/open", json={"image": name}))["people"]
             for name in ("a.jpg", "b.jpg", "sub/c.jpg")}
    assert all(shown.values())  # the model found people on every image
    data = saved(workspace)
    assert data["annotations"] == []
    assert all(len(data["clickpose_annotate"]["images"][name]["people"]) == len(people)
               for name, people in shown.items())
    assert COCO(str(workspace.path)).getAnnIds() == []  # pycocotools loads it, with nothing annotated

    # marking one image done (Enter) puts exactly its people into the annotations
    ok(client.post("/api/accept", json={"image": "b.jpg"}))
    data = saved(workspace)
    b_id = next(i["id"] for i in data["images"] if i["file_name"] == "b.jpg")
    assert {a["image_id"] for a in data["annotations"]} == {b_id}
    assert sorted(a["id"] for a in data["annotations"]) == sorted(
        p["ann_id"] for p in workspace.records["b.jpg"]["people"])
    assert sorted(a["score"] for a in data["annotations"]) == sorted(round(p["score"], 4) for p in shown["b.jpg"])
    coco = COCO(str(workspace.path))
    assert len(coco.getAnnIds(imgIds=b_id)) == len(shown["b.jpg"]) == len(coco.getAnnIds())
    # back in progress: out of the annotations again
    ok(client.post("/api/accept", json={"image": "b.jpg", "done": False}))
    assert saved(workspace)["annotations"] == []
    ok(client.post("/api/accept", json={"image": "b.jpg"}))

    # a restart resumes every browsed image with exactly the people it showed (nothing predicted again)
    again = Workspace(workspace.root, workspace.path, annotate_predictor, threshold=0.0)
    assert again.current == "sub/c.jpg"  # the last image opened
    for name, people in shown.items():
        assert again.records[name]["status"] == ("done" if name == "b.jpg" else "in_progress")
        resumed = again.state(name)["people"]
        assert [p["index"] for p in resumed] == [p["index"] for p in people]
        for old, new in zip(people, resumed):
            np.testing.assert_allclose(new["keypoints"], old["keypoints"], atol=1e-4)
            np.testing.assert_allclose(new["box"], old["box"], atol=1e-4)
            assert new["score"] == pytest.approx(old["score"], abs=1e-6)
            assert (new["visibility"], new["pinned"], new["touched"], new["source"]) == (
                old["visibility"], old["pinned"], old["touched"], old["source"])
    assert {a["image_id"] for a in saved(again)["annotations"]} == {b_id}


def test_summary_counts_done_images_only(annotate_assets, annotate_predictor, tmp_path):
    """A scripted session: clicks and people of done images make the totals; a browsed image and an image that was
    edited but not marked done are listed but not counted."""
    workspace = Workspace(annotate_assets["images"], tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    people = workspace.open("a.jpg")["people"]
    p, q, gone = (person["index"] for person in people[:3])
    workspace.refine("a.jpg", [(p, 1, 20.0, 20.0), (p, 2, 30.0, 20.0)])  # 2 clicks
    workspace.refine("a.jpg", [(p, 3, 25.0, 25.0), (q, 3, 60.0, 60.0)])  # 2 clicks
    workspace.refine("a.jpg", [(q, 5, 40.0, 50.0)])  # 1 click
    workspace.delete_person("a.jpg", gone)
    workspace.accept("a.jpg")
    b_people = workspace.open("b.jpg")["people"]
    workspace.refine("b.jpg", [(b_people[0]["index"], 0, 10.0, 10.0), (b_people[1]["index"], 0, 30.0, 30.0)])
    workspace.open("sub/c.jpg")  # browsed only
    done_people = len(people) - 1  # threshold 0: everyone but the deleted person is annotated
    assert len(saved(workspace)["annotations"]) == done_people

    summary = workspace.effort_summary()
    assert summary["images_done"] == 1 and summary["images_total"] == 3
    assert summary["clicks"] == 5 and summary["rounds"] == 4 and summary["people"] == done_people
    assert summary["clicks_per_person"] == pytest.approx(round(5 / done_people, 2))
    assert summary["not_done"]["images"] == 2 and summary["not_done"]["clicks"] == 2
    assert [row["image"] for row in summary["per_image"]] == ["a.jpg", "b.jpg", "sub/c.jpg"]

    result = subprocess.run([sys.executable, "-m", "tools.annotate", "--summary", str(workspace.path)],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "images done: 1 / 3" in result.stdout
    assert f"people kept: {done_people}   clicks: 5   rounds: 4" in result.stdout
    assert f"clicks per kept person (compare with NoC): {round(5 / done_people, 2)}" in result.stdout
    assert "not counted (opened, not done): 2 images, 2 clicks" in result.stdout


def test_summary_into_a_closed_pipe_exits_cleanly(tmp_path):
    """`python -m tools.annotate --summary F | head -1`: the reader stops early; no BrokenPipeError traceback."""
    from tools.annotate import effort, store

    log = {"seconds": 2.0, "edits": {}, "people": {"0": {"clicks": 3, "rounds": 1, "seconds": 2.0}}}
    person = {"score": 0.9, "touched": True, "deleted": False, "source": "model"}
    records = {f"img{i:05d}.jpg": {"status": "done", "threshold": 0.3, "effort": log, "people": [person]}
               for i in range(4000)}  # far more output than a pipe buffer holds
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"images": [], "annotations": [], store.TOOL_KEY: {"images": records}}))
    assert len(effort.format_summary(effort.summarize(records))) > 200_000
    shell = subprocess.run(f"'{sys.executable}' -m tools.annotate --summary '{path}' | head -1; "
                           "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True,
                           text=True, cwd=REPO_ROOT)
    assert shell.returncode == 0 and shell.stdout == "images done: 4000 / 4000\n", shell
    assert "Traceback" not in shell.stderr and "BrokenPipe" not in shell.stderr, shell.stderr

    proc = subprocess.Popen([sys.executable, "-m", "tools.annotate", "--summary", str(path)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"images done: 4000 / 4000\n"
    proc.stdout.close()  # the reader goes away with most of the output unread
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0 and "Traceback" not in err, err
