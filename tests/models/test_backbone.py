"""Backbone: frozen batch norm, local ImageNet weights (never downloaded), feature levels and masks, encodings."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from models.clickpose.backbone import FrozenBatchNorm2d, ResNetBackbone
from models.clickpose.position_encoding import PositionEmbeddingSineHW, query_sine_embedding
from util.misc import nested_tensor_from_tensor_list


def test_frozen_batch_norm_equals_batch_norm_in_eval():
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(5).eval()
    reference.running_mean.normal_()
    reference.running_var.uniform_(0.5, 2)
    reference.weight.data.normal_()
    reference.bias.data.normal_()
    frozen = FrozenBatchNorm2d(5)
    frozen.load_state_dict(reference.state_dict())  # num_batches_tracked is dropped
    x = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(frozen(x), reference(x), atol=1e-5, rtol=1e-5)
    assert sorted(frozen.state_dict()) == ["bias", "running_mean", "running_var", "weight"]
    assert not list(frozen.parameters())


def test_local_weights_are_loaded_and_bad_files_are_clear_errors(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    backbone = ResNetBackbone("resnet18", [1, 2, 3], weights_path=str(path))
    assert torch.equal(backbone.body.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(backbone.body.bn1.running_var, source.bn1.running_var)
    with pytest.raises(FileNotFoundError, match="missing.pth.*torchvision ResNet state dict"):
        ResNetBackbone("resnet18", [1, 2, 3], weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="does not fit the ResNet"):
        ResNetBackbone("resnet50", [1, 2, 3], weights_path=str(path))


@pytest.mark.parametrize("indices,channels", [([1, 2, 3], [128, 256, 512]), ([0, 1, 2, 3], [64, 128, 256, 512]),
                                              ([3], [512])])
def test_levels_masks_and_frozen_stages(indices, channels):
    backbone = ResNetBackbone("resnet18", indices)
    assert backbone.num_channels == channels
    samples = nested_tensor_from_tensor_list([torch.randn(3, 64, 96), torch.randn(3, 64, 64)])
    features = backbone(samples)
    assert list(features) == [str(i) for i in indices]
    last = features[str(indices[-1])]
    assert last.tensors.shape == (2, channels[-1], 2, 3)
    assert last.mask[0].sum() == 0 and last.mask[1, :, 2].all() and not last.mask[1, :, :2].any()
    trainable = {n.split(".")[0] for n, p in backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    with pytest.raises(ValueError, match="return_interm_indices"):
        ResNetBackbone("resnet18", [2, 3])


def test_position_encoding_values():
    samples = nested_tensor_from_tensor_list([torch.zeros(1, 3, 4), torch.zeros(1, 2, 4)])
    pos = PositionEmbeddingSineHW(8, temperatureH=20, temperatureW=20, normalize=True)(samples)
    assert pos.shape == (2, 16, 3, 4)
    # channel 0 of y is sin(y_norm * 2pi) with y_norm = row / rows, channel 1 cos(. / 20 ** (2/8))... of x
    y_scaled = 2 / (3 + 1e-6) * 2 * math.pi
    assert pos[0, 0, 1, 0].item() == pytest.approx(math.sin(y_scaled), abs=1e-5)
    x_scaled = 3 / (4 + 1e-6) * 2 * math.pi
    assert pos[0, 8 + 1, 0, 2].item() == pytest.approx(math.cos(x_scaled), abs=1e-5)
    assert pos[0, 8 + 2, 0, 2].item() == pytest.approx(math.sin(x_scaled / 20 ** (2 / 8)), abs=1e-5)
    # the padded image normalises by its own valid height
    assert pos[1, 0, 1, 0].item() == pytest.approx(math.sin(2 / (2 + 1e-6) * 2 * math.pi), abs=1e-5)


def test_query_sine_embedding_order_is_y_x_w_h():
    boxes = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    embed = query_sine_embedding(boxes, num_feats=4)
    assert embed.shape == (1, 16)
    for block, value in enumerate((0.2, 0.1, 0.3, 0.4)):
        assert embed[0, 4 * block].item() == pytest.approx(math.sin(value * 2 * math.pi), abs=1e-6)
        assert embed[0, 4 * block + 1].item() == pytest.approx(math.cos(value * 2 * math.pi), abs=1e-6)
