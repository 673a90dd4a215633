"""tools/harness.py: workers started as ``python -m MODULE`` from the repository root, their replies, and the timing
arithmetic the benchmarks share."""
from __future__ import annotations

import itertools
import sys

import pytest

from tools import harness

# A worker module of the harness's two shapes; found through PYTHONPATH, imports tools from the repository root.
WORKER = '''
import json, sys
from tools import harness

spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
print("a stray line from the worker's imports", flush=True)
if spec["kind"] == "once":
    import os
    harness.emit({"twice": spec["value"] * 2, "threads": os.environ.get("OMP_NUM_THREADS")})
elif spec["kind"] == "serve":
    harness.serve(lambda request: {"echo": request, "length": len(request)}, {"ready": spec["value"]})
else:
    raise SystemExit(3)
'''


@pytest.fixture()
def worker_module(tmp_path):
    (tmp_path / "fake_harness_worker.py").write_text(WORKER)
    return {"PYTHONPATH": str(tmp_path)}


def test_one_shot_worker_returns_its_value_with_the_thread_count(worker_module):
    result = harness.run_worker("fake_harness_worker", {"kind": "once", "value": 21}, threads=3, env=worker_module)
    assert result == {"twice": 42, "threads": "3"}


def test_a_failing_worker_raises_with_its_exit_status(worker_module):
    with pytest.raises(RuntimeError, match="exit 3"):
        harness.run_worker("fake_harness_worker", {"kind": "fail"}, env=worker_module)


def test_serving_worker_answers_requests_and_passes_stray_lines_on(worker_module, capsys):
    with harness.Worker("fake_harness_worker", {"kind": "serve", "value": [1, 2]}, env=worker_module) as worker:
        assert worker.info == {"ready": [1, 2]}
        assert worker.ask("go") == {"echo": "go", "length": 2}
        assert worker.ask("again") == {"echo": "again", "length": 5}
    assert worker.process.returncode == 0
    assert "a stray line from the worker's imports" in capsys.readouterr().err


def test_a_worker_that_dies_before_ready_is_an_error(worker_module):
    with pytest.raises(RuntimeError, match="stopped to start"):
        harness.Worker("fake_harness_worker", {"kind": "fail"}, env=worker_module, name="fails")


def test_commands_start_modules_with_this_interpreter():
    assert harness.module_command("tools.x", "--a") == [sys.executable, "-m", "tools.x", "--a"]
    assert harness.worker_command("tools.x", {"k": 1})[-2:] == ["--worker", '{"k": 1}']


def test_run_logged_kills_a_command_past_its_limit(tmp_path):
    log = tmp_path / "log.txt"
    assert harness.run_logged([sys.executable, "-c", "print('hi')"], log, timeout=60) == 0
    assert log.read_text() == "hi\n"
    assert harness.run_logged([sys.executable, "-c", "import time; time.sleep(60)"], log, timeout=0.5) is None


def test_interleaved_timing_alternates_and_skips_the_warm_up(monkeypatch):
    clock = itertools.count()
    calls = []
    monkeypatch.setattr(harness.time, "perf_counter", lambda: float(next(clock)))
    functions = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b") or next(clock)}
    times = harness.interleaved(functions, runs=2, warmup=1)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # warm-up of each, then the runs alternate
    assert times == {"a": [1.0, 1.0], "b": [2.0, 2.0]}  # b's call advances the clock once more
    assert harness.repeat(lambda: None, runs=3, warmup=2) == [1.0, 1.0, 1.0]


def test_medians_and_paired_ratio():
    assert harness.medians({"a": [3.0, 1.0, 2.0], "b": [0.5, 1.5], "empty": []}, 1000) == {"a": 2000.0, "b": 1000.0}
    # ratios 0.5, 2.0, 1.0: median 1.0 (the ratio of the medians would be 2 / 2 = 1.0 too, here by chance)
    assert harness.paired_ratio([1.0, 4.0, 2.0], [2.0, 2.0, 2.0]) == 1.0
    assert harness.paired_ratio([1.0, 1.0, 9.0], [2.0, 2.0, 1.0]) == 0.5
    with pytest.raises(ValueError):
        harness.paired_ratio([1.0], [1.0, 2.0])
