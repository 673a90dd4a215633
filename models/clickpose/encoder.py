"""Deformable encoder (post-norm layers over the flattened multi-scale features) and two-stage proposals."""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from .layers import activation_fn
from .ops import MSDeformAttn


class EncoderLayer(nn.Module):
    """``x = norm1(x + MSDeformAttn(x + pos)); x = norm2(x + FFN(x))``."""

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4, msda_backend: Optional[str] = None):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, backend=msda_backend)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1, self.linear2 = nn.Linear(d_model, d_ffn), nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.activation = activation_fn(activation)
        self.dropout = nn.Dropout(dropout)  # stateless: one module serves every residual branch

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout(attended))
        hidden = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout(hidden))


def encoder_reference_points(spatial_shapes: Tensor, valid_ratios: Tensor) -> Tensor:
    """Cell centres of every level, normalised by the valid area, seen from every level.

    spatial_shapes: (L, 2) (H, W); valid_ratios: (B, L, 2) (w, h). Returns (B, S, L, 2) as (x, y).
    """
    per_level = []
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        ys = torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=valid_ratios.device)
        xs = torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=valid_ratios.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        ref_y = grid_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        ref_x = grid_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        per_level.append(torch.stack((ref_x, ref_y), -1))
    points = torch.cat(per_level, 1)
    return points[:, :, None] * valid_ratios[:, None]


class Encoder(nn.Module):
    """A stack of identical (deep-copied) ``EncoderLayer``s; returns the memory (B, S, C)."""

    def __init__(self, layer: EncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                valid_ratios: Tensor, padding_mask: Tensor) -> Tensor:
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src


def encoder_output_proposals(memory: Tensor, padding_mask: Tensor, spatial_shapes: Tensor,
                             base_size: float = 0.05) -> tuple[Tensor, Tensor]:
    """One square proposal per encoder token, in logit space; invalid tokens get +inf and zero memory.

    A token's proposal is centred on its cell (normalised by the valid size), with side ``base_size * 2**level``.
    A proposal is invalid on padding or when any coordinate leaves (0.01, 0.99).
    memory: (B, S, C); padding_mask: (B, S). Returns (memory (B, S, C), proposals (B, S, 4) unsigmoided).
    """
    batch = memory.shape[0]
    proposals = []
    start = 0
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        level_mask = padding_mask[:, start:start + height * width].view(batch, height, width)
        valid_h = torch.sum(~level_mask[:, :, 0], 1)
        valid_w = torch.sum(~level_mask[:, 0, :], 1)
        ys = torch.linspace(0, height - 1, height, dtype=torch.float32, device=memory.device)
        xs = torch.linspace(0, width - 1, width, dtype=torch.float32, device=memory.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((grid_x, grid_y), -1)
        scale = torch.stack((valid_w, valid_h), -1).view(batch, 1, 1, 2)
        centres = (grid.unsqueeze(0).expand(batch, -1, -1, -1) + 0.5) / scale
        sizes = torch.ones_like(centres) * base_size * (2.0 ** level)
        proposals.append(torch.cat((centres, sizes), -1).view(batch, -1, 4))
        start += height * width
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    invalid = padding_mask.unsqueeze(-1) | ~valid
    proposals = proposals.masked_fill(invalid, float("inf"))
    memory = memory.masked_fill(invalid, 0.0)
    return memory, proposals


class EncoderState:
    """Everything about an image batch that the decoder, and every click refinement, reads without change.

    memory: (B, S, C); padding_mask: (B, S) True on padding; spatial_shapes: (L, 2) long (H, W);
    level_start_index: (L,) long; valid_ratios: (B, L, 2) (w, h) fraction of each level that is not padding.

    It also caches what depends only on the image, computed on first use: each cached decoder layer's projected and
    masked encoder memory (:meth:`projected_value`, the bulk of a refinement's work otherwise) and the reference-point
    scale. The cache holds for the weights it was computed with: after changing the model's weights, encode again.
    ``cache_values=False`` (or :meth:`uncached`) recomputes everything on each use (the reference's behaviour).
    """

    __slots__ = ("memory", "padding_mask", "spatial_shapes", "level_start_index", "valid_ratios", "cache_values",
                 "_values", "_reference_scale")

    def __init__(self, memory: Tensor, padding_mask: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                 valid_ratios: Tensor, cache_values: bool = True):
        self.memory = memory
        self.padding_mask = padding_mask
        self.spatial_shapes = spatial_shapes
        self.level_start_index = level_start_index
        self.valid_ratios = valid_ratios
        self.cache_values = cache_values
        self._values: dict[tuple[nn.Module, bool], Tensor] = {}
        self._reference_scale: Optional[Tensor] = None

    @property
    def batch_size(self) -> int:
        return self.memory.shape[0]

    @property
    def reference_scale(self) -> Tensor:
        """(B, 1, L, 4) factor that maps (cx, cy, w, h) references in [0, 1] of the valid area onto every level."""
        if self._reference_scale is None:  # depends on the image only, never on the weights
            self._reference_scale = torch.cat((self.valid_ratios, self.valid_ratios), -1)[:, None]
        return self._reference_scale

    def projected_value(self, attention: nn.Module, cache: bool = True) -> Tensor:
        """``attention.project_value(memory, padding_mask)``, computed once per attention module (and grad mode)
        when ``cache`` and :attr:`cache_values` are set. (B, S, heads, C / heads)."""
        if not (cache and self.cache_values):
            return attention.project_value(self.memory, self.padding_mask)
        key = (attention, torch.is_grad_enabled())
        value = self._values.get(key)
        if value is None:
            value = self._values[key] = attention.project_value(self.memory, self.padding_mask)
        return value

    def cache_bytes(self) -> int:
        """Memory held by the cache (bytes), beyond the encoder state itself."""
        return sum(v.numel() * v.element_size() for v in self._values.values())

    def clear_cache(self) -> None:
        self._values.clear()
        self._reference_scale = None

    def uncached(self) -> "EncoderState":
        """The same image state with caching off: every use recomputes (for comparisons and benchmarks)."""
        return EncoderState(self.memory, self.padding_mask, self.spatial_shapes, self.level_start_index,
                            self.valid_ratios, cache_values=False)

    def detach(self) -> "EncoderState":
        """A copy whose memory carries no gradient (e.g. to run interactive rounds without the encoder graph);
        its cache starts empty."""
        return EncoderState(self.memory.detach(), self.padding_mask, self.spatial_shapes, self.level_start_index,
                            self.valid_ratios, self.cache_values)
