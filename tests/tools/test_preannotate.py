"""tools/preannotate.py: the file loads in pycocotools and opens in the annotation tool; a killed run resumes and
writes every image once; two processes write the file of one; bad images and bad settings are reported."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import torch

from tools import preannotate

from tests.helpers import free_port

from .conftest import ANNOTATE_CONFIG, ANNOTATE_OPTIONS

REPO = Path(__file__).resolve().parents[2]
LOCAL = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def setup(annotate_assets, tmp_path_factory) -> dict[str, Path]:
    """Ten images (copies of the synthetic ones, two sizes) and a config file with the test model's options."""
    root = tmp_path_factory.mktemp("preannotate")
    images = root / "images"
    images.mkdir()
    sources = sorted(annotate_assets["images"].rglob("*.jpg"))
    for i in range(10):
        shutil.copy(sources[i % len(sources)], images / f"img{i:02d}.jpg")
    config = root / "small.cfg.py"
    config.write_text(f"_base_ = ['{ANNOTATE_CONFIG}']\n" + "".join(f"{k} = {v}\n" for k, v in ANNOTATE_OPTIONS.items()))
    return {"root": root, "images": images, "config": config, "checkpoint": annotate_assets["checkpoint"]}


def command(setup, out: Path, *extra: str) -> list[str]:
    return [str(setup["images"]), "--config", str(setup["config"]), "--checkpoint", str(setup["checkpoint"]),
            "--out", str(out), "--threshold", "0.0", *extra]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def reference(setup) -> Path:
    """One uninterrupted single-process run (batch size 1), the file the other runs must equal."""
    out = setup["root"] / "reference.json"
    assert preannotate.main(command(setup, out, "--batch-size", "1")) == 0
    return out


def test_file_loads_in_pycocotools_and_opens_in_the_annotation_tool(setup, reference, annotate_predictor):
    from fastapi.testclient import TestClient
    from pycocotools.coco import COCO

    from tools.annotate.server import create_app
    from tools.annotate.workspace import Workspace

    coco = COCO(str(reference))
    category = coco.loadCats(coco.getCatIds())[0]
    assert category["keypoints"][0] == "nose" and [16, 14] in category["skeleton"]
    assert sorted(i["file_name"] for i in coco.dataset["images"]) == [f"img{i:02d}.jpg" for i in range(10)]
    anns = coco.dataset["annotations"]
    assert anns and len({a["id"] for a in anns}) == len(anns)
    assert all(len(a["keypoints"]) == 51 and 0.0 <= a["score"] <= 1.0 and a["num_keypoints"] == 17 for a in anns)
    # what the file says is what the model's postprocessor finds (same decoding as the evaluation)
    image = next(i for i in coco.dataset["images"] if i["file_name"] == "img03.jpg")
    direct = annotate_predictor.detect_batch([setup["images"] / "img03.jpg"])[0]
    written = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
    assert [a["score"] for a in written] == [round(p["score"], 4) for p in direct]
    np.testing.assert_allclose(np.asarray(written[0]["keypoints"]).reshape(17, 3)[:, :2], direct[0]["keypoints"],
                               atol=0.01)

    review = setup["root"] / "review.json"  # the tool saves into the file it reviews: keep the reference as it is
    shutil.copy(reference, review)
    workspace = Workspace(setup["images"], review, annotate_predictor, threshold=0.0)
    client = TestClient(create_app(workspace), base_url=LOCAL)
    listing = client.get("/api/images").json()
    assert {row["status"] for row in listing["images"]} == {"todo"} and listing["current"] == "img00.jpg"
    state = client.post("/api/open", json={"image": "img03.jpg"}).json()
    assert len(state["people"]) == len(written)  # the file's people, not a new prediction
    person = state["people"][0]
    assert person["source"] == "model" and not any(person["pinned"]) and not person["touched"]
    np.testing.assert_allclose(np.asarray(person["keypoints"])[:, :2], direct[0]["keypoints"], atol=0.01)
    # the run's report survives the tool's saves
    assert read(review)[preannotate.REPORT_KEY]["images"] == 10
    # pre-annotations are model guesses: once the tool saves, the COCO annotations hold only reviewed images (none
    # yet); the guesses stay in the tool's section, and an image marked done brings exactly its people back
    reviewed = read(review)
    assert reviewed["annotations"] == []
    assert len(reviewed["clickpose_annotate"]["images"]["img03.jpg"]["people"]) == len(written)
    client.post("/api/accept", json={"image": "img03.jpg"})
    reviewed = read(review)
    assert [a["id"] for a in reviewed["annotations"]] == [a["id"] for a in written]
    np.testing.assert_allclose([a["keypoints"] for a in reviewed["annotations"]],  # via float32 pixels->[0, 1]
                               [a["keypoints"] for a in written], atol=0.011)


