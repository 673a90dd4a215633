"""Click-Pose: train or evaluate from a config file.

    python main.py -c config/clickpose.cfg.py --output_dir logs/run --options batch_size=4 use_ema=TRUE
    torchrun --nproc-per-node=4 main.py -c config/clickpose.cfg.py ...
    python -m torch.distributed.launch --nproc_per_node=4 main.py -c config/clickpose.cfg.py ...

Only this entry point reads environment variables (the reference's CLICKPOSE_* variables and NoC_thr through
``util.config_support.resolve_environment``, the launchers' WORLD_SIZE/RANK/LOCAL_RANK/SLURM_* through
``util.distributed``); everything below receives plain arguments.
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
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

import engine
from datasets import build_dataset, get_metadata
from datasets.evaluation import resolve_max_clicks
from models import build_model
from models.optim import build_optimizer
from util.config import Config, ConfigError, DictAction, apply_config_to_args, check_ranges
from util.config_support import add_dead_flags, resolve_environment
from util.distributed import DEFAULT_TIMEOUT_S, init_distributed_mode, is_main_process
from util.ema import ModelEma
from util.errors import error_message, exit_code
from util.files import append_line, atomic_write_text
from util.logger import setup_logger
from util.run_folder import BestMetricHolder, tidy_output_dir
from util.training import build_lr_scheduler

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Click-Pose training and evaluation", add_help=True)
    parser.add_argument("--config_file", "-c", type=str, required=True, help="Python config file")
    parser.add_argument("--options", nargs="+", action=DictAction,
                        help="override config keys: key=value (ints, floats, true/false, none, a,b lists, [a,b], "
                             "(a,b), 'quoted strings', dotted.keys)")
    # dataset
    parser.add_argument("--dataset_file", default="coco", help="coco | crowdpose | humanart | ochuman | custom")
    parser.add_argument("--coco_path", "--data_root", dest="coco_path", type=str, default=None,
                        help="the dataset's root, whichever the dataset (default: the CLICKPOSE_<DATASET>_PATH "
                             "environment variable)")
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
    parser.add_argument("--debug", action="store_true",
                        help="stop each epoch after 15 iterations; show tracebacks of expected errors")
    parser.add_argument("--find_unused_params", action="store_true")
    parser.add_argument("--save_log", action="store_true", help="also send metric logs to the logger")
    # distributed
    parser.add_argument("--world_size", default=1, type=int, help="number of distributed processes")
    parser.add_argument("--dist_url", default="env://", help="url used to set up distributed training")
    parser.add_argument("--rank", default=0, type=int, help="node rank (multi-node launch.py)")
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        help="set by torch.distributed.launch (both spellings)")
    parser.add_argument("--dist_timeout", default=DEFAULT_TIMEOUT_S, type=float, metavar="SECONDS",
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
    add_dead_flags(parser)
    return parser


def load_config(args: argparse.Namespace) -> Config:
    """Load ``args.config_file`` and apply ``--options`` (validated: unknown keys, wrong types and values out of
    range fail)."""
    cfg = Config.fromfile(args.config_file)
    if args.options:
        cfg.merge_from_dict(args.options)
    check_ranges(cfg.to_dict())
    for flag, value, low in (("start_epoch", args.start_epoch, 0), ("num_workers", args.num_workers, 0),
                             ("dist_timeout", args.dist_timeout, 1)):
        if value < low:
            raise ConfigError(f"--{flag} must be >= {low}, got {value}")
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


def evaluation_options(args: argparse.Namespace, max_clicks: int) -> engine.EvalOptions:
    """How the run evaluates, from its args (config keys and the reference's environment variables, read by
    ``util.config_support.resolve_environment``): NoC_thr adds a threshold (CLICKPOSE_SAVE_PATH: its click list), CLICKPOSE_Click_Number
    picks the report round; the interactive post-process keeps at most the refined (query, class) pairs."""
    threshold_env = args.noc_threshold_env
    thresholds = tuple(args.noc_thresholds) + ((threshold_env,) if threshold_env is not None else ())
    click_lists = {float(threshold_env): args.noc_save_path} if threshold_env is not None and args.noc_save_path \
        else {}
    return engine.EvalOptions(
        interactive=bool(args.feedback_loop_NOC_test or args.feedback_inference), amp=args.amp,
        amp_dtype=torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16,
        max_iters=15 if args.debug else None, max_clicks=max_clicks, thresholds=thresholds,
        report_round=args.click_number_env, max_select=args.num_group_refine * args.num_classes,
        click_list_paths=click_lists)


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
    options = evaluation_options(args, max_clicks)
    if not args.eval or options.interactive:  # interactive metrics go to TensorBoard too
        record.writer = open_tensorboard(output_dir)
    log_fn = logging.getLogger("clickpose").info if args.save_log else print

    def evaluate(net: torch.nn.Module) -> dict:
        return engine.evaluate_model(net, postprocessors, dataset_val, val_loader, device, options,
                                     output_dir=output_dir, log_fn=log_fn, tb_writer=record.writer)

    try:
        if args.eval:  # the regular weights, as the reference (a best-EMA checkpoint holds them as 'model')
            stats = evaluate(model)
            if output_dir is not None and is_main_process():
                append_line(output_dir / "log.txt", json.dumps({f"test_{k}": v for k, v in stats.items()},
                                                               default=float))
        else:
            engine.train(args, wrapped, criterion, train_loader, device, state, record, evaluate, resumed=resumed,
                         log_fn=log_fn)
        return 0
    finally:
        if record.writer is not None:
            record.writer.close()


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
