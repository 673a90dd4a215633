"""CVAT: the cvat-cli auto-annotation function (checked with cvat_sdk's own spec and shape classes and the checks
``annotate_task`` applies to a function's output) and the Nuclio detector handler (called with a request as CVAT
sends it)."""
from __future__ import annotations

import base64
import copy
import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

cvataa = pytest.importorskip("cvat_sdk.auto_annotation", reason="pip install -r requirements.txt (cvat-sdk)")
import cvat_sdk.models as models  # noqa: E402

from datasets.metadata import COCO_KEYPOINTS  # noqa: E402
from models.predictor import people_dicts  # noqa: E402
from ..conftest import ANNOTATE_CONFIG, ANNOTATE_OPTIONS  # noqa: E402
from tools.serve import cvat  # noqa: E402
from tools.serve.nuclio import main as nuclio_main  # noqa: E402
from util.keypoint_metadata import KeypointMetadata  # noqa: E402

FUNCTION_YAML = Path(cvat.__file__).parent / "nuclio" / "function.yaml"


# ---- helpers ---------------------------------------------------------------------------------------------------
def svg_nodes_and_edges(svg: str) -> tuple[list[tuple[int, str]], set[tuple[int, int]]]:
    """(node id, label name) of the circles in order, and the edges as (from, to) node ids."""
    root = ET.fromstring(f"<svg>{svg}</svg>")
    nodes = [(int(c.get("data-node-id")), c.get("data-label-name")) for c in root.iter("circle")
             if c.get("data-type") == "element node"]
    edges = {(int(line.get("data-node-from")), int(line.get("data-node-to"))) for line in root.iter("line")
             if line.get("data-type") == "edge"}
    return nodes, edges


def dataset_label(spec: cvataa.DetectionFunctionSpec, label_id: int = 100) -> models.Label:
    """A task's label as CVAT's API returns it, made from the spec (other ids, as a real task has)."""
    (label,) = spec.labels
    return models.Label(name=label.name, id=label_id, type="skeleton", attributes=[], svg=label.svg,
                        sublabels=[models.Sublabel(name=s.name, id=1000 + s.id, type="points", attributes=[])
                                   for s in label.sublabels])


def validate_like_annotate_task(spec, shapes):
    """The checks and label remapping ``cvat_sdk.auto_annotation.annotate_task`` applies to a detect() result
    (its ``_AnnotationMapper``), against a task whose labels are the spec's; returns the remapped shapes."""
    driver = pytest.importorskip("cvat_sdk.auto_annotation.driver")
    if not hasattr(driver, "_AnnotationMapper"):
        pytest.skip("this cvat_sdk has no _AnnotationMapper (annotate_task's output checks)")
    mapper = driver._AnnotationMapper(logging.getLogger("cvat-test"), spec.labels, [dataset_label(spec)],
                                      allow_unmatched_labels=False, conv_mask_to_poly=False)
    tags, remapped = mapper.validate_and_remap(copy.deepcopy(shapes), 7)
    assert tags == []
    return remapped


class Context(cvataa.DetectionFunctionContext):
    """What annotate_task hands detect() (cvat_sdk's own implementation is private)."""

    def __init__(self, conf_threshold=None):
        self._conf_threshold = conf_threshold

    frame_name = property(lambda self: "a.jpg")
    conf_threshold = property(lambda self: self._conf_threshold)
    conv_mask_to_poly = property(lambda self: False)


def fabricated_people():
    """Two people of 3 keypoints with visibilities 0/1/2 and one with none labelled."""
    base = {"box": [0, 0, 10, 10], "confidence": [0.9, 0.5, 1.5], "pinned": [False] * 3}
    return [
        {**base, "index": 0, "score": 0.8, "keypoints": [[1.0, 2.0, 0.9], [3.5, 4.25, 0.5], [5.0, 6.0, 1.0]],
         "visibility": [2, 1, 0]},
        {**base, "index": 1, "score": 0.6, "keypoints": [[7.0, 8.0, 0.9], [9.0, 1.0, 0.5], [2.0, 3.0, 1.0]],
         "visibility": [0, 2, 2]},
        {**base, "index": 2, "score": 0.5, "keypoints": [[1.0, 1.0, 0.1]] * 3, "visibility": [0, 0, 0]},
    ]


