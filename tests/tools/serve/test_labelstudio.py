"""The Label Studio ML backend door: predictions in Label Studio's region format, interactive clicks per task, the
webhook's COCO file, and its refusals."""
from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from models.predictor import people_dicts
from tools.label_studio import label_config

LEFT_WRIST, RIGHT_KNEE = 9, 13


@pytest.fixture(scope="module")
def names(annotate_predictor) -> list[str]:
    return list(annotate_predictor.metadata.keypoint_names)


@pytest.fixture(scope="module")
def config(names) -> str:
    return label_config(names)


def model_people(predictor, path):
    """The Predictor's own people (pixels, best first) and the image size."""
    prediction = predictor.prediction(Image.open(path).convert("RGB"))
    return people_dicts(prediction.people, prediction.size), prediction.size


def ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def refused(response, status):
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and len(detail.split()) >= 4, detail  # a sentence, not a code or a traceback
    return detail


def predict(client, config, tasks, context=None):
    body = {"tasks": tasks, "label_config": config, "project": "1.1700000000", "params": {"context": context}}
    return client.post("/predict", json=body)


def by_id(regions):
    return {r["id"]: r for r in regions}


def clamp(v, hi):
    return min(max(v, 0.0), hi)


def click_region(names, k, x, y, size, region_id="c1", positive=1):
    width, height = size
    return {"id": region_id, "type": "keypointlabels", "from_name": "kp", "to_name": "image", "is_positive": positive,
            "original_width": width, "original_height": height,
            "value": {"x": 100 * x / width, "y": 100 * y / height, "width": 0.4, "keypointlabels": [names[k]]}}


def nearest_person(people, k, x, y):
    return min(people, key=lambda p: math.hypot(p["keypoints"][k][0] - x, p["keypoints"][k][1] - y))["index"]


def test_health_and_setup_answer_as_label_studio_expects(client, config):
    health = ok(client.get("/health"))
    assert health["status"] == "UP" and health["model_class"] == "ClickPose"
    assert ok(client.get("/"))["status"] == "UP"
    assert ok(client.post("/setup", json={"project": "3.17", "schema": config}))["model_version"] == "clickpose"


def test_predict_regions_are_the_predictors_people_in_percent(client, config, annotate_predictor, image_paths, names):
    people, (width, height) = model_people(annotate_predictor, image_paths["a"])
    results = ok(predict(client, config, [{"id": 1, "data": {"image": str(image_paths["a"])}}]))["results"]
    assert len(results) == 1 and results[0]["model_version"] == "clickpose"
    regions = by_id(results[0]["result"])
    assert len(regions) == len(people) * (1 + len(names))
    assert results[0]["score"] == pytest.approx(sum(p["score"] for p in people) / len(people), abs=1e-4)
    for person in people:
        box_id = f"person{person['index']}"
        box = regions[box_id]
        x0, y0, x1, y1 = person["box"]
        x0, y0 = clamp(x0, width), clamp(y0, height)
        x1, y1 = min(max(x1, x0), width), min(max(y1, y0), height)
        assert box["type"] == "rectanglelabels" and box["from_name"] == "box" and box["to_name"] == "image"
        assert (box["original_width"], box["original_height"]) == (width, height)
        assert box["value"]["rectanglelabels"] == ["person"]
        assert box["value"]["x"] == pytest.approx(100 * x0 / width, abs=1e-4)
        assert box["value"]["y"] == pytest.approx(100 * y0 / height, abs=1e-4)
        assert box["value"]["width"] == pytest.approx(100 * (x1 - x0) / width, abs=1e-4)
        assert box["value"]["height"] == pytest.approx(100 * (y1 - y0) / height, abs=1e-4)
        for k, (x, y, _) in enumerate(person["keypoints"]):
            point = regions[f"{box_id}_kp{k}"]
            assert point["type"] == "keypointlabels" and point["parentID"] == box_id
            assert point["value"]["keypointlabels"] == [names[k]]
            assert point["value"]["x"] == pytest.approx(100 * clamp(x, width) / width, abs=1e-4)
            assert point["value"]["y"] == pytest.approx(100 * clamp(y, height) / height, abs=1e-4)


