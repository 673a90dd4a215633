"""Training and evaluation loops: ``train_one_epoch``, ``evaluate`` (model-only AP), ``evaluate_interactive``."""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from models.clickpose.criterion import weighted_losses, weighted_total
from util.distributed import reduce_dict
from util.metric_logger import MetricLogger, SmoothedValue

log = logging.getLogger("clickpose")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; training stops and the last good checkpoint stays as it is."""


def targets_to(targets: Iterable[Mapping[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


def _autocast(device: torch.device, enabled: bool, dtype: torch.dtype):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def train_one_epoch(model: nn.Module, criterion: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, max_norm: float = 0.0, *, amp: bool = False,
                    amp_dtype: torch.dtype = torch.float16, scaler: Optional[torch.amp.GradScaler] = None,
                    lr_scheduler: Any = None, step_scheduler_per_iter: bool = False, ema: Any = None,
                    max_iters: Optional[int] = None, print_freq: int = 10,
                    log_fn: Callable[[str], None] = print) -> dict[str, float]:
    """One pass over ``data_loader``. Returns the epoch's averaged metrics (loss, weighted and unscaled terms, lr).

    Raises ``NonFiniteLossError`` naming the non-finite loss terms.
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
            outputs = model(samples, targets)
            loss_dict = criterion(outputs, targets)
        losses = weighted_total(loss_dict, weight_dict)

        reduced = reduce_dict({k: v.detach() for k, v in loss_dict.items()})
        scaled = weighted_losses(reduced, weight_dict)
        unscaled = {f"{k}_unscaled": v for k, v in reduced.items()}
        loss_value = float(weighted_total(reduced, weight_dict))
        if not math.isfinite(loss_value):
            bad = sorted(k for k, v in reduced.items() if not torch.isfinite(v).all())
            raise NonFiniteLossError(f"loss is {loss_value} at epoch {epoch}, iteration {step}; non-finite terms: "
                                     f"{bad or 'none individually (overflow in the sum)'}. Training stopped; the last "
                                     "checkpoint is unchanged. Lower lr, enable clip_max_norm, or check the data.")

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
def evaluate_interactive(model: nn.Module, postprocessors: Mapping[str, Callable], data_loader: Iterable,
                         dataset: Any, args: Any, device: torch.device, *, output_dir: Any = None,
                         evaluator_factory: Optional[Callable[[], Any]] = None, tb_writer: Any = None,
                         max_iters: Optional[int] = None, print_freq: int = 10,
                         log_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Simulated interactive annotation of the whole val set in one pass.

    Per batch: one model pass, then ``max_clicks`` oracle click rounds on the cached encoder state. Every round's
    predictions go to (a) the in-memory per-image keypoint AP (for NoC at every threshold) and (b) a dataset-level
    evaluator for that round (AP after k clicks). Clicks never change earlier rounds, so one pass gives what the
    reference computes in 3 + 17 separate runs. Works with any batch size and any number of processes.

    Returns stats: ``coco_eval_keypoints_detr`` / ``coco_eval_bbox`` of the round the reference would report
    (``CLICKPOSE_Click_Number`` clicks, else ``max_clicks``), ``NoC@85``..., ``AP@k`` for every k.
    """
    import numpy as np

    from datasets.oks_ap import PerImageKeypointAP
    from util.distributed import all_gather, is_main_process
    from util.noc_report import write_interactive_report

    model.eval()
    net = model.module if hasattr(model, "module") else model
    max_clicks = int(args.max_clicks)
    thresholds = [float(t) for t in args.noc_thresholds]
    if getattr(args, "noc_threshold_env", None) is not None and args.noc_threshold_env not in thresholds:
        thresholds.append(float(args.noc_threshold_env))
    per_image_ap = PerImageKeypointAP(dataset.coco, sigmas=dataset.metadata.sigmas)
    postprocess = postprocessors["bbox"]
    num_refine = int(args.num_group_refine)
    if postprocess.num_select > num_refine * int(args.num_classes):
        # the reference needs num_select=20 here (it crashes otherwise); use the largest valid value
        from models.clickpose.postprocess import PostProcess

        postprocess = PostProcess(num_select=num_refine, nms_iou_threshold=args.nms_iou_threshold,
                                  num_body_points=args.num_body_points)
    evaluators = [evaluator_factory() for _ in range(max_clicks + 1)] if evaluator_factory else []
    ap_rows: dict[int, np.ndarray] = {}
    meters = MetricLogger()
    for step, (samples, targets) in enumerate(meters.log_every(data_loader, print_freq, "Interactive:", log=log_fn)):
        samples = samples.to(device)
        targets = targets_to(targets, device)
        outputs, state = net(samples, return_state=True)
        rounds = net.click_rounds(state, outputs, targets, max_clicks)
        orig_sizes = torch.stack([t["orig_size"] for t in targets])
        image_ids = [int(t["image_id"]) for t in targets]
        curves = np.zeros((len(targets), max_clicks + 1))
        for k, round_outputs in enumerate(rounds):
            results = postprocess(round_outputs, orig_sizes)
            curves[:, k] = per_image_ap.images_ap(image_ids, [
                {key: value.cpu().numpy() for key, value in r.items()} for r in results])
            if evaluators:
                evaluators[k].update({i: r for i, r in zip(image_ids, results)})
        for image_id, row in zip(image_ids, curves):
            ap_rows.setdefault(image_id, row)
        if max_iters is not None and step + 1 >= max_iters:
            break
    merged: dict[int, np.ndarray] = {}
    for part in all_gather(ap_rows):
        for image_id, row in part.items():
            merged.setdefault(image_id, row)  # DistributedSampler pads with repeats: keep the first
    stats_per_round = []
    full_stats = []
    for evaluator in evaluators:
        evaluator.synchronize_between_processes()
        evaluator.accumulate()
        stats = evaluator.summarize()
        full_stats.append(stats)
        stats_per_round.append(stats["coco_eval_keypoints_detr"])
    image_ids = sorted(merged)
    ap_curves = np.stack([merged[i] for i in image_ids]) if image_ids else np.zeros((0, max_clicks + 1))
    report: dict[str, Any] = {}
    if is_main_process() and output_dir is not None:
        compat = {}
        if getattr(args, "noc_save_path", None) and getattr(args, "noc_threshold_env", None) is not None:
            compat[float(args.noc_threshold_env)] = args.noc_save_path
        report = write_interactive_report(output_dir, image_ids, ap_curves, stats_per_round, thresholds, max_clicks,
                                          tb_writer=tb_writer, click_list_paths=compat, printer=log_fn)
    from util.noc import noc_summary

    summary = report.get("summary") or noc_summary(ap_curves, thresholds, max_clicks)
    reported = min(int(getattr(args, "click_number_env", None) or max_clicks), max_clicks)
    out: dict[str, Any] = dict(summary)
    if full_stats:
        out.update(full_stats[reported])
        out.update({f"AP@{k}": float(s[0]) for k, s in enumerate(stats_per_round)})
    return out
