"""tools/benchmark_preannotate.py: its floor and ratios follow from what it measured."""
from __future__ import annotations

import json

import pytest

from tools import benchmark_preannotate

from .conftest import ANNOTATE_CONFIG, ANNOTATE_OPTIONS


def test_floor_and_ratios_follow_from_the_measurements(annotate_assets, tmp_path, capsys):
    config = tmp_path / "small.cfg.py"
    config.write_text(f"_base_ = ['{ANNOTATE_CONFIG}']\n" + "".join(f"{k} = {v}\n" for k, v in ANNOTATE_OPTIONS.items()))
    out = tmp_path / "bench.json"
    assert benchmark_preannotate.main(["--config", str(config), "--checkpoint", str(annotate_assets["checkpoint"]),
                                       "--images", "2", "--runs", "1", "--size", "96", "128", "--batch-sizes", "2",
                                       "--dtypes", "float32", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["floor_s"] == pytest.approx(result["model_gflop"] / result["peak_gflops"])
    # a 96x128 image through the demo architecture: well above zero, far below a full-size R50 forward
    assert 0.1 < result["model_gflop"] < 50
    table = capsys.readouterr().out
    for name, row in result["methods"].items():
        ratio = result["floor_s"] / row["seconds_per_image"]
        assert f"| {name} | {row['seconds_per_image']:.2f} |" in table and f"| {ratio:.2f} |" in table


def test_matmul_peak_is_the_best_of_its_repeats(monkeypatch):
    import torch

    ticks = iter([0.0, 1.0, 1.0, 2.0, 2.0, 2.5, 2.5, 4.5])  # two warm-ups, then 0.5 s and 2 s
    monkeypatch.setattr(benchmark_preannotate.time, "perf_counter", lambda: next(ticks))
    peak = benchmark_preannotate.matmul_peak(torch.float32, torch.device("cpu"), size=8, repeats=2)
    assert peak == pytest.approx(2 * 8 ** 3 / 0.5 / 1e9)
