"""``python -m models.clickpose.ops.test``: list the available backends and check each against the
pure-PyTorch reference (forward and the three gradients, fp64 and fp32) plus a fp64 gradcheck."""
from __future__ import annotations

import sys

import torch

from . import _library
from .function import available_backends
from .testing import gradcheck, max_errors, random_inputs

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
LEVELS = [(6, 4), (3, 2), (1, 1), (2, 5)]


def main() -> int:
    backends = available_backends()
    module, why = _library.load()
    print(f"torch {torch.__version__}; CUDA device visible: {torch.cuda.is_available()}")
    print(f"compiled library: {module.__file__ if module else 'missing (' + why + ')'}")
    print(f"available backends: {', '.join(backends)}")
    failures = 0
    for backend in backends:
        if backend == "pytorch":
            continue
        device = "cuda" if backend == "cuda" else "cpu"
        for dtype, tol in TOLERANCE.items():
            errors = max_errors(random_inputs(LEVELS, dtype=dtype, device=device), backend)
            ok = all(e <= tol for e in errors.values())
            failures += not ok
            detail = ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
            print(f"* {backend} {str(dtype).replace('torch.', '')}: {'ok' if ok else 'FAIL'} (max |diff|: {detail})")
        try:
            ok = gradcheck(backend, device)
        except RuntimeError as error:  # gradcheck raises on mismatch
            ok = False
            print(error)
        failures += not ok
        print(f"* {backend} gradcheck fp64: {'ok' if ok else 'FAIL'}")
    if backends == ["pytorch"]:
        print(f"only the reference path is available; {_library.BUILD_HINT}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
