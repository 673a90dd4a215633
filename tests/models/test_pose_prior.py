"""The pose prior (models/pose_prior.py): fitting, the posterior it gives, boxes cut by the image border, and its
checkpoint entry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.pose_prior import CHECKPOINT_KEY, EXTENSIONS, PosePrior, grown_boxes

K = 5
# a family of poses in box coordinates: a base shape moved by two latent factors, plus a little noise
BASE = np.array([[0.5, 0.1], [0.3, 0.4], [0.7, 0.4], [0.35, 0.9], [0.65, 0.9]])
FACTORS = np.array([[[0.0, 0.0], [-0.1, 0.05], [0.1, 0.05], [-0.05, 0.0], [0.05, 0.0]],   # arms out
                    [[0.05, 0.0], [0.05, 0.0], [0.05, 0.0], [-0.05, 0.0], [-0.05, 0.0]]])  # lean


def family(count: int, seed: int, noise: float = 0.005) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(count, 2))
    return BASE + np.einsum("nf,fkd->nkd", latent, FACTORS) + rng.normal(scale=noise, size=(count, K, 2))


def annotations(poses: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO keypoints (N, K, 3) in pixels of boxes (N, 4) x, y, w, h."""
    pixels = poses * boxes[:, None, 2:] + boxes[:, None, :2]
    return np.concatenate((pixels, np.full((len(poses), K, 1), 2.0)), -1), boxes


def random_boxes(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack((rng.uniform(0, 200, count), rng.uniform(0, 200, count), rng.uniform(40, 80, count),
                            rng.uniform(100, 200, count)))


@pytest.fixture(scope="module")
def prior() -> PosePrior:
    boxes = random_boxes(400, 1)
    return PosePrior.fit(*annotations(family(400, 0), boxes))


def xyxy(box: np.ndarray) -> torch.Tensor:
    return torch.tensor([box[0], box[1], box[0] + box[2], box[1] + box[3]], dtype=torch.float64)


def test_fit_is_the_mean_and_covariance_of_the_poses_in_box_coordinates(prior):
    poses = family(400, 0).reshape(400, -1)
    np.testing.assert_allclose(prior.mean.numpy(), poses.mean(0), atol=1e-9)
    np.testing.assert_allclose(prior.covariance.numpy(), np.cov(poses, rowvar=False) + 1e-4 * np.eye(2 * K), atol=1e-9)
    assert prior.num_keypoints == K and prior.num_poses == 400


def test_fit_uses_only_fully_labelled_people_and_says_when_there_are_too_few():
    keypoints, boxes = annotations(family(30, 0), random_boxes(30, 1))
    keypoints[:25, 0, 2] = 0  # 25 of 30 miss a keypoint: 5 left, fewer than 2K + 1
    with pytest.raises(ValueError, match=r"more than 10 people with all 5 keypoints labelled.*have 5"):
        PosePrior.fit(keypoints, boxes)
    keypoints[:10, 0, 2] = 1  # occluded but labelled counts
    assert PosePrior.fit(keypoints, boxes).num_poses == 15
    with pytest.raises(ValueError, match=r"\(N, K, 3\) keypoints"):
        PosePrior.fit(keypoints[..., :2], boxes)


def test_mirrored_fit_is_left_right_symmetric():
    flip = [0, 2, 1, 4, 3]
    lopsided = family(200, 3) + np.array([0.05, 0.0])  # everyone leans right
    prior = PosePrior.fit(*annotations(lopsided, random_boxes(200, 4)), flip_permutation=flip)
    mean = prior.mean.numpy().reshape(K, 2)
    mirrored = mean[flip] * [-1, 1] + [1, 0]
    np.testing.assert_allclose(mean, mirrored, atol=1e-9)
    assert prior.num_poses == 200  # the count is of people, not of mirror images


def test_the_posterior_mean_is_the_map_pose_of_prior_and_observations(prior):
    """Checked against the other form of the same estimate: argmin (z - m)' C^-1 (z - m) + (x - z)' R^-1 (x - z)."""
    rng = np.random.default_rng(7)
    box = np.array([10.0, 20.0, 60.0, 150.0])
    current = torch.from_numpy(rng.uniform(0, 1, (K, 2)) * box[2:] + box[:2])
    placed = torch.tensor([True, False, False, True, False])
    noise = 0.15
    got = prior.condition(xyxy(box), current, placed, noise).numpy()
    observed = ((current.numpy() - box[:2]) / box[2:]).reshape(-1)
    deviation = np.where(np.repeat(placed.numpy(), 2), 1e-2, noise)
    c_inv, r_inv = np.linalg.inv(prior.covariance.numpy()), np.diag(1 / deviation ** 2)
    z = np.linalg.solve(c_inv + r_inv, c_inv @ prior.mean.numpy() + r_inv @ observed).reshape(K, 2)
    expected = np.where(placed.numpy()[:, None], current.numpy(), z * box[2:] + box[:2])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8)


