"""Click-Pose: train or evaluate from a config file.

    python main.py -c config/clickpose.cfg.py --output_dir logs/run --options batch_size=4 use_ema=TRUE
    torchrun --nproc-per-node=4 main.py -c config/clickpose.cfg.py ...
    python -m torch.distributed.launch --nproc_per_node=4 main.py -c config/clickpose.cfg.py ...

This is the only module that reads environment variables (the reference's CLICKPOSE_* variables, NoC_thr, and the
launchers' WORLD_SIZE/RANK/LOCAL_RANK/SLURM_*); everything below receives plain arguments.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import random
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from util.config import Config, ConfigError, DictAction, apply_config_to_args, check_ranges

# Dataset root per --dataset_file, from the reference's environment variables.
DATASET_ROOT_ENV = {
    "coco": "CLICKPOSE_COCO_PATH",
    "crowdpose": "CLICKPOSE_CrowdPose_PATH",
    "humanart": "CLICKPOSE_HumanArt_PATH",
    "ochuman": "CLICKPOSE_OCHuman_PATH",
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Click-Pose training and evaluation", add_help=True)
    parser.add_argument("--config_file", "-c", type=str, required=True, help="Python config file")
    parser.add_argument("--options", nargs="+", action=DictAction,
                        help="override config keys: key=value (ints, floats, true/false, none, a,b lists, [a,b], "
                             "(a,b), 'quoted strings', dotted.keys)")
    # dataset
    parser.add_argument("--dataset_file", default="coco", help="coco | crowdpose | humanart | ochuman | custom")
    parser.add_argument("--coco_path", type=str, default=None,
                        help="dataset root (default: the CLICKPOSE_<DATASET>_PATH environment variable)")
    parser.add_argument("--remove_difficult", action="store_true", help="unused (kept for compatibility)")
    parser.add_argument("--fix_size", action="store_true", help="unused (kept for compatibility)")
    # training
    parser.add_argument("--output_dir", default="", help="path where to save, empty for no saving")
    parser.add_argument("--note", default="", help="add some notes to the experiment")
    parser.add_argument("--device", default="cuda", help="device for training / testing (cuda falls back to cpu)")
    parser.add_argument("--seed", default=42, type=int)
    parser.add_argument("--resume", default="", help="resume from checkpoint")
    parser.add_argument("--pretrain_model_path", help="load model weights from another checkpoint")
    parser.add_argument("--finetune_ignore", type=str, nargs="+", help="drop pretrained keys containing any of these")
    parser.add_argument("--start_epoch", default=0, type=int, metavar="N", help="start epoch")
    parser.add_argument("--eval", action="store_true", help="evaluate only")
    parser.add_argument("--num_workers", default=10, type=int)
    parser.add_argument("--test", action="store_true", help="unused (kept for compatibility)")
    parser.add_argument("--debug", action="store_true",
                        help="stop each epoch after 15 iterations; show tracebacks of expected errors")
    parser.add_argument("--find_unused_params", action="store_true")
    parser.add_argument("--save_results", action="store_true", help="unused (kept for compatibility)")
    parser.add_argument("--save_log", action="store_true", help="also send metric logs to the logger")
    # distributed
    parser.add_argument("--world_size", default=1, type=int, help="number of distributed processes")
    parser.add_argument("--dist_url", default="env://", help="url used to set up distributed training")
    parser.add_argument("--rank", default=0, type=int, help="node rank (multi-node launch.py)")
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        help="set by torch.distributed.launch (both spellings)")
    parser.add_argument("--dist_timeout", default=600.0, type=float, metavar="SECONDS",
                        help="a process waits this long for a rank that died or hangs, then stops with an error")
    # trust switches: off by default (README, 'Loading and resuming')
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="load checkpoints that hold Python objects beyond tensors with full unpickling, which "
                             "can run code: only for files you trust")
    parser.add_argument("--trust_image_sizes", action="store_true",
                        help="use images as read when their size differs from the annotation file's width/height")
    parser.add_argument("--amp", action="store_true", help="train with mixed precision")
    parser.add_argument("--amp_dtype", default="float16", choices=["float16", "bfloat16"],
                        help="autocast dtype with --amp")
    return parser


def load_config(args: argparse.Namespace) -> Config:
    """Load ``args.config_file`` and apply ``--options`` (validated: unknown keys, wrong types and values out of
    range fail)."""
    cfg = Config.fromfile(args.config_file)
    if args.options:
        cfg.merge_from_dict(args.options)
    check_ranges(cfg.to_dict())
    for flag, low in (("start_epoch", 0), ("num_workers", 0), ("dist_timeout", 1)):
        if getattr(args, flag) < low:
            raise ConfigError(f"--{flag} must be >= {low}, got {getattr(args, flag)}")
    return cfg


# Files a run writes in output_dir through util.files.atomic_write (stale temporaries are theirs).
RUN_FILES = ("checkpoint", "best_metric.json", "log.txt", "config_")


def tidy_output_dir(output_dir: Path, logger) -> None:
    """Remove temporary files of a killed save and a log line cut short by a kill."""
    from util.files import remove_stale_temp_files, repair_line_log

    for path in remove_stale_temp_files(output_dir, RUN_FILES):
        logger.info(f"removed {path}, left by a save that was stopped")
    if repair_line_log(output_dir / "log.txt"):
        logger.warning(f"{output_dir / 'log.txt'} ended in a partial line (a stopped run); it was removed")


def git_sha() -> str:
    here = Path(__file__).resolve().parent

    def run(*cmd: str) -> str:
        return subprocess.check_output(cmd, cwd=here, stderr=subprocess.DEVNULL).decode().strip()

    try:
        sha = run("git", "rev-parse", "HEAD")
        dirty = "has uncommitted changes" if run("git", "diff-index", "HEAD", "--") else "clean"
        branch = run("git", "rev-parse", "--abbrev-ref", "HEAD")
        return f"sha: {sha}, status: {dirty}, branch: {branch}"
    except (OSError, subprocess.CalledProcessError):
        return "sha: N/A (not a git checkout)"


def resolve_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Map the reference's environment variables onto ``args`` (the only place they are read)."""
    if not args.coco_path:
        var = DATASET_ROOT_ENV.get(args.dataset_file)
        args.coco_path = environ.get(var) if var else None
    args.noc_filter = environ.get("CLICKPOSE_NoC_Test") == "TRUE"
    # Interactive-evaluation compatibility: the reference took these from the environment, one run per value.
    if environ.get("NoC_thr"):
        args.noc_threshold_env = float(environ["NoC_thr"])
    if environ.get("CLICKPOSE_Click_Number"):
        args.click_number_env = int(environ["CLICKPOSE_Click_Number"])
        if args.click_number_env < 1:
            raise ConfigError("CLICKPOSE_Click_Number must be >= 1")
    args.noc_save_path = environ.get("CLICKPOSE_SAVE_PATH")