THREE = KeypointMetadata(name="three", keypoint_names=("head", "left_hand", 'odd "name" & <b>'),
                         flip_pairs=(), sigmas=(0.05,) * 3, skeleton=((0, 1), (0, 2)))


def model_people(predictor, path, threshold=0.0):
    prediction = predictor.prediction(Image.open(path).convert("RGB"))
    return people_dicts(prediction.people, prediction.size, threshold)


def assert_points_match(actual_points, expected_person):
    for (x, y), (ex, ey, _) in zip(actual_points, expected_person["keypoints"]):
        assert abs(x - ex) < 1e-3 and abs(y - ey) < 1e-3


# ---- spec ------------------------------------------------------------------------------------------------------
def test_spec_is_a_valid_sdk_spec_of_the_checkpoints_keypoints(annotate_predictor):
    metadata = annotate_predictor.metadata
    spec = cvat.detection_spec(metadata)  # DetectionFunctionSpec validates its labels when built
    assert isinstance(spec, cvataa.DetectionFunctionSpec)
    (label,) = spec.labels
    assert isinstance(label, models.PatchedLabelRequest)
    assert (label.name, label.id, label.type) == ("person", 0, "skeleton")
    assert all(isinstance(s, models.SublabelRequest) and s.type == "points" for s in label.sublabels)
    assert [s.name for s in label.sublabels] == list(metadata.keypoint_names)
    assert [s.id for s in label.sublabels] == list(range(len(metadata.keypoint_names)))
    nodes, edges = svg_nodes_and_edges(label.svg)
    assert nodes == [(k + 1, name) for k, name in enumerate(metadata.keypoint_names)]
    assert edges == {(a + 1, b + 1) for a, b in metadata.skeleton}  # the metadata's skeleton is 0-based
    assert len(metadata.skeleton) == 19 and metadata.keypoint_names == COCO_KEYPOINTS.keypoint_names


def test_svg_of_an_unknown_layout_escapes_names_and_checks_edges():
    nodes, edges = svg_nodes_and_edges(cvat.skeleton_svg(THREE.keypoint_names, THREE.skeleton))
    assert nodes == [(1, "head"), (2, "left_hand"), (3, 'odd "name" & <b>')]
    assert edges == {(1, 2), (1, 3)}
    positions = cvat.template_positions(THREE.keypoint_names)  # 'odd ...' is not a known joint: a circle
    assert len(set(positions)) == 3 and all(0 <= v <= 100 for p in positions for v in p)
    with pytest.raises(ValueError, match="does not join"):
        cvat.skeleton_svg(("a", "b"), ((0, 2),))
    spec = cvat.detection_spec(THREE)
    assert [s.name for s in spec.labels[0].sublabels] == list(THREE.keypoint_names)


def test_nuclio_spec_matches_the_sdk_spec(annotate_predictor):
    (sdk_label,) = cvat.detection_spec(annotate_predictor.metadata).labels
    (label,) = cvat.nuclio_spec(annotate_predictor.metadata)
    assert (label["name"], label["type"], label["svg"]) == ("person", "skeleton", sdk_label.svg)
    assert label["sublabels"] == [{"name": s.name, "type": "points"} for s in sdk_label.sublabels]


# ---- people -> shapes ------------------------------------------------------------------------------------------
def test_skeleton_shapes_map_visibility_and_pass_annotate_tasks_checks():
    shapes = cvat.skeleton_shapes(fabricated_people())
    assert len(shapes) == 2  # the person with no keypoint labelled is left out
    assert all(isinstance(s, models.LabeledShapeRequest) and s.type.value == "skeleton" for s in shapes)
    first, second = shapes
    assert [(e.label_id, e.points, e.outside, e.occluded) for e in first.elements] == [
        (0, [1.0, 2.0], False, False), (1, [3.5, 4.25], False, True), (2, [5.0, 6.0], True, False)]
    assert [(e.outside, e.occluded) for e in second.elements] == [(True, False), (False, False), (False, False)]
    assert first.score == pytest.approx(0.8) and first.elements[2].score == 1.0  # clamped to [0, 1]
    remapped = validate_like_annotate_task(cvat.detection_spec(THREE), shapes)
    assert [s.label_id for s in remapped] == [100, 100] and {s.frame for s in remapped} == {7}
    assert [e.label_id for e in remapped[0].elements] == [1000, 1001, 1002]


