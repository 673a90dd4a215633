"""Training and evaluation loops: ``train_one_epoch``, ``evaluate`` (model-only AP), ``evaluate_interactive``, and
``evaluate_model``, the one evaluation entry of a run."""
from __future__ import annotations

import copy
import datetime
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler

from datasets import build_evaluator
from datasets.evaluation import (KEYPOINT_STATS_KEY, PER_IMAGE_AP_KEY, DatasetKeypointAP, EvaluatorGroup,
                                 InteractiveResults, PerImageAPEvaluator, check_thresholds, write_interactive_report)
from datasets.metadata import default_metadata_for_num_keypoints
from models.adaptation import load_pretrained
from util import run_folder
from util import checkpoint as checkpoint_io  # save_checkpoint through the module (tests stop it mid-run)
from util.checkpoint import (load_model_weights, preserve_rng, read_checkpoint, restore_rng_state,
                             restore_scaler_state)
from util.errors import ConfigError
from util.keypoint_metadata import KeypointMetadata
from util.misc import collate_fn
from util.distributed import broadcast_object, is_main_process, reduce_dict
from util.errors import NonFiniteLossError  # noqa: F401  (re-exported: raised here, mapped to exit code 1 by main.py)
from util.metric_logger import MetricLogger, SmoothedValue

log = logging.getLogger("clickpose")


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


@dataclass
class StepOptions:
    """How ``train_one_epoch`` takes its steps (the defaults: fp32, the whole loader, no EMA)."""
    amp: bool = False
    amp_dtype: torch.dtype = torch.float16
    scaler: Optional[torch.amp.GradScaler] = None  # float16 loss scaling; used when enabled
    lr_scheduler: Any = None  # stepped after every iteration (one-cycle); a per-epoch schedule is the caller's
    ema: Any = None  # util.ema.ModelEma, updated after every step
    max_iters: Optional[int] = None  # stop the epoch after this many iterations (--debug: 15)
    print_freq: int = 10


def train_one_epoch(model: nn.Module, criterion: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, max_norm: float = 0.0, *, step: Optional[StepOptions] = None,
                    log_fn: Callable[[str], None] = print) -> dict[str, float]:
    """One pass over ``data_loader``. Returns the epoch's averaged metrics (loss, weighted and unscaled terms, lr).

    ``criterion(outputs, targets)`` gives the loss terms and ``criterion.weigh(terms)`` the weighted total and terms.
    Raises ``NonFiniteLossError`` naming the non-finite predictions or loss terms, the epoch and the iteration.
    """
    step = step or StepOptions()
    scaler = step.scaler if step.scaler is not None and step.scaler.is_enabled() else None
    model.train()
    criterion.train()
    # progress lines show the final layer's terms; log.txt gets every term
    meters = MetricLogger(display=["lr", "loss", "loss_ce", "loss_bbox", "loss_giou", "loss_keypoints", "loss_oks",
                                   "class_error"])
    meters.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    meters.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    header = f"Epoch: [{epoch}]"
    for i, (samples, targets) in enumerate(meters.log_every(data_loader, step.print_freq, header, log=log_fn)):
        samples = samples.to(device)
        targets = targets_to(targets, device)
        with _autocast(device, step.amp, step.amp_dtype):
            loss_dict = _forward_losses(model, criterion, samples, targets, epoch, i, optimizer.param_groups[0]["lr"])
        losses, _ = criterion.weigh(loss_dict)

        reduced = reduce_dict({k: v.detach() for k, v in loss_dict.items()})
        reduced_total, scaled = criterion.weigh(reduced)
        unscaled = {f"{k}_unscaled": v for k, v in reduced.items()}
        loss_value = float(reduced_total)
        check_finite_loss(loss_value, reduced, epoch, i)

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
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
        if step.lr_scheduler is not None:
            step.lr_scheduler.step()
        if step.ema is not None:
            step.ema.update(model)

        meters.update(loss=loss_value, **scaled, **unscaled)
        if "class_error" in reduced:
            meters.update(class_error=reduced["class_error"])
        meters.update(lr=optimizer.param_groups[0]["lr"])
        if step.max_iters is not None and i + 1 >= step.max_iters:
            break
    meters.synchronize_between_processes()
    log_fn(f"Averaged stats: {meters}")
    return {name: meter.global_avg for name, meter in meters.meters.items() if meter.count > 0}


