"""Training and evaluation loops: ``train_one_epoch``, ``evaluate`` (model-only AP), ``evaluate_interactive``."""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from datasets.dataset_ap import DatasetKeypointAP
from models.clickpose.criterion import weighted_losses, weighted_total
from util.distributed import all_gather, reduce_dict
from util.metric_logger import MetricLogger, SmoothedValue
from util.noc import InteractiveResults, check_thresholds

log = logging.getLogger("clickpose")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; training stops and the last good checkpoint stays as it is."""


def targets_to(targets: Iterable[Mapping[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


OUTPUT_KEYS = ("pred_logits", "pred_boxes", "pred_keypoints")


def check_finite_outputs(outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]], epoch: int, step: int,
                         lr: float) -> None:
    """Raise ``NonFiniteLossError`` when the model's predictions hold NaN/inf (before the matcher sees them).
    Annotations are validated when loaded, so non-finite predictions mean the optimisation diverged."""
    groups = [outputs] + list(outputs.get("aux_outputs", []))
    tensors = [group[k] for group in groups for k in OUTPUT_KEYS if isinstance(group.get(k), torch.Tensor)]
    if not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        return
    bad = sorted({k for k in OUTPUT_KEYS if isinstance(outputs.get(k), torch.Tensor)
                  and not bool(torch.isfinite(outputs[k]).all())}) or ["auxiliary outputs"]
    raise diverged(f"the model's predictions ({', '.join(bad)}) are not finite", targets, epoch, step, lr)


def diverged(what: str, targets: Sequence[Mapping[str, Any]], epoch: int, step: int, lr: float) -> NonFiniteLossError:
    ids = [int(t["image_id"]) for t in targets if "image_id" in t]
    return NonFiniteLossError(f"{what} at epoch {epoch}, iteration {step} (image ids {ids}): training diverged (the "
                              "annotations were checked when loaded). Training stopped; the last checkpoint is "
                              f"unchanged. Lower lr (now {lr:g}), enable clip_max_norm, or resume from an earlier "
                              "checkpoint.")


def _autocast(device: torch.device, enabled: bool, dtype: torch.dtype):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def _forward_losses(model: nn.Module, criterion: nn.Module, samples: Any, targets: Sequence[Mapping[str, Any]],
                    epoch: int, step: int, lr: float) -> dict[str, torch.Tensor]:
    """The model's outputs and the criterion's loss terms; divergence is named with epoch and iteration."""
    try:
        outputs = model(samples, targets)  # the training click rounds match inside the model
        check_finite_outputs(outputs, targets, epoch, step, lr)
        return criterion(outputs, targets)
    except ValueError as exc:  # the matcher's cost: degenerate predictions (e.g. zero-size boxes)
        if "NaN/inf" not in str(exc):
            raise
        raise diverged(f"the matching cost is not finite ({exc})", targets, epoch, step, lr) from exc


def check_finite_loss(loss_value: float, reduced: Mapping[str, torch.Tensor], epoch: int, step: int) -> None:
    if not math.isfinite(loss_value):
        bad = sorted(k for k, v in reduced.items() if not torch.isfinite(v).all())
        raise NonFiniteLossError(f"loss is {loss_value} at epoch {epoch}, iteration {step}; non-finite terms: "
                                 f"{bad or 'none individually (overflow in the sum)'}. Training stopped; the last "
                                 "checkpoint is unchanged. Lower lr, enable clip_max_norm, or check the data.")


def train_one_epoch(model: nn.Module, criterion: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, max_norm: float = 0.0, *, amp: bool = False,
                    amp_dtype: torch.dtype = torch.float16, scaler: Optional[torch.amp.GradScaler] = None,
                    lr_scheduler: Any = None, step_scheduler_per_iter: bool = False, ema: Any = None,
                    max_iters: Optional[int] = None, print_freq: int = 10,
                    log_fn: Callable[[str], None] = print) -> dict[str, float]:
    """One pass over ``data_loader``. Returns the epoch's averaged metrics (loss, weighted and unscaled terms, lr).

    Raises ``NonFiniteLossError`` naming the non-finite predictions or loss terms, the epoch and the iteration.
    """
    model.train()
    criterion.train()
    # progress lines show the final layer's terms; log.txt gets every term
    meters = MetricLogger(display=["lr", "loss", "loss_ce", "loss_bbox", "loss_giou", "loss_keypoints", "loss_oks",
                                   "class_error"])
    meters.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    meters.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    weight_dict = criterion.weight_dict
    header = f"Epoch: [{epoch}]"
    for step, (samples, targets) in enumerate(meters.log_every(data_loader, print_freq, header, log=log_fn)):
        samples = samples.to(device)
        targets = targets_to(targets, device)
        with _autocast(device, amp, amp_dtype):
            loss_dict = _forward_losses(model, criterion, samples, targets, epoch, step,
                                        optimizer.param_groups[0]["lr"])
        losses = weighted_total(loss_dict, weight_dict)

        reduced = reduce_dict({k: v.detach() for k, v in loss_dict.items()})
        scaled = weighted_losses(reduced, weight_dict)
        unscaled = {f"{k}_unscaled": v for k, v in reduced.items()}
        loss_value = float(weighted_total(reduced, weight_dict))
        check_finite_loss(loss_value, reduced, epoch, step)

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(losses).backward()
            if max_norm > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            losses.backward()
            if max_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
        if step_scheduler_per_iter and lr_scheduler is not None:
            lr_scheduler.step()
        if ema is not None:
            ema.update(model)

        meters.update(loss=loss_value, **scaled, **unscaled)
        if "class_error" in reduced:
            meters.update(class_error=reduced["class_error"])
        meters.update(lr=optimizer.param_groups[0]["lr"])
        if max_iters is not None and step + 1 >= max_iters:
            break
    meters.synchronize_between_processes()
    log_fn(f"Averaged stats: {meters}")
    return {name: meter.global_avg for name, meter in meters.meters.items() if meter.count > 0}


@torch.no_grad()
def evaluate(model: nn.Module, postprocessors: Mapping[str, Callable], data_loader: Iterable, evaluator: Any,
             device: torch.device, *, amp: bool = False, amp_dtype: torch.dtype = torch.float16,
             max_iters: Optional[int] = None, print_freq: int = 10,
             log_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Model-only evaluation: predictions of every image go to ``evaluator``; returns its summary stats."""
    model.eval()
    meters = MetricLogger()
    for step, (samples, targets) in enumerate(meters.log_every(data_loader, print_freq, "Test:", log=log_fn)):
        samples = samples.to(device)
        with _autocast(device, amp, amp_dtype):
            outputs = model(samples)
        orig_sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
        results = postprocessors["bbox"](outputs, orig_sizes)
        evaluator.update({int(t["image_id"]): r for t, r in zip(targets, results)})
        if max_iters is not None and step + 1 >= max_iters:
            break
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    return evaluator.summarize()