def test_project_config_names_controls_and_a_subset_of_keypoints(client, image_paths, names):
    config = ('<View><Image name="photo" value="$img"/>'
              '<RectangleLabels name="body" toName="photo"><Label value="Human"/></RectangleLabels>'
              '<KeyPointLabels name="joints" toName="photo"><Label value="Nose"/>'
              '<Label value="wrist L" model_index="9"/><Label value="tail"/></KeyPointLabels></View>')
    regions = ok(predict(client, config, [{"id": 5, "data": {"img": str(image_paths["b"])}}]))["results"][0]["result"]
    boxes = [r for r in regions if r["type"] == "rectanglelabels"]
    points = [r for r in regions if r["type"] == "keypointlabels"]
    assert boxes and len(points) == 2 * len(boxes)
    assert {r["from_name"] for r in boxes} == {"body"} and {r["from_name"] for r in points} == {"joints"}
    assert {r["to_name"] for r in regions} == {"photo"}
    assert {r["value"]["rectanglelabels"][0] for r in boxes} == {"Human"}
    assert {r["value"]["keypointlabels"][0] for r in points} == {"Nose", "wrist L"}
    assert {r["id"].rsplit("_", 1)[1] for r in points} == {"kp0", f"kp{LEFT_WRIST}"}


def test_configs_this_model_cannot_label_are_refused(client, image_paths, names):
    task = [{"id": 1, "data": {"image": str(image_paths["a"])}}]
    none_match = ('<View><Image name="image" value="$image"/><KeyPointLabels name="kp" toName="image">'
                  '<Label value="wing"/><Label value="beak"/></KeyPointLabels></View>')
    assert "none of the model's keypoints" in refused(predict(client, none_match, task), 400)
    assert "none of the model's keypoints" in refused(client.post("/setup", json={"project": "1.1",
                                                                                  "schema": none_match}), 400)
    no_keypoints = '<View><Image name="image" value="$image"/></View>'
    assert "KeyPointLabels" in refused(predict(client, no_keypoints, task), 400)
    refused(predict(client, "<View><unclosed></View>", task), 400)
    bad_index = no_keypoints.replace("</View>", '<KeyPointLabels name="kp" toName="image">'
                                                '<Label value="x" model_index="99"/></KeyPointLabels></View>')
    assert "model_index" in refused(predict(client, bad_index, task), 400)


def test_a_click_moves_the_nearest_persons_joint_and_leaves_the_others(client, config, annotate_predictor,
                                                                      image_paths, names):
    people, size = model_people(annotate_predictor, image_paths["a"])
    task = {"id": 11, "data": {"image": str(image_paths["a"])}}
    before = by_id(ok(predict(client, config, [task]))["results"][0]["result"])
    x, y = people[0]["keypoints"][LEFT_WRIST][:2]
    x, y = clamp(x + 6, size[0] - 1), clamp(y - 4, size[1] - 1)
    target = nearest_person(people, LEFT_WRIST, x, y)
    after = by_id(ok(predict(client, config, [task], {"result": [click_region(names, LEFT_WRIST, x, y, size)]}))
                  ["results"][0]["result"])
    assert set(after) == set(before)
    moved = after[f"person{target}_kp{LEFT_WRIST}"]["value"]
    assert (moved["x"], moved["y"]) == (pytest.approx(100 * x / size[0]), pytest.approx(100 * y / size[1]))
    for region_id, region in before.items():
        if not region_id.startswith(f"person{target}"):
            assert after[region_id]["value"] == region["value"], region_id


def test_clicks_accumulate_per_task_and_tasks_do_not_mix(client, config, annotate_predictor, image_paths, names):
    people, size = model_people(annotate_predictor, image_paths["b"])
    task1 = {"id": 21, "data": {"image": str(image_paths["b"])}}
    task2 = {"id": 22, "data": {"image": str(image_paths["b"])}}
    target = people[0]["index"]
    first = click_region(names, LEFT_WRIST, *people[0]["keypoints"][LEFT_WRIST][:2], size, "r1")
    second = click_region(names, RIGHT_KNEE, *people[0]["keypoints"][RIGHT_KNEE][:2], size, "r2")
    first["value"]["x"] = clamp(first["value"]["x"] + 1.5, 100.0)
    second["value"]["y"] = clamp(second["value"]["y"] - 1.0, 100.0)
    ok(predict(client, config, [task1], {"result": [first]}))
    both = by_id(ok(predict(client, config, [task1], {"result": [first, second]}))["results"][0]["result"])
    for click, k in ((first, LEFT_WRIST), (second, RIGHT_KNEE)):
        placed = both[f"person{target}_kp{k}"]["value"]
        assert (placed["x"], placed["y"]) == (pytest.approx(click["value"]["x"]), pytest.approx(click["value"]["y"]))
    # a click sent again is not applied twice; the task's plain predictions show its clicks
    assert by_id(ok(predict(client, config, [task1], {"result": [first]}))["results"][0]["result"]) == both
    assert by_id(ok(predict(client, config, [task1]))["results"][0]["result"]) == both
    # another task on the same image starts from the model's people and its clicks stay its own
    fresh = by_id(ok(predict(client, config, [task2]))["results"][0]["result"])
    model = {f"person{p['index']}_kp{RIGHT_KNEE}": p["keypoints"][RIGHT_KNEE] for p in people}
    for region_id, (x, y, _) in model.items():
        assert fresh[region_id]["value"]["x"] == pytest.approx(100 * clamp(x, size[0]) / size[0], abs=1e-4)
    other = click_region(names, 0, *people[-1]["keypoints"][0][:2], size, "r9")
    ok(predict(client, config, [task2], {"result": [other]}))
    assert by_id(ok(predict(client, config, [task1]))["results"][0]["result"]) == both


