"""End to end in a real headless Chromium: open the page, see skeletons, drag a keypoint, see the refinement
arrive, set a visibility, go to the next image, and find the change in the saved JSON. Prints the latency from
mouse release to redrawn poses (a measurement, not a timed assertion)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the annotation tool needs fastapi (pip install -r requirements.txt)")
pytest.importorskip("selenium", reason="the browser test drives Chromium with selenium (pip install -r requirements.txt)")

from tools.annotate.browser_check import find_chromium, run_scenario, serve  # noqa: E402
from tools.annotate.server import create_app  # noqa: E402
from tools.annotate.workspace import Workspace  # noqa: E402

SIDE_COLOURS = ((96, 165, 250), (251, 146, 60), (74, 222, 128))  # left, right, centre (static/app.js)


@pytest.mark.slow
def test_annotate_in_headless_chromium(annotate_assets, annotate_predictor, tmp_path):
    found = find_chromium()
    if found is None:
        pytest.skip("no Chromium + chromedriver on this machine (`make browser` installs Debian's chromium and "
                    "chromium-driver; it needs apt and root)")
    annotations = tmp_path / "ann.json"
    workspace = Workspace(annotate_assets["images"], annotations, annotate_predictor, threshold=0.0)
    screenshot = tmp_path / "annotate.png"
    with serve(create_app(workspace)) as url:
        result = run_scenario(url, annotations, *found, screenshot=screenshot, drags=4)

    # skeletons were drawn: around the selected person's keypoints the canvas has the left and right keypoint
    # colours (exact values, which the image's own pixels would hit only by chance)
    counts = result["pixel_colours"]
    assert all(counts.get(",".join(map(str, colour)), 0) >= 10 for colour in SIDE_COLOURS[:2]), counts
    # the dragged keypoint is where the mouse was released (to a screen pixel), the others were refined
    k = result["keypoint"]
    after, before = np.asarray(result["keypoints_after"])[:, :2], np.asarray(result["keypoints_before"])[:, :2]
    assert result["final"]["pinned"][k] and result["final"]["visibility"][k] == 1
    assert np.abs(np.delete(after, k, 0) - np.delete(before, k, 0)).max() > 0.5
    moved = np.linalg.norm(after[k] - before[k])
    assert moved > 5, "the drag did not move the keypoint"
    # the next image is shown, and the saved file has the dragged keypoint with visibility 1
    assert result["first_image"] == "a.jpg" and result["second_image"] == "b.jpg"
    image_id = next(i["id"] for i in result["saved"]["images"] if i["file_name"] == "a.jpg")
    ann_id = workspace.records["a.jpg"]["people"][result["person"]]["ann_id"]
    ann = next(a for a in result["saved"]["annotations"] if a["id"] == ann_id and a["image_id"] == image_id)
    final_xy = np.asarray(result["final"]["keypoints"])[k, :2]
    np.testing.assert_allclose(ann["keypoints"][3 * k:3 * k + 2], final_xy, atol=0.01)
    assert ann["keypoints"][3 * k + 2] == 1
    assert screenshot.stat().st_size > 10_000
    latencies = result["latencies_ms"]
    assert len(latencies) == 4 and all(v > 0 for v in latencies)
    print(f"\nlatency mouse release -> poses redrawn: median {result['median_ms']:.0f} ms "
          f"(model {result['median_model_ms']:.0f} ms) over {len(latencies)} drags: "
          + ", ".join(f"{v:.0f}" for v in latencies))
    if os.environ.get("ANNOTATE_SCREENSHOT"):  # where to keep the screenshot (the README's is made this way)
        shutil.copy(screenshot, os.environ["ANNOTATE_SCREENSHOT"])


@pytest.mark.slow
def test_markup_in_keypoint_names_shows_as_text_and_never_runs(annotate_assets, tmp_path):
    """A checkpoint loads as safe (weights_only) yet its keypoint names are anyone's strings: a name holding markup
    must appear literally in the page and run nothing, even where it would be parsed as HTML."""
    import torch

    from datasets.metadata import COCO_KEYPOINTS
    from models.predictor import Predictor
    from tools.annotate.browser_check import start_browser, wait_for

    from .conftest import ANNOTATE_CONFIG, ANNOTATE_OPTIONS

    found = find_chromium()
    if found is None:
        pytest.skip("no Chromium + chromedriver on this machine (`make browser` installs Debian's chromium and "
                    "chromium-driver; it needs apt and root)")
    evil = '<img src=x onerror="window.__injected=1;fetch(\'/api/delete_person\')">'
    names = [evil] + list(COCO_KEYPOINTS.keypoint_names[1:])
    checkpoint = torch.load(annotate_assets["checkpoint"], weights_only=True)
    checkpoint["keypoint_metadata"] = {**COCO_KEYPOINTS.to_dict(), "keypoint_names": names}
    torch.save(checkpoint, tmp_path / "markup.pth")
    predictor = Predictor(ANNOTATE_CONFIG, tmp_path / "markup.pth", options=ANNOTATE_OPTIONS)
    workspace = Workspace(annotate_assets["images"], tmp_path / "ann.json", predictor, threshold=0.0)
    driver = None
    try:
        with serve(create_app(workspace)) as url:
            driver = start_browser(*found)
            driver.get(url)
            wait_for(driver, "annotator.ready && document.querySelectorAll('#keypoints tr').length > 0",
                     what="the keypoint table")
            # also try the page's own status line (set from a keypoint name when a keypoint is armed)
            driver.execute_script("annotator.state && document.querySelector('#keypoints tr').click();")
            first_row = driver.execute_script("return document.querySelector('#keypoints tr td').textContent;")
            injected = driver.execute_script("return window.__injected === undefined ? null : window.__injected;")
            images_in_table = driver.execute_script("return document.querySelectorAll('#keypoints img').length;")
            status = driver.execute_script("return document.getElementById('status').textContent;")
    finally:
        if driver is not None:
            driver.quit()
        predictor.close()
    assert injected is None and images_in_table == 0
    assert evil in first_row and evil in status
    people = workspace.records["a.jpg"]["people"]
    assert not any(p["deleted"] for p in people)


# ---- arming and zoom, with real pointer events ----------------------------------------------------------------
HIT_RADIUS = 10  # screen pixels (static/app.js)
LAYOUT_JS = """
    const rect = document.getElementById('canvas').getBoundingClientRect();
    const people = annotator.state.people.filter(p => p.touched || p.score >= annotator.threshold);
    return {rect: {left: rect.left, top: rect.top, width: rect.width, height: rect.height},
            view: annotator.view, fit: annotator.fit, width: annotator.state.width, height: annotator.state.height,
            people: people.map(p => ({index: p.index, box: p.box,
                                      screen: p.keypoints.map((kp, k) => annotator.keypointScreen(p.index, k))}))};"""


def page_layout(driver) -> dict:
    """The shown people's boxes and keypoints on screen, the view transform and the canvas rectangle."""
    return driver.execute_script(LAYOUT_JS)


