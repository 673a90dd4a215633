"""The click-latency benchmark: what it computes from the workers' timings (fake workers, fixed times), its summary
arithmetic, and its smallest run end to end (tiny config, small image; with the original when its code is
present)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools import benchmark_click
from tools.benchmark_click import OURS_PHASES, parse_options, summarise

REPO = Path(__file__).resolve().parents[2]
ORIGINAL = Path("/work/orig/Click-Pose")
SMALL = ["--config", str(REPO / "config" / "tiny.cfg.py"), "--size", "256", "320", "--threads", "1",
         "--predicts", "1", "--options", "data_aug_scales=[256]", "data_aug_max_size=320"]


def _run(tmp_path, *extra):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "-m", "tools.benchmark_click", *SMALL, "--json", str(out), *extra],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(out.read_text())


class FakeWorker:
    """Replies (wall, CPU) seconds from fixed series per phase; the first reply of each is the untimed call."""

    def __init__(self, replies: dict[str, list[tuple[float, float]]], info: dict):
        self.replies = {phase: iter(values) for phase, values in replies.items()}
        self.info, self.asked, self.closed = info, [], False

    def ask(self, phase: str) -> tuple[float, float]:
        self.asked.append(phase)
        return next(self.replies[phase])

    def close(self) -> None:
        self.closed = True


def test_run_takes_medians_and_ratios_of_the_timed_calls_only(monkeypatch):
    warm = (100.0, 100.0)  # the untimed first call of each phase: must not count
    replies = {phase: [warm, (0.2, 0.4), (0.1, 0.2), (0.3, 0.6)] for phase in OURS_PHASES}
    replies["predict"] = [warm, (2.0, 8.0)]  # --predicts 1
    replies["correct"] = [warm, (0.03, 0.1), (0.01, 0.1), (0.02, 0.1)]
    replies["refine_uncached"] = [warm, (1.0, 2.0), (2.0, 4.0), (4.0, 8.0)]
    info = {"people": 10, "cache_mib": 1.5, "tokens": 300, "input": [256, 320]}
    workers = []

    def spawn(spec):
        assert spec["kind"] == "ours" and spec["threads"] == 1 and spec["options"] == {"a": 1}
        workers.append(FakeWorker(replies, info))
        return workers[-1]
    monkeypatch.setattr(benchmark_click, "_spawn", spawn)
    args = argparse.Namespace(threads=1, size=[256, 320], config="c.py", device="cpu", options=["a=1"],
                              original=None, clicks=3, predicts=1)
    result = benchmark_click.run(args)
    assert workers[0].closed and workers[0].asked.count("predict") == 2 and workers[0].asked.count("correct") == 4
    assert result["times"]["predict"] == [2.0] and result["times"]["correct"] == [0.03, 0.01, 0.02]
    assert result["median_ms"]["predict"] == pytest.approx(2000) and result["median_ms"]["correct"] == pytest.approx(20)
    assert result["cpu_median_ms"]["predict"] == pytest.approx(8000)
    assert result["ratios"]["correct / predict"] == pytest.approx(0.01)
    assert result["cpu_ratios"]["correct / predict"] == pytest.approx(0.1 / 8)
    assert result["ratios"]["correct_all / predict"] == pytest.approx(0.1)
    assert result["ratios"]["refine cached / uncached"] == pytest.approx(0.2 / 2.0)
    assert result["info"] == {"ours": info}


@pytest.mark.slow
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
    # (how many people random weights leave after the postprocessor's NMS is the predictor's business)
    assert result["info"]["ours"]["people"] >= 1 and result["info"]["ours"]["cache_mib"] > 0


@pytest.mark.slow
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
