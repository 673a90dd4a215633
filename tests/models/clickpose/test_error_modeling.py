"""Pose-error-modeling queries: the reference's noise distributions, checked statistically."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from datasets.metadata import default_metadata_for_num_keypoints
from models.clickpose.error_modeling import (build_denoising_queries, clicked_count_probabilities,
                                             clicked_keypoint_mask, draw_clicked_counts, sample_instances)
from util.settings import model_settings

from tests.helpers import make_targets

K = 17


def _embeddings(k: int = K):
    torch.manual_seed(0)
    return nn.Embedding(101, 8), nn.Embedding(k + 1, 8)


def _build(targets, gen, k=K, clicked_subset=True, flip_pairs=(), sigmas=None, error_types=(), error_prob=0.0):
    """50 queries per image over K keypoints and 2 classes; the other settings are the config file's."""
    label_enc, label_enc_pose = _embeddings(k)
    cfg = replace(model_settings({"num_body_points": k}).denoising, number=50, num_classes=2,
                  error_types=tuple(error_types), error_prob=error_prob)
    return build_denoising_queries(targets, cfg, label_enc, label_enc_pose, clicked_subset=clicked_subset,
                                   flip_pairs=flip_pairs, sigmas=sigmas, generator=gen)


def test_clicked_count_distribution_follows_inverse_square(gen):
    probs = clicked_count_probabilities(K)
    total = sum(1 / k ** 2 for k in range(1, K + 1))  # 1.5878
    assert probs[0].item() == pytest.approx(1 / total, abs=1e-9)  # 0.6298
    assert probs[2].item() == pytest.approx(1 / 9 / total, abs=1e-9)
    counts = draw_clicked_counts(200, 100, K, torch.device("cpu"), gen)
    assert counts.min() >= 1 and counts.max() <= K
    freq = torch.bincount(counts.flatten() - 1, minlength=K).double() / counts.numel()
    assert torch.allclose(freq, probs, atol=0.005)


def test_clean_keypoints_are_k_draws_with_replacement(gen):
    counts = torch.full((400, 50), 3)
    clean = clicked_keypoint_mask(counts, K, gen)
    distinct = clean.sum(-1).double()
    assert distinct.min() >= 1 and distinct.max() <= 3
    expected = K * (1 - (1 - 1 / K) ** 3)  # mean number of distinct indices among 3 draws
    assert distinct.mean().item() == pytest.approx(expected, abs=0.02)
    assert clean.double().mean(dim=(0, 1)).std() < 0.01  # every keypoint equally likely


def test_instances_tile_the_ground_truth_then_pick_randomly(gen):
    picks = sample_instances(torch.tensor([3, 1, 60]), 50, gen)
    assert torch.equal(picks[0, :48], torch.arange(48) % 3)
    assert picks[0, 48:].max() < 3
    assert (picks[1] == 0).all()
    assert picks[2].max() < 60 and len(picks[2].unique()) > 20


def test_noise_bounds_labels_and_clean_keypoints(gen):
    targets = make_targets([4, 0, 2], K, gen)
    dn = _build(targets, gen)
    assert dn.content.shape == (3, 50, 8) and dn.keypoint_content.shape == (3, 50, K, 8)
    # targets are the clean, tiled ground truth; the empty image gets "no object" instances
    assert torch.equal(dn.boxes[0, :4], targets[0]["boxes"]) and torch.equal(dn.keypoints[2, :2], targets[2]["keypoints"])
    assert (dn.labels[1] == 2).all() and (dn.labels[0] == 1).all()
    noised = dn.boxes_unsigmoid.sigmoid()  # exact up to the logit's 1e-3 clamp
    spread = torch.cat((dn.boxes[..., 2:] / 2, dn.boxes[..., 2:]), -1) * 0.4
    assert ((noised - dn.boxes).abs() <= spread + 2e-3).all()
    gt_xy = dn.keypoints[..., :2 * K].view(3, 50, K, 2)
    kpt_spread = noised[..., 2:][:, :, None] / 2 * 0.4
    moved = (dn.keypoint_xy - gt_xy).abs()
    assert (moved <= kpt_spread + 1e-6).all()
    untouched = (moved == 0).all(-1)  # the clean ("clicked") keypoints of the real instances
    assert untouched[[0, 2]].any(-1).float().mean() > 0.99


