"""The original's Swin Transformer backbones (Liu et al. 2021), with its state-dict keys.

Written here rather than taken from timm: timm's block rolls the feature map before padding it to the window size,
the original pads first, so their outputs differ whenever a side is not a multiple of the window (almost every
detection input); timm also has no per-level output norms and no ``dilation`` variant (docs/deviations.md).

Keys (under ``backbone.0``): ``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}.{norm1,attn,norm2,mlp}``,
``layers.{i}.downsample.{norm,reduction}``, ``norm{i}`` for each returned level.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

from util.config import ConfigError
from util.misc import NestedTensor

from .common import with_masks
from .weights import load_fitting, read_state_dict

SHIFT_MASK_VALUE = -100.0  # the original's additive mask between regions of a shifted window (not -inf)


@dataclass(frozen=True)
class SwinConfig:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    pretrain_img_size: int


SWIN_CONFIGS = {
    "swin_T_224_1k": SwinConfig(96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224),
    "swin_B_224_22k": SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 224),
    "swin_B_384_22k": SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384),
    "swin_L_224_22k": SwinConfig(192, (2, 2, 18, 2), (6, 12, 24, 48), 7, 224),
    "swin_L_384_22k": SwinConfig(192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384),
}
WEIGHTS_HINT = ("expected an official Swin Transformer release file ({'model': state dict}, e.g. "
                "swin_tiny_patch4_window7_224.pth for swin_T_224_1k) whose window size and widths match the backbone")


def relative_position_index(window: int) -> Tensor:
    """(w*w, w*w) index into the (2w-1)^2 bias table of the offset between two tokens of a window."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` -> (B * windows, window * window, C), row-major windows."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C)


