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
import os
import random
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from util.config import Config, ConfigError, DictAction, apply_config_to_args

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
    parser.add_argument("--debug", action="store_true", help="stop each epoch after 15 iterations")
    parser.add_argument("--find_unused_params", action="store_true")
    parser.add_argument("--save_results", action="store_true", help="unused (kept for compatibility)")
    parser.add_argument("--save_log", action="store_true", help="also send metric logs to the logger")
    # distributed
    parser.add_argument("--world_size", default=1, type=int, help="number of distributed processes")
    parser.add_argument("--dist_url", default="env://", help="url used to set up distributed training")
    parser.add_argument("--rank", default=0, type=int, help="node rank (multi-node launch.py)")
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        help="set by torch.distributed.launch (both spellings)")
    parser.add_argument("--amp", action="store_true", help="train with mixed precision")
    parser.add_argument("--amp_dtype", default="float16", choices=["float16", "bfloat16"],
                        help="autocast dtype with --amp")
    return parser


def load_config(args: argparse.Namespace) -> Config:
    """Load ``args.config_file`` and apply ``--options`` (validated: unknown keys and bad booleans fail)."""
    cfg = Config.fromfile(args.config_file)
    if args.options:
        cfg.merge_from_dict(args.options)
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
    from util.distributed import init_distributed_mode
    from util.logger import setup_logger

    environ = os.environ if environ is None else environ
    args = get_args_parser().parse_args(argv)
    init_distributed_mode(args, environ)
    cfg = load_config(args)
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        if args.rank == 0:
            cfg.dump(Path(args.output_dir) / "config_cfg.py")
            with open(Path(args.output_dir) / "config_args_raw.json", "w") as handle:
                json.dump(vars(args), handle, indent=2)
    apply_config_to_args(cfg, args)
    resolve_environment(args, environ)
    logger = setup_logger(output_dir=args.output_dir or None, distributed_rank=args.rank, color=True,
                          name="clickpose")
    logger.info(git_sha())
    logger.info("Command: " + " ".join(shlex.quote(a) for a in sys.argv))
    if args.output_dir and args.rank == 0:
        with open(Path(args.output_dir) / "config_args_all.json", "w") as handle:
            json.dump(vars(args), handle, indent=2, default=str)
        logger.info(f"Full config saved to {Path(args.output_dir) / 'config_args_all.json'}")
    logger.info(f"world size: {args.world_size}, rank: {args.rank}, local rank: {args.local_rank}")
    logger.info("args: " + str(args))
    return args, cfg, logger


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args, _cfg, logger = prepare(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run(args, logger)


if __name__ == "__main__":
    sys.exit(main())
