"""Training losses: Hungarian-matched set losses per output dict, denoising losses, and the loss weights.

Each output dict (final layer, every ``aux_outputs`` entry, ``interm_outputs``) is matched on its own. Loss keys are
the reference's: ``loss_ce`` (+ ``class_error``, final layer only), ``loss_bbox``, ``loss_giou``, ``loss_keypoints``,
``loss_oks``, ``dn_loss_{ce,bbox,giou,keypoints}``, ``set_{class,bbox,giou,keypoints}`` (matching-cost means, logged
only), with suffix ``_{i}`` for ``aux_outputs[i]`` and ``_interm`` for the encoder proposals.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from util.box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou_pairwise
from util.settings import LossCfg

from util import keypoint_codec as kp
from .losses import GIOU_EPS, OKS_EPS, focal_loss_total, keypoint_oks, keypoint_sigmas, weighted_keypoint_l1
from .matcher import HungarianMatcher, MatchIndices

Match = tuple[MatchIndices, dict[str, Tensor]]  # what HungarianMatcher returns
LossDict = dict[str, Tensor]

DN_LOSSES = ("dn_label", "dn_bbox", "dn_keypoints")
KEYPOINT_LOSSES = ("keypoints", "dn_keypoints")  # skipped on box-only decoder layers
INTERM_LOSSES = ("labels", "boxes", "matching")


class LossJob(NamedTuple):
    """One output dict to match and score: which terms, the key suffix, whether to log ``class_error``, whether
    its layer predicts keypoints (box-only decoder layers and the encoder proposals do not)."""

    outputs: dict
    names: list[str]
    suffix: str
    log: bool
    keypoint_layer: bool = True


def _global_num_boxes(targets: Sequence[dict[str, Tensor]], device: torch.device) -> float:
    """Mean number of ground-truth people per process (all-reduced when distributed), at least 1."""
    count = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world_size = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
        world_size = torch.distributed.get_world_size()
    return torch.clamp(count / world_size, min=1).item()


def _matched_query_index(indices: MatchIndices) -> tuple[Tensor, Tensor]:
    """(batch index, query index) of every matched query, image by image."""
    batch = torch.cat([torch.full_like(src, image) for image, (src, _) in enumerate(indices)])
    return batch, torch.cat([src for src, _ in indices])


def _matched_targets(targets: Sequence[dict[str, Tensor]], indices: MatchIndices, key: str) -> Tensor:
    """``targets[i][key]`` rows in matching order, concatenated over the batch."""
    return torch.cat([t[key][tgt] for t, (_, tgt) in zip(targets, indices)], dim=0)


def _onehot_without_background(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """(...,) labels in [0, num_classes] -> (..., num_classes); label == num_classes (no object) is all zeros."""
    return F.one_hot(labels, num_classes + 1)[..., :num_classes].to(dtype)


class SetCriterion(nn.Module):
    """Computes the loss dict of one training forward (see module docstring for the keys).

    ``losses`` names the terms to compute, in order: any of ``labels``, ``boxes``, ``keypoints``, ``dn_label``,
    ``dn_bbox``, ``dn_keypoints``, ``matching``.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float], focal_alpha: float,
                 losses: Sequence[str], num_box_decoder_layers: int = 2, num_keypoints: Optional[int] = None,
                 sigmas: Optional[Sequence[float]] = None, cls_quality_target: Optional[str] = None):
        """``sigmas`` (OKS, one per keypoint) default to the matcher's, so matching and losses use one layout;
        ``num_keypoints`` defaults to their count. ``cls_quality_target``: None (the reference: matched queries
        aim at score 1) or 'oks' (they aim at their prediction's OKS, or box IoU before the keypoint layers)."""
        super().__init__()
        if cls_quality_target not in (None, "oks"):
            raise ValueError(f"cls_quality_target must be None or 'oks', got {cls_quality_target!r}")
        self.cls_quality_target = cls_quality_target
        if sigmas is None:
            sigmas = matcher.sigmas.tolist()
        if num_keypoints is None:
            num_keypoints = len(sigmas)
        self.num_classes, self.num_keypoints, self.num_box_decoder_layers = (num_classes, num_keypoints,
                                                                              num_box_decoder_layers)
        self.matcher, self.weight_dict, self.focal_alpha = matcher, weight_dict, focal_alpha
        self.register_buffer("sigmas", keypoint_sigmas(num_keypoints, sigmas), persistent=False)
        unknown = [name for name in losses if name not in self._loss_methods()]
        if unknown:
            raise ValueError(f"unknown loss names {unknown}; known: {sorted(self._loss_methods())}")
        self.losses = list(losses)

    def _loss_methods(self) -> dict[str, Callable[..., LossDict]]:
        return {"labels": self.loss_labels, "boxes": self.loss_boxes, "keypoints": self.loss_keypoints,
                "dn_label": self.loss_dn_labels, "dn_bbox": self.loss_dn_boxes, "dn_keypoints": self.loss_dn_keypoints,
                "matching": self.loss_matching}

    # ---- matched (set) losses ------------------------------------------------------------------------------------
    def loss_labels(self, outputs: dict, targets: Sequence[dict], match: Match, num_boxes: float,
                    log: bool = True, keypoint_layer: bool = True) -> LossDict:
        """Sigmoid focal loss over every query and class; unmatched queries have an all-zero target row.

        With ``cls_quality_target='oks'`` a matched query's target is the quality of its prediction instead of 1:
        its OKS on layers that predict keypoints (``keypoint_layer``), its box IoU on the others."""
        indices = match[0]
        logits = outputs["pred_logits"]
        matched = _matched_query_index(indices)
        matched_labels = _matched_targets(targets, indices, "labels")
        labels = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        labels[matched] = matched_labels
        onehot = _onehot_without_background(labels, self.num_classes, logits.dtype)
        quality = None
        if self.cls_quality_target == "oks":
            quality = torch.zeros_like(onehot)
            quality[matched] = self._match_quality(outputs, targets, indices, keypoint_layer)[:, None].to(onehot)
        losses = {"loss_ce": focal_loss_total(logits, onehot, num_boxes, self.focal_alpha, quality=quality)}
        if log:
            losses["class_error"] = self._class_error(logits[matched], matched_labels)
        return losses

    @torch.no_grad()
    def _match_quality(self, outputs: dict, targets: Sequence[dict], indices: MatchIndices,
                       keypoint_layer: bool) -> Tensor:
        """(M,) how good each matched prediction is, in [0, 1]: OKS of its keypoints or IoU of its box."""
        matched = _matched_query_index(indices)
        if keypoint_layer and "pred_keypoints" in outputs:
            k = self.num_keypoints
            pred_xy, _ = kp.split(outputs["pred_keypoints"][matched], k)
            gt_xy, gt_vis = kp.split(_matched_targets(targets, indices, "keypoints"), k)
            area = _matched_targets(targets, indices, "area")
            quality = keypoint_oks(pred_xy.reshape(-1, k, 2), gt_xy.reshape(-1, k, 2), gt_vis, area,
                                   self.sigmas.to(pred_xy))
        else:
            pred = box_cxcywh_to_xyxy(outputs["pred_boxes"][matched])
            gt = box_cxcywh_to_xyxy(_matched_targets(targets, indices, "boxes"))
            quality = box_iou(pred, gt)[0].diagonal() if len(pred) else pred.new_zeros(0)
        return quality.clamp(0, 1)

    @staticmethod
    @torch.no_grad()
    def _class_error(logits: Tensor, labels: Tensor) -> Tensor:
        """100 - top-1 accuracy (%) of the matched queries; 100 when nothing is matched."""
        if labels.numel() == 0:
            return logits.new_full((), 100.0)
        correct = (logits.argmax(-1) == labels).float().sum()
        return 100 - correct * (100.0 / labels.numel())

    def loss_boxes(self, outputs: dict, targets: Sequence[dict], match: Match, num_boxes: float) -> LossDict:
        """L1 on cxcywh and 1 - GIoU of the matched boxes, summed, / num_boxes."""
        indices = match[0]
        pred = outputs["pred_boxes"][_matched_query_index(indices)]
        gt = _matched_targets(targets, indices, "boxes")
        return self._box_terms(pred, gt, num_boxes, prefix="")

    def loss_keypoints(self, outputs: dict, targets: Sequence[dict], match: Match, num_boxes: float) -> LossDict:
        """Visibility-weighted keypoint L1 and 1 - OKS of the matched people, summed, / num_boxes."""
        indices = match[0]
        pred = outputs["pred_keypoints"][_matched_query_index(indices)]
        if len(pred) == 0:  # keep the graph connected so every parameter still gets a (zero) gradient
            zero = pred.sum() * 0
            return {"loss_keypoints": zero, "loss_oks": zero.clone()}
        k = self.num_keypoints
        pred_xy, _ = kp.split(pred, k)
        gt_xy, gt_vis = kp.split(_matched_targets(targets, indices, "keypoints"), k)
        area = _matched_targets(targets, indices, "area")
        oks = keypoint_oks(pred_xy.reshape(-1, k, 2), gt_xy.reshape(-1, k, 2), gt_vis, area, self.sigmas.to(pred))
        return {"loss_keypoints": weighted_keypoint_l1(pred_xy, gt_xy, gt_vis).sum() / num_boxes,
                "loss_oks": (1 - oks.clamp(min=OKS_EPS)).sum() / num_boxes}

    @torch.no_grad()
    def loss_matching(self, outputs: dict, targets: Sequence[dict], match: Match, num_boxes: float) -> LossDict:
        """Matching-cost means, for logging."""
        return {f"set_{name}": value for name, value in match[1].items()}

    # ---- denoising losses (fixed query-target pairs; normalised by the dn group size) ---------------------------
    def loss_dn_labels(self, outputs: dict, targets: Sequence[dict], match: Match, num_boxes: float) -> LossDict:
        """Focal loss of the dn queries against their (possibly 'no object') labels, / num_tgt."""
        if "num_tgt" not in outputs:
            return {"dn_loss_ce": self._zero(outputs)}
        logits = outputs["dn_class_pred"]
        onehot = _onehot_without_background(outputs["dn_class_input"], self.num_classes, logits.dtype)
        return {"dn_loss_ce": focal_loss_total(logits, onehot, outputs["num_tgt"], self.focal_alpha)}

    def loss_dn_boxes(self, outputs: dict, targets: Sequence[dict], match: Match, num_boxes: float) -> LossDict:
        """L1 and 1 - GIoU of the dn boxes against their clean targets, / num_tgt."""
        if "num_tgt" not in outputs:
            return {"dn_loss_bbox": self._zero(outputs), "dn_loss_giou": self._zero(outputs)}
        pred = outputs["dn_bbox_pred"].flatten(0, 1)
        gt = outputs["dn_bbox_input"].flatten(0, 1)
        return self._box_terms(pred, gt, outputs["num_tgt"], prefix="dn_")

    def loss_dn_keypoints(self, outputs: dict, targets: Sequence[dict], match: Match, num_boxes: float) -> LossDict:
        """Visibility-weighted keypoint L1 of the dn queries against their clean targets, / num_tgt."""
        if "num_tgt" not in outputs:
            return {"dn_loss_keypoints": self._zero(outputs)}
        pred_xy, _ = kp.split(outputs["dn_pose_pred"], self.num_keypoints)
        gt_xy, gt_vis = kp.split(outputs["dn_pose_input"], self.num_keypoints)
        return {"dn_loss_keypoints": weighted_keypoint_l1(pred_xy, gt_xy, gt_vis).sum() / outputs["num_tgt"]}

    # ---- helpers -------------------------------------------------------------------------------------------------
    @staticmethod
    def _zero(outputs: dict) -> Tensor:
        return torch.zeros((), device=outputs["pred_logits"].device)

    @staticmethod
    def _box_terms(pred: Tensor, gt: Tensor, normaliser: float, prefix: str) -> LossDict:
        """(M, 4) cxcywh pairs -> {prefix+loss_bbox, prefix+loss_giou}, both summed / normaliser."""
        giou = generalized_box_iou_pairwise(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(gt), eps=GIOU_EPS)
        return {f"{prefix}loss_bbox": F.l1_loss(pred, gt, reduction="none").sum() / normaliser,
                f"{prefix}loss_giou": (1 - giou).sum() / normaliser}

    def _terms(self, job: LossJob, targets: Sequence[dict], match: Match, num_boxes: float) -> LossDict:
        """The named terms of one output dict, keys suffixed."""
        methods = self._loss_methods()
        result: LossDict = {}
        for name in job.names:
            extra = {"log": job.log, "keypoint_layer": job.keypoint_layer} if name == "labels" else {}
            for key, value in methods[name](job.outputs, targets, match, num_boxes, **extra).items():
                result[key + job.suffix] = value
        return result

    def _match_all(self, outputs_list: list[dict], targets: Sequence[dict]) -> list[Match]:
        if hasattr(self.matcher, "match_many"):  # one host transfer for every output dict
            return self.matcher.match_many(outputs_list, targets)
        return [self.matcher(outputs, targets) for outputs in outputs_list]

    def forward(self, outputs: dict[str, Any], targets: Sequence[dict[str, Tensor]]) -> LossDict:
        """outputs: the model's training output dict; targets: one dict per image. Returns the unweighted losses.

        Every output dict (final, each aux entry, interm) gets its own Hungarian matching.
        """
        num_boxes = _global_num_boxes(targets, outputs["pred_logits"].device)
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        jobs = [LossJob(final, list(self.losses), "", True)]
        for layer, aux in enumerate(outputs.get("aux_outputs", [])):
            box_only = layer < self.num_box_decoder_layers
            names = [n for n in self.losses if not (box_only and n in KEYPOINT_LOSSES)]
            jobs.append(LossJob(aux, names, f"_{layer}", False, keypoint_layer=not box_only))
        if "interm_outputs" in outputs:
            jobs.append(LossJob(outputs["interm_outputs"], [n for n in self.losses if n in INTERM_LOSSES], "_interm",
                                False, keypoint_layer=False))
        matches = self._match_all([job.outputs for job in jobs], targets)
        losses: LossDict = {}
        for job, match in zip(jobs, matches):
            losses.update(self._terms(job, targets, match, num_boxes))
        return losses

    def weigh(self, loss_dict: Mapping[str, Tensor]) -> tuple[Tensor, LossDict]:
        """The training loss (:func:`weighted_total`) and its weighted terms (:func:`weighted_losses`) by this
        criterion's ``weight_dict``: what ``engine.train_one_epoch`` backpropagates and logs."""
        return weighted_total(loss_dict, self.weight_dict), weighted_losses(loss_dict, self.weight_dict)


