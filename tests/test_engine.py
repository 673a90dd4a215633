"""End-to-end behaviour of the engine and main.py on a tiny model and synthetic data (CPU)."""
from __future__ import annotations

import argparse
import json
import os
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
from tests.helpers.ports import free_port

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
    from datasets import build_dataset, get_metadata
    from models import build_model
    from util.misc import collate_fn

    torch.manual_seed(0)
    args = _args(synthetic, "human_feedback=FALSE")
    model, criterion, _ = build_model(args, get_metadata(args))
    dataset = build_dataset("val", args)
    samples, targets = collate_fn([dataset[0], dataset[1]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    matched = ("loss_ce", "loss_bbox", "loss_giou", "loss_keypoints", "loss_oks")
    losses = []
    model.train()
    for _ in range(18):
        loss_dict = criterion(model(samples, list(targets)), list(targets))
        total, _ = criterion.weigh(loss_dict)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        # the final layer's matched terms (the denoising terms get fresh noise every step)
        losses.append(float(criterion.weigh({k: loss_dict[k].detach() for k in matched})[0]))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses


def test_non_finite_loss_stops_with_the_terms_named(synthetic):
    from datasets import build_dataset, get_metadata
    from models import build_model
    from util.misc import collate_fn

    args = _args(synthetic)
    model, criterion, _ = build_model(args, get_metadata(args))

    class NanCriterion(torch.nn.Module):
        weigh = criterion.weigh

        def forward(self, outputs, targets):
            losses = criterion(outputs, targets)
            losses["loss_oks"] = losses["loss_oks"] * float("nan")
            return losses

    dataset = build_dataset("val", args)
    loader = [collate_fn([dataset[0], dataset[1]])]
    # parameters, not buffers: a training-mode forward updates BatchNorm running statistics before the check
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with pytest.raises(engine.NonFiniteLossError, match="loss_oks"):
        engine.train_one_epoch(model, NanCriterion(), loader, torch.optim.AdamW(model.parameters()),
                               torch.device("cpu"), 0, log_fn=lambda _: None)
    params = dict(model.named_parameters())
    assert all(torch.equal(v, params[k]) for k, v in before.items())  # no step was taken


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [
    ["-m", "torch.distributed.run", "--nproc-per-node=2"],
    ["-m", "torch.distributed.launch", "--nproc_per_node=2"],
])
def test_two_process_gloo_training(synthetic, tmp_path, launcher):
    out = tmp_path / "ddp"
    port = ["--master-port" if "run" in launcher[1] else "--master_port", str(free_port())]
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


def test_training_split_smaller_than_a_batch_is_an_error(synthetic, tmp_path, capsys):
    """8 synthetic images, 4 of them val: batch_size=8 would drop the only, incomplete batch and train nothing."""
    argv = ["-c", CONFIG, "--coco_path", str(synthetic), "--output_dir", str(tmp_path / "run"), "--device", "cpu",
            "--num_workers", "0", "--options", *FAST, "epochs=1", "batch_size=8"]
    assert clickpose_main.main(argv) == 2
    err = capsys.readouterr().err
    assert "has 4 images, 4 per process, fewer than batch_size=8" in err and "Lower batch_size" in err
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


# ---------------------------------------------------------------------------------------- interactive evaluation
ORACLE_THRESHOLDS = (0.5, 0.75, 0.9)
ORACLE_CLICKS = 4


@pytest.fixture(scope="module")
def coco_oracle(shared_data):
    """The COCO sample's GT, its images, and what pycocotools says about the oracle's predictions."""
    from tests.helpers.oracle import expected_curves, pycocotools_ap

    gt = json.loads((shared_data / "coco/annotations/person_keypoints_val2017.json").read_text())
    ids = sorted(img["id"] for img in gt["images"])
    curves = expected_curves(gt, ids, ORACLE_CLICKS)
    round_ap = [pycocotools_ap(gt, ids, k) for k in range(ORACLE_CLICKS + 1)]
    # The oracle is informative: every round changes the dataset AP, and the per-image click counts differ between
    # images and thresholds, so reporting round k-1 or k+1 (or a wrong threshold) changes the asserted numbers.
    assert all(np.diff(round_ap) > 0.05)
    assert all(np.any(curves[:, k] != curves[:, k + 1]) for k in range(ORACLE_CLICKS))
    return gt, ids, curves, round_ap


def _check_oracle_results(results, gt, ids, curves, round_ap):
    from tests.helpers.oracle import expected_noc

    assert results.image_ids == ids
    np.testing.assert_allclose(results.ap_curves, curves, rtol=0, atol=1e-9)
    for threshold in ORACLE_THRESHOLDS:
        assert results.clicks[threshold].tolist() == expected_noc(curves, threshold, ORACLE_CLICKS), threshold
        assert results.summary[f"NoC@{int(threshold * 100)}"] == pytest.approx(
            np.mean(expected_noc(curves, threshold, ORACLE_CLICKS)))
    assert [round(s[0], 4) for s in results.round_stats] == [round(a, 4) for a in round_ap]
    assert results.stat_names[:3] == ("AP", "AP50", "AP75") and len(results.round_stats[0]) == 10


@pytest.mark.parametrize("batch_size", [1, 3])
def test_interactive_oracle_exact_noc_and_ap_after_k(coco_oracle, batch_size):
    from tests.helpers.oracle import run_evaluation

    gt, ids, curves, round_ap = coco_oracle
    results = run_evaluation(gt, ids, batch_size, ORACLE_CLICKS, ORACLE_THRESHOLDS, report_round=2)
    _check_oracle_results(results, gt, ids, curves, round_ap)
    # the clicks per image at each threshold, spelled out (also computed from pycocotools above)
    assert [results.clicks[t].tolist() for t in ORACLE_THRESHOLDS] == [[1, 3, 2, 2], [1, 4, 2, 3], [2, 4, 3, 4]]
    # the full evaluator saw round 2 (pycocotools), the one asked for
    assert results.report_round == 2
    assert results.report_stats["coco_eval_keypoints_detr"][0] == pytest.approx(round_ap[2], abs=1e-12)
    stats = results.log_stats()
    assert [stats[f"AP@{k}"] for k in range(ORACLE_CLICKS + 1)] == pytest.approx(round_ap, abs=1e-12)


@pytest.mark.slow
def test_interactive_oracle_on_two_processes(coco_oracle, tmp_path):
    """2 gloo processes, 3 images: the sampler pads rank 1 with a repeat of the first image; the gathered curves,
    click counts and AP after k equal the single-process expectation."""
    from tests.helpers.oracle import expected_curves, pycocotools_ap

    gt, ids, _, _ = coco_oracle
    subset = ids[:3]
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port", str(free_port()),
           "-m", "tests.helpers.oracle", "--gt", str(gt_path), "--out", str(out),
           "--images", *map(str, subset), "--batch-size", "1", "--max-clicks", str(ORACLE_CLICKS),
           "--thresholds", *map(str, ORACLE_THRESHOLDS)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["rank0_images"] != subset  # each rank saw only part of the images
    curves = expected_curves(gt, subset, ORACLE_CLICKS)
    assert got["image_ids"] == subset
    np.testing.assert_allclose(got["ap_curves"], curves, rtol=0, atol=1e-9)
    from tests.helpers.oracle import expected_noc
    for threshold in ORACLE_THRESHOLDS:
        assert got["clicks"][str(threshold)] == expected_noc(curves, threshold, ORACLE_CLICKS)
    expected_ap = [pycocotools_ap(gt, subset, k) for k in range(ORACLE_CLICKS + 1)]
    assert got["round_ap"] == pytest.approx(expected_ap, abs=1e-12)


def test_interactive_eval_through_main_honours_the_reference_environment(synthetic, tmp_path, monkeypatch):
    """The real model through main.py --eval: NoC_thr + CLICKPOSE_SAVE_PATH write the original's click list,
    CLICKPOSE_Click_Number picks the round whose full stats are logged, and TensorBoard gets the interactive
    scalars."""
    save = tmp_path / "NoC_50.json"
    monkeypatch.setenv("NoC_thr", "0.5")
    monkeypatch.setenv("CLICKPOSE_SAVE_PATH", str(save))
    monkeypatch.setenv("CLICKPOSE_Click_Number", "2")
    out = tmp_path / "run"
    _run(synthetic, out, "--eval", options=["feedback_loop_NOC_test=TRUE", "max_clicks=3", "batch_size=2"])
    log = json.loads((out / "log.txt").read_text().splitlines()[-1])
    results = json.loads((out / "noc_results.json").read_text())
    clicks = json.loads(save.read_text())
    assert len(clicks) == 4 and all(isinstance(c, int) and 0 <= c <= 3 for c in clicks)
    assert [i["clicks"]["NoC@50"] for i in results["images"]] == clicks
    assert {"test_NoC@50", "test_NoC@85", "test_AP@0", "test_AP@3"} <= set(log)
    assert log["test_coco_eval_keypoints_detr"][0] == pytest.approx(log["test_AP@2"], abs=1e-12)
    assert [r["clicks"] for r in results["ap_vs_clicks"]] == [0, 1, 2, 3]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"interactive/NoC@85", "interactive/NoC@50", "interactive/AP_vs_clicks"} <= tags
    assert [e.step for e in events.Scalars("interactive/AP_vs_clicks")] == [0, 1, 2, 3]


