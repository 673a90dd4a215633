"""The end-to-end interactive benchmark's extrapolation of the original's 17 AP-after-k runs."""
from __future__ import annotations

import pytest

from tools.benchmark_interactive import _original_total


def test_ap_runs_interpolated_linearly_in_k():
    """A run with k clicks costs a model pass + k rounds: timed k=1 (10 s) and k=17 (42 s) give 8 + 2k per run."""
    orig = {"noc": {"0.85": {"seconds": 5.0, "cpu_seconds": 4.0}, "0.9": {"seconds": 6.0, "cpu_seconds": 4.0},
                    "0.95": {"seconds": 7.0, "cpu_seconds": 4.0}},
            "ap_runs": {"1": {"seconds": 10.0, "cpu_seconds": 9.0}, "17": {"seconds": 42.0, "cpu_seconds": 25.0}}}
    noc, ap, total = _original_total(orig, 17)
    assert noc == 18.0 and ap == pytest.approx(17 * 8 + 2 * sum(range(1, 18))) and total == pytest.approx(noc + ap)
    noc_cpu, ap_cpu, _ = _original_total(orig, 17, "cpu_seconds")
    assert noc_cpu == 12.0 and ap_cpu == pytest.approx(17 * 8 + 1 * sum(range(1, 18)))
    single = {"noc": orig["noc"], "ap_runs": {"5": {"seconds": 3.0}}}
    assert _original_total(single, 17)[1] == pytest.approx(51.0)  # one timed run: the same cost for every k