def test_placed_keypoints_bring_the_others_towards_the_truth(prior):
    truth_pose = family(1, 11)[0]
    box = np.array([50.0, 30.0, 70.0, 180.0])
    truth = truth_pose * box[2:] + box[:2]
    wrong = torch.from_numpy(truth + np.array([35.0, -40.0]))  # a proposal far off, everything shifted
    placed = torch.tensor([False, True, False, False, True])
    start = torch.where(placed[:, None], torch.from_numpy(truth), wrong)
    after = prior.condition(xyxy(box), start, placed).numpy()
    np.testing.assert_array_equal(after[placed.numpy()], truth[placed.numpy()])  # placed ones stay exactly
    error_before = np.hypot(*(wrong.numpy() - truth).T)[~placed.numpy()]
    error_after = np.hypot(*(after - truth).T)[~placed.numpy()]
    assert error_after.max() < 0.25 * error_before.min()
    # units do not matter: the same in coordinates normalised by a 400 x 300 image
    scale = np.array([400.0, 300.0])
    normalised = prior.condition(xyxy(box) / torch.tensor([400.0, 300.0, 400.0, 300.0], dtype=torch.float64),
                                 start / torch.from_numpy(scale), placed).numpy()
    np.testing.assert_allclose(normalised * scale, after, atol=1e-6)


def test_a_box_cut_by_the_border_is_grown_across_it(prior):
    truth_pose = family(1, 12)[0]
    full = np.array([100.0, 300.0, 60.0, 200.0])  # the whole person: y from 300 to 500
    truth = truth_pose * full[2:] + full[:2]
    drawn = torch.tensor([100.0, 300.0, 160.0, 400.0], dtype=torch.float64)  # the image ends at y = 400
    placed = torch.tensor([True, True, True, False, False])  # the upper body; the legs are out of the image
    start = torch.where(placed[:, None], torch.from_numpy(truth), torch.from_numpy(truth) + 60.0)
    closed = prior.condition(drawn, start, placed).numpy()
    opened = prior.condition(drawn, start, placed, open_edges=(False, False, False, True)).numpy()
    legs = ~placed.numpy()
    assert np.hypot(*(opened - truth).T)[legs].max() < 0.5 * np.hypot(*(closed - truth).T)[legs].min()


def test_grown_boxes_cover_the_extensions_of_each_open_axis():
    box = torch.tensor([10.0, 20.0, 30.0, 60.0])
    assert len(grown_boxes(box, (False,) * 4)) == 1
    bottom = grown_boxes(box, (False, False, False, True))
    assert torch.equal(bottom[0], box) and len(bottom) == len(EXTENSIONS)
    assert bottom[-1].tolist() == [10.0, 20.0, 30.0, 20.0 + 40.0 * EXTENSIONS[-1]]
    left = grown_boxes(box, (True, False, False, False))[-1]
    assert left.tolist() == [30.0 - 20.0 * EXTENSIONS[-1], 20.0, 30.0, 60.0]  # grows to the left, right edge stays
    assert len(grown_boxes(box, (True, True, False, False))) == len(EXTENSIONS) ** 2
    assert len(grown_boxes(box, (True, False, True, False))) == 1  # spans the image's width: nothing to grow


def test_condition_refuses_what_does_not_fit(prior):
    with pytest.raises(ValueError, match="for 5 keypoints"):
        prior.condition(torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.zeros(17, 2), torch.zeros(17, dtype=torch.bool))
    with pytest.raises(ValueError, match="positive size"):
        prior.condition(torch.tensor([0.0, 0.0, 0.0, 1.0]), torch.zeros(K, 2), torch.zeros(K, dtype=torch.bool))


def test_checkpoint_entry_loads_with_weights_only_and_refuses_another_layout(prior, tmp_path):
    torch.save({CHECKPOINT_KEY: prior.to_checkpoint()}, tmp_path / "p.pth")
    entry = torch.load(tmp_path / "p.pth", weights_only=True)[CHECKPOINT_KEY]
    loaded = PosePrior.from_checkpoint(entry, K)
    assert torch.equal(loaded.mean, prior.mean) and torch.equal(loaded.covariance, prior.covariance)
    assert loaded.num_poses == prior.num_poses
    with pytest.raises(ValueError, match="for 5 keypoints, the model has 17"):
        PosePrior.from_checkpoint(entry, 17)
    with pytest.raises(ValueError, match="not a pose prior"):
        PosePrior.from_checkpoint({"format": 99}, K)


def test_from_coco_reads_a_keypoints_file_and_names_it_in_errors():
    keypoints, boxes = annotations(family(40, 5), random_boxes(40, 6))
    dataset = {"annotations": [{"keypoints": k.reshape(-1).tolist(), "bbox": b.tolist(), "iscrowd": 0}
                               for k, b in zip(keypoints, boxes)]
               + [{"keypoints": keypoints[0].reshape(-1).tolist(), "bbox": boxes[0].tolist(), "iscrowd": 1}]}
    assert PosePrior.from_coco(dataset, K).num_poses == 40  # the crowd annotation is left out
    with pytest.raises(ValueError, match="train.json: no annotation has 17 keypoints"):
        PosePrior.from_coco(dataset, 17, source="train.json")
