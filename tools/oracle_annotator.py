"""The simulated annotator of the benchmarks: one policy, carried out by whatever "hands" drive the tool.

Per image the oracle, knowing the ground truth,

1. matches the people shown to the true people (Hungarian on OKS, at least ``min_oks``) and deletes the others;
2. adds each missed true person with a box over its true box;
3. places each person's worst labelled keypoint at the truth until every labelled keypoint is within ``tolerance``
   of the true box's diagonal (at most ``max_placements`` per person; then the person counts as unresolved);
4. sets each keypoint's visibility to the truth's (0 not labelled, 1 occluded, 2 visible);
5. accepts the image.

``tools/benchmark_annotate.py`` carries it out with real pointer and key events in the page,
``tools/benchmark_adapt.py`` through the page's ``Workspace`` API; both implement :class:`Hands`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class Hands(Protocol):
    """The edits the oracle makes on the open image (coordinates in image pixels)."""

    def shown(self) -> list[dict[str, Any]]:
        """The people shown: 'index', 'keypoints' (K, >=2) and 'visibility' (K,) each."""

    def delete(self, index: int) -> None: ...

    def add(self, box: np.ndarray) -> int:
        """A person from a box (x0, y0, x1, y1); returns its index."""

    def place(self, index: int, keypoint: int, target: tuple[float, float]) -> None: ...

    def set_visibility(self, index: int, keypoint: int, flag: int) -> None: ...

    def accept(self) -> None: ...


@dataclass
class Tally:
    """What the oracle did (on one image, or summed over several)."""

    image: str = ""
    people: int = 0
    shown: int = 0
    matched: int = 0
    placements: int = 0
    visibility_edits: int = 0
    deletions: int = 0
    boxes: int = 0
    unresolved: int = 0  # people still off after max_placements
    added_placements: list[int] = field(default_factory=list)  # per box-added person

    @property
    def actions(self) -> int:
        """Every edit counts one: placements, visibility edits, deletions and boxes."""
        return self.placements + self.visibility_edits + self.deletions + self.boxes


def truth_of(coco: Any, image_id: int, num_keypoints: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G, K, 3) true keypoints, (G, 4) xyxy boxes and (G,) areas of an image (crowd and unlabelled skipped)."""
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            if not a.get("iscrowd", 0) and a.get("num_keypoints", 1) > 0]
    keypoints = np.asarray([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), num_keypoints, 3)
    boxes = np.asarray([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                        for a in anns], dtype=np.float64).reshape(-1, 4)
    areas = np.asarray([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=np.float64)
    return keypoints, boxes, areas


@dataclass(frozen=True)
class OraclePolicy:
    """The policy of the module docstring; ``sigmas`` are the layout's OKS sigmas."""

    sigmas: np.ndarray
    tolerance: float = 0.05
    min_oks: float = 0.1
    max_placements: int = 30

    def annotate(self, hands: Hands, truth: np.ndarray, boxes: np.ndarray, areas: np.ndarray, tally: Tally) -> None:
        """Bring every true person of the open image to the truth (counting into ``tally``), then accept it."""
        from tools.train_quality import match_people

        tally.people += len(truth)
        shown = hands.shown()
        tally.shown += len(shown)
        predicted = np.asarray([p["keypoints"] for p in shown], dtype=np.float64)[..., :2].reshape(
            len(shown), len(self.sigmas), 2)
        pairs = match_people(predicted, truth[..., :2], truth[..., 2], areas, self.sigmas, self.min_oks)
        tally.matched += len(pairs)
        targets = {shown[r]["index"]: g for r, g in pairs}
        for p in shown:
            if p["index"] not in targets:
                hands.delete(p["index"])
                tally.deletions += 1
        added = set()
        for g in sorted(set(range(len(truth))) - set(targets.values())):
            index = hands.add(boxes[g])
            tally.boxes += 1
            targets[index] = g
            added.add(index)
        for index, g in targets.items():
            placements = self.correct(hands, index, truth[g], boxes[g], tally)
            if index in added:
                tally.added_placements.append(placements)
            self.fix_visibility(hands, index, truth[g], tally)
        hands.accept()

    def correct(self, hands: Hands, index: int, truth: np.ndarray, box: np.ndarray, tally: Tally) -> int:
        """Placements until every labelled keypoint of ``index`` is within tolerance of ``truth`` (K, 3)."""
        labelled = truth[:, 2] > 0
        tolerance = self.tolerance * float(np.hypot(box[2] - box[0], box[3] - box[1]))
        done = 0
        while True:
            person = next(p for p in hands.shown() if p["index"] == index)
            error = np.hypot(*(np.asarray(person["keypoints"], dtype=np.float64)[:, :2] - truth[:, :2]).T) * labelled
            worst = int(error.argmax())
            if error[worst] <= tolerance:
                return done
            if done >= self.max_placements:
                tally.unresolved += 1
                return done
            hands.place(index, worst, (float(truth[worst, 0]), float(truth[worst, 1])))
            tally.placements += 1
            done += 1

    @staticmethod
    def fix_visibility(hands: Hands, index: int, truth: np.ndarray, tally: Tally) -> None:
        person = next(p for p in hands.shown() if p["index"] == index)  # a flag's edit changes no other flag
        for k, flag in enumerate(truth[:, 2].astype(int)):
            if int(person["visibility"][k]) != flag:
                hands.set_visibility(index, k, int(flag))
                tally.visibility_edits += 1
