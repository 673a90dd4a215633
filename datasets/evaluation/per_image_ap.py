"""Each image's keypoint AP as an evaluator (``DatasetEvaluator``): NoC's input beside a dataset-level scorer with
other semantics (CrowdPose), where ``DatasetKeypointAP`` would not give that scorer's numbers."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from datasets.evaluation.oks_ap import PerImageKeypointAP
from datasets.evaluation.stat_names import PER_IMAGE_AP_KEY
from util.distributed import gather_first_occurrence


def results_as_arrays(results: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
    """Post-processed predictions (tensors on any device) as numpy arrays, the matcher's input."""
    return [{key: value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
             for key, value in r.items()} for r in results]


class PerImageAPEvaluator:
    """``process`` scores each image with ``matcher`` (AP@OKS[.50:.95] of the image alone, -1 without GT);
    ``evaluate() -> {'per_image_ap': {image_id: AP}}`` over every rank, first occurrence of an image winning."""

    def __init__(self, matcher: PerImageKeypointAP):
        self.matcher = matcher
        self.reset()

    def reset(self) -> None:
        self._ap: dict[Any, float] = {}

    def process(self, image_ids: Sequence[Any], results: Sequence[Mapping[str, Any]]) -> None:
        ap = self.matcher.images_ap(list(image_ids), results_as_arrays(results))
        for image_id, value in zip(image_ids, ap):
            self._ap.setdefault(image_id, float(value))

    def evaluate(self) -> dict[str, Any]:
        return {PER_IMAGE_AP_KEY: dict(sorted(gather_first_occurrence(self._ap).items()))}
