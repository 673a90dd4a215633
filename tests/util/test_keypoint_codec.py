"""The keypoint layout codec on its own: round trips, the exact layout, pixel conversion and the errors."""
from __future__ import annotations

import pytest
import torch

from util import keypoint_codec as kp


def test_layout_is_all_coordinates_then_all_visibilities():
    flat = torch.tensor([10., 11., 20., 21., 30., 31., 1., 0., 2.])
    assert kp.coordinates(flat).tolist() == [[10, 11], [20, 21], [30, 31]]
    assert kp.visibility(flat).tolist() == [1, 0, 2]
    xy, vis = kp.split(flat, 3)
    assert xy.tolist() == [10, 11, 20, 21, 30, 31] and vis.tolist() == [1, 0, 2]
    assert kp.num_keypoints_of(flat) == 3


@pytest.mark.parametrize("k", [1, 5, 14, 17, 21])
def test_encode_and_decode_round_trip(k):
    gen = torch.Generator().manual_seed(k)
    xy, vis = torch.rand(2, 4, k, 2, generator=gen), torch.rand(2, 4, k, generator=gen)
    flat = kp.encode(xy, vis)
    assert flat.shape == (2, 4, 3 * k)
    assert torch.equal(kp.coordinates(flat, k), xy) and torch.equal(kp.visibility(flat, k), vis)
    assert torch.equal(kp.encode(kp.coordinates(flat), kp.visibility(flat)), flat)
    assert (kp.visibility(kp.encode(xy)) == 1).all() and (kp.visibility(kp.encode(xy, fill=0.5)) == 0.5).all()


def test_views_share_storage_and_zeros_follow_the_template():
    flat = torch.zeros(2, 6)
    kp.coordinates(flat)[1, 0, 1] = 7.0
    assert flat[1, 1] == 7.0
    zero = kp.zeros((3, 4), 5, torch.ones(1, dtype=torch.float64))
    assert zero.shape == (3, 4, 15) and zero.dtype == torch.float64 and not zero.any()


def test_pixels_per_image_and_coco_triplets():
    flat = kp.encode(torch.tensor([[[[0.5, 0.25], [1.0, 0.0]]], [[[0.1, 0.2], [0.3, 0.4]]]]),
                     torch.tensor([[[0.9, 0.1]], [[1.0, 0.0]]]))  # (B=2, N=1, K=2)
    sizes = torch.tensor([[200, 400], [10, 20]])  # (h, w)
    pixels = kp.to_pixels(kp.coordinates(flat), sizes)
    assert pixels[0, 0].tolist() == [[200, 50], [400, 0]]
    torch.testing.assert_close(pixels[1, 0], torch.tensor([[2.0, 2.0], [6.0, 4.0]]))
    triplets = kp.to_coco_triplets(flat, sizes)
    torch.testing.assert_close(triplets[0, 0], torch.tensor([200.0, 50.0, 0.9, 400.0, 0.0, 0.1]))
    torch.testing.assert_close(kp.from_pixels(pixels[0, 0], 400, 200), kp.coordinates(flat)[0, 0])


def test_wrong_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="expected 3\\*K = 51 for K = 17"):
        kp.split(torch.zeros(4, 42), 17)
    with pytest.raises(ValueError, match="not 3\\*K"):
        kp.coordinates(torch.zeros(4, 10))
    with pytest.raises(ValueError, match="must end in \\(K, 2\\)"):
        kp.encode(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="do not match"):
        kp.encode(torch.zeros(4, 3, 2), torch.zeros(4, 2))
