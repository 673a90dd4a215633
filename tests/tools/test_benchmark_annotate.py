"""The simulated annotator (tools/benchmark_annotate.py) in the real page, on the tiny model: it brings every true
person to the truth with real pointer and key events, and its counts add up."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tools.annotate.browser_check import find_chromium

from .conftest import ANNOTATE_CONFIG, ANNOTATE_OPTIONS

pytestmark = pytest.mark.slow


def test_the_oracle_annotates_every_person_and_the_counts_add_up(annotate_assets, tmp_path, monkeypatch):
    from tools import benchmark_annotate as bench

    if find_chromium() is None:
        pytest.skip("no Chromium + chromedriver on this machine (`make browser` installs Debian's chromium and "
                    "chromium-driver; it needs apt and root)")
    import models.predictor as mp

    real = mp.Predictor
    monkeypatch.setattr(mp, "Predictor", lambda config, checkpoint: real(config, checkpoint, options=ANNOTATE_OPTIONS))
    threads = torch.get_num_threads()
    out = tmp_path / "result.json"
    data = annotate_assets["root"] / "data"
    try:
        code = bench.main(["--config", ANNOTATE_CONFIG, "--checkpoint", str(annotate_assets["checkpoint"]),
                           "--data", str(data), "--images", "2", "--threshold", "0.0", "--threads", "1",
                           "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    result = json.loads(out.read_text())
    truth = json.loads((data / "annotations" / "person_keypoints_val2017.json").read_text())
    first = sorted(truth["images"], key=lambda i: i["file_name"])[:2]
    people = [a for a in truth["annotations"] if a["image_id"] in {i["id"] for i in first}
              and not a.get("iscrowd", 0) and a["num_keypoints"] > 0]
    assert result["images"] == 2 and result["people"] == len(people)
    assert result["unresolved"] == 0  # a placement pins the keypoint at the truth, so each person ends within tolerance
    assert result["shown"] > 0 and result["deletions"] == result["shown"] - result["matched"]
    assert result["boxes"] == result["people"] - result["matched"] == len(result["added_placements"])
    assert 0 < result["placements"] <= 17 * result["people"]
    assert result["release_to_redraw_ms"]["count"] == result["placements"]
    actions = result["placements"] + result["visibility_edits"] + result["deletions"] + result["boxes"]
    assert result["actions_per_person"] == pytest.approx(actions / result["people"])
    assert result["ap"] > 0.5  # every labelled keypoint within 5% of its box diagonal, visibility as the truth's
    assert len(result["oks"]) == result["people"] and all(0.0 < o <= 1.0 for o in result["oks"])
    # the AP at threshold t is at most the share of people at or above t (its recall), up to the 101-point grid
    shares = [sum(o >= t for o in result["oks"]) / result["people"] for t in np.linspace(0.5, 0.95, 10)]
    assert result["ap"] <= float(np.mean(shares)) + 0.011
