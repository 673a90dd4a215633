"""Fixtures of the annotation-tool tests: a tiny random-weight model (built here) and a folder of images."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
ANNOTATE_CONFIG = str(REPO / "config" / "demo.cfg.py")
# fewer queries than the demo model: the same architecture, faster on 2 cores
ANNOTATE_OPTIONS = {"num_queries": 100, "num_group": 8, "num_group_refine": 4, "dn_number": 4}


def make_checkpoint(path: Path, options: dict) -> Path:
    """Random weights of config/demo.cfg.py (+ options), with keypoint heads perturbed so poses are not all at the
    box centre (their zero initialisation would put them there)."""
    from models import build_model
    from models.predictor import keypoint_metadata
    from util.config import Config, apply_config_to_args

    cfg = Config.fromfile(ANNOTATE_CONFIG)
    cfg.merge_from_dict(options)
    torch.manual_seed(0)
    args = apply_config_to_args(cfg, argparse.Namespace())
    model, _, _ = build_model(args, keypoint_metadata(args))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "pose_embed" in name:
                param.add_(torch.randn_like(param) * 0.05)
    torch.save({"model": model.state_dict(), "epoch": 0}, path)
    return path


@pytest.fixture(scope="session")
def annotate_assets(tmp_path_factory) -> dict[str, Path]:
    """'images': a folder of 3 synthetic images (one in a subfolder), 'checkpoint': tiny random weights."""
    from datasets.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("annotate")
    write_synthetic_dataset(root / "data", 4, seed=3, num_val=3)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    val = sorted((root / "data" / "images" / "val2017").glob("*.jpg"))
    shutil.copy(val[0], images / "a.jpg")
    shutil.copy(val[1], images / "b.jpg")
    shutil.copy(val[2], images / "sub" / "c.jpg")
    (root / "secret.txt").write_text("outside the image folder")
    return {"root": root, "images": images, "checkpoint": make_checkpoint(root / "ckpt.pth", ANNOTATE_OPTIONS)}


@pytest.fixture(scope="session")
def annotate_predictor(annotate_assets):
    from models.predictor import Predictor

    predictor = Predictor(ANNOTATE_CONFIG, annotate_assets["checkpoint"], options=ANNOTATE_OPTIONS)
    yield predictor
    predictor.close()
