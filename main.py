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


def evaluate_interactive(net, postprocess, loader, dataset, args, device, output_dir, writer, log_fn) -> dict:
    """NoC and AP after k clicks in one pass (``engine.evaluate_interactive``), then the report files and, when a
    TensorBoard ``writer`` is given, its scalars (``util.noc_report``). Returns the stats for log.txt."""
    import copy

    import engine
    from datasets import build_evaluator
    from util.distributed import is_main_process
    from util.noc_report import write_interactive_report

    refined = args.num_group_refine * args.num_classes
    if postprocess.num_select > refined:  # the reference needs num_select=20 here (it crashes otherwise)
        postprocess = copy.copy(postprocess)
        postprocess.num_select = refined
    threshold_env = getattr(args, "noc_threshold_env", None)  # NoC_thr: set by resolve_environment when present
    thresholds = list(args.noc_thresholds) + ([threshold_env] if threshold_env is not None else [])
    report_evaluator = build_evaluator(dataset, args, output_dir)
    results = engine.evaluate_interactive(
        net, postprocess, loader, report_evaluator.per_image_ap(), device,
        max_clicks=args.max_clicks, thresholds=thresholds, report_round=getattr(args, "click_number_env", None),
        report_evaluator=report_evaluator, round_evaluator_factory=None if report_evaluator.backend == "coco" else
        lambda: build_evaluator(dataset, args, iou_types=("keypoints",), log=None), log_fn=log_fn)
    if output_dir is not None and is_main_process():
        compat = {float(threshold_env): args.noc_save_path} if threshold_env is not None and args.noc_save_path else {}
        write_interactive_report(output_dir, results, tb_writer=writer, click_list_paths=compat, printer=log_fn)
    return results.log_stats()


