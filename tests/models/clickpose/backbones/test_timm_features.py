"""timm feature backbones by name: channels and strides from timm, weights from a local file, batch norms."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.clickpose.backbones.common import FrozenBatchNorm2d
from util.misc import nested_tensor_from_tensor_list

timm = pytest.importorskip("timm")
from models.clickpose.backbones.timm_features import TimmBackbone  # noqa: E402


def test_levels_by_stride_masks_and_frozen_batch_norm():
    backbone = TimmBackbone("resnet18", [0, 1, 2, 3])
    assert backbone.num_channels == [64, 128, 256, 512]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert isinstance(backbone.body.bn1, FrozenBatchNorm2d)
    features = backbone(nested_tensor_from_tensor_list([torch.randn(3, 64, 96), torch.randn(3, 64, 64)]))
    assert list(features) == ["0", "1", "2", "3"]
    assert [tuple(f.tensors.shape[-2:]) for f in features.values()] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert features["3"].mask[1, :, 2].all() and not features["3"].mask[0].any()
    assert isinstance(TimmBackbone("resnet18", [3], batch_norm="BatchNorm2d").body.bn1, nn.BatchNorm2d)


def test_local_weights_of_the_full_timm_model(tmp_path):
    """A plain timm state dict (classifier included) loads into the features-only model (flattened names)."""
    torch.manual_seed(0)
    source = timm.create_model("convnext_atto", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "convnext.pth")
    backbone = TimmBackbone("convnext_atto", [1, 2, 3], weights_path=str(tmp_path / "convnext.pth"))
    assert backbone.num_channels == [80, 160, 320]
    assert torch.equal(backbone.body.stages_2.blocks[0].conv_dw.weight, source.stages[2].blocks[0].conv_dw.weight)
    assert torch.equal(backbone.body.stem_0.weight, source.stem[0].weight)
    other = timm.create_model("resnet18", pretrained=False)
    torch.save(other.state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=r"does not fit this backbone: missing \(\d+\): stem_0.weight"):
        TimmBackbone("convnext_atto", [1, 2, 3], weights_path=str(tmp_path / "resnet18.pth"))


def test_bad_names_strides_and_options_are_errors():
    with pytest.raises(ValueError, match="timm has no model 'resnet_nonexistent'"):
        TimmBackbone("resnet_nonexistent", [1, 2, 3])
    with pytest.raises(ValueError, match="dilation=True is not supported"):
        TimmBackbone("resnet18", [1, 2, 3], dilation=True)
    with pytest.raises(ValueError, match="use_checkpoint=True is not supported"):
        TimmBackbone("resnet18", [1, 2, 3], use_checkpoint=True)
