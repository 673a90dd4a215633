"""Optimiser parameter groups: the backbone found by module, not by the word 'backbone' in a name."""
from __future__ import annotations

from argparse import Namespace

import pytest
import torch
from torch import nn

from models.clickpose.backbone import BackboneOptions, Joiner, make_backbone, set_trainable
from models.clickpose.position_encoding import PositionEmbeddingSineHW
from util.misc import NestedTensor
from models.optim import backbone_parameter_ids, build_optimizer, param_groups


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = Joiner(make_backbone("resnet18", BackboneOptions([1, 2, 3])), PositionEmbeddingSineHW(8))
        set_trainable(self.features[0], True)
        self.backbone_adapter = nn.Linear(4, 4)  # named like a backbone, but not part of it
        self.head = nn.Linear(4, 2)


def test_default_groups_find_the_backbone_by_module():
    model = _Model()
    groups = param_groups(Namespace(param_dict_type="default", lr_backbone=1e-5), model)
    backbone_ids = {id(p) for p in model.features.parameters() if p.requires_grad}
    assert {id(p) for p in groups[1]["params"]} == backbone_ids and groups[1]["lr"] == 1e-5
    others = {id(p) for p in groups[0]["params"]}
    assert id(model.backbone_adapter.weight) in others and id(model.head.weight) in others
    assert not others & backbone_ids
    frozen = model.features[0].body.layer1[0].conv1.weight
    assert not frozen.requires_grad and id(frozen) not in others | backbone_ids
    with pytest.raises(ValueError, match="has no backbone"):
        backbone_parameter_ids(nn.Linear(2, 2))


def test_ddetr_in_mmdet_groups_match_configured_names():
    model = _Model()
    args = Namespace(param_dict_type="ddetr_in_mmdet", lr=1e-4, lr_backbone=1e-5, lr_backbone_names=["features.0"],
                     lr_linear_proj_names=["head"], lr_linear_proj_mult=0.1)
    groups = param_groups(args, model)
    assert [len(g["params"]) for g in groups] == [2, sum(p.requires_grad for p in model.features.parameters()), 2]
    assert groups[2]["lr"] == pytest.approx(1e-5)


def test_optimizer_is_fused_adamw_with_the_loops_update():
    """build_optimizer picks torch's fused AdamW on CPU; its steps equal the per-tensor loop's (up to rounding), with
    the backbone's own lr, and its state dict loads into the loop's optimizer (checkpoints stay interchangeable)."""
    args = Namespace(param_dict_type="default", lr=1e-3, lr_backbone=1e-4, weight_decay=1e-4)
    torch.manual_seed(0)
    fused_model = _Model()
    loop_model = _Model()
    loop_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(args, fused_model)
    assert all(group["fused"] for group in fused.param_groups)
    loop = torch.optim.AdamW(param_groups(args, loop_model), lr=args.lr, weight_decay=args.weight_decay,
                             foreach=False)
    inputs = NestedTensor(torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool))
    start = fused_model.features[0].body.layer4[0].conv1.weight.detach().clone()
    for _ in range(3):
        fused.zero_grad()
        features, _ = fused_model.features(inputs)
        loss = sum(f.tensors.square().mean() for f in features) + fused_model.head(
            fused_model.backbone_adapter(torch.ones(1, 4))).sum()
        loss.backward()
        for a, b in zip(fused_model.parameters(), loop_model.parameters()):  # the same gradients for both
            b.grad = None if a.grad is None else a.grad.clone()
        fused.step()
        loop.step()
    for (name, a), b in zip(fused_model.named_parameters(), loop_model.parameters()):
        assert torch.allclose(a, b, atol=1e-7), name
    assert not torch.allclose(fused_model.features[0].body.layer4[0].conv1.weight, start)
    loop.load_state_dict(fused.state_dict())
    assert torch.equal(loop.state_dict()["state"][0]["exp_avg"], fused.state_dict()["state"][0]["exp_avg"])