def prepare(argv: Optional[Sequence[str]] = None, environ: Optional[Mapping[str, str]] = None):
    """Parse arguments, start distributed mode, load the config, write the run's config files and logger.

    Returns ``(args, cfg, logger)``; ``args`` carries every config key as an attribute.
    """
    from util.distributed import init_distributed_mode
    from util.files import atomic_write_text
    from util.logger import setup_logger

    environ = os.environ if environ is None else environ
    args = get_args_parser().parse_args(argv)
    init_distributed_mode(args, environ)
    cfg = load_config(args)
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        if args.rank == 0:
            atomic_write_text(Path(args.output_dir) / "config_cfg.py", cfg.text)
            atomic_write_text(Path(args.output_dir) / "config_args_raw.json", json.dumps(vars(args), indent=2))
    apply_config_to_args(cfg, args)
    resolve_environment(args, environ)
    logger = setup_logger(output_dir=args.output_dir or None, distributed_rank=args.rank, color=True,
                          name="clickpose")
    if args.output_dir and args.rank == 0:
        tidy_output_dir(Path(args.output_dir), logger)
    logger.info(git_sha())
    logger.info("Command: " + " ".join(shlex.quote(a) for a in sys.argv))
    if args.output_dir and args.rank == 0:
        atomic_write_text(Path(args.output_dir) / "config_args_all.json",
                          json.dumps(vars(args), indent=2, default=str))
        logger.info(f"Full config saved to {Path(args.output_dir) / 'config_args_all.json'}")
    logger.info(f"world size: {args.world_size}, rank: {args.rank}, local rank: {args.local_rank}")
    logger.debug("args: " + str(args))  # the full namespace goes to info.txt only
    return args, cfg, logger


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(requested: str, logger):
    import torch

    if requested.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"--device {requested} requested but no CUDA device is visible; running on the CPU")
        return torch.device("cpu")
    return torch.device(requested)


