"""Atomic checkpoint writes, safe loading, weight loading reports, RNG round-trip."""
from __future__ import annotations

import argparse
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from util.checkpoint import (CheckpointError, load_model_weights, read_checkpoint, rng_state, save_checkpoint,
                             set_rng_state)
from util.distributed import atomic_torch_save


def _model():
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))


def test_save_and_read_roundtrip_with_args_loads_weights_only(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, model, opt, None, epoch=3, args=argparse.Namespace(lr=1e-3, names=["a"]))
    ckpt = read_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["args"].lr == 1e-3
    fresh = _model()
    load_model_weights(fresh, ckpt["model"])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_crash_during_save_keeps_previous_file(tmp_path):
    path = tmp_path / "checkpoint.pth"
    atomic_torch_save({"model": {"w": torch.ones(2)}}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"model": {"w": torch.zeros(2)}, "x": Unpicklable()}, path)
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "none.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        read_checkpoint(bad)


def test_plain_state_dict_file_is_accepted(tmp_path):
    model = _model()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    assert set(read_checkpoint(tmp_path / "w.pth")["model"]) == set(model.state_dict())


def test_shape_mismatch_names_keys_and_fix():
    other = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2))
    with pytest.raises(CheckpointError, match=r"(?s)finetune_ignore.*0.weight: \(5, 3\) in checkpoint vs \(4, 3\)"):
        load_model_weights(_model(), other.state_dict())


def test_ignore_keywords_and_ddp_prefix():
    src = {f"module.{k}": v for k, v in _model().state_dict().items()}
    result = load_model_weights(_model(), src, strict=False, ignore_keywords=["1."])
    assert result.missing_keys == ["1.weight", "1.bias"] and result.unexpected_keys == []


def test_rng_state_roundtrip_through_a_file(tmp_path):
    state = rng_state()
    torch.save({"rng": state}, tmp_path / "r.pth")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    set_rng_state(torch.load(tmp_path / "r.pth", weights_only=True)["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
