"""tools/gpu_check.py: its CPU path end to end, and the per-step isolation (failure, timeout, budget)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.clickpose.ops import _library
from tools import gpu_check
from tools.gpu_check import Step

REPO = Path(__file__).resolve().parents[2]
GPU_STEPS = ("build", "cuda_tests", "nccl")
MEASURED_ON_CPU = ("msda_benchmark", "inference", "preannotate", "click", "train_step")


@pytest.mark.slow
def test_cpu_path_runs_every_cpu_step_and_says_there_is_no_gpu(tmp_path):
    out = tmp_path / "report"
    # One thread per process: the CPU version is a smoke run, and a shared test machine is often oversubscribed.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--device", "cpu", "--out", str(out),
                             "--budget", "400"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    steps = report["steps"]
    assert report["gpu"] is False and report["result"] == "no step failed"
    assert list(steps) == [step.name for step in gpu_check.PLAN]
    for name in GPU_STEPS:
        assert steps[name]["status"] == "skipped" and "no CUDA device" in steps[name]["summary"]
    for name in ("environment", *MEASURED_ON_CPU):
        assert steps[name]["status"] == "ok", (name, steps[name])
        assert (out / "logs" / f"{name}.log").is_file()
    if _library.has_cpu_kernel():
        accuracy = steps["kernel_accuracy"]
        assert accuracy["status"] == "ok" and accuracy["gradcheck"] is True
        assert [row["dtype"] for row in accuracy["rows"]] == ["float64", "float32", "float16", "bfloat16"]
        assert all(row["ok"] for row in accuracy["rows"])
        assert {row["backend"] for row in steps["msda_benchmark"]["rows"]} == {"pytorch", "cpu"}
    else:
        assert steps["kernel_accuracy"]["status"] == "skipped"
    assert steps["environment"]["cuda_available"] == torch.cuda.is_available()
    assert all(row["median_ms"] > 0 for row in steps["inference"]["rows"] + steps["click"]["rows"])
    assert [row["precision"] for row in steps["train_step"]["rows"]] == ["fp32", "amp bfloat16"]
    assert all(row["step_ms"] > 0 and row["loss"] > 0 for row in steps["train_step"]["rows"])
    markdown = (out / "report.md").read_text()
    no_gpu = "NO GPU" if not torch.cuda.is_available() else "--device cpu"
    assert no_gpu in report["mode_line"] and no_gpu in markdown
    assert "| Model inference latency | ok |" in markdown and "## Training step" in markdown
    assert "no step failed" in result.stdout


def test_a_failing_or_hanging_step_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "PLAN", [
        Step("no_such_step", "Crashes", 60, 60),
        Step("train_step", "Hangs past its limit", 1, 1),  # cannot even import torch in a second
        Step("environment", "Runs", 120, 120),
    ])
    report = gpu_check.run_plan(tmp_path, "cpu", "test run", budget=300, skip=[])
    steps = report["steps"]
    assert steps["no_such_step"]["status"] == "failed"
    assert "unknown step 'no_such_step'" in steps["no_such_step"]["summary"]
    assert "KeyError" in steps["no_such_step"]["log_tail"]
    assert steps["train_step"]["status"] == "timeout" and steps["train_step"]["seconds"] < 30
    assert steps["environment"]["status"] == "ok"
    assert report["result"] == "FAILED: no_such_step, train_step"
    markdown = (tmp_path / "report.md").read_text()
    assert "| Crashes | failed |" in markdown and "| Hangs past its limit | timeout |" in markdown
    assert "Last lines of logs/no_such_step.log" in markdown
    assert json.loads((tmp_path / "report.json").read_text())["result"].startswith("FAILED")


def test_steps_beyond_the_budget_are_skipped_not_started(tmp_path):
    report = gpu_check.run_plan(tmp_path, "cpu", "test run", budget=1, skip=[])
    statuses = {name: entry["status"] for name, entry in report["steps"].items()}
    assert set(statuses.values()) == {"skipped"}
    assert "budget exhausted" in report["steps"]["inference"]["summary"]
    assert "no CUDA device" in report["steps"]["build"]["summary"]
    assert not list((tmp_path / "logs").iterdir())  # nothing ran


def test_markdown_escapes_cells_and_shows_tables():
    report = {"started": "now", "host": "h", "mode_line": "m", "budget_s": 1, "elapsed_s": 0, "result": "r",
              "steps": {"inference": {"status": "ok", "seconds": 1.5, "summary": "a | b",
                                      "tables": {"t": [{"x": 1, "ok": True}, {"x": 2, "ok": False, "y": None}]}}}}
    markdown = gpu_check.render_markdown(report)
    assert "| Model inference latency | ok | 1.5 | a \\| b |" in markdown
    assert "| x | ok | y |" in markdown and "| 1 | yes |  |" in markdown and "| 2 | no |  |" in markdown


def test_step_timing_is_the_median_after_the_warm_up(monkeypatch):
    from tools import gpu_check_steps, harness

    durations = iter([5.0, 0.003, 0.001, 0.002])  # warm-up (untimed), then 3 ms, 1 ms, 2 ms
    clock = [0.0]

    def call():
        clock[0] += next(durations)
    monkeypatch.setattr(harness.time, "perf_counter", lambda: clock[0])
    timing = gpu_check_steps._median_ms(call, "cpu", runs=3, warmup=1)
    assert timing == {"median_ms": 2.0, "min_ms": 1.0, "runs": 3}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is visible")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="torch.cuda.is_available\\(\\) is False"):
        gpu_check.main(["--device", "cuda", "--out", str(tmp_path)])
    assert not (tmp_path / "report.md").exists()
