"""Process-group start-up and collective helpers.

One process when no launcher is used; ``torch.distributed.launch`` / ``torchrun`` (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``) and SLURM (``SLURM_PROCID`` ...) are recognised. ``main.py`` passes the environment in, so nothing
below reads it implicitly.
"""
from __future__ import annotations

import builtins
import datetime
import os
from argparse import Namespace
from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist

from .files import atomic_write


DEFAULT_TIMEOUT_S = 600.0  # seconds a collective waits for a missing rank (torch's default: 1800)


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def setup_for_distributed(is_master: bool) -> None:
    """Silence ``print`` on non-master ranks (``print(..., force=True)`` still prints)."""
    original_print = getattr(builtins.print, "_clickpose_original", builtins.print)

    def rank_aware_print(*args, **kwargs):
        force = kwargs.pop("force", False)
        if is_master or force:
            original_print(*args, **kwargs)

    rank_aware_print._clickpose_original = original_print  # type: ignore[attr-defined]
    builtins.print = rank_aware_print


def resolve_launch(args: Namespace, environ: Mapping[str, str]) -> None:
    """Fill ``args.distributed, rank, world_size, local_rank, gpu`` from the launcher environment.

    torchrun and torch.distributed.launch export WORLD_SIZE, RANK and LOCAL_RANK (the latter also arrives as
    ``--local-rank``/``--local_rank``); SLURM exports SLURM_PROCID/SLURM_LOCALID/SLURM_NPROCS.
    """
    cli_local_rank = args.local_rank
    if "WORLD_SIZE" in environ and int(environ["WORLD_SIZE"]) >= 1 and ("RANK" in environ or "LOCAL_RANK" in environ
                                                                        or cli_local_rank is not None):
        world = int(environ["WORLD_SIZE"])
        local = int(environ.get("LOCAL_RANK", cli_local_rank if cli_local_rank is not None else 0))
        # RANK is global (correct across nodes); without it, fall back to the reference's node-rank formula.
        rank = int(environ["RANK"]) if "RANK" in environ else args.rank * world + local
        args.world_size, args.rank, args.local_rank = world, rank, local
    elif "SLURM_PROCID" in environ:
        args.rank = int(environ["SLURM_PROCID"])
        args.local_rank = int(environ.get("SLURM_LOCALID", 0))
        args.world_size = int(environ.get("SLURM_NPROCS", environ.get("SLURM_NTASKS", 1)))
    else:
        args.distributed = False
        args.world_size, args.rank = 1, 0
        args.local_rank = cli_local_rank or 0
        args.gpu = args.local_rank
        return
    args.gpu = args.local_rank
    args.distributed = args.world_size > 1


def init_distributed_mode(args: Namespace, environ: Optional[Mapping[str, str]] = None) -> None:
    """Start the process group when launched by a launcher: NCCL on CUDA, gloo on CPU."""
    resolve_launch(args, os.environ if environ is None else environ)
    if not args.distributed:
        print("Not using distributed mode")
        return
    use_cuda = str(args.device).startswith("cuda") and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(args.gpu)
    env = os.environ if environ is None else environ
    if args.dist_url == "env://" and ("MASTER_ADDR" not in env or "MASTER_PORT" not in env):
        raise RuntimeError("distributed launch without MASTER_ADDR/MASTER_PORT: start with torchrun or "
                           "torch.distributed.launch, or export MASTER_ADDR and MASTER_PORT (SLURM: the first node)")
    print(f"| distributed init (rank {args.rank}/{args.world_size}, backend {backend}): {args.dist_url}", flush=True)
    # a rank that dies or hangs makes the others fail after this long, instead of torch's default 30 minutes
    timeout = datetime.timedelta(seconds=float(args.dist_timeout))
    dist.init_process_group(backend=backend, init_method=args.dist_url, world_size=args.world_size, rank=args.rank,
                            timeout=timeout)
    dist.barrier()
    setup_for_distributed(args.rank == 0)


def all_gather(data: Any) -> list[Any]:
    """Gather any picklable object from every rank (a one-element list without a process group)."""
    if get_world_size() == 1:
        return [data]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, data)
    return gathered


def gather_first_occurrence(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    """Every rank's entries of a dict keyed by image id, merged: a key seen on several ranks keeps the first one
    (rank order, then each rank's insertion order), as a DistributedSampler pads with repeats of early images.

    Without a process group: a copy of ``mapping``. Values must be picklable; values that share an object keep
    sharing it after the gather (one pickle per rank).
    """
    merged: dict[Any, Any] = {}
    for part in all_gather(dict(mapping)):
        for key, value in part.items():
            merged.setdefault(key, value)
    return merged


def broadcast_object(data: Any, src: int = 0) -> Any:
    """Rank ``src``'s value on every rank (``data`` itself without a process group): one decision for all ranks."""
    if get_world_size() == 1:
        return data
    box = [data]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_dict(values: Mapping[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """Sum (or average) a dict of scalar tensors over all ranks; keys are reduced in sorted order."""
    world = get_world_size()
    if world < 2:
        return dict(values)
    with torch.no_grad():
        names = sorted(values.keys())
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in names])
        dist.all_reduce(stacked)
        if average:
            stacked /= world
        return dict(zip(names, stacked))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves a truncated file."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def save_on_master(obj: Any, path: str | os.PathLike) -> None:
    """Atomic ``torch.save`` on rank 0 only."""
    if is_main_process():
        atomic_torch_save(obj, path)