def build_loaders(args, dataset_train, dataset_val):
    """Data loaders; the training order is a function of (seed, epoch) so a resumed run sees the same order."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

    from util.misc import collate_fn

    loader_kw = dict(collate_fn=collate_fn, num_workers=args.num_workers, persistent_workers=False)
    train_loader = None
    if dataset_train is not None:
        if args.distributed:
            sampler = DistributedSampler(dataset_train, shuffle=True, seed=args.seed)
        else:
            sampler = EpochSeededSampler(len(dataset_train), args.seed)
        batch_sampler = torch.utils.data.BatchSampler(sampler, args.batch_size, drop_last=True)
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


class EpochSeededSampler:
    """Random permutation drawn from ``seed + epoch`` (the single-process twin of DistributedSampler)."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


@dataclass
class Run:
    """What one run builds once; the steps below read it (``model`` is the DDP wrapper when distributed)."""
    args: argparse.Namespace
    logger: logging.Logger
    device: Any
    model: Any
    model_without_ddp: Any
    criterion: Any
    postprocessors: dict
    ema: Any
    dataset_val: Any
    train_loader: Any
    val_loader: Any
    optimizer: Any
    lr_scheduler: Any
    per_iter: bool
    n_parameters: int
    best: Any
    output_dir: Optional[Path] = None
    writer: Any = None
    metadata: Any = None  # the run's keypoint layout (util.keypoint_metadata.KeypointMetadata)
    scaler: Any = None  # torch.amp.GradScaler, enabled for float16 --amp; its state is part of checkpoint.pth
    max_clicks: int = 0  # the interactive evaluation's click cap: max_clicks, or the layout's keypoint count

    @property
    def log_fn(self):
        return self.logger.info if self.args.save_log else print

    @property
    def max_iters(self) -> Optional[int]:
        return 15 if self.args.debug else None

    @property
    def amp_dtype(self):
        import torch

        return torch.bfloat16 if self.args.amp_dtype == "bfloat16" else torch.float16


def wrap_distributed(model, args, device, logger):
    """DDP around ``model`` when distributed, else ``model``."""
    import torch

    if not args.distributed:
        return model
    find_unused = args.find_unused_params
    if not find_unused and args.dec_layers - args.num_box_decoder_layers < 2:
        # with one keypoint layer, pose_hw_embed's output feeds no later layer: it gets no gradient at all
        logger.info("one box+keypoint decoder layer: enabling DDP's find_unused_parameters")
        find_unused = True
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[args.gpu] if device.type == "cuda" else None, find_unused_parameters=find_unused)


def build_run(args, logger) -> Run:
    """Model, criterion, EMA, data, optimizer and schedule, in the order that fixes the random streams."""
    import torch

    from datasets import build_dataset, get_metadata
    from models import build_model
    from util.ema import ModelEma
    from util.noc import resolve_max_clicks
    from util.training import BestMetricHolder, build_lr_scheduler, build_optimizer

    device = resolve_device(args.device, logger)
    seed_everything(args.seed + args.rank)
    metadata = get_metadata(args)  # the keypoint layout, resolved once
    max_clicks = resolve_max_clicks(args.max_clicks, metadata.num_keypoints)  # checked before anything is built
    model, criterion, postprocessors = build_model(args, metadata)
    model.to(device)
    criterion.to(device)
    ema = ModelEma(model, args.ema_decay, unique_params=args.ema_unique_params) if args.use_ema else None
    wrapped = wrap_distributed(model, args, device, logger)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f"number of trainable params: {n_parameters}")
    dataset_val = build_dataset("val", args)
    dataset_train = None if args.eval else build_dataset("train", args)
    train_loader, val_loader = build_loaders(args, dataset_train, dataset_val)
    optimizer = build_optimizer(args, model)
    lr_scheduler, per_iter = build_lr_scheduler(args, optimizer, len(train_loader) if train_loader else 1)
    # built here, not in train(), so that a resume restores its loss scale with the optimizer's state
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and args.amp_dtype == "float16")
    return Run(args, logger, device, wrapped, model, criterion, postprocessors, ema, dataset_val, train_loader,
               val_loader, optimizer, lr_scheduler, per_iter, n_parameters, BestMetricHolder(use_ema=args.use_ema),
               Path(args.output_dir) if args.output_dir else None, metadata=metadata, scaler=scaler,
               max_clicks=max_clicks)


