"""Pure-PyTorch multi-scale deformable attention: always available, the correctness oracle."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def ms_deform_attn_reference(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                             attention_weights: Tensor) -> Tensor:
    """Bilinearly sample each level at the given locations and sum with the attention weights.

    value: (B, S, M, D) with S = sum_l H_l * W_l; spatial_shapes: (L, 2) as (H, W);
    sampling_locations: (B, Q, M, L, P, 2) as (x, y) in [0, 1]; attention_weights: (B, Q, M, L, P).
    Returns (B, Q, M * D). Sampling equals ``grid_sample(align_corners=False, padding_mode='zeros')``.
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    per_level_values = value.split(sizes, dim=1)
    grids = sampling_locations * 2 - 1  # grid_sample wants [-1, 1]
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes.tolist()):
        # (B, H*W, M, D) -> (B*M, D, H, W)
        level_value = per_level_values[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, int(h), int(w))
        # (B, Q, M, P, 2) -> (B*M, Q, P, 2)
        level_grid = grids[:, :, :, level].permute(0, 2, 1, 3, 4).reshape(batch * heads, num_queries, num_points, 2)
        sampled.append(F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # (B*M, D, Q, P)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B*M, D, Q, L*P)
    weights = attention_weights.permute(0, 2, 1, 3, 4).reshape(batch * heads, 1, num_queries, num_levels * num_points)
    out = (stacked * weights).sum(-1)  # (B*M, D, Q)
    return out.view(batch, heads * head_dim, num_queries).transpose(1, 2).contiguous()