def window_merge(windows: Tensor, window: int, B: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`window_partition`."""
    x = windows.view(B, H // window, W // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, -1)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> Tensor:
    """(windows, w*w, w*w) additive mask for a map padded to ``height`` x ``width``: after the cyclic shift, tokens
    from different regions of the padded map must not attend to each other."""
    def region(size: int) -> Tensor:
        index = torch.arange(size, device=device)
        return (index >= size - window).long() + (index >= size - shift).long()

    label = (region(height)[:, None] * 3 + region(width)[None, :]).float()
    label = window_partition(label[None, :, :, None], window).squeeze(-1)
    differs = label[:, :, None] != label[:, None, :]
    return torch.zeros(differs.shape, device=device).masked_fill(differs, SHIFT_MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative-position bias."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        """x: (B * windows, N, C); mask: (windows, N, N) additive, or None."""
        B_, N, C = x.shape
        q, k, v = self.qkv(x).view(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(N, N, self.num_heads).permute(2, 0, 1)  # (heads, N, N)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        else:
            windows = mask.shape[0]
            per_window = (bias[None] + mask[:, None]).to(q.dtype)  # (windows, heads, N, N)
            q, k, v = (t.view(B_ // windows, windows, self.num_heads, N, -1) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=per_window)
        return self.proj(out.reshape(B_, self.num_heads, N, -1).transpose(1, 2).reshape(B_, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, each with a residual and stochastic depth.

    The normalised map is padded with zeros to whole windows, then shifted (the original's order: the padding
    tokens take part in the attention and wrap around with the shift)."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, drop_path: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.drop_path = StochasticDepth(drop_path, "row")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: Tensor, height: int, width: int, shift_mask: Tensor) -> Tensor:
        B, _, C = x.shape
        w = self.window
        y = F.pad(self.norm1(x).view(B, height, width, C), (0, 0, 0, -width % w, 0, -height % w))
        Hp, Wp = y.shape[1:3]
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = self.attn(window_partition(y, w), shift_mask if self.shift else None)
        y = window_merge(y, w, B, Hp, Wp)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + self.drop_path(y[:, :height, :width].reshape(B, height * width, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhoods -> one token with twice the channels (odd sides padded with zeros)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        B, _, C = x.shape
        x = F.pad(x.view(B, height, width, C), (0, 0, 0, width % 2, 0, height % 2))
        # channel order of the original (and of the released weights): (0,0), (1,0), (0,1), (1,1)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window: int, drop_paths: Sequence[float],
                 downsample: bool, use_checkpoint: bool):
        super().__init__()
        self.window, self.shift = window, window // 2
        self.blocks = nn.ModuleList(SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else self.shift, drop_paths[i])
                                    for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None
        self.use_checkpoint = use_checkpoint

    def forward(self, x: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, int, int]:
        """Returns (this stage's tokens, the next stage's tokens, the next stage's height and width)."""
        padded = (-(-height // self.window) * self.window, -(-width // self.window) * self.window)
        mask = shifted_window_mask(*padded, self.window, self.shift, x.device).to(x.dtype)
        recompute = self.use_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                x = checkpoint(block, x, height, width, mask, use_reentrant=False)
            else:
                x = block(x, height, width, mask)
        if self.downsample is None:
            return x, x, height, width
        return x, self.downsample(x, height, width), (height + 1) // 2, (width + 1) // 2


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: Tensor) -> Tensor:
        H, W = images.shape[-2:]
        x = self.proj(F.pad(images, (0, -W % self.patch, 0, -H % self.patch)))
        return self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(x.shape)


class SwinBackbone(nn.Module):
    """Multi-scale Swin features; returns ``{str(index): NestedTensor}`` for ``return_interm_indices``.

    ``dilation`` drops the last patch merging: the last stage runs at stride 16 with the third stage's width.
    Stochastic depth rises linearly to ``drop_path_rate`` (0.2, the original's) over the blocks.
    """

    default_trainable = None  # every parameter trains (the original freezes none by default)

    def __init__(self, name: str, return_interm_indices: Sequence[int], dilation: bool = False,
                 weights_path: Optional[str] = None, use_checkpoint: bool = False, drop_path_rate: float = 0.2,
                 config: Optional[SwinConfig] = None):
        super().__init__()
        if config is None and name not in SWIN_CONFIGS:
            raise ConfigError(f"backbone {name!r} is not a Swin; choose one of {sorted(SWIN_CONFIGS)}")
        cfg = config or SWIN_CONFIGS[name]  # ``config``: other sizes (small ones for tests)
        self.out_indices = [int(i) for i in return_interm_indices]
        if not self.out_indices or any(i not in range(len(cfg.depths)) for i in self.out_indices):
            raise ConfigError(f"return_interm_indices for {name} must be stage indices in 0..3, got "
                              f"{list(return_interm_indices)}")
        widths = [cfg.embed_dim * 2 ** i for i in range(len(cfg.depths))]
        downsample = [i < len(widths) - 1 for i in range(len(widths))]
        if dilation:
            widths[-1], downsample[-2] = widths[-2], False
        drop_paths = torch.linspace(0, drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        self.patch_embed = PatchEmbed(cfg.embed_dim)
        self.layers = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            start = sum(cfg.depths[:i])
            self.layers.append(SwinStage(widths[i], depth, cfg.num_heads[i], cfg.window_size,
                                         drop_paths[start:start + depth], downsample[i], use_checkpoint))
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(widths[i]))
        self.num_features = widths
        self.num_channels = [widths[i] for i in self.out_indices]
        self.dilation = dilation
        if weights_path is not None:
            self.load_release_weights(weights_path)

    def load_release_weights(self, path: str) -> list[str]:
        """An official Swin release file: its classifier (``head``), final ``norm`` and stored ``attn_mask`` are
        ignored; the per-level ``norm{i}`` start fresh (the original's strict=False load); with ``dilation`` the
        last stage and the dropped patch merging start fresh too. Returns the keys left at their initial values."""
        def ignore(key: str) -> bool:
            dilated = self.dilation and (key.startswith("layers.3.") or key.startswith("layers.2.downsample."))
            return key.startswith(("head.", "norm.")) or key.endswith("attn_mask") or dilated

        def may_miss(key: str) -> bool:
            return key.split(".")[0] in {f"norm{i}" for i in self.out_indices} or (
                self.dilation and key.startswith("layers.3."))

        return load_fitting(self, read_state_dict(path, WEIGHTS_HINT), path, WEIGHTS_HINT, ignore, may_miss)

    def forward(self, samples: NestedTensor) -> dict[str, NestedTensor]:
        x = self.patch_embed(samples.tensors)
        height, width = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        features = []
        for i, stage in enumerate(self.layers):
            out, x, next_height, next_width = stage(x, height, width)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                features.append((str(i), out.view(-1, height, width, out.shape[-1]).permute(0, 3, 1, 2).contiguous()))
            height, width = next_height, next_width
        return with_masks(features, samples.mask)