def test_killed_run_resumes_and_writes_every_image_once(setup, reference, tmp_path):
    out = tmp_path / "out.json"
    parts = tmp_path / ".out.json.parts"
    # the killed run's images must be computed with this process's arithmetic (its reference and resumed runs)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "tools.preannotate",
                             *command(setup, out, "--batch-size", "1", "--save-every", "1")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            done = sum(len(read(p)["results"]) for p in parts.glob("rank*.json")) if parts.exists() else 0
            if done >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)  # no clean-up code runs
    finally:
        proc.wait(30)
    saved = sum(len(read(p)["results"]) for p in parts.glob("rank*.json"))
    assert 2 <= saved < 10 and not out.exists()
    assert preannotate.main(command(setup, out, "--batch-size", "1")) == 0
    assert not parts.exists()
    result, expected = read(out), read(reference)
    assert [i["file_name"] for i in result["images"]] == [i["file_name"] for i in expected["images"]]
    assert result["images"] == expected["images"] and result["annotations"] == expected["annotations"]


def test_two_processes_write_the_file_of_one(setup, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every process
    single, sharded = tmp_path / "single.json", tmp_path / "sharded.json"
    script = ["-m", "tools.preannotate"]  # the tools run as modules from the repository root
    one = subprocess.run([sys.executable, *script, *command(setup, single, "--batch-size", "2")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), *script, *command(setup, sharded, "--batch-size", "2")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 process(es)" in two.stdout
    assert read(sharded) == read(single)


def test_unreadable_images_are_reported_not_fatal(setup, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(setup["images"], images)
    (images / "empty.jpg").write_bytes(b"")
    (images / "truncated.jpg").write_bytes((images / "img00.jpg").read_bytes()[:2000])
    out = tmp_path / "out.json"
    args = command(setup, out)
    args[0] = str(images)
    assert preannotate.main(args) == 0
    data = read(out)
    assert set(data[preannotate.REPORT_KEY]["unreadable"]) == {"empty.jpg", "truncated.jpg"}
    assert len(data["images"]) == 10
    printed = capsys.readouterr().out
    assert "2 unreadable" in printed and "unreadable: truncated.jpg: cannot decode" in printed


def test_label_studio_tasks_match_the_coco_run(setup, reference, tmp_path):
    out = tmp_path / "tasks.json"
    assert preannotate.main(command(setup, out, "--batch-size", "1", "--format", "label-studio")) == 0
    tasks, coco = read(out), read(reference)
    assert len(tasks) == 10 and tasks[3]["data"]["image"] == "/data/local-files/?d=images/img03.jpg"
    image = next(i for i in coco["images"] if i["file_name"] == "img03.jpg")
    anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    result = tasks[3]["predictions"][0]["result"]
    boxes = [r for r in result if r["type"] == "rectanglelabels"]
    points = [r for r in result if r["type"] == "keypointlabels"]
    assert len(boxes) == len(anns) and len(points) == 17 * len(anns)
    assert all(r["original_width"] == image["width"] and r["original_height"] == image["height"] for r in result)
    first = [r for r in points if r["parentID"] == boxes[0]["id"]]
    assert [r["value"]["keypointlabels"][0] for r in first][:2] == ["nose", "left_eye"]
    xy = np.asarray([[r["value"]["x"] * image["width"] / 100, r["value"]["y"] * image["height"] / 100] for r in first])
    np.testing.assert_allclose(xy, np.asarray(anns[0]["keypoints"]).reshape(17, 3)[:, :2], atol=0.02)
    x, y, w, h = anns[0]["bbox"]
    value = boxes[0]["value"]
    np.testing.assert_allclose([value["x"], value["y"], value["width"], value["height"]],
                               [100 * x / image["width"], 100 * y / image["height"], 100 * w / image["width"],
                                100 * h / image["height"]], atol=0.02)
    config = ElementTree.fromstring(out.with_suffix(".label_config.xml").read_text())
    keypoints = config.find("KeyPointLabels")
    assert keypoints.get("name") == points[0]["from_name"] and keypoints.get("toName") == points[0]["to_name"]
    assert [label.get("value") for label in keypoints][:3] == ["nose", "left_eye", "right_eye"]
    assert config.find("RectangleLabels").get("name") == boxes[0]["from_name"]


def test_bad_input_gets_one_error_line(setup, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert preannotate.main(command(setup, out, "--dtype", "float16", "--device", "cpu")) == 2
    assert "float16 is for CUDA" in capsys.readouterr().err
    missing = command(setup, out)
    missing[0] = str(tmp_path / "nowhere")
    assert preannotate.main(missing) == 2 and "image folder not found" in capsys.readouterr().err
    out.write_text("{}")
    assert preannotate.main(command(setup, out)) == 2 and "--overwrite" in capsys.readouterr().err
    # progress of a run with other settings is not mixed into this one
    parts = tmp_path / ".other.json.parts"
    parts.mkdir()
    (parts / "rank000-of-001.json").write_text(json.dumps({"settings": {"threshold": 0.9}, "results": {}}))
    assert preannotate.main(command(setup, tmp_path / "other.json")) == 2
    assert "threshold" in capsys.readouterr().err


def test_bfloat16_runs_and_finds_the_same_people_roughly(setup, annotate_predictor):
    import torch

    image = setup["images"] / "img01.jpg"
    fp32 = annotate_predictor.detect_batch([image])[0]
    bf16 = annotate_predictor.detect_batch([image], autocast_dtype=torch.bfloat16)[0]
    assert bf16 and all(np.isfinite(p["keypoints"]).all() and 0 <= p["score"] <= 1 for p in bf16)
    assert abs(len(bf16) - len(fp32)) <= 2