# ---------------------------------------------------------------------------------------------------------------
# A training run (main.py): per epoch, train -> checkpoint.pth (+ snapshot) -> evaluate -> best -> log line


class EpochSeededSampler:
    """Random permutation drawn from ``seed + epoch`` (the single-process twin of DistributedSampler), so a resumed
    run sees the same order."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


@dataclass
class TrainingState:
    """What checkpoint.pth holds besides the run's args (``model`` without its DDP wrapper)."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    per_iter: bool  # the schedule steps every iteration (one-cycle), else every epoch
    scaler: Optional[torch.amp.GradScaler] = None  # enabled for float16 --amp; its state is part of checkpoint.pth
    ema: Any = None  # util.ema.ModelEma


@dataclass
class RunRecord:
    """Where a training run's results go; ``output_dir`` None: the console only."""
    output_dir: Optional[Path]
    best: run_folder.BestMetricHolder
    n_parameters: int
    writer: Any = None  # TensorBoard SummaryWriter (main process)


Evaluate = Callable[[nn.Module], dict]  # a model's test stats (``evaluate_model`` with the run's values)


def build_loaders(args: Any, dataset_train: Any, dataset_val: Any) -> tuple[Optional[DataLoader], DataLoader]:
    """Data loaders; the training order is a function of (seed, epoch) so a resumed run sees the same order."""
    loader_kw = dict(collate_fn=collate_fn, num_workers=args.num_workers, persistent_workers=False)
    train_loader = None
    if dataset_train is not None:
        sampler = (DistributedSampler(dataset_train, shuffle=True, seed=args.seed) if args.distributed
                   else EpochSeededSampler(len(dataset_train), args.seed))
        batch_sampler = BatchSampler(sampler, args.batch_size, drop_last=True)
        if len(batch_sampler) == 0:  # incomplete batches are dropped, as in the reference: nothing would train
            raise ConfigError(
                f"the training split has {len(dataset_train)} images, {len(sampler)} per process, fewer than "
                f"batch_size={args.batch_size}: no training step would run. Lower batch_size (--options "
                f"batch_size=N), use fewer processes, or add training images")
        train_loader = DataLoader(dataset_train, batch_sampler=batch_sampler, **loader_kw)
    val_sampler = (DistributedSampler(dataset_val, shuffle=False) if args.distributed
                   else SequentialSampler(dataset_val))
    val_loader = DataLoader(dataset_val, args.batch_size, sampler=val_sampler, drop_last=False, **loader_kw)
    return train_loader, val_loader


def wrap_distributed(model: nn.Module, args: Any, device: torch.device) -> nn.Module:
    """DDP around ``model`` when distributed, else ``model``."""
    if not args.distributed:
        return model
    find_unused = args.find_unused_params
    if not find_unused and args.dec_layers - args.num_box_decoder_layers < 2:
        # with one keypoint layer, pose_hw_embed's output feeds no later layer: it gets no gradient at all
        log.info("one box+keypoint decoder layer: enabling DDP's find_unused_parameters")
        find_unused = True
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[args.gpu] if device.type == "cuda" else None, find_unused_parameters=find_unused)


