"""Finds the compiled kernels, if they were built; never raises."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional, Tuple

EXTENSION_NAME = "clickpose_msda"
BUILD_COMMAND = "python -m models.clickpose.ops.build"
BUILD_HINT = (f"build the kernels with `{BUILD_COMMAND}` from the repository root "
              "(or `cd models/clickpose/ops && python setup.py build install`); FORCE_CUDA=1 adds the CUDA kernel")

_loaded: Optional[Tuple[Optional[ModuleType], str]] = None


def load() -> Tuple[Optional[ModuleType], str]:
    """Returns (module or None, why it is missing). Prefers the in-place build, then an installed one."""
    global _loaded
    if _loaded is None:
        errors = []
        for name in (f"{__package__}.{EXTENSION_NAME}", EXTENSION_NAME):
            try:
                module = importlib.import_module(name)
            except ImportError as error:  # absent, or built against another torch
                if not isinstance(error, ModuleNotFoundError) or error.name != name:
                    errors.append(f"{name}: {error}")
                continue
            if getattr(module, "abi_version", None) == 1:
                _loaded = (module, "")
                break
            errors.append(f"{name}: not this project's kernel library (abi_version mismatch); rebuild it")
        else:
            _loaded = (None, "; ".join(errors) or "the compiled kernel library is not built")
    return _loaded


def has_cpu_kernel() -> bool:
    return load()[0] is not None


def has_cuda_kernel() -> bool:
    module = load()[0]
    return module is not None and bool(module.with_cuda)
