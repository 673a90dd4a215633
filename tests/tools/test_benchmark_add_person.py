"""tools/benchmark_add_person.py at a toy size: a tiny random-weight model on one synthetic image. What the numbers
are is not asserted (random weights); that every true person gets a proposal per method and the crop's proposal a
placement count, is: each placement pins a keypoint at the truth, so the count never exceeds the person's labelled
keypoints."""
from __future__ import annotations

import json

import torch

from .conftest import ANNOTATE_CONFIG, ANNOTATE_OPTIONS


def test_every_person_is_proposed_and_its_placements_counted(annotate_assets, tmp_path):
    from pycocotools.coco import COCO

    from tools import benchmark_add_person

    config = tmp_path / "small.cfg.py"
    config.write_text(f"_base_ = ['{ANNOTATE_CONFIG}']\n"
                      + "".join(f"{k} = {v}\n" for k, v in ANNOTATE_OPTIONS.items()))
    data, out = annotate_assets["root"] / "data", tmp_path / "result.json"
    threads = torch.get_num_threads()
    try:
        assert benchmark_add_person.main([
            "--config", str(config), "--checkpoint", str(annotate_assets["checkpoint"]), "--data", str(data),
            "--images", "1", "--runs", "1", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    coco = COCO(str(data / "annotations" / "person_keypoints_val2017.json"))
    first = sorted(coco.dataset["images"], key=lambda i: i["file_name"])[0]
    people = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[first["id"]])) if a.get("num_keypoints", 1) > 0]
    rows = result["rows"]
    assert sorted((r["method"], r["person"]) for r in rows) == sorted(
        (m, g) for m in benchmark_add_person.METHODS for g in range(len(people)))
    for row in rows:
        if row["method"] == "crop":
            labelled = people[row["person"]]["num_keypoints"]
            assert isinstance(row["placements"], int) and 0 <= row["placements"] <= labelled
        else:
            assert "placements" not in row
    assert "placements" in result["summary"]["crop/all"]