# ---------------------------------------------------------------------------------------------------------------
# Where a run starts: explicit files win; output_dir/checkpoint.pth resumes a killed run


def choose_checkpoint(args, output_dir: Optional[Path], logger) -> tuple[Optional[Path], str]:
    """The file to start from and how: 'resume' (weights, then the training state unless --eval) or 'pretrain'
    (weights only). An explicit --resume or --pretrain_model_path wins over output_dir/checkpoint.pth, except that
    training with --pretrain_model_path continues a checkpoint.pth that started from the same file; one that
    started elsewhere is an error (either choice could lose the user's work)."""
    from util.checkpoint import CheckpointError, read_checkpoint

    auto = output_dir / "checkpoint.pth" if output_dir is not None else None
    auto = auto if auto is not None and auto.is_file() else None
    if args.resume:
        if auto is not None and not args.eval and Path(args.resume).resolve() != auto.resolve():
            logger.warning(f"--resume {args.resume}: {auto} is not resumed, and this run's epochs replace it")
        return Path(args.resume), "resume"
    if args.pretrain_model_path:
        if auto is None or args.eval:
            return Path(args.pretrain_model_path), "pretrain"
        started = getattr(read_checkpoint(auto, trust=args.trust_checkpoint).get("args"), "pretrain_model_path", None)
        if started and Path(started).resolve() == Path(args.pretrain_model_path).resolve():
            logger.info(f"{auto} continues a run that started from {started}: resuming it")
            return auto, "resume"
        raise CheckpointError(
            f"--output_dir {output_dir} already holds checkpoint.pth of a run that started from "
            f"{started or 'no pretrained weights'}, not from --pretrain_model_path {args.pretrain_model_path}. "
            f"To continue that run, pass --resume {auto}; to train from {args.pretrain_model_path}, choose a new "
            "--output_dir (or move that checkpoint.pth away)")
    return (auto, "resume") if auto is not None else (None, "")


def load_starting_point(run: Run) -> Optional[dict]:
    """Load the chosen checkpoint; returns it when the training state was restored (a resumed training run)."""
    from util.adaptation import load_pretrained
    from util.checkpoint import load_model_weights, read_checkpoint

    args, logger = run.args, run.logger
    path, how = choose_checkpoint(args, run.output_dir, logger)
    if path is None:
        return None
    ckpt = read_checkpoint(path, trust=args.trust_checkpoint)
    if how == "pretrain":
        load_pretrained(run.model_without_ddp, ckpt, run.metadata, ignore_keywords=args.finetune_ignore,
                        init_from=args.adapt_keypoint_init, source=str(path))
        if run.ema is not None:
            run.ema.set(run.model_without_ddp)
        logger.info(f"loaded weights from {path} (--pretrain_model_path)")
        return None
    args.resume = str(path)
    load_model_weights(run.model_without_ddp, ckpt["model"], strict=True, source=str(path))
    if run.ema is not None:
        # the EMA weights when the checkpoint has them (keys with or without 'module.'), else the model's
        if "ema_model" in ckpt:
            load_model_weights(run.ema.module, ckpt["ema_model"], strict=True, source=f"{path} (ema_model)")
        else:
            run.ema.set(run.model_without_ddp)
    resumed = not args.eval and all(k in ckpt for k in ("optimizer", "lr_scheduler", "epoch"))
    if resumed:
        restore_training_state(run, ckpt, path.parent)
    logger.info(f"{'evaluating' if args.eval else 'resumed from'} {path}"
                + (f" (next epoch {args.start_epoch})" if resumed else ""))
    return ckpt if resumed else None


def restore_training_state(run: Run, ckpt: dict, folder: Path) -> None:
    from util.checkpoint import restore_rng_state, restore_scaler_state

    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    restore_scaler_state(run.scaler, ckpt)
    run.args.start_epoch = ckpt["epoch"] + 1
    load_best_metric(run.best, folder, run.logger)
    restore_rng_state(ckpt, run.args.rank, run.args.world_size)


