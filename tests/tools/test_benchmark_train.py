"""The training-step benchmark: its smallest run end to end (tiny config, 1 step), its summary arithmetic, the
fixed click-round draw it imposes on the original, and its real-data inputs."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tools.benchmark_train import PHASES, _FixedLoopRounds, expected_rounds, make_inputs, summarise

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smallest_run_reports_every_phase(tmp_path):
    out = tmp_path / "result.json"
    run = subprocess.run([sys.executable, "-m", "tools.benchmark_train", "--config",
                          str(REPO / "config" / "tiny.cfg.py"), "--steps", "1", "--warmup", "0", "--size", "128", "160",
                          "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("training step, CPU fp32, 1 threads") and "batch 2 of 128x160" in lines[0]
    assert "baseline: ours-pytorch" in run.stdout
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ours")]
    assert [row[0].strip() for row in rows] == ["ours", "ours-pytorch"]
    for row in rows:
        step, step_cpu, forward, dn, clicks, criterion, backward, optimizer = (float(cell) for cell in row[2:])
        assert step > 0 and step_cpu > 0 and forward > 0 and backward > 0 and dn > 0 and clicks > 0
        assert forward + criterion + backward + optimizer == pytest.approx(step, rel=1e-3, abs=2e-3)
        assert dn + clicks < forward
    assert any(line.startswith("ratio ours / ours-pytorch, 1 click rounds: ") for line in lines)
    payload = json.loads(out.read_text())
    assert payload["baseline"] == "ours-pytorch" and set(payload["medians"]) == {"ours", "ours-pytorch"}
    assert set(payload["medians"]["ours"]["1"]) == set(PHASES)


def test_summary_ratios_and_expected_step():
    def steps(values):
        return [{phase: value for phase in PHASES} for value in values]
    times = {"ours": {1: steps([1.0, 1.2, 5.0]), 3: steps([2.0, 2.0, 2.2])},
             "base": {1: steps([2.0, 2.0, 2.0]), 3: steps([5.0, 4.0, 4.0])}}
    result = summarise(times, "base", mean_rounds=2.0)
    assert result["medians"]["ours"][1]["step"] == 1.2 and result["medians"]["base"][3]["backward"] == 4.0
    assert result["ratio"]["ours"][1] == pytest.approx(0.6)
    assert result["paired_ratio"]["ours"][1] == pytest.approx(0.6)  # ratios 0.5, 0.6, 2.5
    assert result["cpu_ratio"]["ours"][3] == pytest.approx(0.5)
    assert result["expected_step"]["ours"] == pytest.approx(1.6)  # halfway between 1.2 and 2.0
    assert result["ratio"]["ours"]["expected"] == pytest.approx(1.6 / 3.0)
    assert "base" not in result["ratio"]


def test_expected_round_count():
    assert expected_rounds(1) == 1.0
    assert expected_rounds(2) == pytest.approx((1 + 2 / 4) / (1 + 1 / 4))
    assert 2.1 < expected_rounds(17) < 2.2


def test_fixed_rounds_only_replace_the_loop_draw():
    proxy = _FixedLoopRounds(random)
    proxy.rounds = 7

    def draw():  # the original draws through a nested helper of the calling method
        return proxy.choices(range(1, 18), [1.0] + [0.0] * 16)[0]

    def human_feedback_loop():
        return draw()

    def prepare_for_dn2():
        return draw()

    assert human_feedback_loop() == 7
    assert prepare_for_dn2() == 1
    assert proxy.random() < 1.0  # everything else is the real module


def test_inputs_from_coco_have_real_targets_at_the_requested_size(shared_data):
    inputs = make_inputs({"num_body_points": 17}, 2, 96, 128, str(shared_data / "coco"))
    assert inputs["images"].shape == (2, 3, 96, 128) and not inputs["mask"].any()
    for target in inputs["targets"]:
        assert target["keypoints"].shape[1] == 51 and len(target["boxes"]) > 0
        assert target["size"].tolist() == [96, 128]
        assert 0 <= float(target["boxes"].min()) and float(target["boxes"].max()) <= 1
        assert set(target["keypoints"][:, 34:].unique().tolist()) <= {0.0, 1.0}


def test_synthetic_inputs_are_valid_targets():
    inputs = make_inputs({"num_body_points": 5}, 3, 64, 80, None)
    assert inputs["images"].shape == (3, 3, 64, 80)
    for target in inputs["targets"]:
        assert target["keypoints"].shape == (3, 15) and target["labels"].dtype == torch.int64
        assert ((target["keypoints"][:, :10] > 0) & (target["keypoints"][:, :10] < 1)).all()
