"""The ``MSDeformAttn`` module (parameter names and initialisation as Deformable DETR)."""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .function import ms_deform_attn


class MSDeformAttn(nn.Module):
    """Each query attends to ``n_points`` sampled locations per head and per feature level.

    Args:
        d_model: channels; n_levels: feature levels; n_heads: heads; n_points: samples per head and level.
        im2col_step: accepted for compatibility with Deformable DETR's signature and ignored (the kernels need no
            batch chunking). backend: None (automatic) or a backend name.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 im2col_step: int = 64, backend: Optional[str] = None):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        head_dim = d_model // n_heads
        if head_dim & (head_dim - 1):
            warnings.warn(f"MSDeformAttn head dimension {head_dim} is not a power of 2; the CUDA kernel is slower")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.im2col_step = im2col_step
        self.backend = backend
        samples_per_query = n_heads * n_levels * n_points
        self.sampling_offsets = nn.Linear(d_model, 2 * samples_per_query)  # (dx, dy) per sample
        self.attention_weights = nn.Linear(d_model, samples_per_query)
        self.value_proj, self.output_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        # Head h initially looks along direction 2*pi*h/n_heads, point p at distance p+1 (in cells).
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1) * scale
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Tensor, input_spatial_shapes: Tensor,
                input_level_start_index: Tensor, input_padding_mask: Optional[Tensor] = None) -> Tensor:
        """
        query: (B, Q, C); reference_points: (B, Q, L, 2) points or (B, Q, L, 4) boxes (cx, cy, w, h), in [0, 1];
        input_flatten: (B, S, C); input_spatial_shapes: (L, 2) long (H, W); input_level_start_index: (L,);
        input_padding_mask: (B, S) True on padding. Returns (B, Q, C).
        """
        value = self.project_value(input_flatten, input_padding_mask)
        return self.attend(query, reference_points, value, input_spatial_shapes, input_level_start_index)

    def project_value(self, input_flatten: Tensor, input_padding_mask: Optional[Tensor] = None) -> Tensor:
        """The attended values: (B, S, C) -> (B, S, heads, C / heads), zero on padding. It depends only on the
        input, so a caller that attends to the same input many times can compute it once (see ``attend``)."""
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        return value.view(*value.shape[:2], self.n_heads, self.d_model // self.n_heads)

    def attend(self, query: Tensor, reference_points: Tensor, value: Tensor, input_spatial_shapes: Tensor,
               input_level_start_index: Tensor) -> Tensor:
        """The query side: sampling offsets and weights from ``query``, sampling of ``value`` (from
        :meth:`project_value`), output projection. Shapes as :meth:`forward`."""
        batch, num_queries, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = F.softmax(weights, -1).view(batch, num_queries, heads, levels, points)
        if reference_points.shape[-1] == 2:
            # offsets are in cells of each level: normalise by (W_l, H_l)
            normalizer = input_spatial_shapes.flip(-1).to(offsets.dtype)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # offsets are relative to the reference box: at most half its size per point
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points must end in 2 or 4 values, got {reference_points.shape[-1]}")
        out = ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations, weights,
                             backend=self.backend)
        return self.output_proj(out)
