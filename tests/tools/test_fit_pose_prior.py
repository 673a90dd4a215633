"""tools/fit_pose_prior.py: the prior is stored beside the unchanged model, atomically; bad input is one error line."""
from __future__ import annotations

import json

import numpy as np
import torch

from models.pose_prior import CHECKPOINT_KEY, PosePrior
from tools.fit_pose_prior import main


def coco_file(path, count: int, seed: int = 0):
    """A COCO keypoints file of ``count`` fully labelled 17-keypoint people."""
    rng = np.random.default_rng(seed)
    annotations = []
    for n in range(count):
        x, y, w, h = rng.uniform(0, 100), rng.uniform(0, 100), rng.uniform(30, 60), rng.uniform(80, 160)
        pose = np.column_stack((rng.uniform(0, 1, 17), np.linspace(0, 1, 17) + rng.normal(0, 0.02, 17)))
        keypoints = np.column_stack((pose * [w, h] + [x, y], np.full(17, 2.0)))
        annotations.append({"id": n + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [x, y, w, h],
                            "keypoints": keypoints.reshape(-1).tolist(), "num_keypoints": 17})
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 300, "height": 300}],
                                "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}))
    return path


def test_the_prior_is_written_into_the_checkpoint_beside_its_model(tmp_path, capsys):
    checkpoint = tmp_path / "model.pth"
    weights = {"layer.weight": torch.randn(3, 3)}
    torch.save({"model": weights, "epoch": 4}, checkpoint)
    annotations = coco_file(tmp_path / "train.json", 60)
    assert main(["--checkpoint", str(checkpoint), "--annotations", str(annotations)]) == 0
    assert "pose prior from 60 people" in capsys.readouterr().out
    written = torch.load(checkpoint, weights_only=True)
    assert torch.equal(written["model"]["layer.weight"], weights["layer.weight"]) and written["epoch"] == 4
    prior = PosePrior.from_checkpoint(written[CHECKPOINT_KEY], 17)
    assert prior.num_poses == 60
    out = tmp_path / "other.pth"
    assert main(["--checkpoint", str(checkpoint), "--annotations", str(annotations), "--out", str(out)]) == 0
    assert CHECKPOINT_KEY in torch.load(out, weights_only=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth", "other.pth", "train.json"]  # no leftovers


def test_bad_input_is_one_error_line_and_leaves_the_checkpoint(tmp_path, capsys):
    checkpoint = tmp_path / "model.pth"
    torch.save({"model": {}}, checkpoint)
    before = checkpoint.read_bytes()
    cases = {"missing.json": "cannot read the annotations", "broken.json": "cannot read the annotations",
             "few.json": "more than 34 people with all 17 keypoints labelled"}
    (tmp_path / "broken.json").write_text("{not json")
    coco_file(tmp_path / "few.json", 20)
    for name, message in cases.items():
        assert main(["--checkpoint", str(checkpoint), "--annotations", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and name in err and err.count("\n") == 1
    assert checkpoint.read_bytes() == before
