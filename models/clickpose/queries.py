"""Query groups and self-attention masks of the decoder.

Layout: after the box layers, every person is a *group* of ``K + 1`` consecutive queries
``[box, keypoint_1, ..., keypoint_K]``; groups are laid out group-major, denoising groups first.
Masks are boolean, True = may NOT attend, shaped (B * nheads, L, L) batch-major, as ``nn.MultiheadAttention``
takes them. They are built from block-index comparisons (no loops over rows); static ones are cached.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


def interleave_groups(box: Tensor, keypoints: Tensor) -> Tensor:
    """box (B, G, C) + keypoints (B, G, K, C) -> (B, G * (K + 1), C) in the [box, kp_1..kp_K] group layout."""
    return torch.cat((box.unsqueeze(2), keypoints), dim=2).flatten(1, 2)


def split_groups(queries: Tensor, num_keypoints: int) -> tuple[Tensor, Tensor]:
    """(B, G * (K + 1), C) -> box (B, G, C), keypoints (B, G, K, C) (views)."""
    grouped = queries.unflatten(1, (-1, num_keypoints + 1))
    return grouped[:, :, 0], grouped[:, :, 1:]


def expand_to_heads(mask: Tensor, nheads: int) -> Tensor:
    """(B, L, L) -> (B * nheads, L, L), each image's mask repeated for its heads."""
    batch, rows, cols = mask.shape
    return mask[:, None].expand(batch, nheads, rows, cols).reshape(batch * nheads, rows, cols)


@lru_cache(maxsize=16)
def _block_diagonal(num_blocks: int, block_size: int, device: torch.device) -> Tensor:
    block = torch.arange(num_blocks * block_size, device=device) // block_size
    return block[:, None] != block[None, :]


def group_block_mask(num_groups: int, group_size: int, device: torch.device | str = "cpu") -> Tensor:
    """(L, L) with L = num_groups * group_size: each query sees only its own group (cached; do not modify)."""
    return _block_diagonal(num_groups, group_size, torch.device(device))


def box_stage_dn_mask(num_gt: Tensor, num_dn: int, num_queries: int, nheads: int) -> Tensor:
    """Training mask of the box layers over ``num_dn`` denoising queries followed by ``num_queries`` queries.

    Matching queries never see denoising ones. In an image with n >= 1 ground truths, denoising query i
    belongs to block ``i // n`` and sees only its own block among the denoising queries (all matching ones
    stay visible); in an image without ground truth the denoising queries are unmasked.
    num_gt: (B,) int. Returns (B * nheads, D + Q, D + Q).
    """
    device = num_gt.device
    total = num_dn + num_queries
    index = torch.arange(total, device=device)
    is_dn = index < num_dn
    match_sees_dn = (~is_dn)[:, None] & is_dn[None, :]  # (L, L), same for every image
    per_image_block = index[None, :] // num_gt.clamp(min=1)[:, None]  # (B, L)
    other_block = per_image_block[:, :, None] != per_image_block[:, None, :]
    dn_pair = (is_dn[:, None] & is_dn[None, :])[None] & (num_gt > 0)[:, None, None]
    mask = match_sees_dn[None] | (dn_pair & other_block)
    return expand_to_heads(mask, nheads)


def keypoint_stage_dn_mask(num_gt: Tensor, num_dn: int, num_groups: int, group_size: int, nheads: int) -> Tensor:
    """Training mask of the keypoint layers over ``num_dn`` denoising groups, then ``num_groups`` groups.

    Matching groups see only themselves. A denoising query sees only its own group among the denoising
    queries, plus every matching query; in an image without ground truth denoising queries are unmasked.
    num_gt: (B,) int. Returns (B * nheads, L, L) with L = (num_dn + num_groups) * group_size.
    """
    device = num_gt.device
    dn_len = num_dn * group_size
    total = dn_len + num_groups * group_size
    index = torch.arange(total, device=device)
    is_dn = index < dn_len
    other_group = _block_diagonal(num_dn + num_groups, group_size, device)
    match_rows = (~is_dn)[:, None] & (is_dn[None, :] | other_group)
    dn_rows_within_dn = is_dn[:, None] & is_dn[None, :] & other_group
    mask = match_rows[None] | (dn_rows_within_dn[None] & (num_gt > 0)[:, None, None])
    return expand_to_heads(mask, nheads)
