"""Drive the annotation page in headless Chromium, as a person would, and measure the click latency.

    python -m tools.annotate.browser_check IMAGES --config CFG --checkpoint CKPT [--screenshot docs/annotate.png]

Opens the page, waits for the skeletons, drags a keypoint and waits for the refined poses to be drawn (latency:
mouse release -> poses redrawn, taken by the page itself), more drags for a median, sets the dragged keypoint's
visibility with a key, takes a screenshot, accepts the image (Enter: marked done, the next image opens), and
checks the change in the saved file (the COCO ``annotations`` hold the images marked done).
The browser test (tests/tools/test_annotate_browser.py) runs the same scenario on a tiny model; uses Debian's
``chromium`` and ``chromium-driver`` packages (``make browser`` installs them).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> Optional[tuple[str, str]]:
    """(browser, chromedriver) executables, or None when either is missing."""
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on a free port of 127.0.0.1; yields its URL."""
    import uvicorn

    from tools.annotate.cli import bind

    sock = bind(0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the annotation server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def start_browser(browser: str, driver: str, width: int = 1280, height: int = 800):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def wait_for(driver, script: str, timeout: float = 60.0, what: str = "") -> Any:
    """Poll a JavaScript expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        time.sleep(0.02)
    status = driver.execute_script("return document.getElementById('status').textContent;")
    raise TimeoutError(f"waited {timeout:.0f} s for {what or script}; page status: {status!r}")


def drag(driver, start: tuple[float, float], end: tuple[float, float], button: int = 0, hold: Optional[str] = None
         ) -> None:
    """Press at ``start``, move in two steps, release at ``end`` (viewport pixels, rounded to whole pixels as real
    pointer events are). ``button``: 0 left, 1 middle; ``hold``: a key held down meanwhile (e.g. ``Keys.SHIFT``)."""
    from selenium.webdriver.common.action_chains import ActionChains

    actions = ActionChains(driver, duration=50)
    if hold is not None:
        actions.key_down(hold)
    middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
    pointer = actions.w3c_actions.pointer_action
    pointer.move_to_location(round(start[0]), round(start[1])).pointer_down(button=button)
    pointer.move_to_location(round(middle[0]), round(middle[1])).move_to_location(round(end[0]), round(end[1]))
    pointer.pointer_up(button=button)
    if hold is not None:
        actions.key_up(hold)
    actions.perform()


def click(driver, at: tuple[float, float]) -> None:
    """A left click at ``at`` (viewport pixels, rounded)."""
    from selenium.webdriver.common.action_chains import ActionChains

    actions = ActionChains(driver, duration=50)
    actions.w3c_actions.pointer_action.move_to_location(round(at[0]), round(at[1])).pointer_down().pointer_up()
    actions.perform()


def wheel(driver, at: tuple[float, float], delta_y: int) -> None:
    """Turn the mouse wheel with the pointer at ``at`` (viewport pixels, rounded); negative ``delta_y`` is away
    from the user (the page zooms in)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    ActionChains(driver).scroll_from_origin(ScrollOrigin.from_viewport(round(at[0]), round(at[1])), 0,
                                            delta_y).perform()


def press(driver, *keys: str) -> None:
    """Type ``keys`` (characters or selenium ``Keys``) into the page, one after another."""
    body = driver.find_element("tag name", "body")
    for key in keys:
        body.send_keys(key)


def page_person(driver, index: int) -> Optional[dict[str, Any]]:
    """The page's person ``index`` (as ``annotator.state.people`` holds it), or None when it is not there."""
    return driver.execute_script(f"return annotator.state.people.find(p => p.index === {int(index)}) || null;")


def settle(driver, timeout: float = 60.0, quiet: float = 0.3) -> None:
    """Wait until the page has no request in flight and has stayed so for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    calm_since = None
    while time.monotonic() < deadline:
        busy = driver.execute_script("return annotator.busy;")
        now = time.monotonic()
        calm_since = None if busy else (calm_since or now)
        if calm_since is not None and now - calm_since >= quiet:
            return
        time.sleep(0.02)
    raise TimeoutError(f"the page was still busy after {timeout:.0f} s")


def drag_keypoint(driver, person: int, keypoint: int, dx: float, dy: float) -> dict[str, Any]:
    """Drag one keypoint by (dx, dy) screen pixels and wait for the refined poses to be drawn."""
    pos = driver.execute_script(f"return annotator.keypointScreen({person}, {keypoint});")
    count = driver.execute_script("return annotator.latencies.length;")
    drag(driver, (pos["left"], pos["top"]), (pos["left"] + dx, pos["top"] + dy))
    wait_for(driver, f"annotator.latencies.length > {count}", what="the refined poses")
    return driver.execute_script("return {latency: annotator.lastLatencyMs, model: annotator.lastModelMs, "
                                 "scale: annotator.view.scale, state: annotator.state};")


def run_scenario(url: str, annotations: Path, browser: str, driver_path: str, screenshot: Optional[Path] = None,
                 drags: int = 10, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The scenario of the module docstring. Returns what it saw (latencies in ms, the checked keypoint...)."""
    from selenium.webdriver.common.keys import Keys

    driver = start_browser(browser, driver_path)
    try:
        driver.get(url)
        first = wait_for(driver, "annotator.ready && annotator.state.image", what="the first image")
        wait_for(driver, "annotator.state.people.some(p => p.touched || p.score >= annotator.threshold)",
                 what="people drawn")
        # the canvas pixels around the selected person's keypoints, counted by exact colour (keypoints of an
        # untrained model can pile up, so a keypoint's centre may be painted over by its neighbours)
        colours = driver.execute_script("""
            const p = annotator.state.people.find(q => q.index === annotator.selected.person);
            const canvas = document.getElementById('canvas'), c = canvas.getContext('2d');
            const pts = p.keypoints.map((kp, k) => annotator.keypointScreen(p.index, k));
            const x0 = Math.max(0, Math.floor(Math.min(...pts.map(s => s.x))) - 12);
            const y0 = Math.max(0, Math.floor(Math.min(...pts.map(s => s.y))) - 12);
            const x1 = Math.min(canvas.width, Math.ceil(Math.max(...pts.map(s => s.x))) + 12);
            const y1 = Math.min(canvas.height, Math.ceil(Math.max(...pts.map(s => s.y))) + 12);
            const data = c.getImageData(x0, y0, Math.max(1, x1 - x0), Math.max(1, y1 - y0)).data, counts = {};
            for (let i = 0; i < data.length; i += 4) {
              const key = data[i] + ',' + data[i + 1] + ',' + data[i + 2];
              counts[key] = (counts[key] || 0) + 1;
            }
            return counts;""")
        person = driver.execute_script("return annotator.selected.person;")
        before = driver.execute_script(f"return annotator.state.people.find(p => p.index === {person}).keypoints;")
        keypoint = 9 if len(before) > 9 else 0
        result = drag_keypoint(driver, person, keypoint, 25, 18)
        after = next(p for p in result["state"]["people"] if p["index"] == person)
        released = driver.execute_script(f"return annotator.keypointScreen({person}, {keypoint});")
        log(f"first refinement drawn after {result['latency']:.0f} ms (model {result['model']:.0f} ms)")
        latencies, model_ms = [result["latency"]], [result["model"]]
        others = [k for k in range(len(before)) if k != keypoint]
        for i in range(drags - 1):
            step = drag_keypoint(driver, person, others[i % len(others)], 12 if i % 2 else -12, 9)
            latencies.append(step["latency"])
            model_ms.append(step["model"])
        # back on the first keypoint: a visibility key, then the screenshot
        driver.execute_script(f"annotator.selected = {{person: {person}, keypoint: {keypoint}}};")
        body = driver.find_element("tag name", "body")
        body.send_keys("1")
        wait_for(driver, f"annotator.state.people.find(p => p.index === {person}).visibility[{keypoint}] === 1",
                 what="the visibility change")
        final = driver.execute_script(f"return annotator.state.people.find(p => p.index === {person});")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
        body.send_keys(Keys.ENTER)  # done: its people go to the COCO annotations; the next image opens
        second = wait_for(driver, f"annotator.ready && annotator.state.image !== {json.dumps(first)} && "
                                  "annotator.state.image", what="the next image")
        saved = json.loads(annotations.read_text())
        return {"first_image": first, "second_image": second, "person": person, "keypoint": keypoint,
                "keypoints_before": before, "keypoints_after": after["keypoints"], "final": final,
                "released_screen": released, "pixel_colours": colours, "saved": saved,
                "latencies_ms": latencies, "model_ms": model_ms, "median_ms": statistics.median(latencies),
                "median_model_ms": statistics.median(model_ms)}
    finally:
        driver.quit()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.annotate.browser_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images")
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--annotations", default=None, help="default: a temporary file")
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--drags", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.3)
    args = parser.parse_args(argv)
    found = find_chromium()
    if found is None:
        print("error: chromium and chromedriver not found (make browser installs them)", file=sys.stderr)
        return 2
    import tempfile

    from models.predictor import Predictor
    from tools.annotate.server import create_app
    from tools.annotate.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        annotations = Path(args.annotations or Path(tmp) / "annotations.json")
        predictor = Predictor(args.config, args.checkpoint)
        workspace = Workspace(args.images, annotations, predictor, threshold=args.threshold)
        with serve(create_app(workspace)) as url:
            result = run_scenario(url, annotations, *found, screenshot=args.screenshot, drags=args.drags, log=print)
        predictor.close()
    print(f"latency mouse release -> poses redrawn: median {result['median_ms']:.0f} ms over "
          f"{len(result['latencies_ms'])} drags (model {result['median_model_ms']:.0f} ms); all: "
          + ", ".join(f"{v:.0f}" for v in result["latencies_ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