def test_detector_results_map_visibility():
    results = cvat.detector_results(fabricated_people(), THREE.keypoint_names)
    assert [r["confidence"] for r in results] == [0.8, 0.6]
    first = results[0]
    assert (first["label"], first["type"]) == ("person", "skeleton")
    assert first["elements"] == [
        {"label": "head", "type": "points", "points": [1.0, 2.0], "outside": False, "occluded": False,
         "confidence": 0.9},
        {"label": "left_hand", "type": "points", "points": [3.5, 4.25], "outside": False, "occluded": True,
         "confidence": 0.5},
        {"label": 'odd "name" & <b>', "type": "points", "points": [5.0, 6.0], "outside": True, "occluded": False,
         "confidence": 1.0}]
    json.dumps(results)  # plain JSON


# ---- the SDK function through the model ------------------------------------------------------------------------
def test_detect_returns_the_predictors_people_as_skeletons(annotate_predictor, image_paths):
    function = cvat.ClickPoseFunction(annotate_predictor, threshold=0.0)
    image = Image.open(image_paths["a"])
    expected = model_people(annotate_predictor, image_paths["a"])
    assert expected, "the tiny model should find people at threshold 0"
    shapes = function.detect(Context(), image)
    assert len(shapes) == len(expected)
    for shape, person in zip(shapes, expected):
        assert isinstance(shape, models.LabeledShapeRequest) and shape.label_id == 0
        assert len(shape.elements) == annotate_predictor.num_keypoints
        assert [e.label_id for e in shape.elements] == list(range(annotate_predictor.num_keypoints))
        assert not any(e.outside for e in shape.elements)  # no quality head: every keypoint visible
        assert_points_match([e.points for e in shape.elements], person)
        assert shape.score == pytest.approx(min(max(person["score"], 0.0), 1.0), abs=1e-6)
    remapped = validate_like_annotate_task(function.spec, shapes)
    assert len(remapped) == len(expected)

    # --conf-threshold (context.conf_threshold) wins over create()'s threshold
    cut = sorted(p["score"] for p in expected)[len(expected) // 2]
    above = function.detect(Context(conf_threshold=cut), image)
    assert 0 < len(above) == sum(p["score"] >= cut for p in expected)
    strict = cvat.ClickPoseFunction(annotate_predictor, threshold=0.99)
    assert len(strict.detect(Context(), image)) == sum(p["score"] >= 0.99 for p in expected)
    with pytest.raises(ValueError, match="threshold"):
        cvat.ClickPoseFunction(annotate_predictor, threshold=1.5)


def test_detect_uses_the_quality_heads_visibility():
    """With a quality head the Predictor's people carry COCO flags: 0 -> outside, 1 -> occluded."""
    import torch

    from models.predictor import People, Prediction

    people = People(boxes=torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.3, 0.3, 0.2, 0.2]]),
                    keypoints=torch.tensor([[[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]] * 2),
                    scores=torch.tensor([0.9, 0.2]), confidence=torch.full((2, 3), 0.7),
                    pinned=torch.zeros(2, 3, dtype=torch.bool),
                    predicted_visibility=torch.tensor([[2, 1, 0], [0, 0, 0]]))
    predictor = SimpleNamespace(metadata=THREE, prediction=lambda image: Prediction(people, None, (200, 100)))
    shapes = cvat.ClickPoseFunction(predictor, threshold=0.0).detect(Context(), Image.new("RGB", (200, 100)))
    assert len(shapes) == 1  # the second person has no keypoint labelled
    assert [(e.points, e.outside, e.occluded) for e in shapes[0].elements] == [
        (pytest.approx([20.0, 20.0]), False, False), (pytest.approx([60.0, 40.0]), False, True),
        (pytest.approx([100.0, 60.0]), True, False)]


