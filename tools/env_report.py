"""Print the environment: Python, torch/CUDA, key packages, and which deformable-attention backends are usable.

    python -m tools.env_report      # (make env)
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys


def _version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # report, never fail
        return f"not importable ({type(exc).__name__}: {exc})"
    return str(getattr(module, "__version__", "installed"))


def report() -> str:
    import torch

    lines = [f"python: {sys.version.split()[0]} ({platform.platform()})",
             f"torch: {torch.__version__} (built with CUDA {torch.version.cuda})",
             f"cuda available: {torch.cuda.is_available()}"]
    if torch.cuda.is_available():
        lines += [f"  device {i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    for name in ("torchvision", "numpy", "scipy", "pycocotools", "faster_coco_eval", "cv2", "timm", "addict", "yapf",
                 "tensorboard", "termcolor"):
        lines.append(f"{name}: {_version(name)}")
    try:
        from models.clickpose.ops import function as msda

        backends = getattr(msda, "available_backends", lambda: ["pytorch"])()
        lines.append(f"deformable attention backends: {', '.join(backends)}")
    except Exception as exc:
        lines.append(f"deformable attention: import failed ({exc})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
