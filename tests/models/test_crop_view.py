"""The crop window of a box-added person: its geometry, the masked crop, the coordinate maps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import models.crop_view as cv
from models.crop_view import CropWindow


def test_window_grows_the_user_box_by_the_margin_and_stays_in_the_image():
    window = CropWindow.around((100.0, 50.0, 140.0, 150.0), (400, 300))  # longer side 100 -> margin 30
    assert (window.left, window.top, window.right, window.bottom) == (70, 20, 170, 180)
    assert window.size == (100, 160)
    clipped = CropWindow.around((5.0, 250.0, 60.0, 299.0), (400, 300))
    assert (clipped.left, clipped.bottom) == (0, 300) and clipped.right == 77
    assert CropWindow.around((399.5, 10.0, 400.0, 10.2), (400, 300)) is None  # 1 pixel wide once clipped
    assert CropWindow.around((500.0, 10.0, 520.0, 40.0), (400, 300)) is None  # outside the image


def test_normalised_user_box_finds_the_same_window_again():
    window = CropWindow.around((101.3, 47.9, 139.2, 151.0), (400, 300))
    again = CropWindow.from_normalised(window.normalised_user, (400, 300))
    assert (again.left, again.top, again.right, again.bottom) == (window.left, window.top, window.right, window.bottom)
    assert again.user == pytest.approx(window.user, abs=1e-3)


def test_points_and_boxes_map_to_the_crop_and_back():
    window = CropWindow.around((100.0, 50.0, 140.0, 150.0), (400, 300))
    # the crop's top-left pixel corner and bottom-right corner, in image units
    corners = torch.tensor([[70 / 400, 20 / 300], [170 / 400, 180 / 300]])
    torch.testing.assert_close(window.points_to_crop(corners), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 5, 2, generator=g)
    torch.testing.assert_close(window.points_to_image(window.points_to_crop(xy)), xy)
    box = torch.tensor([[120 / 400, 100 / 300, 40 / 400, 100 / 300]])  # the user box, cxcywh
    in_crop = window.boxes_to_crop(box)
    torch.testing.assert_close(in_crop, torch.tensor([[0.5, 0.5, 0.4, 100 / 160]]))
    torch.testing.assert_close(window.boxes_to_image(in_crop), box)
    assert window.holds(torch.tensor([[0.0, 1.0], [1.01, -0.01]]))
    assert not window.holds(torch.tensor([[0.5, 1.2]]))


@pytest.mark.parametrize("mask", [True, False])
def test_the_crop_masks_the_margin_outside_the_user_box(monkeypatch, mask):
    monkeypatch.setattr(cv, "CROP_MASK", mask)
    pixels = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    window = CropWindow.around((100.0, 50.0, 140.0, 150.0), (400, 300))
    crop = np.asarray(window.image(Image.fromarray(pixels)))
    assert crop.shape == (160, 100, 3)
    # inside the user box: the image's pixels
    np.testing.assert_array_equal(crop[30:130, 30:70], pixels[50:150, 100:140])
    margin = crop[0:30, :]
    if mask:
        mean = pixels[20:180, 70:170].reshape(-1, 3).mean(0).astype(int)
        assert (margin == mean).all()
    else:
        np.testing.assert_array_equal(margin, pixels[20:50, 70:170])