def test_label_noise_rates(gen):
    targets = make_targets([5] * 20, K, gen)
    dn = _build(targets, gen)
    label_ids = (dn.content[..., None, :] == _embeddings()[0].weight).all(-1).float().argmax(-1)
    changed = (label_ids != 1).float().mean().item()
    assert changed == pytest.approx(0.5 * 99 / 100, abs=0.04)  # a random id hits 1 with chance 1/100
    type_ids = (dn.keypoint_content[..., None, :] == _embeddings()[1].weight).all(-1).float().argmax(-1)
    assert type_ids.max() <= K and type_ids.min() >= 0
    changed_types = (type_ids != torch.arange(1, K + 1)).float().mean().item()
    assert changed_types == pytest.approx(0.5 * (K - 1) / K, abs=0.02)


def test_without_human_feedback_every_keypoint_is_noised(gen):
    targets = make_targets([5, 5], K, gen)
    dn = _build(targets, gen, clicked_subset=False)
    gt_xy = dn.keypoints[..., :2 * K].view(2, 50, K, 2)
    inside = (gt_xy > 0) & (gt_xy < 1)
    assert ((dn.keypoint_xy != gt_xy) | ~inside).all()


def test_error_types_are_off_by_default_and_do_what_they_say(gen):
    meta = default_metadata_for_num_keypoints(K)
    targets = make_targets([5, 3], K, gen)
    state = gen.get_state()
    base = _build(targets, gen)
    gen.set_state(state)
    off = _build(targets, gen, error_types=["jitter"], error_prob=0.0)
    assert torch.equal(base.keypoint_xy, off.keypoint_xy)

    gt_xy = base.keypoints[..., :2 * K].view(2, 50, K, 2)
    visible = base.keypoints[..., 2 * K:].view(2, 50, K) > 0
    partner = torch.tensor(meta.flip_permutation())
    gen.set_state(state)
    inverted = _build(targets, gen, error_types=["inversion"], error_prob=1.0, flip_pairs=meta.flip_pairs,
                      sigmas=meta.sigmas)
    changed = (inverted.keypoint_xy != base.keypoint_xy).any(-1)
    has_partner = (partner != torch.arange(K)) & visible[:, :, partner] & visible
    assert changed[has_partner].float().mean() > 0.5
    assert not changed[~has_partner].any()
    near_partner = (inverted.keypoint_xy - gt_xy[:, :, partner]).abs() <= (base.keypoint_xy - gt_xy).abs() + 1e-6
    assert near_partner[changed].all()

    gen.set_state(state)
    jittered = _build(targets, gen, error_types=["jitter"], error_prob=1.0, sigmas=meta.sigmas)
    moved = ((jittered.keypoint_xy - gt_xy) ** 2).sum(-1)
    area = (base.boxes[..., 2] * base.boxes[..., 3])[..., None]
    similarity = torch.exp(-moved / (2 * area * (2 * torch.tensor(meta.sigmas)) ** 2))
    hit = (jittered.keypoint_xy != base.keypoint_xy).any(-1) & (jittered.keypoint_xy > 0).all(-1) \
        & (jittered.keypoint_xy < 1).all(-1)
    assert hit.sum() > 50
    assert ((similarity[hit] > 0.5 - 1e-4) & (similarity[hit] < 0.85 + 1e-4)).all()

    gen.set_state(state)
    swapped = _build(targets, gen, error_types=["swap"], error_prob=1.0)
    changed = (swapped.keypoint_xy != base.keypoint_xy).any(-1)
    assert changed.any()
    noise = base.keypoint_xy - gt_xy
    # a swapped keypoint sits at the same joint of another person of its image (plus its own noise)
    other_joints = [targets[i]["keypoints"][:, :2 * K].view(-1, K, 2) for i in range(2)]
    for image in range(2):
        for slot, joint in changed[image].nonzero().tolist():
            anchor = swapped.keypoint_xy[image, slot, joint] - noise[image, slot, joint]
            distances = (other_joints[image][:, joint] - anchor).abs().amax(-1)
            assert distances.min() < 1e-5


def test_unknown_error_type_is_a_clear_error(gen):
    with pytest.raises(ValueError, match="unknown entries"):
        _build(make_targets([2], K, gen), gen, error_types=["teleport"], error_prob=0.5)
