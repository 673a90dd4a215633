"""Attention masks against a direct row-by-row construction of the reference's rules, and grouped attention."""
from __future__ import annotations

import pytest
import torch

from models.clickpose.decoder import DecoderLayer
from models.clickpose.encoder import EncoderState
from models.clickpose.queries import (box_stage_dn_mask, group_block_mask, interleave_groups, keypoint_stage_dn_mask,
                                      split_groups)


def _loop_box_stage(num_gt: list[int], num_dn: int, num_queries: int) -> torch.Tensor:
    total = num_dn + num_queries
    mask = torch.zeros(len(num_gt), total, total, dtype=torch.bool)
    mask[:, num_dn:, :num_dn] = True
    for image, n in enumerate(num_gt):
        if n == 0:
            continue
        for row in range(num_dn):
            start, end = (row // n) * n, (row // n + 1) * n
            mask[image, row, :start] = True
            mask[image, row, end:num_dn] = True
    return mask


def _loop_keypoint_stage(num_gt: list[int], num_dn: int, num_groups: int, size: int) -> torch.Tensor:
    dn_len, match_len = num_dn * size, num_groups * size
    mask = torch.zeros(len(num_gt), dn_len + match_len, dn_len + match_len, dtype=torch.bool)
    mask[:, dn_len:, :dn_len] = True
    for row in range(match_len):
        start, end = (row // size) * size, (row // size + 1) * size
        mask[:, dn_len + row, dn_len:dn_len + start] = True
        mask[:, dn_len + row, dn_len + end:] = True
    for image, n in enumerate(num_gt):
        if n == 0:
            continue
        for row in range(dn_len):
            start, end = (row // size) * size, (row // size + 1) * size
            mask[image, row, :start] = True
            mask[image, row, end:dn_len] = True
    return mask


@pytest.mark.parametrize("num_gt", [[3, 1], [0, 7], [60, 50], [4]])
def test_box_stage_mask_matches_the_row_rules(num_gt):
    nheads, num_dn, num_queries = 3, 50, 20
    mask = box_stage_dn_mask(torch.tensor(num_gt), num_dn, num_queries, nheads)
    expected = _loop_box_stage(num_gt, num_dn, num_queries)
    assert mask.shape == (len(num_gt) * nheads, num_dn + num_queries, num_dn + num_queries)
    assert torch.equal(mask, expected.repeat_interleave(nheads, 0))


@pytest.mark.parametrize("num_gt,keypoints", [([3, 0], 17), ([2], 14), ([0, 0], 17)])
def test_keypoint_stage_mask_matches_the_row_rules(num_gt, keypoints):
    nheads, num_dn, num_groups = 2, 5, 4
    mask = keypoint_stage_dn_mask(torch.tensor(num_gt), num_dn, num_groups, keypoints + 1, nheads)
    expected = _loop_keypoint_stage(num_gt, num_dn, num_groups, keypoints + 1)
    assert torch.equal(mask, expected.repeat_interleave(nheads, 0))


def test_group_block_mask_is_block_diagonal_and_cached():
    mask = group_block_mask(4, 18)
    expected = _loop_keypoint_stage([0], 0, 4, 18)[0]
    assert torch.equal(mask, expected)
    assert group_block_mask(4, 18) is mask


def test_interleave_and_split_are_inverse():
    box, keypoints = torch.randn(2, 3, 5), torch.randn(2, 3, 4, 5)
    queries = interleave_groups(box, keypoints)
    assert queries.shape == (2, 15, 5)
    assert torch.equal(queries[:, 5], box[:, 1])
    assert torch.equal(queries[:, 6:10], keypoints[:, 1])
    back_box, back_kpt = split_groups(queries, 4)
    assert torch.equal(back_box, box) and torch.equal(back_kpt, keypoints)


def test_grouped_self_attention_equals_the_block_masked_attention():
    torch.manual_seed(0)
    d_model, heads, groups, size = 32, 4, 5, 6
    layer = DecoderLayer(d_model, 64, 0.0, "relu", n_levels=1, n_heads=heads, n_points=2).eval()
    memory = torch.randn(2, 12, d_model)
    state = EncoderState(memory, torch.zeros(2, 12, dtype=torch.bool), torch.tensor([[3, 4]]), torch.tensor([0]),
                         torch.ones(2, 1, 2))
    tgt, pos = torch.randn(2, groups * size, d_model), torch.randn(2, groups * size, d_model)
    refs = torch.rand(2, groups * size, 1, 4)
    mask = group_block_mask(groups, size)[None].expand(2 * heads, -1, -1)
    with torch.no_grad():
        masked = layer(tgt, pos, refs, state, attn_mask=mask)
        grouped = layer(tgt, pos, refs, state, group_size=size)
        unmasked = layer(tgt, pos, refs, state)
    torch.testing.assert_close(grouped, masked, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked, masked, atol=1e-3)
