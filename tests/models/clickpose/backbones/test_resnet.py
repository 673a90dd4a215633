"""ResNet backbones: batch-norm types, activation checkpointing, local weights."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from models.clickpose.backbones.common import FrozenBatchNorm2d
from models.clickpose.backbones.resnet import ResNetBackbone
from util.misc import nested_tensor_from_tensor_list


@pytest.mark.parametrize("kind,cls", [("FrozenBatchNorm2d", FrozenBatchNorm2d), ("BatchNorm2d", nn.BatchNorm2d),
                                      ("SyncBatchNorm", nn.SyncBatchNorm)])
def test_batch_norm_type(kind, cls):
    backbone = ResNetBackbone("resnet18", [1, 2, 3], batch_norm=kind).train()
    norms = [m for m in backbone.modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d, nn.SyncBatchNorm))]
    assert norms and all(type(m) is cls for m in norms)
    samples = nested_tensor_from_tensor_list([torch.randn(3, 64, 64) * 3 + 1, torch.randn(3, 64, 64) * 3 + 1])
    backbone(samples)  # outside a process group SyncBatchNorm normalises like BatchNorm2d
    tracks = kind != "FrozenBatchNorm2d"
    assert (backbone.body.bn1.running_mean.abs().sum() > 0) == tracks  # real batch norm learns statistics
    with pytest.raises(ValueError, match="batch_norm_type must be one of"):
        ResNetBackbone("resnet18", [1, 2, 3], batch_norm="GroupNorm")


def test_activation_checkpointing_gives_the_same_gradients_and_refuses_batch_statistics():
    torch.manual_seed(0)
    plain = ResNetBackbone("resnet18", [1, 2, 3]).train()
    recomputed = ResNetBackbone("resnet18", [1, 2, 3], use_checkpoint=True).train()
    recomputed.load_state_dict(plain.state_dict())
    samples = nested_tensor_from_tensor_list([torch.randn(3, 64, 96), torch.randn(3, 48, 64)])
    grads = []
    for model in (plain, recomputed):
        loss = sum((f.tensors ** 2).mean() for f in model(samples).values())
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)
    # recomputing a stage would update real batch-norm statistics twice
    with pytest.raises(ValueError, match="use_checkpoint=True with batch_norm_type='BatchNorm2d'.*twice"):
        ResNetBackbone("resnet18", [1, 2, 3], batch_norm="BatchNorm2d", use_checkpoint=True)


def test_torchvision_weights_with_batch_norm_and_errors_naming_keys(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18()
    source.bn1.running_mean.normal_()
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    backbone = ResNetBackbone("resnet18", [1, 2, 3], weights_path=str(tmp_path / "resnet18.pth"),
                              batch_norm="BatchNorm2d")
    assert torch.equal(backbone.body.bn1.running_mean, source.bn1.running_mean)
    state = source.state_dict()
    del state["layer2.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"missing \(1\): layer2.0.conv1.weight; unexpected \(1\): extra.weight"):
        ResNetBackbone("resnet18", [1, 2, 3], weights_path=str(tmp_path / "partial.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds no state dict of tensors"):
        ResNetBackbone("resnet18", [1, 2, 3], weights_path=str(tmp_path / "list.pth"))
