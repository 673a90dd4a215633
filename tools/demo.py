"""The CPU demo (`make demo`): synthetic data -> evaluate the untrained model -> train -> evaluate -> report.

Writes into --out (default demo_output/): untrained/, train/ and trained/ run folders (the usual main.py outputs),
report.md (model-only AP, NoC@85/90/95 and AP after k clicks, untrained vs trained), ap_vs_clicks.png and
example.jpg (predicted poses, and the poses after two simulated clicks); then train/checkpoint_quality.pth, the
trained model with a keypoint-quality head (``tools.train_quality``), which ``make annotate`` uses. Re-running reuses
the data and, if the training run finished, the trained model (and the head, if it is newer than the model).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

DEFAULT_IMAGES, DEFAULT_VAL = 424, 24  # synthetic images in all, and of them in the val split


def run_main(argv: list[str]) -> None:
    import main as clickpose_main

    code = clickpose_main.main(argv)
    if code != 0:
        raise SystemExit(f"main.py {' '.join(argv)} failed with exit code {code}")


def evaluate(config: str, data: Path, out: Path, checkpoint: str | None, interactive: bool) -> dict:
    argv = ["-c", config, "--coco_path", str(data), "--output_dir", str(out), "--device", "cpu", "--eval",
            "--num_workers", "0"]
    if checkpoint:
        argv += ["--resume", checkpoint]
    if interactive:
        argv += ["--options", "feedback_loop_NOC_test=TRUE"]
    run_main(argv)
    last = json.loads((out / "log.txt").read_text().strip().splitlines()[-1])
    return last


def training_minutes(log: Path) -> float:
    """Training time from the run's log (a re-run that resumes a finished training adds nothing)."""
    total = 0.0
    for line in log.read_text().splitlines():
        hours, minutes, seconds = json.loads(line)["epoch_time"].split(":")
        total += int(hours) * 60 + int(minutes) + float(seconds) / 60
    return total


def summarise(model_only: dict, interactive_dir: Path) -> dict:
    noc = json.loads((interactive_dir / "noc_results.json").read_text())
    table = noc.get("ap_vs_clicks") or []
    return {"AP": model_only["test_coco_eval_keypoints_detr"][0], "summary": noc["summary"], "ap_table": table}


def hardware() -> str:
    """The CPU, its logical cores and torch's thread count, for the report (training time depends on them)."""
    import os
    import platform

    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads")


