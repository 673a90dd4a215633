"""Pose error modeling: the denoising queries Click-Pose trains with (built for the whole batch at once).

Every image gets ``num_dn`` noised copies of its ground-truth people (the reference's recipe):
- instances: the GT list tiled ``num_dn // n`` times plus random extras (``num_dn`` random picks if n > num_dn);
  an image without people gets random boxes/keypoints labelled "no object" (class ``num_classes``);
- box label noise: with probability ``box_label_noise_ratio`` a label becomes a random id in [0, labelbook);
- keypoint-type noise: with probability ``kpt_label_noise_ratio`` a keypoint query's type id (1..K) becomes a
  random id in [0, K) (the reference's range, which never draws K);
- box noise: centre +-box_noise_scale * wh / 2, size +-box_noise_scale * wh (uniform), clamped to [0, 1];
- keypoint noise: +-kpt_noise_scale * noised box wh / 2 (uniform) on every keypoint except a "clicked" subset:
  k ~ P(k) proportional to 1/k^2 over 1..K keypoints drawn with replacement stay clean (k = 0 when the model
  is trained without human feedback).
Optional additions (off by default; config ``pem_error_types``/``pem_error_prob``): the paper's error types
(Ronchi & Perona taxonomy) applied to noised, labelled keypoints; see :func:`apply_error_types`.

The draws are vectorised, so the random stream differs from the reference's per-instance loop; the
distributions are the same (tests check them statistically).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from util.misc import inverse_sigmoid
from util.settings import DenoisingCfg

from util import keypoint_codec as kp

ERROR_TYPES = ("jitter", "miss", "swap", "inversion")
# keypoint-similarity bands of the error types (KS = exp(-d^2 / (2 area (2 sigma)^2)))
JITTER_KS = (0.5, 0.85)
MISS_KS = (0.1, 0.5)


@dataclass
class DenoisingQueries:
    """Decoder inputs and training targets of the denoising branch (D = num_dn per image).

    content (B, D, C); boxes_unsigmoid (B, D, 4); keypoint_xy (B, D, K, 2) in [0, 1];
    keypoint_content (B, D, K, C); targets: labels (B, D), boxes (B, D, 4), keypoints (B, D, 3K) (clean);
    num_gt (B,) ground-truth people per image.
    """

    content: Tensor
    boxes_unsigmoid: Tensor
    keypoint_xy: Tensor
    keypoint_content: Tensor
    labels: Tensor
    boxes: Tensor
    keypoints: Tensor
    num_gt: Tensor

    @property
    def num_dn(self) -> int:
        return self.content.shape[1]


def clicked_count_probabilities(num_keypoints: int, power: float = 2.0) -> Tensor:
    """P(k) for k = 1..K, proportional to 1 / k**power."""
    weights = 1.0 / torch.arange(1, num_keypoints + 1, dtype=torch.float64) ** power
    return weights / weights.sum()


def _pad(tensors: Sequence[Tensor], width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Stack (n_i, width) tensors into (B, max(1, max n_i), width), zero padded."""
    longest = max(1, max(len(t) for t in tensors))
    out = torch.zeros(len(tensors), longest, width, device=device, dtype=dtype)
    for image, tensor in enumerate(tensors):
        out[image, :len(tensor)] = tensor.reshape(len(tensor), width)
    return out


