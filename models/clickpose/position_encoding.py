"""Sine position encodings: of image feature maps (``PositionEmbeddingSineHW``) and of query boxes.

Both map a coordinate c to ``[sin(c/t_0), cos(c/t_1), sin(c/t_2), ...]`` with ``t_i = T^(2*(i//2)/F)``.
"""
from __future__ import annotations

import math
import torch
from torch import Tensor, nn

from util.misc import NestedTensor
from util.settings import BackboneCfg


def _frequencies(num_feats: int, temperature: float, device: torch.device) -> Tensor:
    """(F,) divisors ``temperature ** (2 * (i // 2) / F)``."""
    index = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)


def _interleaved_sine(scaled: Tensor, freqs: Tensor) -> Tensor:
    """(...,) coordinates -> (..., F): sine on even channels, cosine on odd channels."""
    phase = scaled[..., None] / freqs
    return torch.stack((phase[..., 0::2].sin(), phase[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSineHW(nn.Module):
    """Normalised sine encoding of (y, x) on the unpadded area, separate temperatures for H and W.

    Returns (B, 2 * num_pos_feats, H, W): the y features, then the x features.
    """

    def __init__(self, num_pos_feats: int = 128, temperatureH: float = 20, temperatureW: float = 20,
                 normalize: bool = True, scale: float | None = None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSineHW: a scale needs normalize=True")
        self.scale = 2 * math.pi if scale is None else scale
        self.normalize = normalize
        self.num_pos_feats = num_pos_feats
        self.temperatureH, self.temperatureW = temperatureH, temperatureW

    def forward(self, tensor_list: NestedTensor) -> Tensor:
        mask = tensor_list.mask
        if mask is None:
            raise ValueError("PositionEmbeddingSineHW needs the padding mask of the NestedTensor")
        y = _running_count(~mask, 1, self.scale if self.normalize else None)
        x = _running_count(~mask, 2, self.scale if self.normalize else None)
        device = mask.device
        pos_x = _interleaved_sine(x, _frequencies(self.num_pos_feats, self.temperatureW, device))
        pos_y = _interleaved_sine(y, _frequencies(self.num_pos_feats, self.temperatureH, device))
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def _running_count(valid: Tensor, dim: int, scale: float | None) -> Tensor:
    """1-based index of each valid pixel along ``dim``; with ``scale``, divided by the valid extent (+1e-6) and
    multiplied by ``scale``, so the last valid pixel maps to ~``scale``."""
    count = valid.cumsum(dim, dtype=torch.float32)
    if scale is None:
        return count
    extent = count.narrow(dim, count.shape[dim] - 1, 1)
    return count / (extent + 1e-6) * scale


def query_sine_embedding(boxes: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """(..., 4) boxes (cx, cy, w, h) or (..., 2) points in [0, 1] -> (..., 4F) or (..., 2F).

    Channel order is (y, x, w, h) (the reference's order, which its checkpoints depend on).
    """
    freqs = _frequencies(num_feats, temperature, boxes.device)
    scaled = boxes * (2 * math.pi)
    parts = [_interleaved_sine(scaled[..., 1], freqs), _interleaved_sine(scaled[..., 0], freqs)]
    if boxes.shape[-1] == 4:
        parts += [_interleaved_sine(scaled[..., 2], freqs), _interleaved_sine(scaled[..., 3], freqs)]
    elif boxes.shape[-1] != 2:
        raise ValueError(f"query_sine_embedding expects 2 or 4 coordinates, got {boxes.shape[-1]}")
    return torch.cat(parts, dim=-1)


def build_position_encoding(cfg: BackboneCfg) -> PositionEmbeddingSineHW:
    """The feature-map encoding of the backbone section (``hidden_dim``, ``position_embedding``, temperatures)."""
    if cfg.position_embedding not in ("sine", "v2"):
        raise ValueError(f"position_embedding {cfg.position_embedding!r} is not supported; use 'sine'")
    return PositionEmbeddingSineHW(cfg.hidden_dim // 2, temperatureH=cfg.temperature_h,
                                   temperatureW=cfg.temperature_w, normalize=True)