def load_best_metric(best, folder: Path, logger) -> None:
    """The best AP so far from ``best_metric.json``; rebuilt from ``log.txt`` when that file is missing or
    unreadable (so a damaged side file never blocks a resume, and the best checkpoints stay the best)."""
    path = folder / "best_metric.json"
    if path.is_file():
        try:
            best.load_state_dict(json.loads(path.read_text()))
            return
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning(f"{path} is unreadable ({type(exc).__name__}: {exc}); rebuilding the best metric so far "
                           f"from {folder / 'log.txt'}")
    for entry in read_log(folder / "log.txt"):
        if "epoch" in entry and "test_coco_eval_keypoints_detr" in entry:
            best.update(float(entry["test_coco_eval_keypoints_detr"][0]), entry["epoch"])
            if "ema_test_coco_eval_keypoints_detr" in entry:
                best.update(float(entry["ema_test_coco_eval_keypoints_detr"][0]), entry["epoch"], is_ema=True)


def read_log(path: Path) -> list[dict]:
    """The JSON entries of a ``log.txt`` (lines that do not parse are skipped)."""
    entries = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def evaluate_model(run: Run, net) -> dict:
    """Model-only AP, or the interactive evaluation; the random streams are left as they were."""
    import engine
    from datasets import build_evaluator
    from util.checkpoint import preserve_rng

    with preserve_rng():
        if run.args.feedback_loop_NOC_test or run.args.feedback_inference:
            return run_interactive_evaluation(run, net)
        evaluator = build_evaluator(run.dataset_val, run.args, run.output_dir)
        return engine.evaluate(net, run.postprocessors, run.val_loader, evaluator, run.device, amp=run.args.amp,
                               amp_dtype=run.amp_dtype, max_iters=run.max_iters, log_fn=run.log_fn)


def run_interactive_evaluation(run: Run, net) -> dict:
    """NoC and AP after k clicks in one pass (``engine.evaluate_interactive``), then the report files and, when the
    run has a TensorBoard writer, its scalars (``util.noc_report``). Returns the stats for log.txt."""
    import copy

    import engine
    from datasets import build_evaluator
    from util.distributed import is_main_process
    from util.noc_report import write_interactive_report

    args, output_dir, dataset = run.args, run.output_dir, run.dataset_val
    postprocess = run.postprocessors["bbox"]
    refined = args.num_group_refine * args.num_classes
    if postprocess.num_select > refined:  # the reference needs num_select=20 here (it crashes otherwise)
        postprocess = copy.copy(postprocess)
        postprocess.num_select = refined
    threshold_env = getattr(args, "noc_threshold_env", None)  # NoC_thr: set by resolve_environment when present
    thresholds = list(args.noc_thresholds) + ([threshold_env] if threshold_env is not None else [])
    report_evaluator = build_evaluator(dataset, args, output_dir)
    results = engine.evaluate_interactive(
        net, postprocess, run.val_loader, report_evaluator.per_image_ap(), run.device,
        max_clicks=run.max_clicks, thresholds=thresholds, report_round=getattr(args, "click_number_env", None),
        report_evaluator=report_evaluator, round_evaluator_factory=None if report_evaluator.backend == "coco" else
        lambda: build_evaluator(dataset, args, iou_types=("keypoints",), log=None), log_fn=run.log_fn)
    if output_dir is not None and is_main_process():
        compat = {float(threshold_env): args.noc_save_path} if threshold_env is not None and args.noc_save_path else {}
        write_interactive_report(output_dir, results, tb_writer=run.writer, click_list_paths=compat,
                                 printer=run.log_fn)
    return results.log_stats()


def evaluate_only(run: Run) -> int:
    """--eval: the regular weights, as the reference (a best-EMA checkpoint holds the EMA weights as 'model')."""
    from util.distributed import is_main_process
    from util.files import append_line

    if run.args.feedback_loop_NOC_test or run.args.feedback_inference:
        open_tensorboard(run)  # the interactive metrics go to TensorBoard too
    try:
        stats = evaluate_model(run, run.model_without_ddp)
    finally:
        if run.writer is not None:
            run.writer.close()
    if run.output_dir is not None and is_main_process():
        append_line(run.output_dir / "log.txt", json.dumps({f"test_{k}": v for k, v in stats.items()}, default=float))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Training: per epoch, train -> checkpoint.pth (+ snapshot) -> evaluate -> best -> log line


