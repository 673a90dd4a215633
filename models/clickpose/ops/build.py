"""Build the deformable-attention kernels in place: ``python -m models.clickpose.ops.build [--cuda|--cpu-only]``.

Default: the CPU kernel, plus the CUDA kernel when a GPU is visible and a CUDA toolkit is found; a failing
automatic CUDA build falls back to the CPU kernel with a warning, so this succeeds wherever a C++ compiler exists.
``--cuda`` forces the CUDA kernel (no GPU needed to compile; set TORCH_CUDA_ARCH_LIST, e.g. "9.0").
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

SETUP = Path(__file__).resolve().parent / "setup.py"


def run_setup(force_cuda: Optional[str], extra_env: Dict[str, str]) -> int:
    env = dict(os.environ, **extra_env)
    if force_cuda is not None:
        env["FORCE_CUDA"] = force_cuda
    command = [sys.executable, str(SETUP), "build_ext", "--inplace"]
    return subprocess.call(command, cwd=SETUP.parent, env=env)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--cuda", action="store_true", help="also build the CUDA kernel (fail if it cannot be built)")
    mode.add_argument("--cpu-only", action="store_true", help="build the CPU kernel only")
    parser.add_argument("--arch", default=None, help="TORCH_CUDA_ARCH_LIST for the CUDA kernel, e.g. '8.0;9.0'")
    args = parser.parse_args(argv)
    extra = {"TORCH_CUDA_ARCH_LIST": args.arch} if args.arch else {}
    if args.cuda or args.cpu_only:
        return run_setup("1" if args.cuda else "0", extra)
    status = run_setup(None, extra)
    if status != 0:
        print("[msda] the automatic build failed; retrying with the CPU kernel only (FORCE_CUDA=0)", file=sys.stderr)
        status = run_setup("0", extra)
    return status


if __name__ == "__main__":
    sys.exit(main())
