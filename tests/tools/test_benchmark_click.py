"""The click-latency benchmark: its smallest run end to end (tiny config, small image), with the original when its
code is present, and its summary arithmetic."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.benchmark_click import parse_options, summarise

REPO = Path(__file__).resolve().parents[2]
ORIGINAL = Path("/work/orig/Click-Pose")
SMALL = ["--config", str(REPO / "config" / "tiny.cfg.py"), "--size", "256", "320", "--threads", "1",
         "--predicts", "1", "--options", "data_aug_scales=[256]", "data_aug_max_size=320"]


def _run(tmp_path, *extra):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark_click.py"), *SMALL, "--json", str(out),
                           *extra], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(out.read_text())


def test_smallest_run_times_every_variant_of_ours(tmp_path):
    done, result = _run(tmp_path, "--clicks", "2")
    assert "skipping the original: pass --original DIR" in done.stderr
    assert done.stdout.startswith("one click, cpu ours / cpu original, 1 threads, tiny.cfg.py, image 256x320 "
                                  "(model input 256x320")
    assert {k: len(v) for k, v in result["times"].items()} == {
        "predict": 1, "correct": 2, "correct_all": 2, "refine_cached": 2, "refine_uncached": 2, "refine_one_cached": 2,
        "refine_one_uncached": 2}
    assert all(value > 0 for value in result["median_ms"].values())
    assert result["cpu_median_ms"].keys() == result["median_ms"].keys()
    assert {k: len(v) for k, v in result["cpu_times"].items()} == {k: len(v) for k, v in result["times"].items()}
    assert set(result["ratios"]) == {"correct / predict", "correct_all / predict", "refine cached / uncached",
                                     "refine one cached / uncached"}
    assert result["info"]["ours"]["people"] == 10 and result["info"]["ours"]["cache_mib"] > 0


@pytest.mark.skipif(not (ORIGINAL / "models" / "clickpose" / "clickpose.py").is_file(),
                    reason="the original Click-Pose code is not at /work/orig/Click-Pose")
def test_the_original_runs_beside_ours(tmp_path):
    done, result = _run(tmp_path, "--clicks", "1", "--original", str(ORIGINAL))
    assert len(result["times"]["original_click"]) == len(result["times"]["original_two_clicks"]) == 1
    assert result["median_ms"]["original_click"] > 0 and "original_round" in result["median_ms"]
    assert "correct_all / original click" in result["ratios"]
    assert "original_round" in done.stdout


def test_summary_and_options():
    times = {"predict": [2.0, 1.0, 3.0], "correct": [0.01, 0.02, 0.03], "correct_all": [0.04], "refine_cached": [0.01],
             "refine_uncached": [0.1], "refine_one_cached": [0.002], "refine_one_uncached": [0.05],
             "original_click": [1.0], "original_two_clicks": [1.5]}
    result = summarise(times)
    assert result["median_ms"]["predict"] == 2000 and result["median_ms"]["original_round"] == pytest.approx(500)
    assert result["ratios"]["correct / predict"] == pytest.approx(0.01)
    assert result["ratios"]["refine cached / uncached"] == pytest.approx(0.1)
    assert result["ratios"]["correct_all / predict"] == pytest.approx(0.02)
    assert result["ratios"]["refine one cached / uncached"] == pytest.approx(0.04)
    assert result["ratios"]["correct_all / original click"] == pytest.approx(0.04)
    assert parse_options(["a=[256]", "b=320", "c=worst"]) == {"a": [256], "b": 320, "c": "worst"}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_options(["novalue"])