def keypoint_clearance(layout: dict, at: tuple[float, float], skip: tuple[int, int] | None = None) -> float:
    """Screen distance from ``at`` (viewport pixels) to the nearest shown keypoint other than ``skip``."""
    return min((np.hypot(s["left"] - at[0], s["top"] - at[1]) for p in layout["people"]
                for k, s in enumerate(p["screen"]) if (p["index"], k) != skip), default=np.inf)


def isolated_keypoint(layout: dict, person: int) -> int:
    """The keypoint of ``person`` farthest (on screen) from every other shown keypoint, inside the canvas: a click
    at it hits that keypoint."""
    rect = layout["rect"]
    screens = next(p["screen"] for p in layout["people"] if p["index"] == person)
    inside = [k for k, s in enumerate(screens) if 5 < s["x"] < rect["width"] - 5 and 5 < s["y"] < rect["height"] - 5]
    return max(inside, key=lambda k: keypoint_clearance(layout, (screens[k]["left"], screens[k]["top"]),
                                                        (person, k)))


def inside_box(box, x: float, y: float) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def empty_spot(layout: dict, inside: int, outside: int | None = None) -> tuple[int, int] | None:
    """A whole viewport pixel whose image point lies in the image and in person ``inside``'s box (and not in
    ``outside``'s), as far from every shown keypoint as possible but at least 2 hit radii: a click there hits no
    keypoint. None when there is none."""
    rect, view = layout["rect"], layout["view"]
    boxes = {p["index"]: p["box"] for p in layout["people"]}
    box = boxes[inside]
    x0, y0 = max(box[0], 0), max(box[1], 0)
    x1, y1 = min(box[2], layout["width"]), min(box[3], layout["height"])
    left = lambda x: rect["left"] + view["x"] + x * view["scale"]  # noqa: E731
    top = lambda y: rect["top"] + view["y"] + y * view["scale"]  # noqa: E731
    best, best_clear = None, 2.0 * HIT_RADIUS
    for sx in range(int(np.ceil(left(x0))), int(left(x1)) + 1, 2):
        for sy in range(int(np.ceil(top(y0))), int(top(y1)) + 1, 2):
            if not (rect["left"] + 2 < sx < rect["left"] + rect["width"] - 2
                    and rect["top"] + 2 < sy < rect["top"] + rect["height"] - 2):
                continue
            ix, iy = (sx - rect["left"] - view["x"]) / view["scale"], (sy - rect["top"] - view["y"]) / view["scale"]
            if not inside_box(box, ix, iy) or (outside is not None and inside_box(boxes[outside], ix, iy)):
                continue
            if not (0 <= ix <= layout["width"] and 0 <= iy <= layout["height"]):
                continue
            clear = keypoint_clearance(layout, (sx, sy))
            if clear > best_clear:
                best, best_clear = (sx, sy), clear
    return best


