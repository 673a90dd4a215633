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
