"""tools/benchmark_model.py: the ratios it reports follow from the interleaved forward times (fake workers)."""
from __future__ import annotations

import pytest

from tools import benchmark_model


def test_summary_of_interleaved_times():
    result = benchmark_model.summarise({"ours": [1.0, 3.0, 2.0], "baseline": [2.0, 2.0, 8.0]})
    assert result["median_s"] == {"ours": 2.0, "baseline": 2.0}
    assert result["ratio"] == pytest.approx(1.0)
    assert result["paired_ratio"] == pytest.approx(0.5)  # pairs 0.5, 1.5, 0.25


def test_main_alternates_the_workers_and_reports_both_ratios(monkeypatch, capsys):
    times = {"ours": iter([1.0, 3.0, 2.0]), "baseline": iter([2.0, 2.0, 8.0])}
    order, closed = [], []

    class Fake:
        def __init__(self, spec):
            self.name = "baseline" if spec.get("grouped") is False else "ours"

        def ask(self, request):
            order.append(self.name)
            return next(times[self.name])

        def close(self):
            closed.append(self.name)
    monkeypatch.setattr(benchmark_model, "_spawn", Fake)
    benchmark_model.main(["--runs", "3", "--size", "64", "80", "--threads", "1"])
    assert order == ["ours", "baseline"] * 3 and sorted(closed) == ["baseline", "ours"]
    out = capsys.readouterr().out
    assert "median of 3 interleaved runs" in out and "64x80" in out
    assert "ratio ours / baseline: 1.000 (of medians), 0.500 (median of the interleaved pairs' ratios)" in out