def run(args, logger) -> int:
    """Build everything from ``args`` and train, or evaluate with ``--eval``."""
    import datetime
    import time

    import torch

    import engine
    from datasets import build_dataset, build_evaluator
    from models import build_model
    from util.checkpoint import load_model_weights, preserve_rng, read_checkpoint, save_checkpoint, set_rng_state
    from util.distributed import is_main_process
    from util.ema import ModelEma
    from util.training import BestMetricHolder, build_lr_scheduler, build_optimizer

    device = resolve_device(args.device, logger)
    seed_everything(args.seed + args.rank)
    model, criterion, postprocessors = build_model(args)
    model.to(device)
    criterion.to(device)
    ema = ModelEma(model, args.ema_decay, unique_params=args.ema_unique_params) if args.use_ema else None
    model_without_ddp = model
    if args.distributed:
        find_unused = args.find_unused_params
        if not find_unused and args.dec_layers - args.num_box_decoder_layers < 2:
            # with one keypoint layer, pose_hw_embed's output feeds no later layer: it gets no gradient at all
            logger.info("one box+keypoint decoder layer: enabling DDP's find_unused_parameters")
            find_unused = True
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[args.gpu] if device.type == "cuda" else None, find_unused_parameters=find_unused)
        model_without_ddp = model.module
    n_parameters = sum(p.numel() for p in model_without_ddp.parameters() if p.requires_grad)
    logger.info(f"number of trainable params: {n_parameters}")

    dataset_val = build_dataset("val", args)
    dataset_train = None if args.eval else build_dataset("train", args)
    train_loader, val_loader = build_loaders(args, dataset_train, dataset_val)
    optimizer = build_optimizer(args, model_without_ddp)
    lr_scheduler, per_iter = build_lr_scheduler(args, optimizer, len(train_loader) if train_loader else 1)
    output_dir = Path(args.output_dir) if args.output_dir else None
    best = BestMetricHolder(use_ema=args.use_ema)

    # Resume (automatic from output_dir/checkpoint.pth) or start from pretrained weights.
    if output_dir is not None and (output_dir / "checkpoint.pth").exists() and not args.resume:
        args.resume = str(output_dir / "checkpoint.pth")
    if args.resume:
        ckpt = read_checkpoint(args.resume)
        load_model_weights(model_without_ddp, ckpt["model"], strict=True, source=args.resume)
        if ema is not None:
            # the EMA weights when the checkpoint has them (keys with or without 'module.'), else the model's
            if "ema_model" in ckpt:
                load_model_weights(ema.module, ckpt["ema_model"], strict=True, source=f"{args.resume} (ema_model)")
            else:
                ema.set(model_without_ddp)
        if not args.eval and all(k in ckpt for k in ("optimizer", "lr_scheduler", "epoch")):
            optimizer.load_state_dict(ckpt["optimizer"])
            lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
            args.start_epoch = ckpt["epoch"] + 1
            best_file = Path(args.resume).parent / "best_metric.json"
            if best_file.is_file():
                best.load_state_dict(json.loads(best_file.read_text()))
            if "rng_state" in ckpt and not args.distributed:
                set_rng_state(ckpt["rng_state"])
        logger.info(f"resumed from {args.resume} (next epoch {args.start_epoch})")
    elif args.pretrain_model_path:
        ckpt = read_checkpoint(args.pretrain_model_path)
        load_model_weights(model_without_ddp, ckpt["model"], strict=False, ignore_keywords=args.finetune_ignore,
                           source=args.pretrain_model_path)
        if ema is not None:
            ema.set(model_without_ddp)

    amp_dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
    log_fn = logger.info if args.save_log else print
    max_iters = 15 if args.debug else None

    def evaluate_model(net, writer=None):
        with preserve_rng():
            return _evaluate_model(net, writer)

    def _evaluate_model(net, writer):
        if args.feedback_loop_NOC_test or args.feedback_inference:
            return evaluate_interactive(net, postprocessors["bbox"], val_loader, dataset_val, args, device,
                                        output_dir, writer, log_fn)
        evaluator = build_evaluator(dataset_val, args, output_dir)
        return engine.evaluate(net, postprocessors, val_loader, evaluator, device, amp=args.amp, amp_dtype=amp_dtype,
                               max_iters=max_iters, log_fn=log_fn)

    if args.eval:
        # the regular weights, as the reference (a best-EMA checkpoint holds the EMA weights as 'model')
        if output_dir is not None and is_main_process() and (args.feedback_loop_NOC_test or args.feedback_inference):
            from torch.utils.tensorboard import SummaryWriter  # the interactive metrics go to TensorBoard too

            with SummaryWriter(log_dir=str(output_dir / "tensorboard")) as writer:
                stats = evaluate_model(model_without_ddp, writer)
        else:
            stats = evaluate_model(model_without_ddp)
        if output_dir is not None and is_main_process():
            with open(output_dir / "log.txt", "a") as handle:
                handle.write(json.dumps({f"test_{k}": v for k, v in stats.items()}, default=float) + "\n")
        return 0

    writer = None
    if output_dir is not None and is_main_process():
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and amp_dtype == torch.float16)
    logger.info("Start training")
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        epoch_start = time.time()
        train_loader.batch_sampler.sampler.set_epoch(epoch)
        try:
            train_stats = engine.train_one_epoch(
                model, criterion, train_loader, optimizer, device, epoch, args.clip_max_norm, amp=args.amp,
                amp_dtype=amp_dtype, scaler=scaler, lr_scheduler=lr_scheduler, step_scheduler_per_iter=per_iter,
                ema=ema, max_iters=max_iters, log_fn=log_fn)
        except engine.NonFiniteLossError as exc:
            logger.error(str(exc))
            return 1
        if not per_iter:
            lr_scheduler.step()
        if output_dir is not None:
            paths = [output_dir / "checkpoint.pth"]
            if (epoch + 1) % args.lr_drop == 0 or (epoch + 1) % args.save_checkpoint_interval == 0:
                paths.append(output_dir / f"checkpoint{epoch:04}.pth")
            for path in paths:
                save_checkpoint(path, model_without_ddp, optimizer, lr_scheduler, epoch, args,
                                ema_model=ema.module if ema is not None else None)
        test_stats = evaluate_model(model_without_ddp)
        log_stats = {**{f"train_{k}": v for k, v in train_stats.items()},
                     **{f"test_{k}": v for k, v in test_stats.items()}}
        kinds = [("regular", model_without_ddp, test_stats)]
        if ema is not None:
            ema_stats = evaluate_model(ema.module)
            log_stats.update({f"ema_test_{k}": v for k, v in ema_stats.items()})
            kinds.append(("ema", ema.module, ema_stats))
        for kind, net, stats in kinds:
            if best.update(float(stats["coco_eval_keypoints_detr"][0]), epoch, is_ema=kind == "ema") and output_dir:
                save_checkpoint(output_dir / f"checkpoint_best_{kind}.pth", net, optimizer, lr_scheduler, epoch, args,
                                with_rng=False)
        if output_dir is not None and is_main_process():
            # a small side file, so a resumed run keeps its best so far without rewriting checkpoint.pth
            (output_dir / "best_metric.json").write_text(json.dumps(best.state_dict()))
        log_stats.update(best.summary())
        log_stats.update(epoch=epoch, n_parameters=n_parameters, now_time=str(datetime.datetime.now()),
                         epoch_time=str(datetime.timedelta(seconds=int(time.time() - epoch_start))))
        if output_dir is not None and is_main_process():
            with open(output_dir / "log.txt", "a") as handle:
                handle.write(json.dumps(log_stats, default=float) + "\n")
            for key, value in log_stats.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(key, value, epoch)
            writer.flush()
    if writer is not None:
        writer.close()
    logger.info(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args, _cfg, logger = prepare(argv)
        return run(args, logger)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
