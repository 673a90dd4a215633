"""A rank that hangs makes the others stop within --dist_timeout, not torch's 30 minutes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers.ports import free_port

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import argparse, sys, time
    sys.path.insert(0, {repo!r})
    import torch.distributed as dist
    from util.distributed import init_distributed_mode

    args = argparse.Namespace(device="cpu", dist_url="env://", local_rank=None, rank=0, dist_timeout=3)
    init_distributed_mode(args)
    if args.rank == 1:
        time.sleep(120)  # hangs
    start = time.time()
    try:
        dist.barrier()
    except Exception as exc:
        print(f"stopped after {{time.time() - start:.0f}} s: {{type(exc).__name__}}", flush=True)
        sys.exit(3)
""")


@pytest.mark.slow
def test_a_hung_rank_ends_the_others_within_the_timeout(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    try:
        start = time.time()
        out, _ = procs[0].communicate(timeout=120)
        assert procs[0].returncode == 3, out
        assert "stopped after" in out and time.time() - start < 90
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_gather_first_occurrence_without_a_process_group_is_a_copy():
    from util.distributed import gather_first_occurrence

    mapping = {3: "a", 1: "b"}
    gathered = gather_first_occurrence(mapping)
    assert gathered == mapping and gathered is not mapping and list(gathered) == [3, 1]


def test_gather_first_occurrence_keeps_the_first_rank_of_a_repeated_key(monkeypatch):
    """Rank 1 holds a repeat of rank 0's image 7 (a DistributedSampler pads with repeats): rank 0's value wins, and
    keys keep rank order, then each rank's order."""
    import util.distributed as distributed

    ranks = [{7: "rank0", 2: "rank0"}, {5: "rank1", 7: "rank1 repeat"}]
    monkeypatch.setattr(distributed, "all_gather", lambda data: [data, ranks[1]])
    gathered = distributed.gather_first_occurrence(ranks[0])
    assert gathered == {7: "rank0", 2: "rank0", 5: "rank1"} and list(gathered) == [7, 2, 5]