def weighted_losses(loss_dict: Mapping[str, Tensor], weight_dict: Mapping[str, float]) -> LossDict:
    """``loss * weight`` for the keys present in both, in loss_dict order (terms without a weight are logged only)."""
    return {k: v * weight_dict[k] for k, v in loss_dict.items() if k in weight_dict}


def weighted_total(loss_dict: Mapping[str, Tensor], weight_dict: Mapping[str, float]) -> Tensor:
    """The training loss: the sum of :func:`weighted_losses` (the reference's total), accumulated in fp32."""
    terms = list(weighted_losses(loss_dict, weight_dict).values())
    if not terms:
        raise RuntimeError("the criterion produced no weighted loss terms; check weight_dict against the loss keys")
    return torch.stack([t.float() for t in terms]).sum()


def build_weight_dict(cfg: LossCfg) -> dict[str, float]:
    """Loss weights of the loss section, keys and values as the reference's build function makes them."""
    base = {"loss_ce": cfg.cls_loss_coef, "loss_bbox": cfg.bbox_loss_coef,
            "loss_keypoints": cfg.keypoints_loss_coef, "loss_oks": cfg.oks_loss_coef,
            "loss_giou": cfg.giou_loss_coef}
    per_layer = dict(base)
    if cfg.use_dn:
        per_layer.update({"dn_loss_ce": cfg.dn_label_coef,
                          "dn_loss_bbox": cfg.bbox_loss_coef * cfg.dn_bbox_coef,
                          "dn_loss_giou": cfg.giou_loss_coef * cfg.dn_bbox_coef,
                          "dn_loss_keypoints": cfg.keypoints_loss_coef * cfg.dn_keypoints_coef})
    weights = dict(per_layer)
    if cfg.aux_loss:
        for layer in range(cfg.num_aux_outputs):
            box_only = layer < cfg.num_box_decoder_layers
            # on box-only layers only *keypoints* keys are dropped; loss_oks_{0,1} stay (never produced, harmless)
            weights.update({f"{k}_{layer}": v for k, v in per_layer.items() if not (box_only and "keypoints" in k)})
    if cfg.interm_loss:
        for k, v in base.items():
            if "keypoints" not in k:
                weights[f"{k}_interm"] = v * cfg.interm_loss_coef * (
                    0.0 if cfg.no_interm_box_loss and k != "loss_ce" else 1.0)
    return weights


def build_criterion(cfg: LossCfg, matcher: HungarianMatcher) -> SetCriterion:
    """SetCriterion of the loss section (classes, K, coefficients, denoising terms); the OKS sigmas are the
    matcher's (the keypoint layout's)."""
    losses = ["labels", "boxes", "keypoints"]
    if cfg.dn_number > 0:
        losses += list(DN_LOSSES)
    losses.append("matching")
    return SetCriterion(cfg.num_classes, matcher, build_weight_dict(cfg), cfg.focal_alpha, losses,
                        num_box_decoder_layers=cfg.num_box_decoder_layers, num_keypoints=cfg.num_keypoints,
                        cls_quality_target=cfg.cls_quality_target)
