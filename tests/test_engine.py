"""End-to-end behaviour of the engine and main.py on a tiny model and synthetic data (CPU)."""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
import main as clickpose_main
from util.checkpoint import read_checkpoint
from util.config import Config, apply_config_to_args

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "config" / "demo.cfg.py")
FAST = ["num_queries=100", "dn_number=4", "num_group=8", "num_group_refine=4", "num_select=8"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from datasets.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 8, seed=3, num_val=4)
    return root


def _args(data: Path, *options: str) -> argparse.Namespace:
    cfg = Config.fromfile(CONFIG)
    from util.config import parse_options

    cfg.merge_from_dict(parse_options([*FAST, *options]))
    return apply_config_to_args(cfg, argparse.Namespace(dataset_file="coco", coco_path=str(data), noc_filter=False))


def _run(data: Path, out: Path, *extra: str, options=()) -> None:
    argv = ["-c", CONFIG, "--coco_path", str(data), "--output_dir", str(out), "--device", "cpu", "--num_workers", "0",
            *extra, "--options", *FAST, *options]
    assert clickpose_main.main(argv) == 0


@pytest.mark.slow
def test_resume_continues_exactly(synthetic, tmp_path):
    """4 epochs in one go == 2 epochs, stop, resume to 4 (model, EMA, optimizer and random streams restored)."""
    _run(synthetic, tmp_path / "full", options=["epochs=4", "use_ema=TRUE"])
    _run(synthetic, tmp_path / "split", options=["epochs=2", "use_ema=TRUE"])
    _run(synthetic, tmp_path / "split", options=["epochs=4", "use_ema=TRUE"])  # auto-resumes from checkpoint.pth
    full = read_checkpoint(tmp_path / "full" / "checkpoint.pth")
    split = read_checkpoint(tmp_path / "split" / "checkpoint.pth")
    assert full["epoch"] == split["epoch"] == 3
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key
    for key, value in full["ema_model"].items():
        assert torch.equal(value, split["ema_model"][key]), key
    assert any(not torch.equal(v, full["model"][k]) for k, v in full["ema_model"].items())
    log = [json.loads(line) for line in (tmp_path / "split" / "log.txt").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [0, 1, 2, 3]
    assert {"train_loss", "test_coco_eval_keypoints_detr", "test_coco_eval_bbox", "ema_test_coco_eval_bbox",
            "n_parameters", "epoch_time", "all_best_res", "regular_best_res", "ema_best_res"} <= set(log[-1])
    # a best checkpoint is written only when AP improves on 0 (the reference's rule)
    for kind in ("regular", "ema"):
        assert (tmp_path / "split" / f"checkpoint_best_{kind}.pth").is_file() == (log[-1][f"{kind}_best_res"] > 0)
    assert list((tmp_path / "full" / "tensorboard").glob("events.*"))


@pytest.mark.slow
def test_model_only_training_runs(synthetic, tmp_path):
    """human_feedback=False trains (the original crashes on the aux-output assert)."""
    _run(synthetic, tmp_path / "run", options=["epochs=1", "human_feedback=FALSE", "use_ema=TRUE"])
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint.pth")
    assert "ema_model" in ckpt and ckpt["epoch"] == 0


@pytest.mark.slow
def test_evaluation_with_use_ema_evaluates_the_regular_weights(synthetic, tmp_path):
    """The original README's evaluation commands set use_ema=TRUE with --pretrain_model_path or --resume: they run,
    and evaluate the checkpoint's regular weights, as the original does."""
    _run(synthetic, tmp_path / "train", options=["epochs=1", "use_ema=TRUE", "ema_decay=0.5"])
    ckpt = tmp_path / "train" / "checkpoint.pth"
    runs = {"plain": ("--resume", "use_ema=FALSE"), "resume_ema": ("--resume", "use_ema=TRUE"),
            "pretrain_ema": ("--pretrain_model_path", "use_ema=TRUE")}
    aps = {}
    for name, (flag, ema) in runs.items():
        _run(synthetic, tmp_path / name, "--eval", flag, str(ckpt), options=[ema, "ema_decay=0.5"])
        log = json.loads((tmp_path / name / "log.txt").read_text().splitlines()[-1])
        aps[name] = log["test_coco_eval_bbox"] + log["test_coco_eval_keypoints_detr"]
    assert aps["resume_ema"] == aps["plain"] == aps["pretrain_ema"]


def test_loss_falls_when_overfitting_a_batch(synthetic):
    from datasets import build_dataset
    from models import build_model
    from util.misc import collate_fn

    torch.manual_seed(0)
    args = _args(synthetic, "human_feedback=FALSE")
    model, criterion, _ = build_model(args)
    dataset = build_dataset("val", args)
    samples, targets = collate_fn([dataset[0], dataset[1]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    matched = ("loss_ce", "loss_bbox", "loss_giou", "loss_keypoints", "loss_oks")
    losses = []
    model.train()
    for _ in range(18):
        loss_dict = criterion(model(samples, list(targets)), list(targets))
        total = engine.weighted_total(loss_dict, criterion.weight_dict)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        # the final layer's matched terms (the denoising terms get fresh noise every step)
        losses.append(float(engine.weighted_total({k: loss_dict[k].detach() for k in matched}, criterion.weight_dict)))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses


def test_non_finite_loss_stops_with_the_terms_named(synthetic):
    from datasets import build_dataset
    from models import build_model
    from util.misc import collate_fn

    args = _args(synthetic)
    model, criterion, _ = build_model(args)

    class NanCriterion(torch.nn.Module):
        weight_dict = criterion.weight_dict

        def forward(self, outputs, targets):
            losses = criterion(outputs, targets)
            losses["loss_oks"] = losses["loss_oks"] * float("nan")
            return losses

    dataset = build_dataset("val", args)
    loader = [collate_fn([dataset[0], dataset[1]])]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(engine.NonFiniteLossError, match="loss_oks"):
        engine.train_one_epoch(model, NanCriterion(), loader, torch.optim.AdamW(model.parameters()),
                               torch.device("cpu"), 0, log_fn=lambda _: None)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # no step was taken


def _interactive(synthetic, tmp_path, batch_size, **env_args):
    from datasets import build_dataset, build_evaluator
    from models import build_model
    from util.misc import collate_fn

    torch.manual_seed(0)
    args = _args(synthetic, f"batch_size={batch_size}", "max_clicks=3")
    for key, value in env_args.items():  # what main.py sets from NoC_thr / CLICKPOSE_* variables
        setattr(args, key, value)
    model, _, postprocessors = build_model(args)
    dataset = build_dataset("val", args)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn)
    stats = engine.evaluate_interactive(model, postprocessors, loader, dataset, args, torch.device("cpu"),
                                        output_dir=tmp_path, evaluator_factory=lambda: build_evaluator(dataset, args),
                                        log_fn=lambda _: None)
    return stats, json.loads((tmp_path / "noc_results.json").read_text())


def test_interactive_evaluation_is_batch_size_invariant(synthetic, tmp_path):
    stats1, res1 = _interactive(synthetic, tmp_path / "bs1", 1)
    stats2, res2 = _interactive(synthetic, tmp_path / "bs2", 2)
    curves1 = {i["image_id"]: i["ap_per_round"] for i in res1["images"]}
    curves2 = {i["image_id"]: i["ap_per_round"] for i in res2["images"]}
    assert len(curves1) == 4 and set(curves1) == set(curves2)
    for image_id, curve in curves1.items():
        np.testing.assert_allclose(curve, curves2[image_id], atol=1e-6)
        assert len(curve) == 4  # rounds 0..max_clicks
    assert [stats1[f"NoC@{t}"] for t in (85, 90, 95)] == [stats2[f"NoC@{t}"] for t in (85, 90, 95)]
    # Dataset-level AP ranks detections of all images by score; batching pads images, which moves scores by ~1e-7
    # and can reorder the near-ties of an untrained model across images, so allow a small difference there.
    assert [stats1[f"AP@{k}"] for k in range(4)] == pytest.approx([stats2[f"AP@{k}"] for k in range(4)], abs=2e-3)
    nocs = [stats1["NoC@85"], stats1["NoC@90"], stats1["NoC@95"]]
    assert nocs == sorted(nocs) and all(0 <= n <= 3 for n in nocs)
    assert (tmp_path / "bs1" / "ap_vs_clicks.png").stat().st_size > 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [
    ["-m", "torch.distributed.run", "--nproc-per-node=2"],
    ["-m", "torch.distributed.launch", "--nproc_per_node=2"],
])
def test_two_process_gloo_training(synthetic, tmp_path, launcher):
    out = tmp_path / "ddp"
    port = ["--master-port" if "run" in launcher[1] else "--master_port", str(_free_port())]
    cmd = [sys.executable, *launcher, *port, str(REPO / "main.py"), "-c", CONFIG, "--coco_path", str(synthetic),
           "--output_dir", str(out), "--device", "cpu", "--num_workers", "0",
           "--options", *FAST, "epochs=1", "batch_size=1"]  # 4 images, 2 ranks: 2 iterations per rank
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "distributed init (rank 0/2, backend gloo)" in result.stdout
    assert "[1/2]" in result.stdout  # a second iteration ran (DDP checks for unused parameters there)
    ckpt = read_checkpoint(out / "checkpoint.pth")
    assert ckpt["epoch"] == 0 and not any(k.startswith("module.") for k in ckpt["model"])
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert len(log) == 1 and "test_coco_eval_keypoints_detr" in log[0]
    assert (out / "info.txt.rank1").is_file()


def test_interactive_evaluation_honours_the_reference_environment(synthetic, tmp_path):
    """NoC_thr + CLICKPOSE_SAVE_PATH write the original's click list; CLICKPOSE_Click_Number picks the AP reported."""
    save = tmp_path / "NoC_50.json"
    stats, results = _interactive(synthetic, tmp_path / "run", 2, noc_threshold_env=0.5, noc_save_path=str(save),
                                  click_number_env=2)
    clicks = json.loads(save.read_text())
    assert isinstance(clicks, list) and len(clicks) == 4 and all(isinstance(c, int) and 0 <= c <= 3 for c in clicks)
    assert stats["coco_eval_keypoints_detr"][0] == pytest.approx(stats["AP@2"])
    assert "NoC@50" in stats and [i["clicks"]["NoC@50"] for i in results["images"]] == clicks


def test_training_split_smaller_than_a_batch_is_an_error(synthetic, tmp_path, capsys):
    """8 synthetic images, 4 of them val: batch_size=8 would drop the only, incomplete batch and train nothing."""
    argv = ["-c", CONFIG, "--coco_path", str(synthetic), "--output_dir", str(tmp_path / "run"), "--device", "cpu",
            "--num_workers", "0", "--options", *FAST, "epochs=1", "batch_size=8"]
    assert clickpose_main.main(argv) == 2
    err = capsys.readouterr().err
    assert "has 4 images, 4 per process, fewer than batch_size=8" in err and "Lower batch_size" in err
    assert not (tmp_path / "run" / "checkpoint.pth").exists()