@torch.no_grad()
def evaluate_interactive(model: nn.Module, postprocess: Callable, data_loader: Iterable, per_image_ap: Any,
                         device: torch.device, *, max_clicks: int, thresholds: Sequence[float],
                         report_round: Optional[int] = None, report_evaluator: Any = None,
                         round_evaluator_factory: Optional[Callable[[], Any]] = None, max_iters: Optional[int] = None,
                         print_freq: int = 10, log_fn: Callable[[str], None] = print) -> InteractiveResults:
    """Simulated interactive annotation of the whole val set in one pass; returns what it measured.

    Per batch: one model pass (``model(samples, return_state=True)``), then ``max_clicks`` oracle click rounds on
    the cached state (``model.click_rounds(state, outputs, targets, max_clicks)``, rounds 0..max_clicks). Each
    round's post-processed predictions are matched once by ``per_image_ap`` (a ``PerImageKeypointAP`` built with
    the dataset's ground truth and OKS sigmas): that gives the per-image AP (for NoC at every threshold) and the
    dataset-level keypoint AP after k clicks (``DatasetKeypointAP``). A scorer with other semantics (CrowdPose)
    comes as ``round_evaluator_factory`` (one keypoint evaluator per round). ``report_evaluator`` (box and keypoint
    AP, result files) sees round ``report_round`` (default ``max_clicks``). Clicks never change earlier rounds, so
    one pass gives what the reference computes in 3 + 17 runs; any batch size, any number of processes.
    Writing reports is the caller's job (``util.noc_report``).
    """
    thresholds = check_thresholds(thresholds)
    report_round = max_clicks if report_round is None else min(int(report_round), max_clicks)
    round_scorers = [round_evaluator_factory() if round_evaluator_factory else DatasetKeypointAP()
                     for _ in range(max_clicks + 1)]
    model.eval()
    net = model.module if hasattr(model, "module") else model
    ap_rows: dict[Any, np.ndarray] = {}
    meters = MetricLogger()
    for step, (samples, targets) in enumerate(meters.log_every(data_loader, print_freq, "Interactive:", log=log_fn)):
        targets = targets_to(targets, device)
        outputs, state = net(samples.to(device), return_state=True)
        rounds = net.click_rounds(state, outputs, targets, max_clicks)
        if len(rounds) != max_clicks + 1:
            raise RuntimeError(f"click_rounds returned {len(rounds)} rounds for max_clicks={max_clicks}; expected "
                               f"{max_clicks + 1} (round 0 = before any click)")
        orig_sizes = torch.stack([t["orig_size"] for t in targets])
        image_ids = [int(t["image_id"]) for t in targets]
        curves = np.zeros((len(targets), max_clicks + 1))
        for k, round_outputs in enumerate(rounds):
            results = postprocess(round_outputs, orig_sizes)
            curves[:, k] = _score_round(per_image_ap, round_scorers[k], image_ids, results)
            if report_evaluator is not None and k == report_round:
                report_evaluator.update(dict(zip(image_ids, results)))
        for image_id, row in zip(image_ids, curves):
            ap_rows.setdefault(image_id, row)  # DistributedSampler pads with repeats: keep the first
        if max_iters is not None and step + 1 >= max_iters:
            break
    image_ids, ap_curves = _gather_curves(ap_rows, max_clicks)
    return InteractiveResults.from_curves(
        image_ids, ap_curves, thresholds, max_clicks, round_stats=[_round_summary(s) for s in round_scorers],
        stat_names=tuple(round_scorers[0].keypoint_stat_names),
        report_round=report_round, report_stats=_summary(report_evaluator) if report_evaluator is not None else {})