def load_starting_point(args: Any, state: TrainingState, metadata: KeypointMetadata,
                        record: RunRecord) -> Optional[dict]:
    """Load the checkpoint ``util.run_folder.choose_checkpoint`` picks; returns it when the training state was
    restored (a resumed training run: optimiser, schedule, scaler, next epoch, best so far, random streams)."""
    path, how = run_folder.choose_checkpoint(record.output_dir, resume=args.resume,
                                             pretrain=args.pretrain_model_path, evaluating=args.eval,
                                             trust=args.trust_checkpoint, logger=log)
    if path is None:
        return None
    ckpt = read_checkpoint(path, trust=args.trust_checkpoint)
    if how == "pretrain":
        load_pretrained(state.model, ckpt, metadata, legacy_layout=default_metadata_for_num_keypoints,
                        ignore_keywords=args.finetune_ignore, init_from=args.adapt_keypoint_init, source=str(path))
        if state.ema is not None:
            state.ema.set(state.model)
        log.info(f"loaded weights from {path} (--pretrain_model_path)")
        return None
    args.resume = str(path)
    load_model_weights(state.model, ckpt["model"], strict=True, source=str(path))
    if state.ema is not None:
        # the EMA weights when the checkpoint has them (keys with or without 'module.'), else the model's
        if "ema_model" in ckpt:
            load_model_weights(state.ema.module, ckpt["ema_model"], strict=True, source=f"{path} (ema_model)")
        else:
            state.ema.set(state.model)
    resumed = not args.eval and all(k in ckpt for k in ("optimizer", "lr_scheduler", "epoch"))
    if resumed:
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        restore_scaler_state(state.scaler, ckpt)
        args.start_epoch = ckpt["epoch"] + 1
        run_folder.load_best_metric(record.best, path.parent, log)
        restore_rng_state(ckpt, args.rank, args.world_size)
    log.info(f"{'evaluating' if args.eval else 'resumed from'} {path}"
             + (f" (next epoch {args.start_epoch})" if resumed else ""))
    return ckpt if resumed else None


def save_epoch_checkpoints(args: Any, state: TrainingState, output_dir: Optional[Path], epoch: int,
                           train_stats: dict, seconds: float) -> None:
    """checkpoint.pth, then the epoch's snapshot; both carry the training stats so that a run killed before the
    epoch's log line can write it when resumed."""
    if output_dir is None:
        return
    extra = {"train_stats": {k: float(v) for k, v in train_stats.items()}, "epoch_seconds": float(seconds)}
    snapshot = run_folder.snapshot_path(output_dir, epoch, args.lr_drop, args.save_checkpoint_interval)
    for path in [output_dir / "checkpoint.pth"] + ([snapshot] if snapshot is not None else []):
        checkpoint_io.save_checkpoint(path, state.model, state.optimizer, state.lr_scheduler, epoch, args,
                        ema_model=state.ema.module if state.ema is not None else None, extra=extra,
                        scaler=state.scaler)


def finish_epoch(args: Any, state: TrainingState, record: RunRecord, evaluate: Evaluate, epoch: int,
                 train_stats: dict, started: float) -> None:
    """Evaluate the epoch's model (and EMA); best checkpoints per kind when their AP improves; the log line and
    TensorBoard scalars. ``started``: the epoch's start time (``time.time()``)."""
    kinds = [("regular", state.model, evaluate(state.model))]
    if state.ema is not None:
        kinds.append(("ema", state.ema.module, evaluate(state.ema.module)))
    log_stats = {**{f"train_{k}": v for k, v in train_stats.items()},
                 **{f"test_{k}": v for k, v in kinds[0][2].items()}}
    if state.ema is not None:
        log_stats.update({f"ema_test_{k}": v for k, v in kinds[1][2].items()})
    out = record.output_dir
    for kind, net, stats in kinds:
        if record.best.update(float(stats[run_folder.AP_KEY][0]), epoch, is_ema=kind == "ema") and out is not None:
            checkpoint_io.save_checkpoint(out / f"checkpoint_best_{kind}.pth", net, state.optimizer,
                                          state.lr_scheduler, epoch, args, with_rng=False)
    if out is not None and is_main_process():
        run_folder.save_best_metric(record.best, out)
    log_stats.update(record.best.summary())
    log_stats.update(epoch=epoch, n_parameters=record.n_parameters, now_time=str(datetime.datetime.now()),
                     epoch_time=str(datetime.timedelta(seconds=int(time.time() - started))))
    if out is not None and is_main_process():
        run_folder.write_log_line(out, log_stats, epoch, record.writer)


