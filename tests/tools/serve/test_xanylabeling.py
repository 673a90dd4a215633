"""The X-AnyLabeling remote-server door: its model listing, shapes of the Predictor's people, marks that refine the
nearest person, and its error answers."""
from __future__ import annotations

import math

import pytest
from PIL import Image

from models.predictor import people_dicts
from tools.serve.xanylabeling import shapes


def model_people(predictor, path):
    prediction = predictor.prediction(Image.open(path).convert("RGB"))
    return people_dicts(prediction.people, prediction.size), prediction.size


def ok(response):
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    return body["data"]


def failed(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == code, body
    assert len(body["error"]["message"].split()) >= 4, body  # a sentence
    return body["error"]["message"]


def run(client, image, marks=(), conf=0.0, model="clickpose"):
    return client.post("/v1/predict", json={"model": model, "image": image,
                                            "params": {"conf_threshold": conf, "marks": list(marks)}})


def point(x, y, label=1):
    return {"type": "point", "data": [x, y], "label": label}


def grouped(found):
    groups: dict[int, dict[str, list]] = {}
    for shape in found:
        groups.setdefault(shape["group_id"], {}).setdefault(shape["label"], []).append(shape)
    return groups


def test_models_lists_the_model_with_its_widgets(client):
    models = ok(client.get("/v1/models"))
    assert list(models) == ["clickpose"]
    widgets = {w["name"] for w in models["clickpose"]["widgets"]}
    assert {"button_run", "button_add_point", "button_clear", "edit_conf"} <= widgets
    assert ok(client.get("/v1/models/clickpose/info"))["model_id"] == "clickpose"
    failed(client.get("/v1/models/other/info"), 404, "MODEL_NOT_FOUND")
    assert client.get("/health").json()["models_loaded"] == 1


def test_shapes_are_the_predictors_people(client, annotate_predictor, image_paths, data_uri):
    people, _ = model_people(annotate_predictor, image_paths["a"])
    names = annotate_predictor.metadata.keypoint_names
    found = ok(run(client, data_uri(image_paths["a"])))["shapes"]
    groups = grouped(found)
    assert len(found) == len(people) * (1 + len(names)) and len(groups) == len(people)
    for person in people:
        group = groups[person["index"] + 1]
        (box,) = group["person"]
        x0, y0, x1, y1 = person["box"]
        assert box["shape_type"] == "rectangle"
        assert box["points"] == [[pytest.approx(x0), pytest.approx(y0)], [pytest.approx(x1), pytest.approx(y0)],
                                 [pytest.approx(x1), pytest.approx(y1)], [pytest.approx(x0), pytest.approx(y1)]]
        assert box["score"] == pytest.approx(person["score"])
        for k, name in enumerate(names):
            (joint,) = group[name]
            assert joint["shape_type"] == "point" and joint["difficult"] is False
            assert joint["points"] == [[pytest.approx(person["keypoints"][k][0]),
                                        pytest.approx(person["keypoints"][k][1])]]
    # the threshold hides people below it
    best = max(p["score"] for p in people)
    assert len(grouped(ok(run(client, data_uri(image_paths["a"]), conf=best - 1e-6))["shapes"])) == 1


def test_a_mark_refines_the_person_with_the_nearest_joint(client, annotate_predictor, image_paths, data_uri):
    people, size = model_people(annotate_predictor, image_paths["b"])
    names = annotate_predictor.metadata.keypoint_names
    image = data_uri(image_paths["b"])
    x, y = people[1]["keypoints"][5][:2]
    x, y = min(max(x + 3, 0), size[0]), min(max(y + 2, 0), size[1])
    distance, target, k = min((math.hypot(p["keypoints"][j][0] - x, p["keypoints"][j][1] - y), p["index"], j)
                              for p in people for j in range(len(names)))
    before = grouped(ok(run(client, image))["shapes"])
    after = grouped(ok(run(client, image, [point(x, y)]))["shapes"])
    assert after[target + 1][names[k]][0]["points"] == [[pytest.approx(x), pytest.approx(y)]]
    for group, labels in before.items():
        if group != target + 1:
            assert after[group] == labels
    # a second mark adds to the first; the same marks again give the same shapes; no marks: the model's people
    x2, y2 = people[-1]["keypoints"][0][:2]
    x2, y2 = min(max(x2, 0), size[0]), min(max(y2, 0), size[1])
    two = ok(run(client, image, [point(x, y), point(x2, y2)]))["shapes"]
    assert grouped(two)[target + 1][names[k]][0]["points"] == [[pytest.approx(x), pytest.approx(y)]]
    assert ok(run(client, image, [point(x, y), point(x2, y2)]))["shapes"] == two
    assert grouped(ok(run(client, image))["shapes"]) == before
    assert ok(run(client, image, [point(x, y), point(x2, y2)]))["shapes"] == two  # replayed from nothing
    # negative marks change nothing
    assert grouped(ok(run(client, image, [point(x, y, label=0)]))["shapes"]) == before


def test_a_rectangle_mark_adds_a_person(client, image_paths, data_uri):
    image = data_uri(image_paths["a"])
    count = len(grouped(ok(run(client, image))["shapes"]))
    marks = [{"type": "rectangle", "data": [10, 10, 200, 300], "label": 1}]
    assert len(grouped(ok(run(client, image, marks))["shapes"])) == count + 1


def test_errors_answer_with_a_code_and_a_sentence(client, image_paths, data_uri):
    image = data_uri(image_paths["a"])
    failed(run(client, image, model="yolo"), 404, "MODEL_NOT_FOUND")
    failed(run(client, "data:image/png;base64,aGVsbG8="), 422, "INVALID_IMAGE")
    failed(run(client, "not base64 at all!"), 422, "INVALID_IMAGE")
    failed(run(client, ""), 422, "INVALID_IMAGE")
    assert "outside" in failed(run(client, image, [point(1e6, 5)]), 400, "INVALID_PARAMS")
    failed(run(client, image, [{"type": "polygon", "data": [], "label": 1}]), 400, "INVALID_PARAMS")
    failed(run(client, image, [point("a", 5)]), 400, "INVALID_PARAMS")
    failed(run(client, image, conf=1.5), 400, "INVALID_PARAMS")
    failed(client.post("/v1/predict", json=[]), 400, "INVALID_PARAMS")
    failed(client.post("/v1/predict", content=b"{", headers={"content-type": "application/json"}), 400,
           "INVALID_PARAMS")
    failed(client.get("/v1/nothing"), 404, "NOT_FOUND")
    # nobody above the threshold: a click has no one to correct
    failed(run(client, image, [point(5, 5)], conf=1.0), 409, "NO_PERSON")


def test_occluded_keypoints_are_difficult_and_unlabelled_ones_left_out():
    person = {"index": 2, "score": 0.9, "box": [0, 0, 10, 10], "keypoints": [[1, 1, 0.5], [2, 2, 0.5], [3, 3, 0.5]],
              "confidence": [0.5, 0.5, 0.5], "visibility": [2, 1, 0]}
    found = shapes([person], ("a", "b", "c"))
    assert [(s["label"], s["difficult"], s["group_id"]) for s in found] == [("person", False, 3), ("a", False, 3),
                                                                           ("b", True, 3)]


# What X-AnyLabeling's client (anylabeling/services/auto_labeling/remote_server.py, RemoteServer) sends, recorded
# from its source: GET /v1/models and POST /v1/predict with headers {"Content-Type": "application/json", "Token":
# api_key}; params always carry conf_threshold, iou_threshold and epsilon_factor, marks only when there are some (the
# canvas's marks: whole-pixel ints), filter_classes when a class filter is set (an empty list: all classes).
def client_request(image, model, marks, api_key):
    params = {"conf_threshold": 0.0, "iou_threshold": 0.0, "epsilon_factor": 0.001}
    if marks:
        params["marks"] = marks
    params["filter_classes"] = []
    return {"model": model, "image": image, "params": params}, {"Content-Type": "application/json", "Token": api_key}


def client_shapes(answer):
    """The client's reading of an answer: data.shapes, each label, shape_type, points and the optional fields."""
    return [{"label": s["label"], "shape_type": s["shape_type"], "points": [tuple(p) for p in s["points"]],
             "group_id": s.get("group_id"), "difficult": s.get("difficult", False), "score": s.get("score")}
            for s in answer.get("data", {}).get("shapes", [])]


def test_the_x_anylabeling_clients_recorded_requests(make_client, annotate_predictor, image_paths, data_uri):
    client = make_client(token="secret-key")
    names = annotate_predictor.metadata.keypoint_names
    models = client.get("/v1/models", headers={"Content-Type": "application/json", "Token": "secret-key"})
    assert models.status_code == 200
    model_id = next(iter(models.json()["data"]))  # the client lists data's keys and the user picks one
    body, headers = client_request(data_uri(image_paths["a"]), model_id, [], "secret-key")
    shown = client_shapes(client.post("/v1/predict", json=body, headers=headers).json())
    people, size = model_people(annotate_predictor, image_paths["a"])
    assert sum(s["shape_type"] == "rectangle" for s in shown) == len(people)
    assert all(s["shape_type"] == "point" and s["label"] in names for s in shown if s["shape_type"] != "rectangle")
    # a point the user adds on the canvas (ints), near person 0's keypoint 3
    x, y = (int(round(min(max(v, 1), limit - 1))) for v, limit in zip(people[0]["keypoints"][3][:2], size))
    body, headers = client_request(data_uri(image_paths["a"]), model_id, [{"type": "point", "data": [x, y],
                                                                          "label": 1}], "secret-key")
    after = client_shapes(client.post("/v1/predict", json=body, headers=headers).json())
    assert any(s["points"] == [(x, y)] for s in after if s["shape_type"] == "point")
    # the wrong key: refused in the client's error form
    body, headers = client_request(data_uri(image_paths["a"]), model_id, [], "wrong")
    refused = client.post("/v1/predict", json=body, headers=headers)
    assert refused.status_code == 401 and refused.json()["success"] is False
