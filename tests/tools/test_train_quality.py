"""tools/train_quality.py on a tiny model and dataset: the head is trained and stored beside the untouched
detector, the Predictor picks it up, and bad input is one error line."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from tools.train_quality import main, match_people, oks_matrix

from .conftest import ANNOTATE_CONFIG, ANNOTATE_OPTIONS


def tiny_config(folder):
    """config/demo.cfg.py with the fixture model's smaller query counts (the tool takes a config file)."""
    from pathlib import Path

    path = folder / "quality_test.cfg.py"
    path.write_text(f"_base_ = [{str(Path(ANNOTATE_CONFIG).resolve())!r}]\n"
                    + "".join(f"{k} = {v!r}\n" for k, v in ANNOTATE_OPTIONS.items()))
    return path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_match_people_pairs_each_truth_with_its_nearest_pose():
    import numpy as np

    gt = np.array([[[10.0, 10.0], [20.0, 10.0]], [[100.0, 100.0], [110.0, 100.0]]])
    pred = gt[::-1] + 1.0  # the same two people, in the other order, one pixel off
    vis = np.full((2, 2), 2)
    sigmas, areas = np.array([0.1, 0.1]), np.array([400.0, 400.0])
    assert sorted(match_people(pred, gt, vis, areas, sigmas)) == [(0, 1), (1, 0)]
    oks = oks_matrix(pred, gt, vis, areas, sigmas)
    assert oks[0, 1] > 0.9 and oks[0, 0] < 1e-6
    # nobody far away is matched, unless asked to
    assert len(match_people(pred + 500.0, gt, vis, areas, sigmas, min_oks=0.0)) == 2
    assert match_people(pred + 500.0, gt, vis, areas, sigmas) == []


@pytest.mark.slow
def test_train_quality_writes_a_head_beside_the_unchanged_detector(annotate_assets, tmp_path, capsys):
    from models.keypoint_quality import CHECKPOINT_KEY
    from models.predictor import Predictor

    checkpoint, data = annotate_assets["checkpoint"], annotate_assets["root"] / "data"
    before = _digest(checkpoint)
    out = tmp_path / "with_quality.pth"
    config = tiny_config(tmp_path)
    code = main(["--config", str(config), "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                 "--clicks", "1", "--steps", "30", "--threads", "1", "--min-oks", "0"])
    assert code == 0, capsys.readouterr().err
    assert _digest(checkpoint) == before  # the input checkpoint is never modified
    written, original = torch.load(out, weights_only=True), torch.load(checkpoint, weights_only=True)
    assert written["model"].keys() == original["model"].keys()
    assert all(torch.equal(written["model"][k], original["model"][k]) for k in original["model"])
    report = json.loads(out.with_suffix(".pth.json").read_text())
    assert report["train_rows"] > 0 and report["val_rows"] > 0
    assert 0.0 <= report["val"]["visibility_accuracy"] <= 1.0
    assert written[CHECKPOINT_KEY]["report"]["train_rows"] == report["train_rows"]
    # the pose prior needs more fully labelled people than this one-image training split has: the head is
    # written all the same, and the warning says why there is no prior (tests/tools/test_fit_pose_prior.py fits one)
    assert report["pose_prior"] is None and "no pose prior is stored" in capsys.readouterr().out
    predictor = Predictor(str(config), out)
    try:
        assert predictor.has_quality and predictor.pose_prior is None
    finally:
        predictor.close()


def test_bad_input_is_one_error_line(annotate_assets, tmp_path, capsys):
    checkpoint = annotate_assets["checkpoint"]
    config = tiny_config(tmp_path)
    assert main(["--config", str(config), "--checkpoint", str(checkpoint), "--data", str(tmp_path),
                 "--out", str(checkpoint)]) == 2
    assert "write the head to a new file" in capsys.readouterr().err
    assert main(["--config", str(config), "--checkpoint", str(checkpoint), "--data", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o.pth"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "person_keypoints_train2017.json" in err and err.count("\n") == 1
    assert not (tmp_path / "o.pth").exists()
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"not a checkpoint")
    assert main(["--config", str(config), "--checkpoint", str(damaged), "--data", str(tmp_path),
                 "--out", str(tmp_path / "o.pth"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(damaged) in err and err.count("\n") == 1