def write_owed_outputs(args: Any, state: TrainingState, record: RunRecord, evaluate: Evaluate, ckpt: dict) -> None:
    """A run killed after checkpoint.pth but before the epoch's snapshot or log line: write them now."""
    out = record.output_dir
    own = out / "checkpoint.pth" if out is not None else None
    if own is None or Path(args.resume).resolve() != own.resolve():
        return
    epoch = ckpt["epoch"]
    snapshot = run_folder.snapshot_path(out, epoch, args.lr_drop, args.save_checkpoint_interval)
    if snapshot is not None and not snapshot.exists() and is_main_process():
        log.info(f"writing {snapshot}, which the stopped run owed (a copy of {own})")
        run_folder.copy_checkpoint(own, snapshot)
    logged = broadcast_object(is_main_process() and any(e.get("epoch") == epoch
                                                        for e in run_folder.read_log(out / "log.txt")))
    if not logged and "train_stats" in ckpt:
        log.info(f"log.txt lacks epoch {epoch} (the run stopped after its checkpoint): evaluating it now")
        finish_epoch(args, state, record, evaluate, epoch, ckpt["train_stats"],
                     time.time() - float(ckpt.get("epoch_seconds", 0.0)))


def train(args: Any, model: nn.Module, criterion: nn.Module, data_loader: Any, device: torch.device,
          state: TrainingState, record: RunRecord, evaluate: Evaluate, *, resumed: Optional[dict] = None,
          log_fn: Callable[[str], None] = print) -> None:
    """Epochs ``args.start_epoch .. args.epochs - 1`` of ``model`` (the DDP wrapper when distributed); ``resumed``:
    the checkpoint a killed run is resumed from (its owed snapshot and log line are written first)."""
    if resumed is not None:
        write_owed_outputs(args, state, record, evaluate, resumed)
    if args.start_epoch >= args.epochs:
        log.warning(f"nothing to train: the next epoch is {args.start_epoch} and epochs={args.epochs} (raise "
                    "epochs, e.g. --options epochs=N, to train further)")
    log.info("Start training")
    start = time.time()
    amp_dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
    for epoch in range(args.start_epoch, args.epochs):
        epoch_start = time.time()
        data_loader.batch_sampler.sampler.set_epoch(epoch)
        step = StepOptions(amp=args.amp, amp_dtype=amp_dtype, scaler=state.scaler,
                           lr_scheduler=state.lr_scheduler if state.per_iter else None,
                           ema=state.ema if epoch >= args.ema_epoch else None, max_iters=15 if args.debug else None)
        train_stats = train_one_epoch(model, criterion, data_loader, state.optimizer, device, epoch,
                                      args.clip_max_norm, step=step, log_fn=log_fn)
        if not state.per_iter:
            state.lr_scheduler.step()
        save_epoch_checkpoints(args, state, record.output_dir, epoch, train_stats, time.time() - epoch_start)
        finish_epoch(args, state, record, evaluate, epoch, train_stats, epoch_start)
    log.info(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")


@torch.no_grad()
def evaluate(model: nn.Module, postprocessors: Mapping[str, Callable], data_loader: Iterable, evaluator: Any,
             device: torch.device, *, amp: bool = False, amp_dtype: torch.dtype = torch.float16,
             max_iters: Optional[int] = None, print_freq: int = 10,
             log_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Model-only evaluation: predictions of every image go to ``evaluator`` (a ``DatasetEvaluator``); returns its
    stats."""
    model.eval()
    evaluator.reset()
    meters = MetricLogger()
    for step, (samples, targets) in enumerate(meters.log_every(data_loader, print_freq, "Test:", log=log_fn)):
        samples = samples.to(device)
        with _autocast(device, amp, amp_dtype):
            outputs = model(samples)
        orig_sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
        results = postprocessors["pose"](outputs, orig_sizes)
        evaluator.process([int(t["image_id"]) for t in targets], results)
        if max_iters is not None and step + 1 >= max_iters:
            break
    return evaluator.evaluate()


@dataclass(frozen=True)
class EvalOptions:
    """How ``evaluate_model`` evaluates (plain values taken from the run's config and environment)."""
    interactive: bool = False  # NoC and AP after k clicks instead of the model-only AP
    amp: bool = False
    amp_dtype: torch.dtype = torch.float16
    max_iters: Optional[int] = None  # stop after this many batches (--debug: 15)
    max_clicks: int = 0  # interactive: click rounds 1..max_clicks after round 0
    thresholds: tuple[float, ...] = ()  # interactive: NoC thresholds (per-image AP in (0, 1])
    report_round: Optional[int] = None  # interactive: the round the full evaluator sees (default: max_clicks)
    max_select: Optional[int] = None  # interactive: the post-process keeps at most this many detections
    click_list_paths: Mapping[float, Any] = field(default_factory=dict)  # interactive: extra {threshold: path} lists


def click_round_evaluator(per_image_ap: Any, scorer: Optional[Callable[[], Any]] = None) -> Callable[[], Any]:
    """The factory of one click round's evaluator: per-image AP (NoC) and dataset-level keypoint stats.

    Default: a ``DatasetKeypointAP``, both from one matching pass of ``per_image_ap`` (a ``PerImageKeypointAP`` on
    the dataset's ground truth and OKS sigmas). ``scorer`` (CrowdPose: its own evaluator, best sharing one loaded
    ground truth) gives the dataset-level stats instead, beside the per-image AP of ``per_image_ap``.
    """
    if scorer is None:
        return lambda: DatasetKeypointAP(per_image_ap)
    return lambda: EvaluatorGroup([PerImageAPEvaluator(per_image_ap), scorer()])


@torch.no_grad()
def evaluate_interactive(model: nn.Module, postprocess: Callable, data_loader: Iterable, device: torch.device,
                         options: EvalOptions, *, round_evaluator: Callable[[], Any], report_evaluator: Any = None,
                         log_fn: Callable[[str], None] = print) -> InteractiveResults:
    """Simulated interactive annotation of the whole val set in one pass; returns what it measured.

    Per batch: one model pass (``model(samples, return_state=True)``), then ``options.max_clicks`` oracle click
    rounds on the cached state (``model.click_rounds(state, outputs, targets, max_clicks)``, rounds 0..max_clicks).
    Every round has its evaluator (a ``DatasetEvaluator`` from ``round_evaluator``, see ``click_round_evaluator``),
    fed that round's post-processed predictions; it gives the per-image AP (for NoC at ``options.thresholds``) and
    the dataset-level keypoint AP after k clicks. ``report_evaluator`` (box and keypoint AP, result files) sees
    round ``options.report_round`` (default ``max_clicks``). Clicks never change earlier rounds, so one pass gives
    what the reference computes in 3 + 17 runs; any batch size, any number of processes. Writing reports is the
    caller's job (``datasets.evaluation.report``).
    """
    max_clicks, max_iters = options.max_clicks, options.max_iters
    thresholds = check_thresholds(options.thresholds)
    report_round = max_clicks if options.report_round is None else min(int(options.report_round), max_clicks)
    round_evaluators = [round_evaluator() for _ in range(max_clicks + 1)]
    fed = list(enumerate(round_evaluators))  # (round, evaluator) pairs
    if report_evaluator is not None:
        fed.append((report_round, report_evaluator))
    for _, evaluator in fed:
        evaluator.reset()
    model.eval()
    net = model.module if hasattr(model, "module") else model
    meters = MetricLogger()
    for step, (samples, targets) in enumerate(meters.log_every(data_loader, 10, "Interactive:", log=log_fn)):
        targets = targets_to(targets, device)
        outputs, state = net(samples.to(device), return_state=True)
        rounds = net.click_rounds(state, outputs, targets, max_clicks)
        if len(rounds) != max_clicks + 1:
            raise RuntimeError(f"click_rounds returned {len(rounds)} rounds for max_clicks={max_clicks}; expected "
                               f"{max_clicks + 1} (round 0 = before any click)")
        orig_sizes = torch.stack([t["orig_size"] for t in targets])
        image_ids = [int(t["image_id"]) for t in targets]
        results = [postprocess(round_outputs, orig_sizes) for round_outputs in rounds]
        for k, evaluator in fed:
            evaluator.process(image_ids, results[k])
        if max_iters is not None and step + 1 >= max_iters:
            break
    per_round = [evaluator.evaluate() for evaluator in round_evaluators]
    image_ids, ap_curves = _ap_curves([stats[PER_IMAGE_AP_KEY] for stats in per_round])
    return InteractiveResults.from_curves(
        image_ids, ap_curves, thresholds, max_clicks,
        round_stats=[list(stats[KEYPOINT_STATS_KEY]) for stats in per_round],
        stat_names=tuple(round_evaluators[0].keypoint_stat_names), report_round=report_round,
        report_stats=report_evaluator.evaluate() if report_evaluator is not None else {})


def _ap_curves(per_round_ap: Sequence[Mapping[Any, float]]) -> tuple[list, np.ndarray]:
    """(image ids sorted, (N, rounds) AP of each image after every round) from each round's {image_id: AP}."""
    image_ids = sorted(per_round_ap[0])
    curves = np.array([[round_ap[i] for round_ap in per_round_ap] for i in image_ids], dtype=np.float64)
    return image_ids, curves.reshape(len(image_ids), len(per_round_ap))


def evaluate_model(net: nn.Module, postprocessors: Mapping[str, Any], dataset: Any, data_loader: Iterable,
                   device: torch.device, options: EvalOptions = EvalOptions(), *, output_dir: Optional[Path] = None,
                   log_fn: Callable[[str], None] = print, tb_writer: Any = None) -> dict:
    """A model's test stats (main.py's one evaluation call); the random streams are left as they were.

    Model-only: box and keypoint AP of ``dataset`` (``evaluate``), results files in ``output_dir``.
    ``options.interactive``: NoC and AP after 0..max_clicks clicks in one pass (``evaluate_interactive``), the full
    stats of the report round, then the report files in ``output_dir`` and, with ``tb_writer``, TensorBoard
    scalars. Returns the stats for log.txt.
    """
    with preserve_rng():
        if options.interactive:
            return _evaluate_interactive_model(net, postprocessors["pose"], dataset, data_loader, device, options,
                                               output_dir=output_dir, log_fn=log_fn, tb_writer=tb_writer)
        evaluator = build_evaluator(dataset, output_dir=output_dir)
        return evaluate(net, postprocessors, data_loader, evaluator, device, amp=options.amp,
                        amp_dtype=options.amp_dtype, max_iters=options.max_iters, log_fn=log_fn)


def _evaluate_interactive_model(net: nn.Module, postprocess: Any, dataset: Any, data_loader: Iterable,
                                device: torch.device, options: EvalOptions, *, output_dir: Optional[Path],
                                log_fn: Callable[[str], None], tb_writer: Any) -> dict:
    """``evaluate_interactive`` wired to ``dataset``'s scorer, with its ground truth read once for every round."""
    if options.max_select is not None and postprocess.num_select > options.max_select:
        postprocess = copy.copy(postprocess)  # the refinement keeps num_group_refine people per class
        postprocess.num_select = options.max_select
    report_evaluator = build_evaluator(dataset, output_dir=output_dir)
    ground_truth = report_evaluator.ground_truth
    scorer = None if ground_truth.backend == "coco" else (
        lambda: build_evaluator(dataset, ground_truth=ground_truth, iou_types=("keypoints",), log=None))
    results = evaluate_interactive(net, postprocess, data_loader, device, options,
                                   round_evaluator=click_round_evaluator(ground_truth.per_image_ap(), scorer),
                                   report_evaluator=report_evaluator, log_fn=log_fn)
    if output_dir is not None and is_main_process():
        write_interactive_report(output_dir, results, tb_writer=tb_writer,
                                 click_list_paths=dict(options.click_list_paths), printer=log_fn)
    return results.log_stats()