def test_interactive_oracle_crowdpose_reports_its_own_stats(shared_data, tmp_path):
    """CrowdPose (14 keypoints): AP after k comes from the CrowdPose scorer, its 9 stats under CrowdPose's names."""
    from datasets.evaluation import KEYPOINT_STAT_NAMES, evaluate_results_file, write_interactive_report
    from datasets.metadata import CROWDPOSE_KEYPOINTS
    from tests.helpers.oracle import QUERIES, oracle_round, run_evaluation

    gt = json.loads((shared_data / "crowdpose/extras/xtcocoapi_example_crowdpose_val.json").read_text())
    ids = sorted(img["id"] for img in gt["images"])
    sigmas = CROWDPOSE_KEYPOINTS.sigmas
    results = run_evaluation(gt, ids, 3, 2, ORACLE_THRESHOLDS, backend="crowdpose", sigmas=sigmas)
    assert results.stat_names == KEYPOINT_STAT_NAMES["crowdpose"] and len(results.round_stats[2]) == 9
    for k in range(3):  # the round's stats are the CrowdPose scorer's on the oracle's round-k predictions
        dets = [{"image_id": i, "category_id": 1, "score": float(s), "keypoints": np.concatenate(
            [xy, np.ones((14, 1))], 1).reshape(-1).tolist()} for i in ids for xy, s in zip(*oracle_round(gt, i, k, 14))]
        expected = evaluate_results_file(gt, dets, backend="crowdpose", sigmas=sigmas)
        np.testing.assert_allclose(results.round_stats[k], expected, rtol=0, atol=1e-6)
    assert results.round_stats[2][0] > results.round_stats[0][0]
    assert len(dets) == QUERIES * len(ids)
    files = write_interactive_report(tmp_path, results, printer=None)
    row = json.loads(files["json"].read_text())["ap_vs_clicks"][2]
    assert list(row) == ["clicks", "AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard"]
    assert row["AP_hard"] == pytest.approx(results.round_stats[2][8]) and row["AR"] == results.round_stats[2][3]