def test_a_moved_region_corrects_the_same_person_again(client, config, annotate_predictor, image_paths, names):
    people, size = model_people(annotate_predictor, image_paths["c"])
    task = {"id": 31, "data": {"image": str(image_paths["c"])}}
    x, y = people[1]["keypoints"][LEFT_WRIST][:2]
    target = nearest_person(people, LEFT_WRIST, x, y)
    ok(predict(client, config, [task], {"result": [click_region(names, LEFT_WRIST, x, y, size, "m")]}))
    far = (size[0] - 1.0, size[1] - 1.0)  # dragged far: it stays the same person's wrist
    moved = by_id(ok(predict(client, config, [task], {"result": [click_region(names, LEFT_WRIST, *far, size, "m")]}))
                  ["results"][0]["result"])
    placed = moved[f"person{target}_kp{LEFT_WRIST}"]["value"]
    assert (placed["x"], placed["y"]) == (pytest.approx(100 * far[0] / size[0]), pytest.approx(100 * far[1] / size[1]))


def test_a_smart_box_adds_a_person(client, config, image_paths):
    task = {"id": 41, "data": {"image": str(image_paths["a"])}}
    count = len([r for r in ok(predict(client, config, [task]))["results"][0]["result"]
                 if r["type"] == "rectanglelabels"])
    box = {"id": "b1", "type": "rectanglelabels", "original_width": 10, "original_height": 10,
           "value": {"x": 10, "y": 10, "width": 40, "height": 60, "rectanglelabels": ["person"]}}
    regions = ok(predict(client, config, [task], {"result": [box]}))["results"][0]["result"]
    assert len([r for r in regions if r["type"] == "rectanglelabels"]) == count + 1


def test_bad_clicks_and_tasks_are_refused_with_a_sentence(client, config, image_paths, names):
    task = {"id": 51, "data": {"image": str(image_paths["a"])}}
    outside = click_region(names, 0, 1, 1, (10, 10))
    outside["value"]["x"] = 130.0
    assert "[0, 100]" in refused(predict(client, config, [task], {"result": [outside]}), 400)
    unknown = click_region(names, 0, 1, 1, (10, 10))
    unknown["value"]["keypointlabels"] = ["tail"]
    assert "tail" in refused(predict(client, config, [task], {"result": [unknown]}), 400)
    assert "no image" in refused(predict(client, config, [{"id": 52, "data": {"text": 1, "other": 2}}]), 400)
    assert "no 'id'" in refused(predict(client, config, [{"data": {"image": str(image_paths["a"])}}],
                                        {"result": [click_region(names, 0, 1, 1, (10, 10))]}), 400)
    refused(client.post("/predict", json={"label_config": config}), 400)
    refused(client.post("/predict", json=[1, 2]), 400)
    refused(client.post("/predict", content=b"{not json", headers={"content-type": "application/json"}), 400)


