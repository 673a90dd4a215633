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


# ---- issue 13: no code runs from a checkpoint unless the user opts in --------------------------------------------


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_checkpoint_with_a_pickle_payload_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"model": _model().state_dict(), "epoch": 1, "extra": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil.pth holds Python objects .* not loaded .*GLOBAL .*open.*"
                                              r"--trust_checkpoint.*trust_checkpoint=True") as info:
        read_checkpoint(path)
    assert not marker.exists()
    assert "\n" not in str(info.value)


def test_trust_opt_in_loads_with_full_unpickling(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"model": _model().state_dict(), "extra": Payload(marker)}, tmp_path / "mine.pth")
    ckpt = read_checkpoint(tmp_path / "mine.pth", trust=True)
    assert marker.exists() and set(ckpt["model"]) == set(_model().state_dict())


def test_original_release_format_loads_without_opt_in(tmp_path):
    """The original's checkpoints: tensors (model, optimizer, scheduler state) and an argparse.Namespace of
    plain values, lists and dicts."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    args = argparse.Namespace(lr=1e-4, lr_drop_list=[33, 45], dn_attn_mask_type_list=["match2dn", "dn2dn"],
                              data_aug_scale_overlap=None, cfg={"a": 1}, device="cuda", resume="")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 5).state_dict(), "epoch": 59, "args": args,
                "ema_model": model.state_dict()}, tmp_path / "release.pth")
    ckpt = read_checkpoint(tmp_path / "release.pth")
    assert ckpt["args"].lr_drop_list == [33, 45] and ckpt["epoch"] == 59 and "state" in ckpt["optimizer"]


@pytest.mark.parametrize("kind, message", [("empty", "is empty (0 bytes)"), ("directory", "is a directory"),
                                           ("truncated", "damaged or not a PyTorch checkpoint")])
def test_unusable_files_say_why(tmp_path, kind, message):
    path = tmp_path / "c.pth"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    else:
        torch.save({"model": _model().state_dict()}, path)
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_checkpoint(path)


def test_each_rank_restores_its_own_random_state():
    from util.checkpoint import restore_rng_state

    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(rng_state())
    expected = []
    for state in states:
        set_rng_state(state)
        expected.append(float(torch.rand(1)))
    ckpt = {"rng_state": states[0], "rng_state_per_rank": states}
    for rank in (1, 0):
        torch.manual_seed(99)
        assert restore_rng_state(ckpt, rank, 2)
        assert float(torch.rand(1)) == expected[rank]
    assert not restore_rng_state(ckpt, 0, 4)  # another world size: the streams restart (with a warning)
    assert restore_rng_state({"rng_state": states[1]}, 0, 1) and float(torch.rand(1)) == expected[1]


def test_grad_scaler_state_roundtrips_and_an_old_checkpoint_without_it_still_resumes(tmp_path, caplog, monkeypatch):
    import logging

    from util.checkpoint import restore_scaler_state

    monkeypatch.setattr(logging.getLogger("clickpose"), "propagate", True)  # main.py's logger setup turns it off

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))
    scaler.update(new_scale=128.0)  # as after overflows: the state a resume must continue from
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, _model(), epoch=0, scaler=scaler)
    ckpt = read_checkpoint(path)  # weights_only: the scaler's state is plain numbers
    fresh = torch.amp.GradScaler("cpu")
    assert restore_scaler_state(fresh, ckpt) and fresh.get_scale() == 128.0
    assert fresh.state_dict() == scaler.state_dict()
    # a checkpoint written before the key existed, or without float16 --amp: the scale restarts, with a warning
    old = tmp_path / "old.pth"
    save_checkpoint(old, _model(), epoch=0, scaler=torch.amp.GradScaler("cpu", enabled=False))
    assert "scaler" not in read_checkpoint(old)
    restarted = torch.amp.GradScaler("cpu")
    with caplog.at_level("WARNING", logger="clickpose"):
        assert not restore_scaler_state(restarted, read_checkpoint(old))
    assert restarted.get_scale() == 65536.0 and "loss scale restarts" in caplog.text
    assert not restore_scaler_state(torch.amp.GradScaler("cpu", enabled=False), ckpt)  # no --amp float16: ignored