def snapshot_path(run: Run, epoch: int) -> Optional[Path]:
    """``checkpointNNNN.pth`` when ``epoch`` ends an lr_drop period or a save_checkpoint_interval."""
    args = run.args
    if run.output_dir is None or ((epoch + 1) % args.lr_drop and (epoch + 1) % args.save_checkpoint_interval):
        return None
    return run.output_dir / f"checkpoint{epoch:04}.pth"


def save_epoch_checkpoints(run: Run, epoch: int, train_stats: dict, seconds: float) -> None:
    """checkpoint.pth, then the epoch's snapshot; both carry the training stats so that a run killed before the
    epoch's log line can write it when resumed."""
    from util.checkpoint import save_checkpoint

    if run.output_dir is None:
        return
    extra = {"train_stats": {k: float(v) for k, v in train_stats.items()}, "epoch_seconds": float(seconds)}
    snapshot = snapshot_path(run, epoch)
    for path in [run.output_dir / "checkpoint.pth"] + ([snapshot] if snapshot is not None else []):
        save_checkpoint(path, run.model_without_ddp, run.optimizer, run.lr_scheduler, epoch, run.args,
                        ema_model=run.ema.module if run.ema is not None else None, extra=extra, scaler=run.scaler)


def update_best(run: Run, epoch: int, kinds: list) -> None:
    """Best checkpoints per kind ('regular', 'ema') when their AP improves; best_metric.json written atomically."""
    from util.checkpoint import save_checkpoint
    from util.distributed import is_main_process
    from util.files import atomic_write_text

    for kind, net, stats in kinds:
        if run.best.update(float(stats["coco_eval_keypoints_detr"][0]), epoch, is_ema=kind == "ema") \
                and run.output_dir is not None:
            save_checkpoint(run.output_dir / f"checkpoint_best_{kind}.pth", net, run.optimizer, run.lr_scheduler,
                            epoch, run.args, with_rng=False)
    if run.output_dir is not None and is_main_process():
        # a small side file, so a resumed run keeps its best so far without rewriting checkpoint.pth
        atomic_write_text(run.output_dir / "best_metric.json", json.dumps(run.best.state_dict()))


def finish_epoch(run: Run, epoch: int, train_stats: dict, started: float) -> None:
    """Evaluate the epoch's model (and EMA), update the best, write the log line and TensorBoard scalars.
    ``started``: the epoch's start time (``time.time()``)."""
    import datetime
    import time

    test_stats = evaluate_model(run, run.model_without_ddp)
    log_stats = {**{f"train_{k}": v for k, v in train_stats.items()},
                 **{f"test_{k}": v for k, v in test_stats.items()}}
    kinds = [("regular", run.model_without_ddp, test_stats)]
    if run.ema is not None:
        ema_stats = evaluate_model(run, run.ema.module)
        log_stats.update({f"ema_test_{k}": v for k, v in ema_stats.items()})
        kinds.append(("ema", run.ema.module, ema_stats))
    update_best(run, epoch, kinds)
    log_stats.update(run.best.summary())
    log_stats.update(epoch=epoch, n_parameters=run.n_parameters, now_time=str(datetime.datetime.now()),
                     epoch_time=str(datetime.timedelta(seconds=int(time.time() - started))))
    write_epoch_log(run, epoch, log_stats)


def write_epoch_log(run: Run, epoch: int, log_stats: dict) -> None:
    from util.distributed import is_main_process
    from util.files import append_line

    if run.output_dir is None or not is_main_process():
        return
    append_line(run.output_dir / "log.txt", json.dumps(log_stats, default=float))
    if run.writer is not None:
        for key, value in log_stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                run.writer.add_scalar(key, value, epoch)
        run.writer.flush()


