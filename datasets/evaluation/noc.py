"""Interactive-evaluation metrics: number of clicks (NoC) per image and AP after k clicks.

The original Click-Pose scored each image before every click round r = 0..K (K = number of keypoints) and stopped
at the first round whose per-image keypoint AP reached the threshold; the recorded click count was that round, or
K when it was never reached (the round-K AP is computed but cannot change the count). NoC@t is the mean count.
Clicks never change earlier rounds, so one pass that records the AP after every round gives every threshold.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from util.config import ConfigError

# The thresholds' default (NoC@85/90/95) lives in the config (noc_thresholds); the stat names live with the scorers
# (datasets.evaluation.stat_names). Everything here takes them as arguments.


def check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """Sorted, de-duplicated AP thresholds; each must lie in (0, 1]."""
    values = sorted({float(t) for t in thresholds})
    bad = [t for t in values if not 0.0 < t <= 1.0]
    if not values or bad:
        raise ValueError(f"NoC thresholds must be per-image AP values in (0, 1], got {list(thresholds)}; "
                         "e.g. noc_thresholds=[0.85,0.9,0.95]")
    return tuple(values)


def resolve_max_clicks(configured: Any, num_keypoints: int) -> int:
    """The NoC click cap: ``configured`` (the ``max_clicks`` key) when set, else ``num_keypoints``.

    The original capped at one click per keypoint, written as 17 for COCO; following the layout keeps COCO at 17 and
    gives a 14- or 21-keypoint layout its own K.
    """
    if configured is None:
        return int(num_keypoints)
    if isinstance(configured, bool) or not isinstance(configured, int) or configured < 1:
        raise ConfigError(f"max_clicks={configured!r}: the NoC click cap must be an integer >= 1, or None (one click "
                          f"per keypoint: {num_keypoints} for this layout); e.g. --options max_clicks=none")
    return configured


def threshold_key(threshold: float, prefix: str = "NoC") -> str:
    """'NoC@85' for 0.85 (percent, rounded; '@87.5' when not a whole percent)."""
    percent = round(threshold * 100, 6)
    text = f"{percent:g}" if percent != int(percent) else str(int(percent))
    return f"{prefix}@{text}"


def _check_curves(ap_curves: np.ndarray, max_clicks: int) -> np.ndarray:
    curves = np.asarray(ap_curves, dtype=np.float64)
    if curves.ndim != 2:
        raise ValueError(f"ap_curves must be (num_images, rounds), got shape {curves.shape}")
    if max_clicks < 0:
        raise ValueError(f"max_clicks must be >= 0, got {max_clicks}")
    if curves.shape[1] < max_clicks:
        raise ValueError(f"ap_curves has {curves.shape[1]} rounds but NoC with max_clicks={max_clicks} needs the AP "
                         f"after 0..{max_clicks - 1} clicks ({max_clicks} columns); run more click rounds")
    return curves


def noc_per_image(ap_curves: np.ndarray, thresholds: Sequence[float], max_clicks: int) -> dict[float, np.ndarray]:
    """Click count per image for every threshold, with the original's semantics.

    Args:
        ap_curves: (N, R+1) per-image AP after 0..R click rounds (-1 where the image has no GT); at least
            ``max_clicks`` columns (the AP after ``max_clicks`` clicks cannot change the count).
        thresholds: AP thresholds, e.g. (0.85, 0.90, 0.95).
        max_clicks: the cap (the original: the number of keypoints, 17 for COCO; ``resolve_max_clicks``).
    Returns:
        {threshold: (N,) int64}: the first round r < max_clicks with AP_r >= threshold, else max_clicks.
    """
    curves = _check_curves(ap_curves, max_clicks)[:, :max_clicks]
    result = {}
    for thr in thresholds:
        reached = curves >= thr
        result[thr] = np.where(reached.any(axis=1), reached.argmax(axis=1), max_clicks).astype(np.int64)
    return result


def noc_summary(ap_curves: np.ndarray, thresholds: Sequence[float], max_clicks: int,
                counts: dict[float, np.ndarray] | None = None) -> dict[str, float]:
    """Mean NoC per threshold and the share of images that reach it.

    Returns keys ``NoC@85`` (mean click count, the original's number), ``reached@85`` (fraction of images whose AP
    reaches the threshold after at most ``max_clicks`` clicks; uses column ``max_clicks`` when present),
    ``num_images`` and ``num_images_without_gt`` (AP -1 before any click: always counted as ``max_clicks``).
    ``counts``: the ``noc_per_image`` result when the caller has it already.
    """
    curves = _check_curves(ap_curves, max_clicks)
    counts = noc_per_image(curves, thresholds, max_clicks) if counts is None else counts
    within = curves[:, :max_clicks + 1]
    summary: dict[str, float] = {}
    for thr in thresholds:
        summary[threshold_key(thr)] = float(counts[thr].mean()) if len(curves) else float("nan")
        summary[threshold_key(thr, "reached")] = float((within >= thr).any(axis=1).mean()) if len(curves) \
            else float("nan")
    summary["num_images"] = int(len(curves))
    summary["num_images_without_gt"] = int((curves[:, 0] == -1).sum()) if curves.shape[1] else 0
    summary["max_clicks"] = int(max_clicks)
    return summary


def ap_vs_clicks_table(stats_per_round: Sequence[Sequence[float]],
                       stat_names: Sequence[str]) -> list[dict[str, float]]:
    """Rows {'clicks': k, 'AP': ..., 'AP50': ...} from dataset-level keypoint stats after k = 0, 1, ... clicks.

    Args:
        stats_per_round: entry k holds the stats after k click rounds, in ``stat_names`` order (the scorer's:
            ``datasets.evaluation.stat_names.KEYPOINT_STAT_NAMES``); shorter lists fill the first names.
    """
    rows = []
    for k, stats in enumerate(stats_per_round):
        stats = [float(s) for s in stats]
        if len(stats) > len(stat_names):
            raise ValueError(f"round {k} has {len(stats)} stats but only {len(stat_names)} names; pass stat_names")
        rows.append({"clicks": k, **dict(zip(stat_names, stats))})
    return rows


@dataclass
class InteractiveResults:
    """What one interactive evaluation pass measured (``engine.evaluate_interactive``); reports are written from it.

    ``ap_curves[i, k]``: per-image keypoint AP of ``image_ids[i]`` after k clicks (-1: no GT person);
    ``clicks[t]``: per-image click count at threshold t; ``summary``: ``noc_summary``;
    ``round_stats[k]``: dataset-level keypoint stats after k clicks, named by ``stat_names``;
    ``report_stats``: the full evaluator's stats ('coco_eval_bbox', 'coco_eval_keypoints_detr') of round
    ``report_round`` (empty without an evaluator).
    """
    image_ids: list
    ap_curves: np.ndarray
    thresholds: tuple[float, ...]
    max_clicks: int
    clicks: dict[float, np.ndarray]
    summary: dict[str, float]
    round_stats: list[list[float]] = field(default_factory=list)
    stat_names: tuple[str, ...] = ()
    report_round: int = 0
    report_stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_curves(cls, image_ids: list, ap_curves: np.ndarray, thresholds: Sequence[float], max_clicks: int,
                    **rest: Any) -> "InteractiveResults":
        """NoC per image and its summary computed once from the curves."""
        thresholds = check_thresholds(thresholds)
        clicks = noc_per_image(ap_curves, thresholds, max_clicks)
        summary = noc_summary(ap_curves, thresholds, max_clicks, counts=clicks)
        return cls(list(image_ids), np.asarray(ap_curves, dtype=np.float64), thresholds, int(max_clicks), clicks,
                   summary, **rest)

    def ap_table(self) -> list[dict[str, float]]:
        return ap_vs_clicks_table(self.round_stats, self.stat_names)

    def log_stats(self) -> dict[str, Any]:
        """Flat stats for log.txt: NoC summary, the reported round's evaluator stats, and 'AP@k' for every k."""
        out: dict[str, Any] = dict(self.summary)
        out.update(self.report_stats)
        out.update({f"AP@{k}": float(stats[0]) for k, stats in enumerate(self.round_stats)})
        return out
