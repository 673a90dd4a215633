"""Click-Pose: train or evaluate from a config file.

    python main.py -c config/clickpose.cfg.py --output_dir logs/run --options batch_size=4 use_ema=TRUE
    torchrun --nproc-per-node=4 main.py -c config/clickpose.cfg.py ...
    python -m torch.distributed.launch --nproc_per_node=4 main.py -c config/clickpose.cfg.py ...

This is the only module that reads environment variables (the reference's CLICKPOSE_* variables, NoC_thr, and the
launchers' WORLD_SIZE/RANK/LOCAL_RANK/SLURM_*); everything below receives plain arguments.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

import engine
from datasets import build_dataset, get_metadata
from models import build_model
from models.optim import build_optimizer
from util.config import Config, ConfigError, DictAction, apply_config_to_args, check_ranges
from util.distributed import init_distributed_mode, is_main_process
from util.ema import ModelEma
from util.errors import error_message, exit_code
from util.files import append_line, atomic_write_text
from util.logger import setup_logger
from util.noc import resolve_max_clicks
from util.run_folder import BestMetricHolder, tidy_output_dir
from util.training import build_lr_scheduler

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


@dataclass
class EvalContext:
    """What evaluating a model reads (``evaluate_model``); ``writer``: TensorBoard, for the interactive metrics."""
    args: argparse.Namespace
    device: torch.device
    postprocessors: dict
    dataset_val: Any
    val_loader: Any
    output_dir: Optional[Path]
    max_clicks: int  # the interactive evaluation's click cap: max_clicks, or the layout's keypoint count
    writer: Any = None

    @property
    def log_fn(self):
        return logging.getLogger("clickpose").info if self.args.save_log else print

    @property
    def max_iters(self) -> Optional[int]:
        return 15 if self.args.debug else None

    @property
    def amp_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.args.amp_dtype == "bfloat16" else torch.float16


Run = EvalContext  # the name the evaluation functions below are annotated with


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


def open_tensorboard(output_dir: Optional[Path]) -> Any:
    """A SummaryWriter in output_dir/tensorboard on the main process, else None."""
    if output_dir is None or not is_main_process():
        return None
    from torch.utils.tensorboard import SummaryWriter  # imported only when used: it is slow to import

    return SummaryWriter(log_dir=str(output_dir / "tensorboard"))


def run(args: argparse.Namespace, logger: logging.Logger) -> int:
    """Build the model, data, optimizer and schedule (in the order that fixes the random streams), then train, or
    evaluate with ``--eval``."""
    device = torch.device("cpu") if args.device.startswith("cuda") and not torch.cuda.is_available() else None
    if device is not None:
        logger.warning(f"--device {args.device} requested but no CUDA device is visible; running on the CPU")
    device = device or torch.device(args.device)
    seed = args.seed + args.rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    metadata = get_metadata(args)  # the keypoint layout, resolved once
    max_clicks = resolve_max_clicks(args.max_clicks, metadata.num_keypoints)  # checked before anything is built
    model, criterion, postprocessors = build_model(args, metadata)
    model.to(device)
    criterion.to(device)
    ema = ModelEma(model, args.ema_decay, unique_params=args.ema_unique_params) if args.use_ema else None
    wrapped = engine.wrap_distributed(model, args, device)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f"number of trainable params: {n_parameters}")
    dataset_val = build_dataset("val", args)
    dataset_train = None if args.eval else build_dataset("train", args)
    train_loader, val_loader = engine.build_loaders(args, dataset_train, dataset_val)
    optimizer = build_optimizer(args, model)
    lr_scheduler, per_iter = build_lr_scheduler(args, optimizer, len(train_loader) if train_loader else 1)
    # built here, not in train(), so that a resume restores its loss scale with the optimizer's state
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and args.amp_dtype == "float16")
    state = engine.TrainingState(model, optimizer, lr_scheduler, per_iter, scaler, ema)
    output_dir = Path(args.output_dir) if args.output_dir else None
    record = engine.RunRecord(output_dir, BestMetricHolder(use_ema=args.use_ema), n_parameters)
    resumed = engine.load_starting_point(args, state, metadata, record)
    ctx = EvalContext(args, device, postprocessors, dataset_val, val_loader, output_dir, max_clicks)
    if not args.eval or args.feedback_loop_NOC_test or args.feedback_inference:
        ctx.writer = record.writer = open_tensorboard(output_dir)  # interactive metrics go to TensorBoard too
    try:
        if args.eval:  # the regular weights, as the reference (a best-EMA checkpoint holds them as 'model')
            stats = evaluate_model(ctx, model)
            if output_dir is not None and is_main_process():
                append_line(output_dir / "log.txt", json.dumps({f"test_{k}": v for k, v in stats.items()},
                                                               default=float))
        else:
            engine.train(args, wrapped, criterion, train_loader, device, state, record,
                         lambda net: evaluate_model(ctx, net), resumed=resumed, log_fn=ctx.log_fn)
        return 0
    finally:
        if ctx.writer is not None:
            ctx.writer.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Expected errors (util.errors.exit_code) end in one ``error:`` line and their exit code, without a traceback
    unless --debug; anything else is a bug and raises."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args, _cfg, logger = prepare(argv)
        return run(args, logger)
    except Exception as exc:
        code = None if debug else exit_code(exc)
        if code is None:
            raise
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