def test_images_outside_the_allowed_sources_are_refused(make_client, config, annotate_assets, image_paths, tmp_path):
    client = make_client()
    secret = annotate_assets["root"] / "secret.txt"
    assert "outside the allowed root" in refused(predict(client, config, [{"id": 1, "data": {"image": str(secret)}}]),
                                                 403)
    escape = str(annotate_assets["images"] / ".." / "secret.txt")
    refused(predict(client, config, [{"id": 1, "data": {"image": escape}}]), 403)
    link = annotate_assets["images"] / "link.jpg"
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(image_paths["a"].read_bytes())
    link.symlink_to(outside)
    try:
        refused(predict(client, config, [{"id": 1, "data": {"image": "link.jpg"}}]), 403)
    finally:
        link.unlink()
    assert "Label Studio host" in refused(predict(client, config, [{"id": 1, "data": {
        "image": "http://169.254.169.254/latest/meta-data"}}]), 403)
    refused(predict(client, config, [{"id": 1, "data": {"image": "file:///etc/passwd"}}]), 403)
    assert "LABEL_STUDIO_URL" in refused(predict(client, config, [{"id": 1, "data": {
        "image": "/data/upload/1/a.jpg"}}]), 422)
    no_root = make_client(allowed_root=None)
    assert "--allowed-root" in refused(predict(no_root, config, [{"id": 1, "data": {"image": str(image_paths["a"])}}]),
                                       403)
    broken = annotate_assets["images"] / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    try:
        assert "cannot decode" in refused(predict(client, config, [{"id": 1, "data": {"image": "broken.jpg"}}]), 422)
    finally:
        broken.unlink()
    refused(predict(client, config, [{"id": 1, "data": {"image": "missing.jpg"}}]), 404)


def test_data_uris_and_too_large_images(make_client, config, image_paths, data_uri, annotate_predictor):
    client = make_client()
    people, _ = model_people(annotate_predictor, image_paths["a"])
    regions = ok(predict(client, config, [{"id": 1, "data": {"image": data_uri(image_paths["a"])}}]))["results"][0]
    assert len([r for r in regions["result"] if r["type"] == "rectanglelabels"]) == len(people)
    small = make_client(max_pixels=1000)
    assert "pixels" in refused(predict(small, config, [{"id": 1, "data": {"image": str(image_paths["a"])}}]), 422)
    refused(predict(client, config, [{"id": 1, "data": {"image": "data:image/png;base64,@@@"}}]), 422)


def test_webhook_writes_a_coco_file_pycocotools_reads(make_client, config, image_paths, tmp_path, names):
    from pycocotools.coco import COCO

    path = tmp_path / "ls.json"
    client = make_client(annotations=path)
    regions = ok(predict(client, config, [{"id": 7, "data": {"image": str(image_paths["a"])}}]))["results"][0]["result"]
    people = [r for r in regions if r["type"] == "rectanglelabels"]
    event = {"action": "ANNOTATION_CREATED", "annotation": {"id": 70, "result": regions},
             "task": {"id": 7, "data": {"image": str(image_paths["a"])}}, "project": {"id": 1, "label_config": config}}
    assert client.post("/webhook", json=event).status_code == 201
    coco = COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[7]))
    assert len(anns) == len(people)
    assert coco.loadCats(1)[0]["keypoints"] == names
    image = coco.loadImgs(7)[0]
    assert image["file_name"] == str(image_paths["a"])
    width, height = image["width"], image["height"]
    point = next(r for r in regions if r["id"] == f"{people[0]['id']}_kp3")
    triples = {a["ls_annotation_id"]: a for a in anns}[70]
    assert len(anns[0]["keypoints"]) == 3 * len(names)
    xs = [a["keypoints"][9] for a in anns]
    assert any(x == pytest.approx(point["value"]["x"] * width / 100, abs=0.01) for x in xs)
    assert triples["keypoints"][11] == 2 and triples["num_keypoints"] == len(names)
    # an update replaces that annotation's people; a second annotation adds its own
    event.update(action="ANNOTATION_UPDATED", annotation={"id": 70, "result": regions[:1 + 2]})
    assert client.post("/webhook", json=event).status_code == 201
    event.update(action="ANNOTATION_CREATED", annotation={"id": 71, "result": regions})
    client.post("/webhook", json=event)
    data = json.loads(path.read_text())
    assert sorted(a["ls_annotation_id"] for a in data["annotations"]).count(70) == 1
    assert [a["num_keypoints"] for a in data["annotations"] if a["ls_annotation_id"] == 70] == [2]
    assert client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 71}]}
                       ).status_code == 201
    assert {a["ls_annotation_id"] for a in json.loads(path.read_text())["annotations"]} == {70}
    assert ok(client.post("/webhook", json={"action": "PROJECT_UPDATED"}))["status"] == "Unknown event"
    # a restarted service continues the file
    again = make_client(annotations=path)
    event.update(action="ANNOTATION_CREATED", annotation={"id": 72, "result": regions[:2]})
    again.post("/webhook", json=event)
    assert {a["ls_annotation_id"] for a in json.loads(path.read_text())["annotations"]} == {70, 72}


def test_webhook_without_an_annotations_file_is_refused(client, config):
    event = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "result": []}, "task": {"id": 1}}
    assert "--annotations" in refused(client.post("/webhook", json=event), 409)