def open_first_image(driver, url: str) -> None:
    from tools.annotate.browser_check import wait_for

    driver.get(url)
    wait_for(driver, "annotator.ready && annotator.state.image && annotator.selected.person !== null",
             what="the first image with a selected person")


def zoom_until_spot(driver, person: int, outside: int | None = None, steps: int = 6) -> tuple[dict, tuple[int, int]]:
    """The page's layout and an empty spot in ``person``'s box (see ``empty_spot``), zooming in with the wheel at
    the box centre while there is none."""
    from tools.annotate.browser_check import wheel

    for _ in range(steps):
        layout = page_layout(driver)
        spot = empty_spot(layout, person, outside)
        if spot is not None:
            return layout, spot
        box = next(p["box"] for p in layout["people"] if p["index"] == person)
        centre = driver.execute_script(f"return annotator.screenPoint({(box[0] + box[2]) / 2}, "
                                       f"{min((box[1] + box[3]) / 2, layout['height'] - 1)});")
        wheel(driver, (centre["left"], centre["top"]), -120)
    raise AssertionError(f"no empty spot in the box of person {person} even zoomed in")


@pytest.fixture
def annotate_page(annotate_assets, annotate_predictor, tmp_path):
    """(driver, workspace) on the page over the tiny model's images, every person shown (threshold 0)."""
    from tools.annotate.browser_check import start_browser

    found = find_chromium()
    if found is None:
        pytest.skip("no Chromium + chromedriver on this machine (`make browser` installs Debian's chromium and "
                    "chromium-driver; it needs apt and root)")
    workspace = Workspace(annotate_assets["images"], tmp_path / "ann.json", annotate_predictor, threshold=0.0)
    with serve(create_app(workspace)) as url:
        driver = start_browser(*found)
        try:
            open_first_image(driver, url)
            yield driver, workspace
        finally:
            driver.quit()


def largest_person(layout: dict) -> int:
    return max(layout["people"], key=lambda p: (p["box"][2] - p["box"][0]) * (p["box"][3] - p["box"][1]))["index"]


@pytest.mark.slow
def test_a_visibility_key_disarms_and_an_armed_click_places_inside_another_box(annotate_page):
    from tools.annotate.browser_check import click, page_person, press, settle, wait_for

    driver, workspace = annotate_page
    layout = page_layout(driver)
    person = largest_person(layout)
    layout, spot = zoom_until_spot(driver, person)
    k = isolated_keypoint(layout, person)
    kp = next(p["screen"][k] for p in layout["people"] if p["index"] == person)
    click(driver, (kp["left"], kp["top"]))  # a click on a keypoint arms it
    assert driver.execute_script("return annotator.armed;")
    assert driver.execute_script("return annotator.selected;") == {"person": person, "keypoint": k}

    old_visibility = page_person(driver, person)["visibility"][k]
    new_visibility = 1 if old_visibility != 1 else 2
    press(driver, str(new_visibility))
    wait_for(driver, f"annotator.state.people.find(p => p.index === {person}).visibility[{k}] === {new_visibility}",
             what="the visibility change")
    assert not driver.execute_script("return annotator.armed;")
    settle(driver)
    before = driver.execute_script("return annotator.state.people;")
    latencies = driver.execute_script("return annotator.latencies.length;")
    click(driver, spot)  # disarmed: an empty spot in the person's own box places nothing
    settle(driver)
    after = driver.execute_script("return annotator.state.people;")
    assert after == before, "a click after the visibility key moved a keypoint"
    assert driver.execute_script("return annotator.latencies.length;") == latencies
    assert not driver.execute_script("return annotator.armed;")
    saved = workspace.records["a.jpg"]["people"][person]
    assert saved["visibility"][k] == new_visibility and not saved["pinned"][k]

    # armed again, a click in another person's box places the armed keypoint there; the selection stays
    others = [p["index"] for p in layout["people"] if p["index"] != person]
    layout = page_layout(driver)
    target = next(((other, s) for other in others if (s := empty_spot(layout, other, person)) is not None), None)
    assert target is not None, "no spot in another person's box outside the selected one's"
    other, spot = target
    k = isolated_keypoint(layout, person)
    kp = next(p["screen"][k] for p in layout["people"] if p["index"] == person)
    click(driver, (kp["left"], kp["top"]))
    assert driver.execute_script("return annotator.armed;")
    expected = driver.execute_script(f"return annotator.imagePoint({spot[0]}, {spot[1]});")
    count = driver.execute_script("return annotator.latencies.length;")
    click(driver, spot)
    wait_for(driver, f"annotator.latencies.length > {count}", what="the refined poses")
    placed = page_person(driver, person)
    np.testing.assert_allclose(placed["keypoints"][k][:2], expected, atol=1.0)
    assert placed["pinned"][k]
    assert driver.execute_script("return annotator.selected;") == {"person": person, "keypoint": k}
    assert not driver.execute_script("return annotator.armed;")
    settle(driver)
    # not armed, a click there selects the other person (the spot really is in that person's box)
    spot = empty_spot(page_layout(driver), other, person)
    if spot is not None:  # the refinement may have moved keypoints over every such spot
        click(driver, spot)
        assert driver.execute_script("return annotator.selected.person;") == other


