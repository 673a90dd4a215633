"""tools/adapt.py: fine-tune a checkpoint on the images an annotator finished (tiny model, synthetic images, CPU)."""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch

from tools import adapt

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "config" / "tiny.cfg.py")
# the tiny model with fewer queries, on ~160-pixel images: a training step takes a fraction of a second on 2 cores
FAST = {"num_queries": 100, "num_group": 8, "num_group_refine": 4, "dn_number": 4, "num_select": 8,
        "data_aug_scales": [128, 144, 160], "data_aug_max_size": 240, "data_aug_scales2_resize": [128, 144, 160],
        "data_aug_scales2_crop": [112, 160]}
FAST_OPTIONS = ["num_queries=100", "num_group=8", "num_group_refine=4", "dn_number=4", "num_select=8",
                "data_aug_scales=[128,144,160]", "data_aug_max_size=240", "data_aug_scales2_resize=[128,144,160]",
                "data_aug_scales2_crop=[112,160]"]


def make_checkpoint(path: Path, metadata=None) -> Path:
    """Random weights of the tiny model, saved as training does: {'model', 'keypoint_metadata', 'epoch'}."""
    from models import build_model
    from models.predictor import keypoint_metadata
    from util.config import Config, apply_config_to_args

    cfg = Config.fromfile(TINY)
    cfg.merge_from_dict(FAST)
    args = apply_config_to_args(cfg, argparse.Namespace())
    metadata = metadata or keypoint_metadata(args)
    args.num_body_points = metadata.num_keypoints
    torch.manual_seed(0)
    model, _, _ = build_model(args, metadata)
    torch.save({"model": model.state_dict(), "keypoint_metadata": metadata.to_dict(), "epoch": 0}, path)
    return path


def tool_document(coco: dict, done: set[str], deleted_ann_ids: set[int]) -> dict:
    """The annotation tool's file for these images: the people as COCO annotations (the deleted ones left out, as
    tools/annotate/workspace.py writes them) and its own section with per-image status and people records."""
    from tools.annotate import store

    records = {}
    for image in coco["images"]:
        mine = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        people = store.people_from_annotations(mine, pin_labelled=False)
        for person in people:
            person["deleted"] = person["ann_id"] in deleted_ann_ids
        records[image["file_name"]] = {"status": "done" if image["file_name"] in done else "in_progress",
                                       "threshold": 0.3, "effort": {}, "people": people}
    kept = [a for a in coco["annotations"] if a["id"] not in deleted_ann_ids]
    return {"info": {"description": "test"}, "images": coco["images"], "annotations": kept,
            "categories": coco["categories"],
            store.TOOL_KEY: store.tool_state("images", coco["images"][0]["file_name"], 0.3, records)}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    from datasets.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("adapt")
    written = write_synthetic_dataset(root / "data", 13, seed=5, num_val=1)
    coco = json.loads(written["train"].read_text())  # 12 images
    names = [image["file_name"] for image in coco["images"]]
    done = set(names[:11])  # 11 finished: 2 held out, 9 to train on
    first = [a for a in coco["annotations"] if a["image_id"] == coco["images"][0]["id"]]
    deleted = {first[0]["id"]}
    tool_file = root / "annotations.json"
    tool_file.write_text(json.dumps(tool_document(coco, done, deleted)))
    return {"root": root, "images": root / "data" / "images" / "train2017", "coco": coco, "coco_file":
            written["train"], "tool_file": tool_file, "done": done, "deleted": deleted,
            "checkpoint": make_checkpoint(root / "start.pth")}


def argv(annotations: Path, images: Path, checkpoint: Path, out: Path, *extra: str, epochs: int = 2) -> list[str]:
    return [str(annotations), str(images), "--config", TINY, "--checkpoint", str(checkpoint), "--out", str(out),
            "--epochs", str(epochs), "--device", "cpu", "--batch-size", "2", "--lr", "1e-4", *extra,
            "--options", *FAST_OPTIONS]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---- which images and people -----------------------------------------------------------------------------------

def test_tool_file_uses_done_images_and_drops_deleted_people(assets):
    data = json.loads(assets["tool_file"].read_text())
    # a hand-edited file may still hold a deleted person's annotation: it is not a positive either
    stale = next(a for a in assets["coco"]["annotations"] if a["id"] in assets["deleted"])
    data["annotations"].append(copy.deepcopy(stale))
    chosen = adapt.select_finished(data, "keypoints")
    assert chosen["source"] == "annotation tool"
    assert {image["file_name"] for image in chosen["images"]} == assets["done"]
    ids = {a["id"] for a in chosen["annotations"]}
    assert not ids & assets["deleted"]
    done_ids = {image["id"] for image in chosen["images"]}
    expected = {a["id"] for a in assets["coco"]["annotations"] if a["image_id"] in done_ids} - assets["deleted"]
    assert ids == expected


