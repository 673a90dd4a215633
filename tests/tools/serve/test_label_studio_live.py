"""Label Studio itself (the ``label-studio`` package, `make label-studio`) with this service as its ML backend: a
project with the KeyPointLabels + RectangleLabels config, images uploaded, the backend connected through Label
Studio's API, and what Label Studio stores and forwards checked against the Predictor's own people.

Label Studio runs on 127.0.0.1 with SQLite in a temporary folder, started and stopped here (about 1.5 min to start:
it migrates a new database); the service runs in this process. Without Label Studio the tests fail, saying how to
install it. ``LABEL_STUDIO_SCREENSHOT=docs/label_studio.png`` keeps the labelling page's screenshot.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from PIL import Image

from models.predictor import people_dicts
from tools.annotate.browser_check import find_chromium, serve
from tools.label_studio import label_config
from tools.serve.app import ServeSettings, create_app
from tools.serve.screenshot_label_studio import (EXECUTABLE_ENV, LabelStudio, LabelStudioError, connect_backend,
                                                 create_project, find_label_studio, import_images,
                                                 interactive_annotating, labelling_page, retrieve_predictions,
                                                 running_label_studio)

pytestmark = pytest.mark.slow

PIXEL_TOLERANCE = 0.5


@dataclass
class LiveProject:
    """The project in Label Studio: its tasks, its ML backend's id, the predictions it stored (per task id) and the
    local file of each task's image."""

    client: httpx.Client
    project: int
    backend: int
    tasks: list[dict[str, Any]]
    stored: dict[int, list[dict[str, Any]]]
    images: dict[int, Path]


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Iterator[LabelStudio]:
    executable = find_label_studio()
    if executable is None:
        named = os.environ.get(EXECUTABLE_ENV)
        where = f"${EXECUTABLE_ENV}={named} is no executable" if named else "Label Studio is not installed"
        pytest.fail(f"{where}: run `make label-studio` (it installs the label-studio package in .venv-ls, an "
                    f"environment of its own) or set ${EXECUTABLE_ENV} to a label-studio executable", pytrace=False)
    try:
        with running_label_studio(executable, tmp_path_factory.mktemp("label-studio")) as running:
            yield running
    except LabelStudioError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def names(annotate_predictor) -> list[str]:
    return list(annotate_predictor.metadata.keypoint_names)


def _task_files(client: httpx.Client, tasks: list[dict[str, Any]], paths: list[Path]) -> dict[int, Path]:
    """Which local file each task's image is: its bytes as Label Studio serves them (with the token, as the
    service reads them) are those of exactly one uploaded file."""
    by_digest = {hashlib.sha256(path.read_bytes()).hexdigest(): path for path in paths}
    files = {}
    for task in tasks:
        served = client.get(task["data"]["image"])
        assert served.status_code == 200, f"Label Studio did not serve {task['data']['image']}: {served.text[:300]}"
        files[task["id"]] = by_digest[hashlib.sha256(served.content).hexdigest()]
    assert sorted(files.values()) == sorted(paths)
    return files


@pytest.fixture(scope="module")
def live(studio, annotate_predictor, image_paths, names) -> Iterator[LiveProject]:
    """The service connected to a project of three uploaded images, whose predictions Label Studio retrieved."""
    settings = ServeSettings(threshold=0.0, label_studio_url=studio.url, label_studio_api_key=studio.token)
    paths = [image_paths[key] for key in ("a", "b", "c")]
    with serve(create_app(annotate_predictor, settings)) as url, studio.client() as client:
        try:
            project = create_project(client, "Click-Pose live test", label_config(names))
            tasks = import_images(client, project, paths)
            backend = connect_backend(client, project, url.rstrip("/"))
            stored = retrieve_predictions(client, project)
        except LabelStudioError as exc:
            pytest.fail(f"{exc}\nLabel Studio's log ends:\n{studio.log_tail()}", pytrace=False)
        yield LiveProject(client, project, backend["id"], tasks, stored, _task_files(client, tasks, paths))


def model_people(predictor, path: Path) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    """The Predictor's own people in pixels (all of them: the service runs at threshold 0) and the image size."""
    prediction = predictor.prediction(Image.open(path).convert("RGB"))
    return people_dicts(prediction.people, prediction.size), prediction.size


def clamp(value: float, high: float) -> float:
    return min(max(value, 0.0), high)


def keypoints_of(regions: list[dict[str, Any]], person: int) -> dict[str, dict[str, Any]]:
    """Person ``person``'s keypoint regions (their parent is its box), by keypoint label."""
    return {r["value"]["keypointlabels"][0]: r for r in regions
            if r["type"] == "keypointlabels" and r.get("parentID") == f"person{person}"}


def of_person(region_id: str, person: int) -> bool:
    """Whether a region is person ``person``'s: its box ``person{i}`` or a keypoint ``person{i}_kp{k}``."""
    return region_id == f"person{person}" or region_id.startswith(f"person{person}_")


def assert_same_value(got: dict[str, Any], want: dict[str, Any], tolerance: float, what: str) -> None:
    """Two regions' values are the same: numbers within ``tolerance`` (percent), labels equal."""
    assert sorted(got) == sorted(want), what
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=tolerance), (what, key)
        else:
            assert got[key] == value, (what, key)