def _score_round(per_image_ap: Any, scorer: Any, image_ids: list[int], results: list[dict]) -> np.ndarray:
    """Per-image AP of one round's predictions; the round's dataset-level scorer gets them too."""
    arrays = [{key: value.detach().cpu().numpy() for key, value in r.items()} for r in results]
    if isinstance(scorer, DatasetKeypointAP):
        ap, matches = per_image_ap.evaluate(image_ids, arrays)
        scorer.add(matches)
        return ap
    scorer.update(dict(zip(image_ids, results)))
    return per_image_ap.images_ap(image_ids, arrays)


def _gather_curves(ap_rows: dict[Any, np.ndarray], max_clicks: int) -> tuple[list, np.ndarray]:
    """Every rank's per-image curves, one per image (first occurrence), ordered by image id."""
    merged: dict[Any, np.ndarray] = {}
    for part in all_gather(ap_rows):
        for image_id, row in part.items():
            merged.setdefault(image_id, row)
    image_ids = sorted(merged)
    curves = np.stack([merged[i] for i in image_ids]) if image_ids else np.zeros((0, max_clicks + 1))
    return image_ids, curves


def _summary(evaluator: Any) -> dict[str, Any]:
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    return evaluator.summarize()


def _round_summary(scorer: Any) -> list[float]:
    """Dataset-level keypoint stats of one round, from either kind of scorer."""
    if isinstance(scorer, DatasetKeypointAP):
        scorer.synchronize_between_processes()
        return scorer.summarize().tolist()
    return list(_summary(scorer)["coco_eval_keypoints_detr"])
