"""The Predictor API and tools/predict.py: predict, correct with clicks, pinned keypoints, errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.predictor import Predictor

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "config" / "demo.cfg.py")
OPTIONS = {"num_queries": 100, "num_group": 8, "num_group_refine": 4, "dn_number": 4}


@pytest.fixture(scope="module")
def image_and_checkpoint(tmp_path_factory):
    from datasets.synthetic import write_synthetic_dataset
    from datasets import get_metadata
    from models import build_model
    from util.config import Config, apply_config_to_args
    import argparse

    root = tmp_path_factory.mktemp("predictor")
    write_synthetic_dataset(root / "data", 2, seed=5, num_val=1)
    image = next((root / "data" / "images" / "val2017").glob("*.jpg"))
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict(OPTIONS)
    torch.manual_seed(0)
    args = apply_config_to_args(cfg, argparse.Namespace())
    model, _, _ = build_model(args, get_metadata(args))
    with torch.no_grad():  # the zero-initialised keypoint heads would put every keypoint at its box centre
        for name, param in model.named_parameters():
            if "pose_embed" in name:
                param.add_(torch.randn_like(param) * 0.05)
    torch.save({"model": model.state_dict(), "epoch": 0}, root / "ckpt.pth")
    return image, root / "ckpt.pth"


def test_predict_then_clicks_are_pinned_and_others_move(image_and_checkpoint):
    image, ckpt = image_and_checkpoint
    predictor = Predictor(CONFIG, ckpt, options=OPTIONS)
    people = predictor.predict(image)
    assert len(people) == 4 and people == sorted(people, key=lambda p: -p["score"])
    width, height = predictor._session["size"]
    person = people[0]
    assert np.asarray(person["keypoints"]).shape == (17, 3) and len(person["box"]) == 4
    before = np.asarray(person["keypoints"])[:, :2]
    after1 = predictor.correct(person=person["index"], keypoint=9, x=0.4 * width, y=0.3 * height)
    kp1 = np.asarray(next(p for p in after1 if p["index"] == person["index"])["keypoints"])
    np.testing.assert_allclose(kp1[9, :2], [0.4 * width, 0.3 * height], rtol=0, atol=1e-3)
    assert np.abs(np.delete(kp1[:, :2], 9, 0) - np.delete(before, 9, 0)).max() > 1e-3  # the rest is re-predicted
    after2 = predictor.correct(clicks=[(person["index"], 0, 0.5 * width, 0.2 * height)])
    kp2 = np.asarray(next(p for p in after2 if p["index"] == person["index"])["keypoints"])
    # both clicks stay exactly where they were made (click_freeze='all')
    np.testing.assert_allclose(kp2[[9, 0], :2], [[0.4 * width, 0.3 * height], [0.5 * width, 0.2 * height]], atol=1e-3)


def test_errors_are_clear(image_and_checkpoint, tmp_path):
    image, ckpt = image_and_checkpoint
    predictor = Predictor(CONFIG, ckpt, options=OPTIONS)
    with pytest.raises(RuntimeError, match="predict"):
        predictor.correct(person=0, keypoint=0, x=1, y=1)
    with pytest.raises(OSError, match="cannot read image"):
        predictor.predict(tmp_path / "missing.jpg")
    predictor.predict(image)
    with pytest.raises(ValueError, match="prediction index outside"):
        predictor.correct(person=99, keypoint=0, x=1, y=1)
    with pytest.raises(ValueError, match="person, keypoint, x and y"):
        predictor.correct(person=0, keypoint=0, x=1)


def test_predict_tool_writes_image_and_json(image_and_checkpoint, tmp_path):
    image, ckpt = image_and_checkpoint
    cfg = tmp_path / "small.cfg.py"  # the tool takes a config file: one with the small settings
    cfg.write_text(f"_base_ = ['{CONFIG}']\n" + "".join(f"{k} = {v}\n" for k, v in OPTIONS.items()))
    result = subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"), str(image), "--config", str(cfg),
                             "--checkpoint", str(ckpt), "--click", "0,5,10,12", "--out-dir", str(tmp_path / "out"),
                             "--score-threshold", "0"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads((tmp_path / "out" / f"{image.stem}_poses.json").read_text())
    assert payload["clicks"] == [[0, 5, 10.0, 12.0]] and len(payload["people"]) == 4
    clicked = next(p for p in payload["people"] if p["index"] == 0)
    np.testing.assert_allclose(clicked["keypoints"][5][:2], [10.0, 12.0], atol=1e-3)
    assert (tmp_path / "out" / f"{image.stem}_poses.jpg").stat().st_size > 1000
