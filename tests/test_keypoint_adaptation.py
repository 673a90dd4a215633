"""End to end through main.py: a custom 21-keypoint dataset (Human-Art's ``keypoints_21``) fine-tunes from a
17-keypoint checkpoint for 2 iterations, then evaluates model-only and interactively, and the 4 new keypoints get
their own AP (tools/eval_keypoint_subset.py). On the main branch before this work, the model could not be built."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import main as clickpose_main
from datasets.metadata import HUMANART21_KEYPOINTS
from util.checkpoint import read_checkpoint, save_checkpoint
from util.config import Config, apply_config_to_args, parse_options

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "config" / "demo.cfg.py")
FAST = ["num_queries=100", "dn_number=4", "num_group=8", "num_group_refine=4", "num_select=8"]


@pytest.fixture(scope="module")
def humanart21(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """(dataset root, annotation file): the two smaller Human-Art sample images, with their keypoints_21."""
    root = shared_data / "humanart"
    data = json.loads((root / "HumanArt" / "annotations" / "validation_humanart.json").read_text())
    keep = {img["id"] for img in data["images"] if img["width"] < 1000}
    data["images"] = [img for img in data["images"] if img["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    assert len(data["images"]) == 2
    ann = tmp_path_factory.mktemp("humanart21") / "humanart21.json"
    ann.write_text(json.dumps(data))
    return root, ann


@pytest.fixture(scope="module")
def coco17_checkpoint(tmp_path_factory) -> Path:
    """A 17-keypoint checkpoint of the same tiny model (what a COCO-trained model would be)."""
    from datasets import get_metadata
    from models import build_model

    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict(parse_options(FAST))
    args = apply_config_to_args(cfg, argparse.Namespace(dataset_file="coco"))
    model = build_model(args, get_metadata(args))[0]
    path = tmp_path_factory.mktemp("coco17") / "coco17.pth"
    save_checkpoint(path, model, epoch=0, with_rng=False)
    return path


def _argv(root: Path, ann: Path, out: Path, *extra: str, options=()) -> list[str]:
    return ["-c", CONFIG, "--dataset_file", "custom", "--coco_path", str(root), "--output_dir", str(out),
            "--device", "cpu", "--num_workers", "0", *extra, "--options", *FAST, "num_body_points=21",
            "keypoint_field=keypoints_21", f"custom_train_ann={ann}", "custom_train_img=.",
            f"custom_val_ann={ann}", "custom_val_img=.", *options]


@pytest.mark.slow
def test_21_keypoints_fine_tune_from_17_then_evaluate(humanart21, coco17_checkpoint, tmp_path, capsys):
    root, ann = humanart21
    train = tmp_path / "train"
    argv = _argv(root, ann, train, "--pretrain_model_path", str(coco17_checkpoint),
                 options=["epochs=1", "batch_size=1"])
    assert clickpose_main.main(argv) == 0
    printed = capsys.readouterr().out
    assert "[1/2]" in printed  # two training iterations
    info = (train / "info.txt").read_text()
    assert "keypoint adaptation coco -> humanart21: 17 keypoints copied, 4 initialised" in info
    ckpt = read_checkpoint(train / "checkpoint.pth")
    assert ckpt["keypoint_metadata"] == HUMANART21_KEYPOINTS.to_dict()
    assert ckpt["model"]["transformer.decoder.hw.weight"].shape == (21, 2)
    log = json.loads((train / "log.txt").read_text().splitlines()[-1])
    assert len(log["test_coco_eval_keypoints_detr"]) == 10  # model-only AP on the 21 keypoints
    results = json.loads((train / "keypoints_results.json").read_text())
    assert results and all(len(r["keypoints"]) == 63 for r in results)

    # the new keypoints' AP on their own
    from tools.eval_keypoint_subset import main as subset_main
    assert subset_main(["--ann", str(ann), "--results", str(train / "keypoints_results.json")]) == 0
    printed = capsys.readouterr().out
    assert "['left_finger', 'right_finger', 'left_toe', 'right_toe']" in printed and "AP50:" in printed

    # interactive: NoC and AP after k clicks on 21 keypoints
    interactive = tmp_path / "interactive"
    argv = _argv(root, ann, interactive, "--eval", "--resume", str(train / "checkpoint.pth"),
                 options=["feedback_loop_NOC_test=TRUE", "max_clicks=2"])
    assert clickpose_main.main(argv) == 0
    log = json.loads((interactive / "log.txt").read_text().splitlines()[-1])
    assert {"test_NoC@85", "test_NoC@90", "test_NoC@95", "test_AP@0", "test_AP@2"} <= set(log)
    noc = json.loads((interactive / "noc_results.json").read_text())
    assert len(noc["images"]) == 2 and all(len(i["ap_per_round"]) == 3 for i in noc["images"])


@pytest.mark.parametrize("options, expected", [((), 21), (("max_clicks=3",), 3)])
def test_interactive_click_cap_follows_the_layout_unless_set(humanart21, tmp_path, monkeypatch, options, expected):
    """max_clicks=None (the default) caps NoC at the layout's K, here 21; an explicit value is used as given."""
    import engine

    class Stop(Exception):
        """Raised by the stand-in evaluation: the cap is all this test needs."""

    seen = []

    def capture(model, postprocess, loader, device, options, **kwargs):
        seen.append(options.max_clicks)
        raise Stop

    monkeypatch.setattr(engine, "evaluate_interactive", capture)
    root, ann = humanart21
    with pytest.raises(Stop):
        clickpose_main.main(_argv(root, ann, tmp_path / "run", "--eval",
                                  options=["feedback_loop_NOC_test=TRUE", *options]))
    assert seen == [expected]