@pytest.mark.slow
def test_zoom_and_pan_keep_a_drag_exact_and_f_fits_again(annotate_page):
    from tools.annotate.browser_check import drag, page_person, press, wait_for, wheel

    driver, workspace = annotate_page
    layout = page_layout(driver)
    fit = layout["fit"]
    assert layout["view"] == fit
    person = largest_person(layout)
    k = isolated_keypoint(layout, person)
    kp = next(p["screen"][k] for p in layout["people"] if p["index"] == person)
    at = (round(kp["left"]), round(kp["top"]))
    under = driver.execute_script(f"return annotator.imagePoint({at[0]}, {at[1]});")
    for _ in range(3):
        wheel(driver, at, -100)
    zoomed = driver.execute_script("return annotator.view;")
    assert zoomed["scale"] > fit["scale"] * 1.5
    # the wheel zooms around the pointer: the image point under it stays under it
    np.testing.assert_allclose(driver.execute_script(f"return annotator.imagePoint({at[0]}, {at[1]});"), under,
                               atol=1e-6)
    press(driver, "+")
    plus = driver.execute_script("return annotator.view;")
    assert plus["scale"] == pytest.approx(zoomed["scale"] * 1.25)
    # pan with the middle button: bring the keypoint towards the canvas centre
    rect = layout["rect"]
    kp = driver.execute_script(f"return annotator.keypointScreen({person}, {k});")
    centre = (rect["left"] + rect["width"] / 2, rect["top"] + rect["height"] / 2)
    start = (round(rect["left"] + rect["width"] * 0.7), round(rect["top"] + rect["height"] * 0.6))
    shift = (round((centre[0] - kp["left"]) * 0.8), round((centre[1] - kp["top"]) * 0.8))
    drag(driver, start, (start[0] + shift[0], start[1] + shift[1]), button=1)
    view = driver.execute_script("return annotator.view;")
    assert view["scale"] == plus["scale"]
    assert (view["x"] - plus["x"], view["y"] - plus["y"]) == pytest.approx(shift)

    layout = page_layout(driver)
    k = isolated_keypoint(layout, person)
    kp = next(p["screen"][k] for p in layout["people"] if p["index"] == person)
    release = (round(kp["left"]) + 37, round(kp["top"]) - 23)
    expected_page = driver.execute_script(f"return annotator.imagePoint({release[0]}, {release[1]});")
    expected = ((release[0] - rect["left"] - view["x"]) / view["scale"],
                (release[1] - rect["top"] - view["y"]) / view["scale"])
    assert 0 <= expected[0] <= layout["width"] and 0 <= expected[1] <= layout["height"]
    count = driver.execute_script("return annotator.latencies.length;")
    drag(driver, (kp["left"], kp["top"]), release)
    wait_for(driver, f"annotator.latencies.length > {count}", what="the refined poses")
    moved = page_person(driver, person)
    assert moved["pinned"][k]
    np.testing.assert_allclose(moved["keypoints"][k][:2], expected_page, atol=1e-3)
    np.testing.assert_allclose(moved["keypoints"][k][:2], expected, atol=0.5 / view["scale"])
    saved = workspace.records["a.jpg"]["people"][person]["keypoints"][k][:2]
    np.testing.assert_allclose(saved, expected, atol=0.5 / view["scale"])
    assert driver.execute_script("return annotator.view;") == view  # the redraw kept the zoom
    press(driver, "f")
    assert driver.execute_script("return annotator.view;") == driver.execute_script("return annotator.fit;")
    assert driver.execute_script("return annotator.view;") == fit
    assert not driver.execute_script("return annotator.zoomed;")