def sample_instances(num_gt: Tensor, num_dn: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """(B,) GT counts -> (B, D) indices: the GT list tiled D // n times, then uniform random picks."""
    slot = torch.arange(num_dn, device=num_gt.device)[None]
    count = num_gt.clamp(min=1)[:, None]
    tiled_len = (num_dn // count) * count
    random_pick = (torch.rand(num_gt.shape[0], num_dn, device=num_gt.device, generator=generator) * count).long()
    return torch.where(slot < tiled_len, slot % count, random_pick.clamp(max=count - 1))


def build_denoising_queries(targets: Sequence[dict], cfg: DenoisingCfg, label_enc: nn.Embedding,
                            label_enc_pose: nn.Embedding, clicked_subset: bool = True,
                            flip_pairs: Sequence[tuple[int, int]] = (), sigmas: Optional[Sequence[float]] = None,
                            generator: Optional[torch.Generator] = None) -> DenoisingQueries:
    """Noised copies of the ground truth for the denoising branch (see the module docstring): ``cfg.number`` per
    image. ``clicked_subset``: leave a "clicked" subset of keypoints clean (training with human feedback);
    ``flip_pairs``/``sigmas``: the keypoint layout's, for the optional error types."""
    num_dn, num_classes, labelbook_size = cfg.number, cfg.num_classes, cfg.labelbook_size
    box_label_noise_ratio, kpt_label_noise_ratio = cfg.box_label_noise_ratio, cfg.kpt_label_noise_ratio
    box_noise_scale, kpt_noise_scale = cfg.box_noise_scale, cfg.kpt_noise_scale
    error_types, error_prob = cfg.error_types, cfg.error_prob
    k = cfg.num_keypoints
    device, dtype = label_enc.weight.device, label_enc.weight.dtype
    batch = len(targets)
    num_gt = torch.tensor([len(t["boxes"]) for t in targets], device=device)
    pick = sample_instances(num_gt, num_dn, generator)
    has_gt = (num_gt > 0)[:, None]

    def gather(rows: Tensor) -> Tensor:  # (B, N_max, W) -> (B, D, W)
        return torch.gather(rows, 1, pick[..., None].expand(-1, -1, rows.shape[-1]))

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, device=device, dtype=dtype, generator=generator)

    boxes = torch.where(has_gt[..., None], gather(_pad([t["boxes"] for t in targets], 4, device, dtype)),
                        rand(batch, num_dn, 4))
    keypoints = torch.where(has_gt[..., None], gather(_pad([t["keypoints"] for t in targets], 3 * k, device, dtype)),
                            rand(batch, num_dn, 3 * k))
    labels = torch.where(has_gt, gather(_pad([t["labels"] for t in targets], 1, device, torch.long))[..., 0],
                         torch.full_like(pick, num_classes))

    noised_labels = labels.clone()
    if box_label_noise_ratio > 0:
        flip = rand(batch, num_dn) < box_label_noise_ratio
        random_label = torch.randint(0, labelbook_size, labels.shape, device=device, generator=generator)
        noised_labels = torch.where(flip, random_label, noised_labels)
    kpt_types = torch.arange(1, k + 1, device=device).expand(batch, num_dn, k)
    if kpt_label_noise_ratio > 0:
        flip = rand(batch, num_dn, k) < kpt_label_noise_ratio
        kpt_types = torch.where(flip, torch.randint(0, k, kpt_types.shape, device=device, generator=generator),
                                kpt_types)

    noised_boxes = boxes.clone()
    if box_noise_scale > 0:
        half_wh = boxes[..., 2:] / 2
        spread = torch.cat((half_wh, boxes[..., 2:]), -1)
        noised_boxes = (boxes + (rand(batch, num_dn, 4) * 2 - 1) * spread * box_noise_scale).clamp(0.0, 1.0)

    xy = kp.coordinates(keypoints, k)
    if kpt_noise_scale > 0:
        spread = noised_boxes[..., 2:][:, :, None] / 2
        noise = (rand(batch, num_dn, k, 2) * 2 - 1) * spread * kpt_noise_scale
        clean = torch.zeros(batch, num_dn, k, dtype=torch.bool, device=device)
        if clicked_subset:
            clean = clicked_keypoint_mask(draw_clicked_counts(batch, num_dn, k, device, generator), k, generator)
        noised_xy = xy + noise * (~clean)[..., None]
        if error_types and error_prob > 0:
            errors = PoseErrors(error_types, error_prob, flip_pairs, sigmas)
            noised_xy = apply_error_types(noised_xy, noise, xy, kp.visibility(keypoints, k), ~clean, pick, num_gt,
                                          boxes, errors, generator)
        xy = noised_xy.clamp(0.0, 1.0)

    return DenoisingQueries(content=label_enc(noised_labels), boxes_unsigmoid=inverse_sigmoid(noised_boxes),
                            keypoint_xy=xy, keypoint_content=label_enc_pose(kpt_types), labels=labels, boxes=boxes,
                            keypoints=keypoints, num_gt=num_gt)


def draw_clicked_counts(batch: int, num_dn: int, num_keypoints: int, device: torch.device,
                        generator: Optional[torch.Generator] = None) -> Tensor:
    """(B, D) numbers of "clicked" keypoint draws, k in 1..K with P(k) of :func:`clicked_count_probabilities`."""
    probs = clicked_count_probabilities(num_keypoints).to(device=device, dtype=torch.float32)
    return torch.multinomial(probs, batch * num_dn, replacement=True, generator=generator).view(batch, num_dn) + 1


def clicked_keypoint_mask(counts: Tensor, num_keypoints: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """(B, D) counts k -> (B, D, K) True on the keypoints that stay clean: k keypoint indices drawn uniformly
    with replacement (so at most k distinct ones)."""
    device = counts.device
    draws = torch.randint(0, num_keypoints, counts.shape + (num_keypoints,), device=device, generator=generator)
    used = torch.arange(num_keypoints, device=device) < counts[..., None]
    hits = torch.zeros(draws.shape, device=device).scatter_add_(2, draws, used.float())
    return hits > 0


@dataclass(frozen=True)
class PoseErrors:
    """Which of the paper's error types the pose error modeling draws, how often, and the layout they need."""
    types: Sequence[str]  # subset of ERROR_TYPES (config pem_error_types)
    prob: float  # per labelled, noised keypoint (config pem_error_prob)
    flip_pairs: Sequence[tuple[int, int]]
    sigmas: Optional[Sequence[float]]


def apply_error_types(noised_xy: Tensor, noise: Tensor, gt_xy: Tensor, visible: Tensor, noisy: Tensor, pick: Tensor,
                      num_gt: Tensor, gt_boxes: Tensor, errors: PoseErrors,
                      generator: Optional[torch.Generator] = None) -> Tensor:
    """Replace some noised keypoints by one of the paper's four error types (our addition; off by default).

    Each labelled, noised keypoint gets an error with probability ``error_prob``, its type drawn uniformly
    from ``error_types``:
    - jitter: displaced from its own GT to keypoint similarity KS in (0.5, 0.85) (random direction);
    - miss: displaced from its own GT to KS in (0.1, 0.5);
    - inversion: placed at the GT of its left/right partner (``flip_pairs``) in the same person, plus its noise;
    - swap: placed at the GT of the same joint of another person in the image, plus its noise.
    KS uses the GT box area and the OKS sigmas (``sigmas``; 0.1 for every keypoint when None).
    Inversion/swap leave keypoints without a labelled partner (or a single-person image) unchanged.
    noised_xy, noise, gt_xy: (B, D, K, 2); visible, noisy: (B, D, K); pick: (B, D) GT index per instance.
    """
    error_types, error_prob, flip_pairs, sigmas = errors.types, errors.prob, errors.flip_pairs, errors.sigmas
    unknown = set(error_types) - set(ERROR_TYPES)
    if unknown:
        raise ValueError(f"pem_error_types has unknown entries {sorted(unknown)}; choose from {ERROR_TYPES}")
    batch, num_dn, k, _ = noised_xy.shape
    device = noised_xy.device

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, device=device, generator=generator)

    eligible = noisy & (visible > 0) & (rand(batch, num_dn, k) < error_prob)
    choice = torch.randint(0, len(error_types), (batch, num_dn, k), device=device, generator=generator)
    sigma = gt_xy.new_tensor(sigmas if sigmas is not None else [0.1] * k)
    area = (gt_boxes[..., 2] * gt_boxes[..., 3]).clamp(min=1e-6)[..., None]  # (B, D, 1)
    angle = rand(batch, num_dn, k) * (2 * torch.pi)
    direction = torch.stack((angle.cos(), angle.sin()), -1)
    out = noised_xy
    for type_index, name in enumerate(error_types):
        selected = eligible & (choice == type_index)
        if name in ("jitter", "miss"):
            low, high = JITTER_KS if name == "jitter" else MISS_KS
            similarity = low + (high - low) * rand(batch, num_dn, k)
            distance = (-2 * area * (2 * sigma) ** 2 * similarity.log()).sqrt()
            moved = gt_xy + direction * distance[..., None]
        elif name == "inversion":
            partner = torch.arange(k, device=device)
            for left, right in flip_pairs:
                partner[left], partner[right] = right, left
            moved = gt_xy[:, :, partner] + noise
            selected = selected & (partner != torch.arange(k, device=device)) & (visible[:, :, partner] > 0)
        else:  # swap: the same joint of another person of the image (copies of that person's GT)
            moved, found = _other_person_joint(gt_xy, visible, pick, num_gt, generator)
            moved = moved + noise
            selected = selected & found
        out = torch.where(selected[..., None], moved, out)
    return out


def _other_person_joint(gt_xy: Tensor, visible: Tensor, pick: Tensor, num_gt: Tensor,
                        generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
    """For each instance, a random denoising instance of a *different* GT person in the same image.

    Returns its keypoints (B, D, K, 2) and a (B, D, K) mask of where that joint is labelled.
    """
    batch, num_dn = pick.shape
    device = pick.device
    # random other GT id: shift by 1..n-1 (mod n); then find a denoising slot holding that GT (tiling
    # guarantees one when n <= D; otherwise fall back to "not found")
    shift = 1 + (torch.rand(batch, num_dn, device=device, generator=generator)
                 * (num_gt - 1).clamp(min=1)[:, None]).long()
    other = (pick + shift) % num_gt.clamp(min=1)[:, None]
    holds = pick[:, None, :] == other[:, :, None]  # (B, D, D): slot j holds the wanted GT
    slot = holds.float().argmax(-1)
    found = holds.any(-1) & (num_gt > 1)[:, None]
    index = slot[..., None, None].expand(-1, -1, gt_xy.shape[2], 2)
    joint_xy = torch.gather(gt_xy, 1, index)
    joint_visible = torch.gather(visible, 1, slot[..., None].expand(-1, -1, visible.shape[2])) > 0
    return joint_xy, found[..., None] & joint_visible
