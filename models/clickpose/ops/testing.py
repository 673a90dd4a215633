"""Checks of the compiled backends against the pure-PyTorch reference: random inputs and comparisons (shared
by the pytest suite and the GPU check) and :func:`main`, the report that ``python test.py`` in this folder (the
reference's command) or ``python -m models.clickpose.ops.test`` prints."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from . import _library
from .function import available_backends, ms_deform_attn

DIFFERENTIABLE = ("value", "sampling_locations", "attention_weights")


def random_inputs(level_shapes: Sequence[Tuple[int, int]], batch: int = 2, queries: int = 7, heads: int = 2,
                  channels: int = 8, points: int = 3, dtype: torch.dtype = torch.float64, device: str = "cpu",
                  spread: float = 0.2, seed: int = 0) -> Dict[str, Tensor]:
    """Inputs of ``ms_deform_attn`` as a dict; locations cover [-spread, 1 + spread] so some fall off the map."""
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(level_shapes, dtype=torch.long).view(-1, 2)
    sizes = shapes.prod(1)
    levels = shapes.shape[0]
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    value = torch.randn(batch, int(sizes.sum()), heads, channels, generator=gen, dtype=torch.float64)
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=gen, dtype=torch.float64)
    locations = locations * (1 + 2 * spread) - spread
    weights = torch.rand(batch, queries, heads, levels, points, generator=gen, dtype=torch.float64)
    return dict(value=value.to(device, dtype), spatial_shapes=shapes.to(device), level_start_index=starts.to(device),
                sampling_locations=locations.to(device, dtype), attention_weights=weights.to(device, dtype))


def forward_and_grads(inputs: Dict[str, Tensor], backend: str, seed: int = 1) -> List[Tensor]:
    """[output, grad_value, grad_locations, grad_weights] for a fixed random output gradient."""
    leaves = {k: (v.detach().requires_grad_() if k in DIFFERENTIABLE else v) for k, v in inputs.items()}
    out = ms_deform_attn(**leaves, backend=backend)
    gen = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    grads = torch.autograd.grad(out, [leaves[k] for k in DIFFERENTIABLE], grad_out)
    return [out.detach(), *grads]


def max_errors(inputs: Dict[str, Tensor], backend: str, oracle: str = "pytorch") -> Dict[str, float]:
    """Largest absolute difference to the oracle backend for the output and each gradient.

    Location gradients scale with the map size (d pixel / d location = W or H), so they are divided by it.
    """
    names = ("output", "grad_value", "grad_locations", "grad_weights")
    ours = forward_and_grads(inputs, backend)
    expected = forward_and_grads(inputs, oracle)
    errors = {}
    for name, a, b in zip(names, ours, expected):
        errors[name] = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    scale = float(inputs["spatial_shapes"].max())
    errors["grad_locations"] /= max(scale, 1.0)
    return errors


def gradcheck(backend: str, device: str = "cpu") -> bool:
    """torch.autograd.gradcheck in fp64 on a small problem, locations kept off the bilinear kinks."""
    inputs = random_inputs([(3, 4), (2, 2), (1, 3)], batch=1, queries=3, heads=2, channels=4, points=2,
                           device=device, spread=0.1, seed=3)
    leaves = [inputs[k].detach().requires_grad_() for k in DIFFERENTIABLE]

    def fn(value: Tensor, locations: Tensor, weights: Tensor) -> Tensor:
        return ms_deform_attn(value, inputs["spatial_shapes"], inputs["level_start_index"], locations, weights,
                              backend=backend)

    return torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


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
