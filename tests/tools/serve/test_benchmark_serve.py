"""tools/benchmark_serve.py on the tiny model: both doors answer every timed request, the overheads are the doors'
medians minus the in-process ones, and concurrent clients get no 5xx."""
from __future__ import annotations

import json

import pytest

from tools import benchmark_serve

pytestmark = pytest.mark.slow


def test_the_benchmark_times_both_doors_and_the_load_test_has_no_server_errors(annotate_predictor, image_paths,
                                                                                tmp_path, monkeypatch):
    monkeypatch.setattr(annotate_predictor, "close", lambda: None)  # the session's shared predictor stays open
    out = tmp_path / "result.json"
    argv = ["--config", "unused", "--checkpoint", "unused", "--image", str(image_paths["a"]), "--runs", "2",
            "--clients", "3", "--requests", "4", "--threads", "1", "--out", str(out)]
    assert benchmark_serve.main(argv, predictor_factory=lambda: annotate_predictor) == 0
    result = json.loads(out.read_text())
    medians = result["median_ms"]
    for kind in ("predict", "refine"):
        for door in ("label-studio", "x-anylabeling"):
            assert medians[f"{kind}/{door}"] > 0
            assert result["overhead_ms"][f"{kind}/{door}"] == pytest.approx(
                medians[f"{kind}/{door}"] - medians[f"{kind}/in-process"])
    load = result["load"]
    assert load["requests"] == 12 and load["statuses"] == {"2xx": 12}
    assert 0 < load["p50_ms"] <= load["p95_ms"]
