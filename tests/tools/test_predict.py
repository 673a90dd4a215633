"""tools/predict.py and the Predictor refuse a checkpoint that would run code, unless the user opts in."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.predictor import Predictor
from util.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "config" / "tiny.cfg.py")


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture()
def evil(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "extra": Payload(tmp_path / "marker")}, path)
    return path


def _predict_tool():
    from tools import predict
    return predict


def test_predict_tool_refuses_a_payload_with_one_error_line(evil, tmp_path, capsys):
    image = tmp_path / "img.jpg"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(image)
    code = _predict_tool().main([str(image), "--config", TINY, "--checkpoint", str(evil), "--out-dir",
                                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and not (tmp_path / "marker").exists()
    assert err.startswith("error: ") and "--trust_checkpoint" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_predictor_refuses_a_payload_unless_trusted(evil, tmp_path):
    with pytest.raises(CheckpointError, match="not loaded"):
        Predictor(TINY, evil)
    assert not (tmp_path / "marker").exists()
    # with the opt-in the file is unpickled (the payload runs), then its empty state dict does not fit the model
    with pytest.raises(RuntimeError, match="Missing key"):
        Predictor(TINY, evil, trust_checkpoint=True)
    assert (tmp_path / "marker").exists()
