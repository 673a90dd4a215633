"""Stop before a doomed install: the environment needs about 6.2 GB while pip runs (measured; the CUDA build of
torch and its nvidia-* libraries are most of it), and pip's own "No space left on device" comes after minutes and
names no size. Run by `make venv` only when the environment does not exist yet.

    python tools/check_disk_space.py DIR [--need-gb 6.5]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

NEED_GB = 6.5  # 6.2 GB measured at the peak of `pip install -r requirements.txt` (docs/benchmarks.md), plus slack


def existing_ancestor(path: Path) -> Path:
    """The nearest existing directory at or above ``path`` (the environment's folder may not exist yet)."""
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def shortfall(target: Path, need_gb: float) -> str | None:
    """A message naming the place, the free space and the fix, or None when there is room."""
    where = existing_ancestor(target)
    free_gb = shutil.disk_usage(where).free / 1e9
    if free_gb >= need_gb:
        return None
    return (f"not enough disk space for the Python environment: {free_gb:.1f} GB free on the filesystem of {where}, "
            f"about {need_gb:.1f} GB needed (torch's CUDA build with its nvidia-* libraries is most of it; pip also "
            f"downloads into the temporary folder {tempfile.gettempdir()}). Free some space, or put the environment "
            f"on a larger disk: make VENV=/big/disk/venv test")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="where the environment will be created")
    parser.add_argument("--need-gb", type=float, default=NEED_GB)
    args = parser.parse_args(argv)
    message = shortfall(args.dir, args.need_gb)
    if message:
        print(f"[venv] {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
