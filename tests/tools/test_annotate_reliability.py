"""The annotation tool under bad input and hostile callers: broken images, other folders, absent images, a full
disk, symbolic links out of the folder, foreign pages and host names, a second server on the same file."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the annotation tool needs fastapi (pip install -r requirements.txt)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (pip install -r requirements.txt)")

from fastapi.testclient import TestClient  # noqa: E402

from tools.annotate.server import create_app  # noqa: E402
from tools.annotate.store import AnnotationFileError  # noqa: E402
from tools.annotate.workspace import Workspace  # noqa: E402
from util.files import DiskFullError  # noqa: E402

from .conftest import ANNOTATE_CONFIG  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LOCAL = "http://127.0.0.1:8765"


def ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost no data (what a decompression bomb looks like before
    decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture()
def folder(annotate_assets, tmp_path) -> Path:
    """A copy of the test images that a test may change."""
    images = tmp_path / "images"
    shutil.copytree(annotate_assets["images"], images)
    return images


def client_for(workspace: Workspace, **kw) -> TestClient:
    return TestClient(create_app(workspace), base_url=LOCAL, **kw)


# ---- 1. one bad image --------------------------------------------------------------------------------------------
def test_unreadable_and_huge_images_are_listed_and_skipped_not_fatal(folder, annotate_predictor, tmp_path):
    jpeg = (folder / "a.jpg").read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "page.jpg").write_text("<!doctype html><html><body>not an image</body></html>")
    (folder / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (folder / "bomb.png").write_bytes(png_header(30000, 30000))  # PIL itself refuses to open this
    (folder / "huge.png").write_bytes(png_header(10000, 10000))  # PIL only warns; the tool's limit refuses it
    workspace = Workspace(folder, tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    client = client_for(workspace)

    state = ok(client.post("/api/open", json={"image": "a.jpg"}))  # the good images work, and the file is written
    index = state["people"][0]["index"]
    ok(client.post("/api/refine", json={"image": "a.jpg", "clicks": [{"person": index, "keypoint": 3, "x": 20,
                                                                      "y": 30}]}))
    saved = json.loads(workspace.path.read_text())
    assert {i["file_name"] for i in saved["images"]} == {"a.jpg", "b.jpg", "sub/c.jpg", "truncated.jpg"}
    rows = {row["image"]: row for row in ok(client.get("/api/images"))["images"]}
    for name in ("empty.jpg", "page.jpg", "bomb.png", "huge.png"):
        assert rows[name]["status"] == "unreadable" and name in rows[name]["problem"], rows[name]
    assert "10000x10000" in rows["huge.png"]["problem"] and "--max-pixels" in rows["huge.png"]["problem"]
    assert rows["a.jpg"]["status"] == "in_progress" and rows["truncated.jpg"]["status"] == "todo"

    for name in ("empty.jpg", "huge.png", "truncated.jpg"):  # refused with a sentence, and then listed as such
        response = client.post("/api/open", json={"image": name})
        assert response.status_code == 422 and name in response.json()["detail"], response.text
    assert ok(client.get("/api/images"))["images"][-1] == {
        "image": "truncated.jpg", "status": "unreadable", "problem": workspace.problems["truncated.jpg"]}
    # editing the good image still saves (the truncated image's entry, read from its header, stays)
    ok(client.post("/api/visibility", json={"image": "a.jpg", "person": index, "keypoint": 3, "visibility": 1}))
    assert json.loads(workspace.path.read_text())["clickpose_annotate"]["images"]["a.jpg"]["people"][index][
        "visibility"][3] == 1


def test_huge_image_is_never_decoded_not_even_by_prefetch(folder, annotate_predictor, tmp_path, monkeypatch):
    (folder / "b.jpg").unlink()
    (folder / "b.png").write_bytes(png_header(10000, 10000))  # comes right after a.jpg
    prefetched = []
    monkeypatch.setattr(annotate_predictor, "prefetch", lambda path: prefetched.append(Path(path).name))
    workspace = Workspace(folder, tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    workspace.open("a.jpg")
    assert prefetched == [] and "b.png" in workspace.problems


# ---- 2 and 3. the guard: Host, Origin, JSON writes, body size, CSP ---------------------------------------------------
def test_foreign_host_origin_and_non_json_writes_are_refused(annotate_assets, annotate_predictor, tmp_path):
    workspace = Workspace(annotate_assets["images"], tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    client = client_for(workspace)
    state = ok(client.post("/api/open", json={"image": "a.jpg"}))
    before = workspace.path.read_bytes()
    body = {"image": "a.jpg", "person": state["people"][0]["index"]}

    rebound = client.get("/api/meta", headers={"Host": "evil.example"})  # DNS rebinding
    assert rebound.status_code == 421 and str(workspace.path) not in rebound.text
    assert "127.0.0.1" in rebound.json()["detail"]
    assert client.get("/api/meta", headers={"Host": "localhost:8765"}).status_code == 200
    assert client.get("/api/meta", headers={"Host": "[::1]:8765"}).status_code == 200
    for origin in ("http://evil.example", "http://127.0.0.1:9999", "null"):
        response = client.post("/api/delete_person", json=body, headers={"Origin": origin})
        assert response.status_code == 403 and "another web page" in response.json()["detail"]
    response = client.post("/api/delete_person", json=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403
    # what fetch(..., {mode: 'no-cors'}) can send: no Content-Type, or text/plain
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}):
        response = client.post("/api/delete_person", content=json.dumps(body), headers=headers)
        assert response.status_code == 415 and "application/json" in response.json()["detail"]
    assert workspace.path.read_bytes() == before  # nothing was deleted
    response = client.post("/api/refine", content=b"{" + b" " * (2 << 20) + b"}",
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    same_origin = client.post("/api/delete_person", json=body, headers={"Origin": LOCAL})
    assert same_origin.status_code == 200

    for path in ("/", "/static/app.js", "/api/meta"):
        policy = client.get(path).headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy


@pytest.mark.parametrize("path, body, field", [
    ("/api/refine", {"image": "a.jpg", "clicks": [{"person": "0", "keypoint": 0, "x": 1, "y": 1}]}, "person"),
    ("/api/refine", {"image": "a.jpg", "clicks": [{"person": 0, "keypoint": 0, "x": "1.5", "y": 1}]}, "x"),
    ("/api/visibility", {"image": "a.jpg", "person": 0, "keypoint": 0, "visibility": "1"}, "visibility"),
    ("/api/accept", {"image": "a.jpg", "done": "yes"}, "done"),
    ("/api/accept", {"image": "a.jpg", "done": 1}, "done"),
])
def test_wrong_types_are_not_coerced(annotate_assets, annotate_predictor, tmp_path, path, body, field):
    workspace = Workspace(annotate_assets["images"], tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    client = client_for(workspace)
    ok(client.post("/api/open", json={"image": "a.jpg"}))
    response = client.post(path, json=body)
    assert response.status_code == 422 and field in json.dumps(response.json()["detail"]), response.text
    # whole numbers are fine where a float is expected
    ok(client.post("/api/refine", json={"image": "a.jpg", "clicks": [{"person": 0, "keypoint": 0, "x": 3, "y": 4}]}))


# ---- 4. another folder, another image ----------------------------------------------------------------------------
def test_another_folder_with_the_same_names_is_refused(annotate_assets, annotate_predictor, tmp_path):
    day1, day2 = tmp_path / "day1", tmp_path / "day2"
    shutil.copytree(annotate_assets["images"], day1)
    shutil.copytree(annotate_assets["images"], day2)
    first = Workspace(day1, tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    first.open("a.jpg")
    first.accept("a.jpg")
    with pytest.raises(AnnotationFileError) as refused:
        Workspace(day2, tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    assert str(day1.resolve()) in str(refused.value) and str(day2.resolve()) in str(refused.value)
    assert "--folder-moved" in str(refused.value)
    # the user says the folder moved: the labels follow the images
    moved = Workspace(day2, tmp_path / "ann.json", annotate_predictor, threshold=0.0, folder_moved=True)
    assert moved.records["a.jpg"]["status"] == "done"


def test_an_image_replaced_by_another_keeps_its_labels_and_is_not_shown_with_them(folder, annotate_predictor,
                                                                                    tmp_path):
    from PIL import Image

    workspace = Workspace(folder, tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    people = workspace.open("a.jpg")["people"]
    workspace.accept("a.jpg")
    record = json.loads(workspace.path.read_text())["clickpose_annotate"]["images"]["a.jpg"]
    with Image.open(folder / "a.jpg") as image:
        Image.new("RGB", (image.width + 10, image.height)).save(folder / "a.jpg")
    again = Workspace(folder, tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    with pytest.raises(ValueError, match="another image"):
        again.open("a.jpg")
    again.open("b.jpg")  # saves
    saved = json.loads(again.path.read_text())
    assert saved["clickpose_annotate"]["images"]["a.jpg"] == record
    entry = next(i for i in saved["images"] if i["file_name"] == "a.jpg")
    assert len([a for a in saved["annotations"] if a["image_id"] == entry["id"]]) == len(people)


# ---- 5. one server per file ----------------------------------------------------------------------------------------
def test_second_tool_on_the_same_file_refuses_naming_the_first(annotate_assets, tmp_path):
    from tools.annotate.cli import claim
    from util.files import FileLockedError

    annotations = tmp_path / "ann.json"
    stale = tmp_path / ".ann.json.1a2b3c4d.tmp"  # a save killed half-way
    stale.write_text("{")
    other = tmp_path / ".other.json.1a2b3c4d.tmp"
    other.write_text("{")
    lock = claim(annotations)
    assert not stale.exists() and other.exists()
    try:
        lock.update(port=43210, url="http://127.0.0.1:43210/")
        with pytest.raises(FileLockedError) as held:
            claim(annotations)
        assert held.value.owner["pid"] == os.getpid()
        result = subprocess.run([sys.executable, "-m", "tools.annotate", str(annotate_assets["images"]),
                                 "--config", ANNOTATE_CONFIG, "--checkpoint", str(annotate_assets["checkpoint"]),
                                 "--annotations", str(annotations)], capture_output=True, text=True, cwd=REPO,
                                timeout=300)
        assert result.returncode == 2, result.stderr
        assert f"pid {os.getpid()}" in result.stderr and "http://127.0.0.1:43210/" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        lock.release()
    claim(annotations).release()  # free again once the first one ends


# ---- 7. images absent for a while ------------------------------------------------------------------------------------
def test_records_of_absent_images_survive_and_come_back(folder, annotate_predictor, tmp_path):
    workspace = Workspace(folder, tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    state = workspace.open("b.jpg")
    person = state["people"][0]["index"]
    workspace.set_visibility("b.jpg", person, 2, 1)
    workspace.delete_person("b.jpg", state["people"][1]["index"])
    workspace.accept("b.jpg")
    record = json.loads(workspace.path.read_text())["clickpose_annotate"]["images"]["b.jpg"]
    away = tmp_path / "b.jpg"
    shutil.move(folder / "b.jpg", away)
    without = Workspace(folder, tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    without.open("a.jpg")  # saves without b.jpg in the folder
    assert json.loads(without.path.read_text())["clickpose_annotate"]["images"]["b.jpg"] == record
    shutil.move(away, folder / "b.jpg")
    back = Workspace(folder, tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    assert back.records["b.jpg"]["status"] == "done"
    people = back.state("b.jpg")["people"]
    assert [p["index"] for p in people] == [p["index"] for p in state["people"] if p["index"] != state["people"][1][
        "index"]]
    assert next(p for p in people if p["index"] == person)["visibility"][2] == 1


# ---- 8. failures: a sentence, and nothing applied that was not saved -------------------------------------------------
def test_full_disk_takes_the_edit_back_and_says_so(annotate_assets, annotate_predictor, tmp_path, monkeypatch):
    import tools.annotate.workspace as workspace_module

    workspace = Workspace(annotate_assets["images"], tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    client = client_for(workspace, raise_server_exceptions=False)
    state = ok(client.post("/api/open", json={"image": "a.jpg"}))
    index = state["people"][0]["index"]
    saved_before = workspace.path.read_bytes()
    real_write = workspace_module.atomic_write_text

    def full(path, text):
        raise DiskFullError(28, f"no space left on the device while writing {path}")
    monkeypatch.setattr(workspace_module, "atomic_write_text", full)
    response = client.post("/api/refine", json={"image": "a.jpg", "clicks": [
        {"person": index, "keypoint": 5, "x": 11.0, "y": 12.0}]})
    assert response.status_code == 507 and "no space left" in response.json()["detail"]
    response = client.post("/api/open", json={"image": "b.jpg"})  # a first open that cannot be saved either
    assert response.status_code == 507 and "b.jpg" not in workspace.records
    assert workspace.path.read_bytes() == saved_before
    assert workspace.state("a.jpg")["people"] == state["people"] and not workspace.state("a.jpg")["can_undo"]

    def broken(path, text):
        raise RuntimeError("something unexpected")
    monkeypatch.setattr(workspace_module, "atomic_write_text", broken)
    response = client.post("/api/visibility", json={"image": "a.jpg", "person": index, "keypoint": 1,
                                                    "visibility": 0})
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    assert "something unexpected" in response.json()["detail"] and "Traceback" not in response.text
    # space again: the next edit saves, and the refused ones never reach the file
    monkeypatch.setattr(workspace_module, "atomic_write_text", real_write)
    ok(client.post("/api/visibility", json={"image": "a.jpg", "person": index, "keypoint": 2, "visibility": 1}))
    person = json.loads(workspace.path.read_text())["clickpose_annotate"]["images"]["a.jpg"]["people"][index]
    assert person["visibility"][1:3] == [2, 1] and not person["pinned"][5]


# ---- 9. symbolic links ---------------------------------------------------------------------------------------------
def test_symbolic_links_out_of_the_folder_are_not_listed_or_served(folder, annotate_assets, annotate_predictor,
                                                                    tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(folder / "a.jpg", outside / "private.jpg")
    (folder / "link.jpg").symlink_to(outside / "private.jpg")
    (folder / "linked_dir").symlink_to(outside, target_is_directory=True)
    (folder / "inside.jpg").symlink_to(folder / "b.jpg")  # a link within the folder is fine
    workspace = Workspace(folder, tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    assert workspace.names == ["a.jpg", "b.jpg", "inside.jpg", "sub/c.jpg"]
    client = client_for(workspace)
    for name in ("link.jpg", "linked_dir/private.jpg"):
        assert client.get(f"/api/file/{name}").status_code == 404
    assert client.get("/api/file/inside.jpg").status_code == 200


# ---- the load test ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_concurrent_clients_get_no_5xx_and_every_acknowledged_edit_is_saved(annotate_assets, annotate_predictor,
                                                                            tmp_path):
    """8 clients x 50 mixed requests against the real server; client c owns keypoint c's visibility and keypoint
    8 + c's position on every image, so the last edit each client saw acknowledged must be the one in the file."""
    import threading
    import urllib.error
    import urllib.request

    from tools.annotate.browser_check import serve

    workspace = Workspace(annotate_assets["images"], tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    images = ["a.jpg", "b.jpg"]
    with serve(create_app(workspace)) as url:
        def request(path, body=None):
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(url + path.lstrip("/"), data=data,
                                         headers={"Content-Type": "application/json"} if data else {})
            try:
                with urllib.request.urlopen(req, timeout=120) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read() or b"{}")

        people = {name: request("/api/open", {"image": name})[1]["people"][0]["index"] for name in images}
        statuses, last = [], {}
        guard = threading.Lock()

        def client(c):
            rng = np.random.default_rng(c)
            for i in range(50):
                image = images[i % 2]
                kind = i % 5
                if kind == 0:
                    status, _ = request("/api/images")
                elif kind == 1:
                    status, _ = request("/api/meta")
                elif kind in (2, 3):
                    v = int(rng.integers(1, 3))
                    status, _ = request("/api/visibility", {"image": image, "person": people[image], "keypoint": c,
                                                            "visibility": v})
                    if status == 200:
                        with guard:
                            last[(image, "v", c)] = v
                else:
                    x, y = float(rng.uniform(5, 60)), float(rng.uniform(5, 60))
                    status, _ = request("/api/refine", {"image": image, "clicks": [
                        {"person": people[image], "keypoint": 8 + c, "x": x, "y": y}]})
                    if status == 200:
                        with guard:
                            last[(image, "xy", 8 + c)] = (x, y)
                with guard:
                    statuses.append(status)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    assert len(statuses) == 400 and all(s < 500 for s in statuses) and statuses.count(200) == 400
    records = json.loads(workspace.path.read_text())["clickpose_annotate"]["images"]
    for (image, what, k), value in last.items():
        person = records[image]["people"][people[image]]
        if what == "v":
            assert person["visibility"][k] == value
        else:
            np.testing.assert_allclose(person["keypoints"][k][:2], value, atol=1e-3)