def write_owed_outputs(run: Run, ckpt: dict) -> None:
    """A run killed after checkpoint.pth but before the epoch's snapshot or log line: write them now."""
    import time

    from util.distributed import broadcast_object, is_main_process
    from util.files import atomic_write

    own = run.output_dir / "checkpoint.pth" if run.output_dir is not None else None
    if own is None or Path(run.args.resume).resolve() != own.resolve():
        return
    epoch = ckpt["epoch"]
    snapshot = snapshot_path(run, epoch)
    if snapshot is not None and not snapshot.exists() and is_main_process():
        run.logger.info(f"writing {snapshot}, which the stopped run owed (a copy of {own})")
        with open(own, "rb") as source:
            atomic_write(snapshot, lambda handle: shutil.copyfileobj(source, handle, 2**24))
    logged = broadcast_object(is_main_process() and any(e.get("epoch") == epoch
                                                        for e in read_log(run.output_dir / "log.txt")))
    if not logged and "train_stats" in ckpt:
        run.logger.info(f"log.txt lacks epoch {epoch} (the run stopped after its checkpoint): evaluating it now")
        finish_epoch(run, epoch, ckpt["train_stats"], time.time() - float(ckpt.get("epoch_seconds", 0.0)))


def open_tensorboard(run: Run) -> None:
    from util.distributed import is_main_process

    if run.output_dir is not None and is_main_process():
        from torch.utils.tensorboard import SummaryWriter

        run.writer = SummaryWriter(log_dir=str(run.output_dir / "tensorboard"))


def train(run: Run, resumed: Optional[dict]) -> int:
    import datetime
    import time

    import engine

    args, logger = run.args, run.logger
    if resumed is not None:
        write_owed_outputs(run, resumed)
    if args.start_epoch >= args.epochs:
        logger.warning(f"nothing to train: the next epoch is {args.start_epoch} and epochs={args.epochs} (raise "
                       "epochs, e.g. --options epochs=N, to train further)")
    logger.info("Start training")
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        epoch_start = time.time()
        run.train_loader.batch_sampler.sampler.set_epoch(epoch)
        train_stats = engine.train_one_epoch(
            run.model, run.criterion, run.train_loader, run.optimizer, run.device, epoch, args.clip_max_norm,
            amp=args.amp, amp_dtype=run.amp_dtype, scaler=run.scaler, lr_scheduler=run.lr_scheduler,
            step_scheduler_per_iter=run.per_iter,
            ema=run.ema if epoch >= args.ema_epoch else None, max_iters=run.max_iters, log_fn=run.log_fn)
        if not run.per_iter:
            run.lr_scheduler.step()
        save_epoch_checkpoints(run, epoch, train_stats, time.time() - epoch_start)
        finish_epoch(run, epoch, train_stats, epoch_start)
    logger.info(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")
    return 0


def run(args, logger) -> int:
    """Build everything from ``args`` and train, or evaluate with ``--eval``."""
    state = build_run(args, logger)
    resumed = load_starting_point(state)
    if args.eval:
        return evaluate_only(state)
    open_tensorboard(state)
    try:
        return train(state, resumed)
    finally:
        if state.writer is not None:
            state.writer.close()


# ---------------------------------------------------------------------------------------------------------------
# Expected errors: one line, no traceback (unless --debug)


def expected_error_code(exc: BaseException) -> Optional[int]:
    """The exit code of an error the user can fix (config, data, checkpoint, disk, a diverged or hung run);
    None for anything else, a bug, which keeps its traceback."""
    import torch.distributed as dist

    from datasets import AnnotationFormatError, DatasetLayoutError, UnreadableImageError
    from engine import NonFiniteLossError
    from util.checkpoint import CheckpointError

    if isinstance(exc, ConfigError):
        return 2
    expected = (CheckpointError, DatasetLayoutError, AnnotationFormatError, UnreadableImageError, NonFiniteLossError,
                getattr(dist, "DistBackendError", CheckpointError))
    if isinstance(exc, expected) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
        return 1
    return None


def error_message(exc: BaseException) -> str:
    text = str(exc).strip()
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the original message is the last line
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistBackendError", ())):
        text = (f"a distributed operation failed or timed out (another process died or hangs; see its log; "
                f"--dist_timeout sets the wait): {text.splitlines()[0] if text else ''}")
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args, _cfg, logger = prepare(argv)
        return run(args, logger)
    except Exception as exc:
        code = None if debug else expected_error_code(exc)
        if code is None:
            raise
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
