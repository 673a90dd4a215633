"""ModelEma: the reference's per-key update (aliased tensors decay faster) and the unique-parameter option."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from util.ema import ModelEma, unwrap_model


class AliasedHeads(nn.Module):
    """Mimics the model's sharing: a head listed under 2 keys, an MLP shared 8 ways, plus a plain layer/buffers."""

    def __init__(self):
        super().__init__()
        self.class_embed = nn.Linear(3, 2)
        self.pose_hw_embed = nn.ModuleList([nn.Linear(3, 2)] * 4)
        self.decoder = nn.Module()
        self.decoder.class_embed = self.class_embed
        self.decoder.pose_hw_embed = nn.ModuleList([self.pose_hw_embed[0]] * 4)
        self.body = nn.Linear(3, 3)
        self.register_buffer("stat", torch.zeros(3))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))


def _step_once(ema: ModelEma, model: nn.Module, target_value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(target_value)
        model.stat.fill_(target_value)
        model.steps.fill_(7)
    ema.update(model)


@pytest.mark.parametrize("unique, head_power, hw_power", [(False, 2, 8), (True, 1, 1)])
def test_effective_decay_per_alias_count(unique, head_power, hw_power):
    model = AliasedHeads()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    d = 0.9
    ema = ModelEma(model, decay=d, unique_params=unique)
    _step_once(ema, model, 1.0)  # e0 = 0, m = 1 -> e = 1 - d**n after one step with n updates
    ema_model = ema.module
    assert torch.allclose(ema_model.class_embed.weight, torch.full((2, 3), 1 - d ** head_power))
    assert torch.allclose(ema_model.decoder.class_embed.bias, torch.full((2,), 1 - d ** head_power))
    assert torch.allclose(ema_model.pose_hw_embed[2].weight, torch.full((2, 3), 1 - d ** hw_power))
    assert torch.allclose(ema_model.body.weight, torch.full((3, 3), 1 - d))
    assert torch.allclose(ema_model.stat, torch.full((3,), 1 - d))  # float buffers are averaged
    assert ema_model.steps.item() == 7  # integer buffers are copied
    assert ema_model.class_embed is ema_model.decoder.class_embed  # sharing survives the copy


def test_update_formula_over_several_steps():
    model = nn.Linear(4, 4)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = ModelEma(model, decay=0.75)
    expected = {k: v.clone() for k, v in start.items()}
    for step in range(3):
        with torch.no_grad():
            model.weight.add_(torch.randn(4, 4))
            model.bias.add_(1.0)
        ema.update(model)
        expected = {k: 0.75 * e + 0.25 * model.state_dict()[k] for k, e in expected.items()}
    for key, value in ema.module.state_dict().items():
        assert torch.allclose(value, expected[key], atol=1e-6)
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training


def test_set_copies_and_keys_are_prefixed_module():
    model = AliasedHeads()
    ema = ModelEma(model, decay=0.5)
    with torch.no_grad():
        model.body.weight.add_(3.0)
    ema.set(model)
    assert torch.equal(ema.module.body.weight, model.body.weight)
    assert set(ema.state_dict()) == {f"module.{k}" for k in model.state_dict()}  # checkpoint layout of the reference


def test_wrapped_model_is_unwrapped(tmp_path):
    import torch.distributed as dist
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = nn.Linear(2, 2)
        wrapped = nn.parallel.DistributedDataParallel(model)
        assert unwrap_model(wrapped) is model
        ema = ModelEma(wrapped, decay=0.5)
        assert set(ema.module.state_dict()) == {"weight", "bias"}
        with torch.no_grad():
            model.weight.fill_(2.0)
        before = ema.module.weight.clone()
        ema.update(wrapped)
        assert torch.allclose(ema.module.weight, 0.5 * before + 1.0)
    finally:
        dist.destroy_process_group()


def test_clear_errors():
    with pytest.raises(ValueError, match="ema_decay"):
        ModelEma(nn.Linear(2, 2), decay=1.5)
    ema = ModelEma(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="lacks"):
        ema.update(nn.Conv2d(2, 2, 1, bias=False))
