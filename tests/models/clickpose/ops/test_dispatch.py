"""Backend choice: automatic, forced, missing library (one warning, the reference path), clear errors."""
from __future__ import annotations

import warnings

import pytest
import torch

from models.clickpose.ops import _library, function, ms_deform_attn
from models.clickpose.ops.testing import random_inputs


@pytest.fixture
def no_library(monkeypatch):
    """Pretend the compiled library failed to load."""
    monkeypatch.setattr(_library, "_loaded", (None, "simulated: undefined symbol"))
    monkeypatch.setattr(function, "_warned_fallback", False)


def test_missing_library_falls_back_with_one_warning(no_library):
    inputs = random_inputs([(3, 3)])
    expected = ms_deform_attn(**inputs, backend="pytorch")
    with pytest.warns(RuntimeWarning, match="models.clickpose.ops.build") as record:
        out = ms_deform_attn(**inputs)
    assert "simulated: undefined symbol" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms_deform_attn(**inputs)  # no second warning
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert function.available_backends() == ["pytorch"]


def test_forcing_a_missing_backend_names_the_build_command(no_library):
    with pytest.raises(RuntimeError, match="models.clickpose.ops.build"):
        ms_deform_attn(**random_inputs([(3, 3)]), backend="cpu")


def test_unknown_or_mismatched_backend():
    inputs = random_inputs([(3, 3)])
    with pytest.raises(ValueError, match="unknown"):
        ms_deform_attn(**inputs, backend="triton")
    with pytest.raises(ValueError, match="cannot run tensors on cpu"):
        ms_deform_attn(**inputs, backend="cuda")


def test_loader_survives_a_broken_build(monkeypatch):
    def broken(name):
        raise ImportError(f"{name}: undefined symbol _ZN2at6Tensor")
    monkeypatch.setattr(_library, "_loaded", None)
    monkeypatch.setattr(_library.importlib, "import_module", broken)
    module, why = _library.load()
    assert module is None and "undefined symbol" in why


def test_automatic_choice_prefers_the_compiled_kernel():
    expected = "cpu" if _library.has_cpu_kernel() else "pytorch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert function.resolve_backend(torch.device("cpu"), None) == expected


def test_kernel_reports_bad_shapes(backend):
    inputs = random_inputs([(3, 3), (2, 2)], device=backend)
    bad = dict(inputs, attention_weights=inputs["attention_weights"][..., :1])
    with pytest.raises(RuntimeError, match="attention_weights"):
        ms_deform_attn(**bad, backend=backend)
    bad = dict(inputs, sampling_locations=inputs["sampling_locations"][:, :, :1])
    with pytest.raises(RuntimeError, match="sampling_locations"):
        ms_deform_attn(**bad, backend=backend)


@pytest.mark.skipif(not _library.has_cpu_kernel(), reason=f"compiled kernels not built: {_library.BUILD_HINT}")
def test_cpu_kernel_checks_the_level_layout():
    # (Only where spatial_shapes is on the CPU: on a GPU, reading it would cost a synchronisation per call.)
    inputs = random_inputs([(3, 3), (2, 2)])
    with pytest.raises(RuntimeError, match="tokens"):
        ms_deform_attn(**dict(inputs, value=inputs["value"][:, :-1]), backend="cpu")
    with pytest.raises(RuntimeError, match="level_start_index"):
        ms_deform_attn(**dict(inputs, level_start_index=inputs["level_start_index"] + 1), backend="cpu")
