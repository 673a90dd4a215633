"""tools/demo.py end to end at a toy size: data, untrained and trained evaluations, report, plot and example image.

The full-size demo (`make demo`) takes minutes; this runs the same code on 6 images and one epoch. That training
this short beats the untrained model is not asserted here (it does not, reliably); the full demo's numbers are in
its report and in docs/benchmarks.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tools.demo import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    out, data = root / "out", root / "data"
    assert main(["--out", str(out), "--data", str(data), "--num-images", "6", "--num-val", "2", "--epochs", "1",
                 "--workers", "0", "--quality-steps", "20"]) == 0
    return out, data


def test_demo_writes_the_report_and_its_files(demo_run):
    out, data = demo_run
    assert (data / "annotations" / "person_keypoints_val2017.json").is_file()
    for name in ("report.md", "ap_vs_clicks.png", "example.jpg", "train/checkpoint.pth",
                 "trained_interactive/noc_results.json", "untrained_interactive/noc_results.json"):
        assert (out / name).is_file(), name
    assert (out / "ap_vs_clicks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "example.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_the_quality_head_is_trained_once_per_model(tmp_path, monkeypatch):
    import torch

    from models.pose_prior import CHECKPOINT_KEY
    from tools import demo, fit_pose_prior, train_quality

    calls, prior_calls = [], []

    def fake_main(argv):
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        torch.save({"model": {}, "note": "head", CHECKPOINT_KEY: {"format": 1}}, out)
        return 0

    def fake_prior(argv):
        prior_calls.append(argv)
        path = Path(argv[argv.index("--checkpoint") + 1])
        torch.save({**torch.load(path, weights_only=True), CHECKPOINT_KEY: {"format": 1}}, path)
        return 0

    monkeypatch.setattr(train_quality, "main", fake_main)
    monkeypatch.setattr(fit_pose_prior, "main", fake_prior)
    checkpoint = tmp_path / "checkpoint.pth"
    checkpoint.write_bytes(b"model")
    os.utime(checkpoint, ns=(checkpoint.stat().st_mtime_ns - 10**9,) * 2)  # older than any head written below
    head = demo.quality_head("config/demo.cfg.py", checkpoint, tmp_path / "data", 20)
    assert head == tmp_path / "checkpoint_quality.pth" and torch.load(head, weights_only=True)["note"] == "head"
    assert calls[0][calls[0].index("--checkpoint") + 1] == str(checkpoint) and "20" in calls[0]
    assert demo.quality_head("config/demo.cfg.py", checkpoint, tmp_path / "data", 20) == head and len(calls) == 1
    # a head written before the pose prior existed gets the prior, not a new head
    torch.save({"model": {}, "note": "old head"}, head)
    assert demo.quality_head("config/demo.cfg.py", checkpoint, tmp_path / "data", 20) == head and len(calls) == 1
    assert len(prior_calls) == 1 and prior_calls[0][prior_calls[0].index("--annotations") + 1] == str(
        tmp_path / "data" / "annotations" / "person_keypoints_train2017.json")
    assert torch.load(head, weights_only=True)["note"] == "old head"
    assert demo.quality_head("config/demo.cfg.py", checkpoint, tmp_path / "data", 20) == head and len(prior_calls) == 1
    os.utime(checkpoint, ns=(head.stat().st_mtime_ns + 10**9,) * 2)  # a newer model: a new head
    assert demo.quality_head("config/demo.cfg.py", checkpoint, tmp_path / "data", 20) == head and len(calls) == 2
    assert demo.quality_head("config/demo.cfg.py", checkpoint, tmp_path / "data", 0) is None and len(calls) == 2
    monkeypatch.setattr(train_quality, "main", lambda argv: 2)
    os.utime(checkpoint, ns=(head.stat().st_mtime_ns + 2 * 10**9,) * 2)
    assert demo.quality_head("config/demo.cfg.py", checkpoint, tmp_path / "data", 20) is None


def test_report_numbers_are_the_runs_numbers(demo_run):
    out, _ = demo_run
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in (out / "report.md").read_text().splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"model", "untrained", "trained"}
    assert rows["model"][:4] == ["model-only AP", "NoC@85", "NoC@90", "NoC@95"]
    for name in ("untrained", "trained"):
        noc = json.loads((out / f"{name}_interactive" / "noc_results.json").read_text())
        assert float(rows[name][2]) == pytest.approx(noc["summary"]["NoC@90"], abs=0.006)
        log = json.loads((out / name / "log.txt").read_text().splitlines()[-1])
        assert float(rows[name][0]) == pytest.approx(log["test_coco_eval_keypoints_detr"][0], abs=6e-4)


def test_rerun_reuses_data_and_the_finished_training(demo_run, capsys):
    out, data = demo_run
    images = sorted(p.stat().st_mtime_ns for p in (data / "images").rglob("*.jpg"))
    checkpoint = (out / "train" / "checkpoint.pth").stat().st_mtime_ns
    assert main(["--out", str(out), "--data", str(data), "--epochs", "1", "--workers", "0"]) == 0
    assert sorted(p.stat().st_mtime_ns for p in (data / "images").rglob("*.jpg")) == images
    assert (out / "train" / "checkpoint.pth").stat().st_mtime_ns == checkpoint
    assert "generating" not in capsys.readouterr().out


def test_data_of_another_scene_or_size_is_rewritten(tmp_path, capsys):
    """An older release's data_synthetic (the full scene) or other asked-for counts: the demo data is rewritten."""
    from datasets.synthetic import FULL_SCENE, write_synthetic_dataset
    from tools.demo import prepare_data

    data = tmp_path / "data"
    write_synthetic_dataset(data, 3, seed=0, num_val=1, scene=FULL_SCENE)
    prepare_data(data, 3, 1)
    assert "generating 3" in capsys.readouterr().out
    info = json.loads((data / "annotations" / "person_keypoints_val2017.json").read_text())["info"]
    assert info["scene"]["max_people"] == 3
    prepare_data(data, None, None)
    prepare_data(data, 3, 1)
    assert "generating" not in capsys.readouterr().out
    prepare_data(data, 4, 1)
    assert "generating 4" in capsys.readouterr().out


def test_data_of_an_older_render_version_is_rewritten(tmp_path, capsys):
    """Same scene and counts, but drawn by an older release (thinner figures): the demo data is rewritten."""
    from tools.demo import prepare_data

    data = tmp_path / "data"
    prepare_data(data, 3, 1)
    path = data / "annotations" / "person_keypoints_val2017.json"
    old = json.loads(path.read_text())
    old["info"]["render_version"] = 1
    path.write_text(json.dumps(old))
    capsys.readouterr()
    prepare_data(data, 3, 1)
    assert "generating 3" in capsys.readouterr().out
    assert json.loads(path.read_text())["info"]["render_version"] != 1
