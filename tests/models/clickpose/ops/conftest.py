"""Backends under test: each compiled one, skipped with the build command when it is not built."""
from __future__ import annotations

import pytest
import torch

from models.clickpose.ops import _library

NOT_BUILT = f"compiled kernels not built: {_library.BUILD_HINT}"


def _backend_param(name: str):
    marks = []
    if name == "cpu" and not _library.has_cpu_kernel():
        marks.append(pytest.mark.skip(reason=NOT_BUILT))
    if name == "cuda":
        if not torch.cuda.is_available():
            marks.append(pytest.mark.skip(reason="needs a CUDA device (none visible)"))
        elif not _library.has_cuda_kernel():
            marks.append(pytest.mark.skip(reason=f"CUDA kernel not built (FORCE_CUDA=1): {_library.BUILD_HINT}"))
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(params=[_backend_param("cpu"), _backend_param("cuda")])
def backend(request) -> str:
    """A compiled backend name; its device is the backend name."""
    return request.param


@pytest.fixture(params=[pytest.param("pytorch", id="pytorch"), _backend_param("cpu"), _backend_param("cuda")])
def any_backend(request) -> str:
    """Every backend including the pure-PyTorch one (which runs on the CPU here)."""
    return request.param