def test_create_loads_the_model_and_reports_missing_files(annotate_assets, tmp_path):
    function = cvat.create(config=ANNOTATE_CONFIG, checkpoint=str(annotate_assets["checkpoint"]),
                           threshold=0.25, options=json.dumps(ANNOTATE_OPTIONS))
    try:
        assert function.threshold == 0.25 and hasattr(function, "spec") and callable(function.detect)
        assert [s.name for s in function.spec.labels[0].sublabels] == list(COCO_KEYPOINTS.keypoint_names)
    finally:
        function.predictor.close()
    with pytest.raises(Exception, match=r"checkpoint not found: .*missing\.pth.*-p checkpoint=str"):
        cvat.create(config=ANNOTATE_CONFIG, checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(Exception, match=r"config file not found.*-p config=str"):
        cvat.create(config=str(tmp_path / "missing.cfg.py"), checkpoint=str(annotate_assets["checkpoint"]))
    with pytest.raises(ValueError, match="JSON object"):
        cvat.create(config=ANNOTATE_CONFIG, checkpoint=str(annotate_assets["checkpoint"]), options="[1]")


def test_spec_command_prints_the_nuclio_spec(capsys):
    assert cvat.main(["spec", "--config", ANNOTATE_CONFIG]) == 0
    assert json.loads(capsys.readouterr().out) == cvat.nuclio_spec(COCO_KEYPOINTS)
    assert cvat.main(["spec", "--config", "no/such.cfg.py"]) == 2
    assert "config file not found" in capsys.readouterr().err


# ---- the Nuclio function ---------------------------------------------------------------------------------------
class Logger:
    def __init__(self):
        self.lines = []

    def info(self, message, *args):
        self.lines.append(("info", message))

    def warn(self, message, *args):
        self.lines.append(("warn", message))


class Response:
    """nuclio_sdk.Response's constructor, as the handler calls it."""

    def __init__(self, body=None, headers=None, content_type=None, status_code=200):
        self.body, self.headers, self.content_type, self.status_code = body, headers, content_type, status_code


def nuclio_context():
    return SimpleNamespace(user_data=SimpleNamespace(), logger=Logger(), Response=Response)


@pytest.fixture(scope="module")
def nuclio_ready(annotate_assets):
    """A Nuclio context after init_context with the environment function.yaml sets (the tiny model)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("CLICKPOSE_CONFIG", ANNOTATE_CONFIG)
    patch.setenv("CLICKPOSE_CHECKPOINT", str(annotate_assets["checkpoint"]))
    patch.setenv("CLICKPOSE_OPTIONS", json.dumps(ANNOTATE_OPTIONS))
    patch.setenv("CLICKPOSE_THRESHOLD", "0.0")
    context = nuclio_context()
    try:
        nuclio_main.init_context(context)
    finally:
        patch.undo()
    yield context
    context.user_data.model.close()


def recorded_request(path, threshold=0.0):
    """The body CVAT's lambda manager posts to a detector: the frame as bare base64, and the threshold."""
    return SimpleNamespace(body={"image": base64.b64encode(Path(path).read_bytes()).decode(), "threshold": threshold})


def test_nuclio_handler_answers_skeletons_of_the_predictors_people(nuclio_ready, annotate_predictor, image_paths):
    response = nuclio_main.handler(nuclio_ready, recorded_request(image_paths["a"]))
    assert (response.status_code, response.content_type, response.headers) == (200, "application/json", {})
    results = json.loads(response.body)
    expected = model_people(annotate_predictor, image_paths["a"])
    assert len(results) == len(expected) > 0
    names = list(annotate_predictor.metadata.keypoint_names)
    for result, person in zip(results, expected):
        assert set(result) == {"confidence", "label", "type", "elements"}
        assert (result["label"], result["type"]) == ("person", "skeleton")
        assert 0.0 <= result["confidence"] <= 1.0
        assert [e["label"] for e in result["elements"]] == names
        assert all(e["type"] == "points" and e["outside"] is False and e["occluded"] is False
                   for e in result["elements"])
        assert_points_match([e["points"] for e in result["elements"]], person)
    # a JSON body as text, and the default threshold when CVAT sends none (it leaves out a threshold of 0)
    text = SimpleNamespace(body=json.dumps({"image": recorded_request(image_paths["a"]).body["image"]}).encode())
    assert json.loads(nuclio_main.handler(nuclio_ready, text).body) == results


@pytest.mark.parametrize("body, status, words", [
    ({"threshold": 0.5}, 400, "no image"),
    ({"image": "%%%not base64"}, 422, "not valid base64"),
    ({"image": base64.b64encode(b"not an image").decode()}, 422, "cannot decode"),
    (b"{not json", 400, "not JSON"),
    ([1, 2], 400, "JSON object"),
])
def test_nuclio_handler_refuses_bad_requests(nuclio_ready, body, status, words):
    response = nuclio_main.handler(nuclio_ready, SimpleNamespace(body=body))
    assert response.status_code == status and words in json.loads(response.body)["error"]


def test_nuclio_handler_refuses_a_bad_threshold(nuclio_ready, image_paths):
    response = nuclio_main.handler(nuclio_ready, recorded_request(image_paths["a"], threshold=2))
    assert response.status_code == 400 and "[0, 1]" in json.loads(response.body)["error"]


def test_nuclio_settings_say_what_is_missing():
    with pytest.raises(ValueError, match="CLICKPOSE_CONFIG and CLICKPOSE_CHECKPOINT not set.*spec.env"):
        nuclio_main.settings_from_env({})
    with pytest.raises(ValueError, match="CLICKPOSE_THRESHOLD"):
        nuclio_main.settings_from_env({"CLICKPOSE_CONFIG": "c", "CLICKPOSE_CHECKPOINT": "k",
                                       "CLICKPOSE_THRESHOLD": "high"})
    settings = nuclio_main.settings_from_env({"CLICKPOSE_CONFIG": "c", "CLICKPOSE_CHECKPOINT": "k"})
    assert (settings.device, settings.threshold, settings.options, settings.trust_checkpoint) == (
        "cpu", cvat.DEFAULT_THRESHOLD, {}, False)


def test_nuclio_init_reports_a_missing_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setenv("CLICKPOSE_CONFIG", ANNOTATE_CONFIG)
    monkeypatch.setenv("CLICKPOSE_CHECKPOINT", str(tmp_path / "missing.pth"))
    with pytest.raises(Exception, match=r"checkpoint not found: .*missing\.pth.*CLICKPOSE_CHECKPOINT"):
        nuclio_main.init_context(nuclio_context())


def test_function_yaml_declares_a_detector_of_the_demo_configs_keypoints(annotate_predictor):
    yaml = pytest.importorskip("yaml", reason="parsing function.yaml needs PyYAML")
    function = yaml.safe_load(FUNCTION_YAML.read_text())
    annotations = function["metadata"]["annotations"]
    assert annotations["type"] == "detector" and annotations["name"] and function["metadata"]["namespace"] == "cvat"
    spec = json.loads(annotations["spec"])
    (label,) = spec
    assert [s["name"] for s in label["sublabels"]] == list(annotate_predictor.metadata.keypoint_names)
    assert len(label["sublabels"]) == 17
    assert spec == cvat.nuclio_spec(annotate_predictor.metadata)  # the yaml is what the code would write
    module, _, entry = function["spec"]["handler"].partition(":")
    assert (module, entry) == ("tools.serve.nuclio.main", "handler")
    env = {item["name"]: item["value"] for item in function["spec"]["env"]}
    assert {"CLICKPOSE_CONFIG", "CLICKPOSE_CHECKPOINT"} <= set(env)
    assert cvat.resolve(env["CLICKPOSE_CONFIG"]).is_file()  # relative to the repository, as in /opt/nuclio