def write_report(out: Path, results: dict[str, dict], train_minutes: float, epochs: int) -> Path:
    thresholds = [k for k in results["trained"]["summary"] if k.startswith("NoC@")]
    lines = ["# Click-Pose demo report", "",
             f"Synthetic people dataset, tiny model (`config/demo.cfg.py`), {epochs} epochs on CPU "
             f"({train_minutes:.1f} min of training).", "",
             f"Hardware: {hardware()}.", "",
             f"To train longer for better numbers, give more epochs: `make demo DEMO_ARGS=\"--epochs {2 * epochs}\"` "
             f"(or `python -m tools.demo --epochs {2 * epochs}`) continues this run from its checkpoint and "
             "re-evaluates.", "",
             "| model | model-only AP | " + " | ".join(thresholds) + " | AP@0 | AP@1 | AP@2 | AP@3 |",
             "|---|---|" + "---|" * (len(thresholds) + 4)]
    for name, res in results.items():
        ap_at = {row["clicks"]: row["AP"] for row in res["ap_table"]}
        cells = [f"{res['AP']:.3f}"] + [f"{res['summary'][t]:.2f}" for t in thresholds]
        cells += [f"{ap_at.get(k, float('nan')):.3f}" for k in range(4)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "NoC@t: mean number of clicks until an image's keypoint AP reaches t (capped at 17; lower is "
              "better). AP@k: keypoint AP after k simulated clicks per person.", "",
              "![AP vs clicks](ap_vs_clicks.png)", "", "![example](example.jpg)", "",
              "Left: predictions of the trained model. Right: after two simulated clicks (white rings) on the worst "
              "keypoint of each matched person."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def plot(out: Path, results: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, res in results.items():
        rows = res["ap_table"]
        ax.plot([r["clicks"] for r in rows], [r["AP"] for r in rows], marker="o", ms=3, label=name)
    ax.set_xlabel("clicks per person")
    ax.set_ylabel("keypoint AP")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ap_vs_clicks.png")
    plt.close(fig)


def example_image(out: Path, config: str, checkpoint: str, data: Path) -> None:
    """Trained predictions on one val image, then two oracle click rounds (the user simulated from GT)."""
    import numpy as np
    from pycocotools.coco import COCO
    from PIL import Image

    from models.predictor import Predictor
    from util.visualize import draw_people, save_rgb

    coco = COCO(str(data / "annotations" / "person_keypoints_val2017.json"))
    image_id = max(coco.getImgIds(), key=lambda i: len(coco.getAnnIds(imgIds=i)))
    info = coco.loadImgs(image_id)[0]
    path = data / "images" / "val2017" / info["file_name"]
    predictor = Predictor(config, checkpoint, score_threshold=0.0)
    people = predictor.predict(path)
    gts = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if a["num_keypoints"] > 0]
    shown = people[:len(gts)]  # the best-scored predictions, one per labelled person (a small model's scores are low)
    clicks = []
    corrected = people
    for _ in range(2):
        round_clicks = []
        for person in shown:
            kpts = np.asarray([p for p in corrected if p["index"] == person["index"]][0]["keypoints"])[:, :2]
            # the oracle: nearest GT person, its worst labelled keypoint
            best = min(gts, key=lambda a: np.abs(np.asarray(a["keypoints"]).reshape(-1, 3)[:, :2] - kpts).sum())
            gt = np.asarray(best["keypoints"], dtype=float).reshape(-1, 3)
            error = np.abs(gt[:, :2] - kpts).sum(1) * (gt[:, 2] > 0)
            k = int(error.argmax())
            round_clicks.append((person["index"], k, float(gt[k, 0]), float(gt[k, 1])))
        corrected = predictor.correct(clicks=round_clicks)
        clicks += round_clicks
    indices = {p["index"] for p in shown}
    image = np.asarray(Image.open(path).convert("RGB"))
    skeleton = predictor.metadata.skeleton
    left = draw_people(image, shown, skeleton)
    right = draw_people(image, [p for p in corrected if p["index"] in indices], skeleton, clicks)
    save_rgb(out / "example.jpg", np.concatenate([left, np.full((image.shape[0], 8, 3), 255, np.uint8), right], 1))


def quality_head(config: str, checkpoint: Path, data: Path, steps: int) -> Optional[Path]:
    """The trained model with a keypoint-quality head beside it (kept if newer than the model); None if ``steps``
    is 0 or the head could not be trained (a model that matches nobody yet: it says so, and the demo goes on)."""
    from tools import train_quality

    out = checkpoint.with_name("checkpoint_quality.pth")
    if steps <= 0:
        return None
    if out.exists() and out.stat().st_mtime_ns > checkpoint.stat().st_mtime_ns:
        if not has_pose_prior(out):  # a head written before the prior existed
            add_prior(config, out, data)
        return out
    code = train_quality.main(["--config", config, "--checkpoint", str(checkpoint), "--data", str(data),
                               "--out", str(out), "--steps", str(steps)])
    if code != 0:
        print("warning: no keypoint-quality head was trained (see the error above); make annotate uses the model "
              "without one")
        return None
    return out


def has_pose_prior(checkpoint: Path) -> bool:
    from models.pose_prior import CHECKPOINT_KEY
    from util.checkpoint import read_checkpoint

    return read_checkpoint(checkpoint).get(CHECKPOINT_KEY) is not None


def add_prior(config: str, checkpoint: Path, data: Path) -> bool:
    """Add the pose prior to ``checkpoint`` in place (``tools.fit_pose_prior``); False if that failed (it says why)."""
    from tools import fit_pose_prior

    return fit_pose_prior.main(["--checkpoint", str(checkpoint), "--config", config, "--annotations",
                                str(data / "annotations" / "person_keypoints_train2017.json")]) == 0


def prepare_data(data: Path, num_images: Optional[int], num_val: Optional[int]) -> None:
    """Write the demo's synthetic dataset (``DEMO_SCENE``; default 424 images, 24 of them val) unless ``data``
    already holds it: a folder an older release wrote (another scene or render version) or with other counts than
    those asked for is rewritten."""
    from datasets.synthetic import DEMO_SCENE, provenance, write_synthetic_dataset

    try:
        train, val = (json.loads((data / "annotations" / f"person_keypoints_{split}2017.json").read_text())
                      for split in ("train", "val"))
        same_source = all(val["info"].get(key) == value for key, value in provenance(DEMO_SCENE).items())
        have = (len(train["images"]) + len(val["images"]), len(val["images"]))
    except (OSError, ValueError, KeyError):
        same_source, have = False, None
    if same_source and num_images in (None, have[0]) and num_val in (None, have[1]):
        return
    num_images = DEFAULT_IMAGES if num_images is None else num_images
    num_val = DEFAULT_VAL if num_val is None else num_val
    print(f"generating {num_images} synthetic images into {data}")
    write_synthetic_dataset(data, num_images, seed=0, num_val=num_val, scene=DEMO_SCENE)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_output")
    parser.add_argument("--data", default="data_synthetic")
    parser.add_argument("--num-images", type=int, default=None, help=f"default {DEFAULT_IMAGES}, or what --data holds")
    parser.add_argument("--num-val", type=int, default=None, help=f"default {DEFAULT_VAL}, or what --data holds")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--config", default="config/demo.cfg.py")
    # 0: load in the training process. With a worker, forked anew every epoch, each epoch after the first took
    # about 13 s longer (of 70 s on 2 cores; its first step 3-5 s), more than the loading itself costs; most likely
    # copy-on-write faults in the 2.6 GB training process after each fork (docs/demo.md).
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes for training (default 0)")
    parser.add_argument("--quality-steps", type=int, default=400,
                        help="training steps of the keypoint-quality head (0: no head)")
    args = parser.parse_args(argv)
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    prepare_data(data, args.num_images, args.num_val)

    results: dict[str, dict] = {}
    untrained = evaluate(args.config, data, out / "untrained", None, interactive=False)
    evaluate(args.config, data, out / "untrained_interactive", None, interactive=True)
    results["untrained"] = summarise(untrained, out / "untrained_interactive")

    run_main(["-c", args.config, "--coco_path", str(data), "--output_dir", str(out / "train"), "--device", "cpu",
              "--num_workers", str(args.workers), "--options", f"epochs={args.epochs}"])
    train_minutes = training_minutes(out / "train" / "log.txt")
    checkpoint = str(out / "train" / "checkpoint.pth")
    trained = evaluate(args.config, data, out / "trained", checkpoint, interactive=False)
    evaluate(args.config, data, out / "trained_interactive", checkpoint, interactive=True)
    results["trained"] = summarise(trained, out / "trained_interactive")

    plot(out, results)
    example_image(out, args.config, checkpoint, data)
    report = write_report(out, results, train_minutes, args.epochs)
    head = quality_head(args.config, Path(checkpoint), data, args.quality_steps)
    print("\n" + report.read_text())
    if head is not None:
        print(f"Model with a keypoint-quality head (make annotate uses it): {head}")
    print(f"Demo finished: report in {report.resolve()}")
    better = (results["trained"]["AP"] > results["untrained"]["AP"]
              and results["trained"]["summary"]["NoC@90"] <= results["untrained"]["summary"]["NoC@90"])
    if not better:
        print("warning: the trained model did not beat the untrained one; train longer (--epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
