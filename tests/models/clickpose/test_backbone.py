"""Backbone: frozen batch norm, local ImageNet weights (never downloaded), feature levels and masks, encodings."""
from __future__ import annotations

import math
import pathlib

import pytest
import torch
import torchvision
from torch import nn

from models.clickpose.backbone import (BACKBONES, BackboneOptions, FrozenBatchNorm2d, ResNetBackbone, build_backbone,
                                       make_backbone, set_trainable)
from models.clickpose.backbones.common import convert_batch_norm
from models.clickpose.position_encoding import PositionEmbeddingSineHW, query_sine_embedding
from util.config import ConfigError
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
    with pytest.raises(ConfigError, match="backbone_weights file .*missing.pth does not exist.*torchvision ResNet"):
        ResNetBackbone("resnet18", [1, 2, 3], weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match=r"does not fit this backbone: missing \(165\): layer1.0.conv3.weight.*wrong shape \(23\)"):
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
    set_trainable(backbone, True)  # the family's default: the original's
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


def test_trainable_stages_and_freeze_keywords():
    backbone = ResNetBackbone("resnet18", [1, 2, 3], batch_norm="BatchNorm2d")

    def trainable():
        return {n.split(".")[1] for n, p in backbone.named_parameters() if p.requires_grad}

    set_trainable(backbone, True, "all")
    assert trainable() == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}
    set_trainable(backbone, True, ["layer3", "layer4"], freeze_keywords=["layer4.1"])
    assert trainable() == {"layer3", "layer4"}
    assert not any(p.requires_grad for n, p in backbone.named_parameters() if "layer4.1" in n)
    set_trainable(backbone, False, "all")  # lr_backbone <= 0
    assert trainable() == set()
    with pytest.raises(ValueError, match="entry 'layer9' matches no backbone parameter"):
        set_trainable(backbone, True, ["layer9"])
    with pytest.raises(ValueError, match="must be None, 'all' or a list"):
        set_trainable(backbone, True, "layer3")
    with pytest.raises(ValueError, match="backbone_freeze_keywords must be a list"):
        set_trainable(backbone, True, None, freeze_keywords="layer1")


def test_one_table_of_names_and_clear_errors():
    assert {"resnet50", "resnet101", "swin_T_224_1k", "swin_B_224_22k", "swin_B_384_22k", "swin_L_224_22k",
            "swin_L_384_22k"} <= set(BACKBONES)
    with pytest.raises(ValueError, match=r"backbone 'vgg16' is not supported; choose one of .*'timm:NAME'"):
        make_backbone("vgg16", BackboneOptions([1, 2, 3]))
    with pytest.raises(ValueError, match="a Swin has only layer norms"):
        make_backbone("swin_T_224_1k", BackboneOptions([1, 2, 3], batch_norm="BatchNorm2d"))


@pytest.mark.parametrize("indices", [[0, 0, 1], [3, 2], [1, 4], []])
def test_interm_indices_must_be_distinct_increasing_levels(indices):
    for name in ("resnet18", "swin_T_224_1k", "timm:resnet18"):
        with pytest.raises(ConfigError, match=r"return_interm_indices=.*distinct.*increasing"):
            make_backbone(name, BackboneOptions(indices))


def test_unknown_timm_model_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"backbone='timm:does_not_exist': timm has no model 'does_not_exist'"):
        make_backbone("timm:does_not_exist", BackboneOptions([1, 2, 3]))


def test_backbone_weights_that_hold_no_tensors_are_config_errors(tmp_path):
    files = {"strings": tmp_path / "strings.pth", "text": tmp_path / "text.pth", "object": tmp_path / "object.pth"}
    torch.save({"note": "not a tensor"}, files["strings"])
    files["text"].write_text("these are not weights")
    torch.save({"conv1.weight": torch.zeros(1), "note": pathlib.PurePosixPath("x")}, files["object"])
    expected = {"strings": "holds no state dict of tensors", "text": "could not be read",
                "object": "holds Python objects beyond tensors"}
    for kind, path in files.items():
        with pytest.raises(ConfigError, match=f"backbone_weights file .*{kind}.pth {expected[kind]}") as info:
            ResNetBackbone("resnet18", [1, 2, 3], weights_path=str(path))
        assert "weights_only=False" not in str(info.value) and "\n" not in str(info.value)


def test_build_backbone_reads_every_backbone_key():
    from util.settings import model_settings

    from tests.helpers import load_args

    args = load_args(batch_norm_type="BatchNorm2d", backbone_trainable_stages="all",
                     backbone_freeze_keywords=["layer1.0"], return_interm_indices=[0, 1, 2, 3])
    joiner = build_backbone(model_settings(args).backbone)
    body = joiner[0].body
    assert isinstance(body.bn1, nn.BatchNorm2d) and body.conv1.weight.requires_grad
    assert not body.layer1[0].conv1.weight.requires_grad and body.layer1[1].conv1.weight.requires_grad
    assert joiner.num_channels == [64, 128, 256, 512]
    with pytest.raises(ValueError, match="dilation=True needs a bottleneck ResNet"):
        build_backbone(model_settings(load_args(dilation=True)).backbone)
    with pytest.raises(ValueError, match="'SyncBatchNorm' needs CUDA devices under distributed training"):
        model_settings(load_args(batch_norm_type="SyncBatchNorm", distributed=True, device="cpu"))  # refused here
    checkpointed = build_backbone(model_settings(load_args(use_checkpoint=True)).backbone)
    assert checkpointed[0].use_checkpoint


def test_convert_batch_norm_keeps_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.BatchNorm2d(4))).eval()
    net[1][0].running_mean.normal_()
    net[1][0].weight.data.normal_()
    x = torch.randn(2, 3, 5, 5)
    expected = net(x)
    frozen = convert_batch_norm(net, "FrozenBatchNorm2d")
    assert isinstance(frozen[1][0], FrozenBatchNorm2d)
    torch.testing.assert_close(frozen(x), expected)
    assert isinstance(convert_batch_norm(nn.Sequential(nn.BatchNorm2d(2)), "SyncBatchNorm")[0], nn.SyncBatchNorm)
