"""The evaluator protocol every scorer follows (as detectron2's ``DatasetEvaluator``), and a group of them.

An evaluation calls ``reset()``, then ``process(image_ids, results)`` per batch, then ``evaluate()`` once:
``results`` are the post-processor's per-image dicts ('scores' (n,), 'labels' (n,), 'boxes' (n, 4) xyxy pixels,
'keypoints' (n, K, 3) pixels) and ``evaluate`` gathers every rank's records (first occurrence of an image wins, as a
DistributedSampler pads with repeats), scores them and returns the stats dict.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable


@runtime_checkable
class DatasetEvaluator(Protocol):
    def reset(self) -> None:
        """Forget everything processed so far."""

    def process(self, image_ids: Sequence[int], results: Sequence[Mapping[str, Any]]) -> None:
        """Record one batch: ``results[i]`` is the prediction of ``image_ids[i]``."""

    def evaluate(self) -> dict[str, Any]:
        """Gather the ranks, score, and return the stats (the same on every rank)."""


class EvaluatorGroup:
    """Several evaluators fed the same batches; ``evaluate`` merges their dicts (a key given twice is an error)."""

    def __init__(self, evaluators: Iterable[DatasetEvaluator]):
        self.evaluators = list(evaluators)

    @property
    def keypoint_stat_names(self) -> tuple[str, ...]:
        """The names of the member that reports keypoint stats."""
        for evaluator in self.evaluators:
            if hasattr(evaluator, "keypoint_stat_names"):
                return tuple(evaluator.keypoint_stat_names)
        return ()

    def reset(self) -> None:
        for evaluator in self.evaluators:
            evaluator.reset()

    def process(self, image_ids: Sequence[int], results: Sequence[Mapping[str, Any]]) -> None:
        for evaluator in self.evaluators:
            evaluator.process(image_ids, results)

    def evaluate(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for evaluator in self.evaluators:
            stats = evaluator.evaluate()
            clash = sorted(set(stats) & set(merged))
            if clash:
                raise ValueError(f"{type(evaluator).__name__} reports {clash}, which another evaluator of the group "
                                 "reports too")
            merged.update(stats)
        return merged
