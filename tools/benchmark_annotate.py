"""A simulated annotator in the real annotation page: what it costs to bring every person to the truth.

    python -m tools.benchmark_annotate --config config/demo.cfg.py \\
        --checkpoint demo_output/train/checkpoint_quality.pth --data data_synthetic --split val2017 --images 12

Serves the page over a copy of the first ``--images`` images of the split (by file name) and drives it in headless
Chromium with real pointer and key events. Per image, the oracle of ``tools/oracle_annotator.py``

1. matches the people shown (score at or above ``--threshold``) to the true people (Hungarian on OKS, at least
   ``--min-oks``), selects each unmatched one from the side panel and deletes it (``x``);
2. adds each missed true person with ``b`` and a box dragged over its true box;
3. for each person, drags its worst labelled keypoint to the truth (from the keypoint itself when a press there
   grabs it; otherwise selects it in the side panel and clicks the target), until every labelled keypoint is
   within ``--tolerance`` of the true box's diagonal (at most ``--max-placements`` per person);
4. sets each keypoint's visibility to the truth's (0 not labelled, 1 occluded, 2 visible): a keypoint row click plus
   the key;
5. presses Enter (the image is done, the next opens).

It reports placements (drags and select-and-clicks), visibility edits, deletions and boxes, actions per true person
(their sum over the true people), placements per box-added person, the page's release-to-redraw times of the
placements (p50 / p95, taken by the page) and the keypoint AP of the exported file (its COCO ``annotations``)
against the truth.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from tools.oracle_annotator import OraclePolicy, Tally, truth_of

HIT_RADIUS = 10.0  # screen pixels: the page's keypoint hit radius (tools/annotate/static/app.js)
SELECTED_BONUS = 0.5  # the page prefers the selected person's keypoint by this many pixels (app.js hitKeypoint)

SHOWN_JS = """return annotator.state.people.filter(p => !p.deleted && (p.touched || p.score >= annotator.threshold))
    .map(p => ({index: p.index, box: p.box, keypoints: p.keypoints, visibility: p.visibility, pinned: p.pinned,
                screen: p.keypoints.map((kp, k) => annotator.keypointScreen(p.index, k))}));"""


def grabs(shown: list[dict[str, Any]], person: int, keypoint: int, selected: Optional[int]) -> bool:
    """Whether a press on (person, keypoint)'s screen position grabs that keypoint (the page's hit rule)."""
    target = next(p for p in shown if p["index"] == person)["screen"][keypoint]
    best = None
    for p in shown:
        bonus = SELECTED_BONUS if p["index"] == selected else 0.0
        for k, s in enumerate(p["screen"]):
            d = float(np.hypot(s["x"] - target["x"], s["y"] - target["y"]))
            if d <= HIT_RADIUS and (best is None or d - bonus < best[0]):
                best = (d - bonus, p["index"], k)
    return best is not None and best[1:] == (person, keypoint)


class BrowserHands:
    """The oracle's edits (:class:`tools.oracle_annotator.Hands`) as pointer and key events in the page of a
    selenium ``driver``; ``latencies_ms`` collects the page's release -> redraw time of each placement."""

    def __init__(self, driver: Any):
        self.driver = driver
        self.latencies_ms: list[float] = []

    def js(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def shown(self) -> list[dict[str, Any]]:
        return self.js(SHOWN_JS)

    def settle(self) -> None:
        from tools.annotate.browser_check import settle

        settle(self.driver, quiet=0.05)

    def select_person(self, index: int) -> None:
        """A click on the person's row in the side panel."""
        rows = self.driver.find_elements("css selector", "#people li")
        states = self.js("return annotator.state.people.map(p => p.index);")
        rows[states.index(index)].click()

    def select_keypoint(self, index: int, keypoint: int) -> None:
        """The person's row, then the keypoint's row (which arms it)."""
        if self.js("return annotator.selected.person;") != index:
            self.select_person(index)
        self.driver.find_elements("css selector", "#keypoints tr")[keypoint].click()

    def place(self, index: int, keypoint: int, target: tuple[float, float]) -> None:
        """A drag from the keypoint if a press there (on the canvas) grabs it, else the side panel's selection and a
        click."""
        from tools.annotate.browser_check import click, drag, wait_for

        shown = self.shown()
        end = self.js(f"return annotator.screenPoint({target[0]}, {target[1]});")
        count = self.js("return annotator.latencies.length;")
        selected = self.js("return annotator.selected.person;")
        start = next(p for p in shown if p["index"] == index)["screen"][keypoint]
        long_enough = np.hypot(end["left"] - start["left"], end["top"] - start["top"]) > 3  # shorter: a click
        # a keypoint predicted outside the image can lie off the canvas (or on its last row, which a press rounded
        # to whole pixels misses), where no press reaches it
        left, top, width, height = self.js("const r = document.getElementById('canvas').getBoundingClientRect(); "
                                           "return [r.left, r.top, r.width, r.height];")
        on_canvas = (0 <= round(start["left"]) - left < width - 1) and (0 <= round(start["top"]) - top < height - 1)
        dragged = (long_enough and on_canvas and grabs(shown, index, keypoint, selected)
                   and not self.js("return annotator.armed;"))
        if dragged:
            drag(self.driver, (start["left"], start["top"]), (end["left"], end["top"]))
        else:
            self.select_keypoint(index, keypoint)
            click(self.driver, (end["left"], end["top"]))
        how = (f"a drag of person {index}'s keypoint {keypoint} from {start} to {end}" if dragged else
               f"person {index}'s keypoint {keypoint} armed, a click at {end}")
        wait_for(self.driver, f"annotator.latencies.length > {count}", what=f"the refined poses after {how}")
        self.settle()
        self.latencies_ms.append(float(self.js("return annotator.lastLatencyMs;")))

    def delete(self, index: int) -> None:
        from tools.annotate.browser_check import press

        self.select_person(index)
        press(self.driver, "x")
        self.settle()

    def add(self, box: np.ndarray) -> int:
        """``b`` and a box dragged over ``box`` (xyxy image pixels); returns the new person's index."""
        from tools.annotate.browser_check import drag, press, wait_for

        before = {p["index"] for p in self.js("return annotator.state.people;")}
        press(self.driver, "b")
        corners = [self.js(f"return annotator.screenPoint({x}, {y});") for x, y in (box[:2], box[2:])]
        drag(self.driver, (corners[0]["left"], corners[0]["top"]), (corners[1]["left"], corners[1]["top"]))
        wait_for(self.driver, f"annotator.state.people.length > {len(before)}", what="the added person")
        self.settle()
        return next(p["index"] for p in self.js("return annotator.state.people;") if p["index"] not in before)

    def set_visibility(self, index: int, keypoint: int, flag: int) -> None:
        """A keypoint row click plus the key."""
        from tools.annotate.browser_check import press, wait_for

        self.select_keypoint(index, keypoint)
        press(self.driver, str(flag))
        wait_for(self.driver, f"annotator.state.people.find(p => p.index === {index}).visibility[{keypoint}] === "
                              f"{flag}", what="the visibility change")
        self.settle()

    def accept(self) -> None:
        from selenium.webdriver.common.keys import Keys

        from tools.annotate.browser_check import press

        press(self.driver, Keys.ENTER)
        self.settle()


def result_ap(exported: dict[str, Any], coco: Any, names: dict[str, int]) -> tuple[float, list[float]]:
    """Keypoint AP of the exported file's annotations against the truth, on the images it holds as done, and each
    true person's best OKS among them (the AP at threshold t counts the people at or above t)."""
    from pycocotools.cocoeval import COCOeval

    ids = {image["id"]: names[image["file_name"]] for image in exported["images"] if image["file_name"] in names}
    results = [{"image_id": ids[a["image_id"]], "category_id": 1, "keypoints": a["keypoints"],
                "score": float(a.get("score") or 1.0)} for a in exported["annotations"] if a["image_id"] in ids]
    if not results:
        return 0.0, []
    done = sorted({r["image_id"] for r in results})
    evaluator = COCOeval(coco, coco.loadRes(results), "keypoints")
    evaluator.params.imgIds = done
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    best = []
    for image_id in done:
        ious = np.asarray(evaluator.ious.get((image_id, 1), []), dtype=np.float64)  # (detections, true people)
        best += ious.max(0).tolist() if ious.size else []
    return float(evaluator.stats[0]), sorted(best)


def run(opts: argparse.Namespace) -> dict[str, Any]:
    from pycocotools.coco import COCO

    from models.predictor import Predictor
    from tools.annotate.browser_check import find_chromium, serve, start_browser, wait_for
    from tools.annotate.server import create_app
    from tools.annotate.workspace import Workspace

    found = find_chromium()
    if found is None:
        raise OSError("chromium and chromedriver not found (make browser installs them)")
    coco = COCO(str(opts.data / "annotations" / f"person_keypoints_{opts.split}.json"))
    infos = sorted(coco.dataset["images"], key=lambda i: i["file_name"])[:opts.images]
    tally = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for info in infos:
            shutil.copy(opts.data / "images" / opts.split / info["file_name"], folder / info["file_name"])
        annotations = Path(tmp) / "annotations.json"
        predictor = Predictor(opts.config, opts.checkpoint)
        sigmas = np.asarray(predictor.metadata.sigmas, dtype=np.float64)
        try:
            workspace = Workspace(folder, annotations, predictor, threshold=opts.threshold)
            with serve(create_app(workspace)) as url:
                driver = start_browser(*found)
                try:
                    driver.get(url)
                    hands = BrowserHands(driver)
                    policy = OraclePolicy(sigmas, opts.tolerance, opts.min_oks, opts.max_placements)
                    for info in infos:
                        wait_for(driver, f"annotator.ready && annotator.state.image === {json.dumps(info['file_name'])}"
                                 , what=f"image {info['file_name']}")
                        hands.settle()
                        policy.annotate(hands, *truth_of(coco, info["id"], len(sigmas)), tally)
                finally:
                    driver.quit()
        finally:
            predictor.close()
        exported = json.loads(annotations.read_text())
    ap, oks = result_ap(exported, coco, {info["file_name"]: info["id"] for info in infos})
    return {**summary(tally, hands.latencies_ms, ap, len(infos)), "oks": oks,
            "oks_at_least": {str(t): float(np.mean([o >= t for o in oks])) if oks else None for t in (0.9, 0.95)}}


def summary(tally: Tally, latencies_ms: Sequence[float], ap: float, images: int) -> dict[str, Any]:
    latencies = sorted(latencies_ms)
    people = max(tally.people, 1)
    return {"images": images, "people": tally.people, "shown": tally.shown,
            "matched": tally.matched, "placements": tally.placements,
            "visibility_edits": tally.visibility_edits, "deletions": tally.deletions, "boxes": tally.boxes,
            "unresolved": tally.unresolved, "actions_per_person": tally.actions / people,
            "placements_per_person": tally.placements / people,
            "visibility_edits_per_person": tally.visibility_edits / people,
            "added_placements": tally.added_placements,
            "release_to_redraw_ms": {"p50": statistics.median(latencies) if latencies else None,
                                     "p95": float(np.percentile(latencies, 95)) if latencies else None,
                                     "count": len(latencies)},
            "ap": ap}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.benchmark_annotate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, type=Path, help="COCO-layout root (annotations/, images/)")
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--threshold", type=float, default=0.2, help="the page's initial score threshold")
    parser.add_argument("--tolerance", type=float, default=0.05, help="x the true box's diagonal")
    parser.add_argument("--min-oks", type=float, default=0.1, help="a shown person is a true one from this OKS")
    parser.add_argument("--max-placements", type=int, default=30, help="per person, then it counts as unresolved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="the summary as JSON")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    opts = parse_args(argv)
    import torch

    torch.set_num_threads(opts.threads)
    try:
        result = run(opts)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if opts.out:
        opts.out.write_text(json.dumps(result, indent=1) + "\n")
    r, added = result, result["added_placements"]
    print(f"{r['images']} images, {r['people']} people ({r['shown']} shown, {r['matched']} of them matched): "
          f"{r['actions_per_person']:.2f} actions per person = {r['placements_per_person']:.2f} placements + "
          f"{r['visibility_edits_per_person']:.2f} visibility edits + {r['deletions']} deletions and "
          f"{r['boxes']} boxes in all; placements per box-added person {added}; unresolved {r['unresolved']}; "
          f"release -> redraw p50 {r['release_to_redraw_ms']['p50']:.0f} ms, p95 "
          f"{r['release_to_redraw_ms']['p95']:.0f} ms; AP of the result {r['ap']:.3f} (people at OKS >= 0.9: "
          f"{r['oks_at_least']['0.9']:.0%}, >= 0.95: {r['oks_at_least']['0.95']:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
