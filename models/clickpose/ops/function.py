"""Backend dispatch for multi-scale deformable attention: one autograd function over the compiled kernels,
and the pure-PyTorch reference as the always-available fallback."""
from __future__ import annotations

import warnings
from typing import List, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _library
from .reference import ms_deform_attn_reference

BACKENDS = ("pytorch", "cpu", "cuda")
_warned_fallback = False


def available_backends() -> List[str]:
    """Backends usable in this process: 'pytorch' always, 'cpu'/'cuda' when their kernel is built."""
    names = ["pytorch"]
    if _library.has_cpu_kernel():
        names.append("cpu")
    if _library.has_cuda_kernel() and torch.cuda.is_available():
        names.append("cuda")
    return names


class _MSDeformAttnKernel(torch.autograd.Function):
    """Compiled forward and backward; the kernel library dispatches on the tensors' device."""

    @staticmethod
    def forward(ctx, value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, sampling_locations: Tensor,
                attention_weights: Tensor) -> Tensor:
        library = _library.load()[0]
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return library.forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        library = _library.load()[0]
        grad_value, grad_locations, grad_weights = library.backward(*ctx.saved_tensors, grad_output.contiguous())
        return grad_value, None, None, grad_locations, grad_weights


def resolve_backend(device: torch.device, backend: Optional[str]) -> str:
    """The backend that will run for tensors on ``device``; raises a clear error for an impossible request."""
    global _warned_fallback
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown deformable-attention backend {backend!r}; choose one of {BACKENDS} or None")
    kernel = "cuda" if device.type == "cuda" else "cpu" if device.type == "cpu" else None
    if backend is None:
        if kernel is not None and (_library.has_cuda_kernel() if kernel == "cuda" else _library.has_cpu_kernel()):
            return kernel
        if kernel is not None and not _warned_fallback:
            _warned_fallback = True
            warnings.warn(f"multi-scale deformable attention: no compiled {kernel.upper()} kernel "
                          f"({_library.load()[1]}); using the slower pure-PyTorch path. To speed it up, "
                          f"{_library.BUILD_HINT}", RuntimeWarning, stacklevel=3)
        return "pytorch"
    if backend == "pytorch":
        return backend
    if backend != kernel:
        hint = f"use backend={kernel!r}, 'pytorch' or None" if kernel else "use backend='pytorch'"
        raise ValueError(f"deformable-attention backend {backend!r} cannot run tensors on {device}; {hint}")
    if not (_library.has_cuda_kernel() if kernel == "cuda" else _library.has_cpu_kernel()):
        raise RuntimeError(f"deformable-attention backend {backend!r} is not built ({_library.load()[1]}); "
                           f"{_library.BUILD_HINT}")
    return backend


def ms_deform_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, sampling_locations: Tensor,
                   attention_weights: Tensor, im2col_step: int = 64, backend: Optional[str] = None) -> Tensor:
    """Multi-scale deformable attention core.

    value: (B, S, M, D); spatial_shapes: (L, 2) as (H, W); level_start_index: (L,);
    sampling_locations: (B, Q, M, L, P, 2) as (x, y) in [0, 1]; attention_weights: (B, Q, M, L, P).
    Returns (B, Q, M * D) in value's dtype.

    backend: None picks the compiled kernel for the device when built, else the pure-PyTorch path (warning once);
    'pytorch', 'cpu' or 'cuda' force one. im2col_step is accepted for compatibility; the kernels need no batch
    chunking.
    """
    del im2col_step
    chosen = resolve_backend(value.device, backend)
    if chosen == "pytorch":
        return ms_deform_attn_reference(value, spatial_shapes, sampling_locations, attention_weights)
    # One compute dtype: mixed inputs (e.g. fp16 value, fp32 weights under AMP) are promoted; on the CPU,
    # fp16/bf16 run in fp32.
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    if chosen == "cpu" and dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    index = dict(device=value.device, dtype=torch.long)
    out = _MSDeformAttnKernel.apply(value.to(dtype).contiguous(), spatial_shapes.to(**index).contiguous(),
                                    level_start_index.to(**index).contiguous(),
                                    sampling_locations.to(dtype).contiguous(), attention_weights.to(dtype).contiguous())
    return out.to(value.dtype)