def by_id(regions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {region["id"]: region for region in regions}


def test_label_studio_stores_the_models_people_at_their_pixels(live, annotate_predictor, names):
    assert sorted(live.stored) == [task["id"] for task in live.tasks]
    for task in live.tasks:
        assert task["data"]["image"].startswith("/data/upload/")
        predictions = live.stored[task["id"]]
        assert len(predictions) == 1 and predictions[0]["model_version"] == "clickpose"
        regions = predictions[0]["result"]
        people, (width, height) = model_people(annotate_predictor, live.images[task["id"]])
        boxes = [r for r in regions if r["type"] == "rectanglelabels"]
        assert len(boxes) == len(people) > 0, live.images[task["id"]]
        assert {(r["original_width"], r["original_height"]) for r in regions} == {(width, height)}
        for person in people:
            points = keypoints_of(regions, person["index"])
            assert sorted(points) == sorted(names)  # every keypoint, all visible
            for name, (x, y, _) in zip(names, person["keypoints"]):
                value = points[name]["value"]
                assert abs(value["x"] * width / 100 - clamp(x, width)) <= PIXEL_TOLERANCE, (task["id"], name)
                assert abs(value["y"] * height / 100 - clamp(y, height)) <= PIXEL_TOLERANCE, (task["id"], name)


def pick_click(people: list[dict[str, Any]], size: tuple[int, int], shift: tuple[float, float] = (5.0, 4.0)
               ) -> tuple[int, int, tuple[float, float]]:
    """(person index, keypoint, click in pixels): a joint moved by ``shift`` whose new place is clearly nearest to
    that person's joint (the service refines the person whose prediction of the clicked joint lies nearest)."""
    width, height = size
    for person in people:
        for k, (x, y, _) in enumerate(person["keypoints"]):
            click = (min(max(x + shift[0], 1.0), width - 2.0), min(max(y + shift[1], 1.0), height - 2.0))
            own = math.dist(click, person["keypoints"][k][:2])
            others = [math.dist(click, p["keypoints"][k][:2]) for p in people if p is not person]
            if own > 2.0 and all(d > 3 * own for d in others):
                return person["index"], k, click
    pytest.fail("no keypoint of this image is clearly nearer to one person than to the others")


def click_region(name: str, click: tuple[float, float], size: tuple[int, int]) -> dict[str, Any]:
    """A keypoint region as the labelling page sends it after a smart keypoint was placed."""
    width, height = size
    return {"id": "click1", "type": "keypointlabels", "from_name": "kp", "to_name": "image", "origin": "manual",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": 100 * click[0] / width, "y": 100 * click[1] / height, "width": 0.4,
                      "keypointlabels": [name]}}


def test_an_interactive_click_through_label_studio_moves_that_person_only(live, annotate_predictor, names,
                                                                         make_client, data_uri):
    task = live.tasks[0]
    path = live.images[task["id"]]
    people, size = model_people(annotate_predictor, path)
    person, k, click = pick_click(people, size)
    region = click_region(names[k], click, size)

    answer = interactive_annotating(live.client, live.backend, task["id"], [region])
    assert answer["model_version"] == "clickpose"
    before, after = by_id(live.stored[task["id"]][0]["result"]), by_id(answer["result"])
    assert set(after) == set(before)
    moved = after[f"person{person}_kp{k}"]["value"]
    assert abs(moved["x"] * size[0] / 100 - click[0]) <= PIXEL_TOLERANCE
    assert abs(moved["y"] * size[1] / 100 - click[1]) <= PIXEL_TOLERANCE
    was = before[f"person{person}_kp{k}"]["value"]
    assert math.dist((was["x"] * size[0] / 100, was["y"] * size[1] / 100), click) > 2.0
    for region_id, region_before in before.items():
        if not of_person(region_id, person):
            assert_same_value(after[region_id]["value"], region_before["value"], 1e-9, region_id)
    # the clicked person's other keypoints are what the service itself makes of this click on this image
    own = make_client().post("/predict", json={"tasks": [{"id": task["id"], "data": {"image": data_uri(path)}}],
                                               "label_config": label_config(names),
                                               "params": {"context": {"result": [region]}}})
    assert own.status_code == 200, own.text
    expected = by_id(own.json()["results"][0]["result"])
    for region_id, region_after in after.items():
        assert_same_value(region_after["value"], expected[region_id]["value"], 1e-6, region_id)


def test_the_labelling_page_shows_the_stored_keypoints(live, studio, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium + chromedriver on this machine (`make browser` installs Debian's chromium and "
                    "chromium-driver; it needs apt and root)")
    out = Path(os.environ.get("LABEL_STUDIO_SCREENSHOT") or tmp_path / "label_studio.png")
    task = live.tasks[-1]
    try:
        shown = labelling_page(studio, live.project, task["id"], out, *chromium)
    except LabelStudioError as exc:
        pytest.fail(f"{exc}\nLabel Studio's log ends:\n{studio.log_tail()}", pytrace=False)
    stored = live.stored[task["id"]][0]["result"]
    assert sorted(r["type"] for r in shown) == sorted(r["type"].replace("labels", "region") for r in stored)
    page = sorted((r["label"], r["x"], r["y"]) for r in shown if r["type"] == "keypointregion")
    want = sorted((r["value"]["keypointlabels"][0], r["value"]["x"], r["value"]["y"]) for r in stored
                  if r["type"] == "keypointlabels")
    assert [p[0] for p in page] == [w[0] for w in want]
    assert [v for p in page for v in p[1:]] == pytest.approx([v for w in want for v in w[1:]], abs=1e-6)
    assert out.stat().st_size > 20_000  # an image, not a blank page
