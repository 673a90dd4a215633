"""The Predictor takes the keypoint layout a checkpoint recorded (here Human-Art's 21 under a 17-keypoint config)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from datasets.metadata import HUMANART21_KEYPOINTS
from models import build_model
from models.predictor import Predictor
from util.checkpoint import save_checkpoint
from util.config import Config, apply_config_to_args

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "config" / "demo.cfg.py")
OPTIONS = {"num_queries": 100, "num_group": 8, "num_group_refine": 4, "dn_number": 4}


def test_predictor_uses_the_recorded_layout(tmp_path):
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict({**OPTIONS, "num_body_points": 21})
    args = apply_config_to_args(cfg, argparse.Namespace())
    model = build_model(args, HUMANART21_KEYPOINTS)[0]
    save_checkpoint(tmp_path / "ckpt21.pth", model, with_rng=False)

    predictor = Predictor(CONFIG, tmp_path / "ckpt21.pth", options=OPTIONS)  # the config says 17 keypoints
    assert predictor.metadata == HUMANART21_KEYPOINTS
    assert predictor.transform is not None and predictor.num_keypoints == 21
    people = predictor.predict(np.zeros((96, 128, 3), dtype=np.uint8))
    assert people and len(people[0]["keypoints"]) == 21
    person = people[0]["index"]
    people = predictor.correct(person=person, keypoint=19, x=10.0, y=20.0)  # a toe, new in the layout
    clicked = next(p for p in people if p["index"] == person)
    assert torch.allclose(torch.tensor(clicked["keypoints"][19][:2]), torch.tensor([10.0, 20.0]), atol=1e-3)
