"""tools/benchmark_adapt.py end to end at a toy size: a tiny random-weight model, 2 rounds of 2 target images,
1 epoch each, 2 held-out images. Whether the adaptation helps is not asserted (it cannot at this size); the
full-size numbers are in docs/benchmarks.md."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import ANNOTATE_CONFIG, ANNOTATE_OPTIONS, make_checkpoint

pytestmark = pytest.mark.slow

OPTIONS = [f"{k}={v}" for k, v in ANNOTATE_OPTIONS.items()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from tools import benchmark_adapt

    root = tmp_path_factory.mktemp("bench_adapt")
    source = make_checkpoint(root / "source.pth", ANNOTATE_OPTIONS)
    before = digest(source)
    out = root / "out"
    threads = torch.get_num_threads()
    try:
        code = benchmark_adapt.main([
            "--config", ANNOTATE_CONFIG, "--checkpoint", str(source), "--out", str(out),
            "--target-images", "6", "--held-out", "2", "--batch", "2", "--rounds", "2", "--epochs", "1",
            "--batch-size", "2", "--lr", "1e-4", "--threshold", "0.0", "--threads", "1", "--options", *OPTIONS])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return {"out": out, "source": source, "before": before,
            "report": json.loads((out / "report.json").read_text())}


def test_the_source_checkpoint_is_unchanged(bench):
    assert digest(bench["source"]) == bench["before"] == bench["report"]["checkpoint_sha256"]


def test_the_annotation_file_holds_the_batches_with_every_person_at_the_truth(bench):
    from pycocotools.coco import COCO

    out, report = bench["out"], bench["report"]
    annotated = [name for b in report["batches"] for name in b["images"]]
    assert len(annotated) == 4 and len(report["batches"]) == 2  # 4 pool images: no batch after the last round
    data = json.loads((out / "annotations.json").read_text())
    done = {name for name, rec in data["clickpose_annotate"]["images"].items() if rec["status"] == "done"}
    assert done == set(annotated)
    exported = COCO(str(out / "annotations.json"))
    truth = COCO(str(out / "data" / "annotations" / "person_keypoints_train2017.json"))
    ids = {img["file_name"]: img["id"] for img in exported.dataset["images"]}
    assert {exported.imgs[a["image_id"]]["file_name"] for a in exported.dataset["annotations"]} <= done
    true_ids = {img["file_name"]: img["id"] for img in truth.dataset["images"]}
    for name in annotated:
        anns = exported.loadAnns(exported.getAnnIds(imgIds=[ids[name]]))
        gts = [g for g in truth.loadAnns(truth.getAnnIds(imgIds=[true_ids[name]])) if g["num_keypoints"] > 0]
        assert len(anns) == len(gts), name
        for g in gts:
            gt = np.asarray(g["keypoints"], dtype=float).reshape(-1, 3)
            x, y, w, h = g["bbox"]
            tolerance = 0.05 * np.hypot(w, h)

            def fits(a):
                kp = np.asarray(a["keypoints"], dtype=float).reshape(-1, 3)
                labelled = gt[:, 2] > 0
                error = np.hypot(*(kp[:, :2] - gt[:, :2]).T)[labelled]
                return bool(np.all(error <= tolerance + 0.02)) and np.array_equal(kp[:, 2], gt[:, 2])

            assert any(fits(a) for a in anns), (name, g["id"])
    for arm in ("with_adaptation", "without_adaptation"):
        rows = report["per_image"][arm]
        assert [r["image"] for r in rows] == annotated and all(r["unresolved"] == 0 for r in rows)
        assert all(r["clicks"] == r["placements"] + r["visibility_edits"] + r["deletions"] + r["boxes"] > 0
                   for r in rows)
    # the first batch is annotated with the source model in both arms: the same clicks
    first = report["batches"][0]
    assert first["with_adaptation"]["clicks"] == first["without_adaptation"]["clicks"]


def test_round_checkpoints_load_and_moved_away_from_the_source(bench):
    from models.predictor import Predictor
    from util.checkpoint import read_checkpoint

    source = read_checkpoint(bench["source"])["model"]
    rounds = bench["report"]["round_results"]
    assert [r["round"] for r in rounds] == [1, 2] and [r["trained_images"] for r in rounds] == [2, 4]
    for r in rounds:
        weights = read_checkpoint(Path(r["checkpoint"]))["model"]
        assert weights.keys() == source.keys()
        assert any(not torch.equal(v, weights[k]) for k, v in source.items())
        predictor = Predictor(ANNOTATE_CONFIG, r["checkpoint"], options=ANNOTATE_OPTIONS)
        predictor.close()
        for key in ("NoC@85", "NoC@90", "NoC@95"):
            assert 0 <= r["noc"][key] <= r["noc"]["max_clicks"]
        assert r["noc"]["num_images"] == 2
    # each batch after the first is predicted by the previous round's checkpoint (Workspace.switch_model)
    batches = bench["report"]["batches"]
    assert batches[0]["model_checkpoint"] == str(bench["source"].resolve())
    assert batches[1]["model_checkpoint"] == rounds[0]["checkpoint"]
    assert set(bench["report"]["source_noc"]) >= {"NoC@85", "NoC@90", "NoC@95"}


def test_report_table_and_plot(bench):
    out = bench["out"]
    text = (out / "report.md").read_text()
    assert "| source | - |" in text and "| round 1 | 2 images |" in text and "| round 2 | 4 images |" in text
    assert "adapt_curve.png" in text
    assert (out / "adapt_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_scene_and_too_few_images(tmp_path, capsys):
    from tools import benchmark_adapt

    with pytest.raises(SystemExit):
        benchmark_adapt.parse_args(["--config", ANNOTATE_CONFIG, "--checkpoint", "x", "--out", str(tmp_path),
                                    "--target-scene", "no_such_scene"])
    scene = benchmark_adapt.parse_scene("max_people=6,body_height=0.25:0.7,occluders=1")
    assert scene.max_people == 6 and scene.body_height == (0.25, 0.7) and scene.occluders
    assert benchmark_adapt.parse_scene("full") == benchmark_adapt.parse_scene("max_people=4")
    assert benchmark_adapt.parse_scene("max_people=3,palette=hue120").palette == "hue120"
    from util.config import ConfigError

    with pytest.raises(ConfigError, match="unknown palette 'pink'"):
        benchmark_adapt.parse_scene("palette=pink")
    capsys.readouterr()
    checkpoint = tmp_path / "source.pth"
    checkpoint.write_bytes(b"not read before the counts are checked")
    threads = torch.get_num_threads()
    try:
        code = benchmark_adapt.main(["--config", ANNOTATE_CONFIG, "--checkpoint", str(checkpoint), "--out",
                                     str(tmp_path / "out"), "--target-images", "3", "--held-out", "1", "--batch",
                                     "2", "--rounds", "2", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert code == 2 and "need 4 pool images, the target has 2" in err