def test_interactive_crowdpose_run_reads_the_ground_truth_once(sample_root, make_args, tmp_path, monkeypatch):
    """engine.evaluate_model on a CrowdPose-style ground truth (no 'area', faster-coco-eval scorer): the report
    evaluator, every round's evaluator and the per-image AP share one load of the file; the numbers are those of
    evaluators that each load their own."""
    import datasets.evaluation.ground_truth as ground_truth_module
    from datasets import build_dataset
    from models.clickpose.postprocess import PostProcess
    from tests.helpers.oracle import QUERIES, ImageList, OracleModel, collate, run_evaluation

    dataset = build_dataset("val", make_args("crowdpose", sample_root("crowdpose")), transforms=None)
    gt = json.loads(dataset.ann_file.read_text())
    assert all("area" not in a for a in gt["annotations"])
    ids = sorted(img["id"] for img in gt["images"])
    loads = []
    real_load = ground_truth_module.load_ground_truth
    monkeypatch.setattr(ground_truth_module, "load_ground_truth", lambda *a: loads.append(a[1]) or real_load(*a))
    loader = torch.utils.data.DataLoader(ImageList(gt, ids), batch_size=2, collate_fn=collate)
    stats = engine.evaluate_model(OracleModel(gt, 14), {"pose": PostProcess(num_select=QUERIES, num_keypoints=14)},
                                  dataset, loader, torch.device("cpu"),
                                  engine.EvalOptions(interactive=True, max_clicks=2, thresholds=ORACLE_THRESHOLDS),
                                  output_dir=tmp_path, log_fn=lambda _: None)
    assert loads == ["crowdpose"]
    expected = run_evaluation(gt, ids, 3, 2, ORACLE_THRESHOLDS, backend="crowdpose",
                              sigmas=dataset.metadata.sigmas).log_stats()
    assert stats == expected and len(stats["coco_eval_keypoints_detr"]) == 9
    assert (tmp_path / "noc_results.json").is_file() and (tmp_path / "keypoints_results.json").is_file()


def test_interactive_needs_every_round(coco_oracle, monkeypatch):
    """A model whose click_rounds returns fewer rounds than asked is an error, not silently zero APs."""
    from tests.helpers.oracle import OracleModel, run_evaluation

    gt, ids, _, _ = coco_oracle

    class ShortRounds(OracleModel):
        def click_rounds(self, state, outputs, targets, num_rounds):
            return super().click_rounds(state, outputs, targets, num_rounds)[:-1]

    import tests.helpers.oracle as oracle
    monkeypatch.setattr(oracle, "OracleModel", ShortRounds)
    with pytest.raises(RuntimeError, match="returned 4 rounds for max_clicks=4"):
        run_evaluation(gt, ids, 2, ORACLE_CLICKS, ORACLE_THRESHOLDS)