def test_plain_coco_file_uses_every_image_with_a_person(assets):
    data = copy.deepcopy(assets["coco"])
    empty = data["images"][0]["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != empty]
    chosen = adapt.select_finished(data, "keypoints")
    assert chosen["source"] == "COCO keypoints file"
    assert [image["id"] for image in chosen["images"]] == [image["id"] for image in data["images"][1:]]


def test_held_out_split_only_from_ten_images():
    assert adapt.split_images(list(range(9)), 0.2, 0) == (list(range(9)), [])
    train, held = adapt.split_images(list(range(10)), 0.2, 0)
    assert len(held) == 2 and sorted(train + held) == list(range(10))
    assert len(adapt.split_images(list(range(10)), 0.01, 0)[1]) == 1  # at least one
    assert adapt.split_images(list(range(30)), 0.2, 3) == adapt.split_images(list(range(30)), 0.2, 3)


# ---- a run -------------------------------------------------------------------------------------------------------

def test_adapt_writes_a_checkpoint_the_predictor_loads(assets, tmp_path, capsys):
    from models.predictor import Predictor
    from util.checkpoint import read_checkpoint
    from util.keypoint_metadata import KeypointMetadata

    before = {p: digest(p) for p in (assets["tool_file"], assets["checkpoint"])}
    out = tmp_path / "adapted" / "new.pth"
    assert adapt.main(argv(assets["tool_file"], assets["images"], assets["checkpoint"], out)) == 0
    assert "wrote" in capsys.readouterr().out
    assert {p: digest(p) for p in before} == before  # the inputs are only read

    start, new = read_checkpoint(assets["checkpoint"]), read_checkpoint(out)  # weights_only loading
    assert new["keypoint_metadata"] == start["keypoint_metadata"]
    assert new["args"].human_feedback is True and new["args"].epochs == 2
    moved = [k for k, v in start["model"].items() if not torch.equal(v, new["model"][k])]
    assert len(moved) > len(start["model"]) // 3
    assert new["model"].keys() == start["model"].keys()

    predictor = Predictor(TINY, out, options=FAST)
    try:
        assert predictor.metadata == KeypointMetadata.from_dict(start["keypoint_metadata"])
        assert isinstance(predictor.predict(assets["images"] / sorted(assets["done"])[0]), list)
    finally:
        predictor.close()

    report = json.loads(adapt.report_path(out).read_text())
    assert report["source"] == "annotation tool" and report["finished_images"] == 11
    assert report["train_images"] == 9 and report["val_images"] == 2
    assert set(report["train_image_files"]) | set(report["val_image_files"]) == assets["done"]
    done_ids = {image["id"] for image in assets["coco"]["images"] if image["file_name"] in assets["done"]}
    people = [a for a in assets["coco"]["annotations"] if a["image_id"] in done_ids and a["num_keypoints"] > 0
              and a["id"] not in assets["deleted"]]
    assert report["train_people"] + report["val_people"] == len(people)
    assert len(report["loss_per_epoch"]) == 2 and all(v > 0 for v in report["loss_per_epoch"])
    assert isinstance(report["val_ap_after"], float) and isinstance(report["val_ap_before"], float)
    assert new["adapt"]["train_images"] == 9


def test_adapt_21_keypoints(assets, tmp_path):
    """A 21-keypoint checkpoint (Human-Art's layout) adapts on a 21-keypoint annotation file; no split (< 10)."""
    from datasets.metadata import HUMANART21_KEYPOINTS
    from util.checkpoint import read_checkpoint

    ckpt = make_checkpoint(tmp_path / "start21.pth", HUMANART21_KEYPOINTS)
    coco = copy.deepcopy(assets["coco"])
    coco["images"] = coco["images"][:4]
    ids = {image["id"] for image in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    for ann in coco["annotations"]:  # fingers at the wrists, toes at the ankles
        kp = ann["keypoints"]
        ann["keypoints"] = kp + kp[27:30] + kp[30:33] + kp[45:48] + kp[48:51]
        ann["num_keypoints"] = sum(1 for v in ann["keypoints"][2::3] if v > 0)
    coco["categories"][0]["keypoints"] = list(HUMANART21_KEYPOINTS.keypoint_names)
    ann_file = tmp_path / "ann21.json"
    ann_file.write_text(json.dumps(coco))
    out = tmp_path / "new21.pth"
    assert adapt.main(argv(ann_file, assets["images"], ckpt, out, epochs=1)) == 0
    new = read_checkpoint(out)
    assert new["keypoint_metadata"] == HUMANART21_KEYPOINTS.to_dict()
    report = json.loads(adapt.report_path(out).read_text())
    assert report["num_keypoints"] == 21 and report["val_images"] == 0 and report["val_ap_after"] is None
    assert report["train_images"] == 4 and len(report["loss_per_epoch"]) == 1


# ---- bad input: one error line and its exit code, nothing written ----------------------------------------------

def _no_done(assets, tmp_path):
    data = json.loads(assets["tool_file"].read_text())
    for record in data[adapt.TOOL_KEY]["images"].values():
        record["status"] = "in_progress"
    path = tmp_path / "none_done.json"
    path.write_text(json.dumps(data))
    return path, assets["images"], assets["checkpoint"]


def _renamed_keypoint(assets, tmp_path):
    data = copy.deepcopy(assets["coco"])
    data["categories"][0]["keypoints"][5] = "left_wing"
    path = tmp_path / "renamed.json"
    path.write_text(json.dumps(data))
    return path, assets["images"], assets["checkpoint"]


def _fourteen_keypoints(assets, tmp_path):
    data = copy.deepcopy(assets["coco"])
    for ann in data["annotations"]:
        ann["keypoints"] = ann["keypoints"][:42]
    data["categories"][0]["keypoints"] = data["categories"][0]["keypoints"][:14]
    path = tmp_path / "fourteen.json"
    path.write_text(json.dumps(data))
    return path, assets["images"], assets["checkpoint"]


def _missing_images(assets, tmp_path):
    folder = tmp_path / "some_images"
    folder.mkdir()
    (folder / sorted(assets["done"])[0]).write_bytes((assets["images"] / sorted(assets["done"])[0]).read_bytes())
    return assets["tool_file"], folder, assets["checkpoint"]


def _unreadable_json(assets, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    return path, assets["images"], assets["checkpoint"]


def _damaged_checkpoint(assets, tmp_path):
    path = tmp_path / "damaged.pth"
    path.write_bytes(assets["checkpoint"].read_bytes()[:1000])
    return assets["tool_file"], assets["images"], path


@pytest.mark.parametrize("case, code, message", [
    (_no_done, 1, "no image has status 'done'"),
    (_renamed_keypoint, 1, "'left_wing' vs 'left_shoulder'"),
    (_fourteen_keypoints, 1, "has 14 keypoints but the checkpoint's layout 'coco' has 17"),
    (_missing_images, 1, "10 of the 11 finished images are not in"),
    (_unreadable_json, 1, "not a readable JSON file"),
    (_damaged_checkpoint, 1, "could not read checkpoint"),
])
def test_bad_input_is_one_error_line(assets, tmp_path, capsys, case, code, message):
    annotations, images, checkpoint = case(assets, tmp_path)
    out = tmp_path / "new.pth"
    assert adapt.main(argv(annotations, images, checkpoint, out)) == code
    assert message in error_line(capsys)
    assert not out.exists() and not adapt.report_path(out).exists()


def test_out_must_not_be_an_input(assets, capsys):
    before = digest(assets["checkpoint"])
    assert adapt.main(argv(assets["tool_file"], assets["images"], assets["checkpoint"], assets["checkpoint"])) == 2
    assert "is an input file" in error_line(capsys)
    assert digest(assets["checkpoint"]) == before


@pytest.mark.parametrize("change, message", [(("--epochs", "0"), "'epochs'"),
                                             (("--options", "no_such_key=1"), "no_such_key")])
def test_bad_config_value_exits_2(assets, tmp_path, capsys, change, message):
    args = argv(assets["tool_file"], assets["images"], assets["checkpoint"], tmp_path / "new.pth")
    flag, value = change
    if flag == "--options":
        args.insert(args.index(flag) + 1, value)
    else:
        args[args.index(flag) + 1] = value
    assert adapt.main(args) == 2
    assert message in error_line(capsys)


def test_adapt_on_real_human_art_images(shared_data, tmp_path, capsys):
    """A smoke test on real images: the Human-Art sample (3 images; its file names carry the `HumanArt/images/`
    prefix, relative to the dataset root) fine-tunes for one epoch into a checkpoint that predicts on them."""
    from models.predictor import Predictor
    from util.checkpoint import read_checkpoint

    root = shared_data / "humanart"
    annotations = root / "HumanArt" / "annotations" / "training_humanart.json"
    source = make_checkpoint(tmp_path / "source.pth")
    out = tmp_path / "humanart.pth"
    assert adapt.main([str(annotations), str(root), "--config", TINY, "--checkpoint", str(source), "--out", str(out),
                       "--epochs", "1", "--device", "cpu", "--options", *FAST_OPTIONS]) == 0
    assert "wrote" in capsys.readouterr().out
    start, new = read_checkpoint(source), read_checkpoint(out)
    assert any(not torch.equal(v, new["model"][k]) for k, v in start["model"].items())
    report = json.loads(adapt.report_path(out).read_text())
    coco = json.loads(annotations.read_text())
    assert report["train_images"] == len({a["image_id"] for a in coco["annotations"] if a["num_keypoints"] > 0})
    predictor = Predictor(TINY, out, options=FAST)
    try:
        assert isinstance(predictor.predict(root / coco["images"][0]["file_name"]), list)
    finally:
        predictor.close()
