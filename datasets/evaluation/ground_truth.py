"""The ground truth of an evaluation, loaded once and shared by every evaluator of a run.

``load_ground_truth`` turns a path, a COCO-format dict or a COCO object into the backend's own COCO object;
``GroundTruth`` holds it with the OKS sigmas, so that the report evaluator, every click round's evaluator and the
per-image AP of an interactive run read the annotation file once.
"""
from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from datasets.evaluation.oks_ap import PerImageKeypointAP

# CrowdPose's OKS scale is this share of the GT box area (its annotations have no 'area'; faster-coco-eval's rule)
CROWDPOSE_SCALE_PER_BOX_AREA = 0.53
BACKENDS = ("coco", "crowdpose")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown evaluation backend {backend!r}: expected 'coco' or 'crowdpose'")
    return backend


def quiet() -> contextlib.AbstractContextManager:
    """Swallow pycocotools' console output."""
    return contextlib.redirect_stdout(io.StringIO())


def load_ground_truth(gt: Union[str, Path, dict, Any], backend: str):
    """A COCO object of the backend's own API (pycocotools for 'coco', faster-coco-eval for 'crowdpose') from a
    path, a dict or a COCO object (returned as is when it already is the backend's)."""
    if check_backend(backend) == "crowdpose":
        from faster_coco_eval import COCO as FasterCOCO
        if isinstance(gt, FasterCOCO):
            return gt
        coco = FasterCOCO(str(gt) if isinstance(gt, (str, Path)) else
                          copy.deepcopy(gt if isinstance(gt, dict) else gt.dataset))
        # CrowdPose has no 'area': use the box area so that box AP per size range is defined (keypoint OKS uses
        # use_area=False and does not read it)
        for ann in coco.anns.values():
            ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        return coco
    from pycocotools.coco import COCO
    if isinstance(gt, (str, Path)):
        with quiet():
            return COCO(str(gt))
    if isinstance(gt, dict):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        with quiet():
            coco.createIndex()
        return coco
    return gt


class GroundTruth:
    """One loaded ground truth with the backend that scores it and its OKS sigmas (one per keypoint, or None for
    the standard layout of the GT's keypoint count).

    ``per_image_ap()`` is built on first use and kept, so every round of an interactive run shares one matcher.
    """

    def __init__(self, coco: Any, backend: str = "coco", sigmas: Optional[Sequence[float]] = None):
        self.backend = check_backend(backend)
        self.coco = coco
        self.sigmas = None if sigmas is None else [float(s) for s in sigmas]
        self._per_image_ap = None

    @classmethod
    def load(cls, gt: Union[str, Path, dict, Any], backend: str = "coco",
             sigmas: Optional[Sequence[float]] = None) -> "GroundTruth":
        """Read ``gt`` (path, dict or COCO object) once for ``backend``."""
        return cls(load_ground_truth(gt, backend), backend, sigmas)

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.coco.imgs)

    def per_image_ap(self) -> PerImageKeypointAP:
        """Per-image keypoint AP (for NoC) on this ground truth and sigmas, with its scorer's OKS scale: the
        annotation's area (coco), or 0.53 x the box area as the CrowdPose scorer (crowdpose)."""
        if self._per_image_ap is None:
            gt = self.coco
            if self.backend == "crowdpose":
                gt = {key: self.coco.dataset[key] for key in ("images", "categories")}
                gt["annotations"] = [{**ann, "area": CROWDPOSE_SCALE_PER_BOX_AREA * ann["bbox"][2] * ann["bbox"][3]}
                                     for ann in self.coco.dataset["annotations"]]
            self._per_image_ap = PerImageKeypointAP(gt, sigmas=self.sigmas)
        return self._per_image_ap
