"""Checkpoint compatibility: our state dict has exactly the reference's keys, shapes, order and aliasing."""
from __future__ import annotations

import re

import pytest
import torch

from models.clickpose.build import build_clickpose

from tests.helpers import layout, load_args


def _build(args):
    return build_clickpose(args, layout(args))


def _reference_entries(shared_reference) -> list[tuple[str, tuple[int, ...], bool, str | None]]:
    entries = []
    for line in (shared_reference / "original_state_dict_keys.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, rest = line.split("\t")
        alias = re.search(r"== (\S+)", rest)
        entries.append((key, tuple(int(s) for s in re.findall(r"\d+", shape)), "[frozen]" in rest,
                        alias.group(1) if alias else None))
    return entries


@pytest.fixture(scope="module")
def full_model():
    torch.manual_seed(0)
    return _build(load_args("clickpose.cfg.py"))


def test_keys_shapes_and_order_equal_the_reference(full_model, shared_reference):
    reference = _reference_entries(shared_reference)
    ours = full_model.state_dict()
    assert len(reference) == 736
    assert [key for key, *_ in reference] == list(ours)
    assert {key: shape for key, shape, *_ in reference} == {k: tuple(v.shape) for k, v in ours.items()}


def test_parameter_counts_and_frozen_backbone_stages(full_model, shared_reference):
    params = list(full_model.parameters())  # deduplicated
    assert len(params) == 404
    assert sum(p.numel() for p in params) == 48_299_800
    assert sum(p.numel() for p in params if p.requires_grad) == 48_077_400
    frozen = {key for key, _, is_frozen, _ in _reference_entries(shared_reference) if is_frozen}
    ours_frozen = {name for name, p in full_model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    assert ours_frozen == frozen


def test_aliased_heads_share_storage(full_model, shared_reference):
    state = full_model.state_dict()
    for key, _, _, alias in _reference_entries(shared_reference):
        if alias is not None:
            assert state[key].data_ptr() == state[alias].data_ptr(), key
    hw_keys = [k for k in state if re.search(r"pose_hw_embed\.\d\.layers\.0\.weight$", k)]
    assert len(hw_keys) == 8
    assert len({state[k].data_ptr() for k in hw_keys}) == 1
    assert len({t.data_ptr() for t in state.values()}) == 616


def test_strict_round_trip(full_model):
    saved = {k: v.clone() for k, v in full_model.state_dict().items()}
    torch.manual_seed(1)
    fresh = _build(load_args("clickpose.cfg.py"))
    assert not torch.equal(fresh.state_dict()["label_enc.weight"], saved["label_enc.weight"])
    fresh.load_state_dict(saved, strict=True)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_a_state_dict_built_from_the_reference_keys_loads_strict(full_model, shared_reference):
    generator = torch.Generator().manual_seed(5)
    state = {}
    for key, shape, _, alias in _reference_entries(shared_reference):
        # aliased keys hold the same tensor in a reference checkpoint
        state[key] = state[alias] if alias is not None else torch.randn(shape, generator=generator)
    full_model.load_state_dict(state, strict=True)
    loaded = full_model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())


def test_num_batches_tracked_is_ignored_when_loading_backbone_keys(full_model):
    state = dict(full_model.state_dict())
    state["backbone.0.body.bn1.num_batches_tracked"] = torch.tensor(3)
    full_model.load_state_dict(state, strict=True)
