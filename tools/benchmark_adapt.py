"""The adaptation loop without a person: annotate a batch of a new domain, fine-tune, annotate the next, and so on.

    python -m tools.benchmark_adapt --config config/demo.cfg.py --checkpoint demo_output/train/checkpoint.pth \\
        --out adapt_bench [--target-scene full] [--target-images 52 --held-out 12] [--batch 10] [--rounds 3] \\
        [--epochs 10] [--threads 2] [--in-domain data_synthetic]

The target domain is a synthetic scene (``datasets.synthetic.SCENES``: ``full`` by default, or a spec such as
``max_people=6,body_height=0.25:0.7,occluders=1``) written under ``OUT/data`` with its own seed (unless it is
already there): ``--held-out`` images form its val split, on which NoC@85/90/95 is measured; the others form the pool,
cut into batches of ``--batch`` images in file-name order.

The annotator is the oracle of ``tools/oracle_annotator.py``, driving the page's own session code
(``tools.annotate.workspace.Workspace``: the same ``PoseSession`` objects and annotation file as the page's API)
instead of a browser. Per image it matches the people shown (score at or above ``--threshold``, or touched) to the
truth (Hungarian on OKS, at least ``--min-oks``), deletes the unmatched ones, adds each missed person with its true
box, places each person's worst labelled keypoint at the truth until all are within ``--tolerance`` of the true
box's diagonal (at most ``--max-placements`` per person), sets the visibility to the truth's, and accepts the image.
Its clicks are placements + visibility edits + deletions + boxes.

With adaptation (one Workspace over ``OUT/pool``, one annotation file ``OUT/annotations.json``): round r annotates
batch r with the model in use, fine-tunes with ``tools.adapt`` on every image done so far (``--start source``: from
the source checkpoint, the default; ``previous``: from the previous round's), switches the workspace to the new
checkpoint (``Workspace.switch_model``) and measures NoC on the held-out images. When the pool has another batch
after the last round, it is annotated with the last model: the clicks that the last fine-tuning saves.
Without adaptation (``OUT/annotations_source.json`` over the same folder): the source model annotates the same
batches.

Written: ``OUT/report.json`` (everything, per image too), ``OUT/report.md`` (the tables), ``OUT/adapt_curve.png``
(clicks per image vs images annotated before the batch, with and without adaptation), the round checkpoints
``OUT/round<r>/checkpoint.pth`` (+ ``checkpoint.adapt.json``) and the NoC runs ``OUT/noc/<model>/`` (main.py's
run folders). ``--in-domain DATA_ROOT`` also measures the source model's NoC on ``DATA_ROOT``'s val2017 and prints
the ratio target / in-domain of NoC@90. The source checkpoint is only read. See docs/adapt.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from tools.oracle_annotator import OraclePolicy, Tally, truth_of

DEFAULT_TARGET_SEED = 1000  # the target dataset's own seed (the demo's data uses 0)
NOC_KEYS = ("NoC@85", "NoC@90", "NoC@95")


# ---- the target domain --------------------------------------------------------------------------------------------

def parse_scene(text: str):
    """A scene of ``datasets.synthetic.SCENES`` by name, or ``key=value,...`` over ``Scene``'s fields (a range as
    ``low:high``), e.g. ``max_people=6,body_height=0.25:0.7,occluders=1``."""
    from datasets.synthetic import SCENES, Scene
    from util.config import ConfigError

    if text in SCENES:
        return SCENES[text]
    if "=" not in text:
        raise ConfigError(f"unknown scene {text!r}: one of {', '.join(SCENES)} or key=value,... over "
                         f"{', '.join(f.name for f in fields(Scene))}")
    values: dict[str, Any] = {}
    names = {f.name for f in fields(Scene)}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in names:
            raise ConfigError(f"scene spec {text!r}: unknown key {key!r} (keys: {', '.join(sorted(names))})")
        if key == "max_people":
            values[key] = int(value)
        elif key == "body_height":
            low, _, high = value.partition(":")
            values[key] = (float(low), float(high))
        elif key == "palette":
            values[key] = value.strip()
        else:
            values[key] = value.strip().lower() in ("1", "true", "yes", "on")
    try:
        return Scene(**values)
    except ValueError as exc:
        raise ConfigError(f"scene spec {text!r}: {exc}") from None


def prepare_target(root: Path, scene: Any, total: int, held_out: int, seed: int) -> dict[str, Path]:
    """The target dataset under ``root`` (COCO layout: train2017 = the pool, val2017 = the held-out images),
    written unless ``root`` already holds this scene, seed and counts."""
    from datasets.synthetic import provenance, write_synthetic_dataset

    paths = {split: root / "annotations" / f"person_keypoints_{split}2017.json" for split in ("train", "val")}
    try:
        train, val = (json.loads(paths[s].read_text()) for s in ("train", "val"))
        same = (all(val["info"].get(k) == v for k, v in provenance(scene).items())
                and val["info"].get("description", "").endswith(f"(seed {seed})")
                and len(val["images"]) == held_out and len(train["images"]) + len(val["images"]) == total)
    except (OSError, ValueError, KeyError):
        same = False
    if not same:
        if root.exists():
            shutil.rmtree(root)
        print(f"writing {total} target images ({held_out} held out) into {root}")
        write_synthetic_dataset(root, total, seed=seed, num_val=held_out, scene=scene)
    return paths


# ---- the oracle over the Workspace API ----------------------------------------------------------------------------

class WorkspaceHands:
    """The oracle's edits (:class:`tools.oracle_annotator.Hands`) as the calls the page's API makes on a
    :class:`Workspace`, on image ``name`` (set by :func:`annotate_batch`)."""

    def __init__(self, workspace: Any):
        self.ws, self.name, self.state = workspace, "", {}

    def open(self, name: str) -> None:
        self.name, self.state = name, self.ws.open(name)

    def shown(self) -> list[dict[str, Any]]:
        """The people the page draws: not deleted, and touched or scored at or above the image's threshold."""
        return [p for p in self.state["people"]
                if not p.get("deleted") and (p.get("touched") or p["score"] >= self.state["threshold"])]

    def delete(self, index: int) -> None:
        self.state = self.ws.delete_person(self.name, index)

    def add(self, box: np.ndarray) -> int:
        before = {p["index"] for p in self.state["people"]}
        self.state = self.ws.add_person(self.name, [float(v) for v in box])
        return next(p["index"] for p in self.state["people"] if p["index"] not in before)

    def place(self, index: int, keypoint: int, target: tuple[float, float]) -> None:
        self.state = self.ws.refine(self.name, [(index, keypoint, target[0], target[1])])

    def set_visibility(self, index: int, keypoint: int, flag: int) -> None:
        self.state = self.ws.set_visibility(self.name, index, keypoint, flag)

    def accept(self) -> None:
        self.ws.accept(self.name)


def annotate_batch(hands: WorkspaceHands, policy: OraclePolicy, coco: Any, infos: Sequence[dict]) -> list[Tally]:
    """One tally per image of ``infos``, annotated in order."""
    tallies = []
    for info in infos:
        hands.open(info["file_name"])
        tallies.append(Tally(image=info["file_name"]))
        policy.annotate(hands, *truth_of(coco, info["id"], len(policy.sigmas)), tallies[-1])
    return tallies


def batch_summary(tallies: Sequence[Tally]) -> dict[str, Any]:
    images, people = max(len(tallies), 1), max(sum(t.people for t in tallies), 1)
    total = {key: sum(getattr(t, key) for t in tallies)
             for key in ("people", "shown", "matched", "placements", "visibility_edits", "deletions", "boxes",
                         "unresolved")}
    clicks = sum(t.actions for t in tallies)
    return {"images": len(tallies), **total, "clicks": clicks, "clicks_per_image": clicks / images,
            "clicks_per_person": clicks / people, "placements_per_image": total["placements"] / images}


# ---- NoC on held-out images ---------------------------------------------------------------------------------------

def evaluate_noc(config: str, checkpoint: Path, data_root: Path, out_dir: Path, options: Sequence[str],
                 device: str) -> dict[str, Any]:
    """main.py's interactive evaluation of ``checkpoint`` on ``data_root``'s val2017; returns noc_results.json's
    summary (NoC@85/90/95, reached@..., num_images, max_clicks)."""
    from tools.demo import run_main

    if out_dir.exists():
        shutil.rmtree(out_dir)
    argv = ["-c", config, "--dataset_file", "coco", "--coco_path", str(data_root), "--output_dir", str(out_dir),
            "--device", device, "--eval", "--num_workers", "0", "--resume", str(checkpoint),
            "--options", "feedback_loop_NOC_test=TRUE", *options]
    run_main(argv)
    return json.loads((out_dir / "noc_results.json").read_text())["summary"]


# ---- the run ------------------------------------------------------------------------------------------------------

def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fine_tune(opts: argparse.Namespace, annotations: Path, pool: Path, start: Path, out: Path) -> dict[str, Any]:
    """``tools.adapt`` on the images done in ``annotations`` (no held-out split: NoC is measured on the target's)."""
    from tools import adapt

    argv = [str(annotations), str(pool), "--config", opts.config, "--checkpoint", str(start), "--out", str(out),
            "--epochs", str(opts.epochs), "--device", opts.device, "--val-fraction", "0", "--seed", str(opts.seed)]
    if opts.lr is not None:
        argv += ["--lr", str(opts.lr)]
    if opts.batch_size is not None:
        argv += ["--batch-size", str(opts.batch_size)]
    if opts.options:
        argv += ["--options", *opts.options]
    return adapt.adapt(adapt.get_parser().parse_args(argv))


def run(opts: argparse.Namespace) -> dict[str, Any]:
    from pycocotools.coco import COCO

    from models.predictor import Predictor
    from tools.annotate.workspace import ModelSource, Workspace
    from util.config import ConfigError, parse_options

    started = time.time()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    source = Path(opts.checkpoint).resolve()
    source_hash = digest(source)
    scene = parse_scene(opts.target_scene)
    paths = prepare_target(out / "data", scene, opts.target_images, opts.held_out, opts.target_seed)
    coco = COCO(str(paths["train"]))
    pool_infos = sorted(coco.dataset["images"], key=lambda i: i["file_name"])
    if len(pool_infos) < opts.rounds * opts.batch:
        raise ConfigError(f"{opts.rounds} rounds of {opts.batch} images need {opts.rounds * opts.batch} pool images, "
                         f"the target has {len(pool_infos)} (--target-images {opts.target_images} - --held-out "
                         f"{opts.held_out}); give more --target-images")
    count = opts.rounds + 1 if len(pool_infos) >= (opts.rounds + 1) * opts.batch else opts.rounds
    batches = [pool_infos[i * opts.batch:(i + 1) * opts.batch] for i in range(count)]
    pool = out / "pool"  # the folder the workspaces annotate: the batches' images
    if pool.exists():
        shutil.rmtree(pool)
    pool.mkdir()
    for info in (info for batch in batches for info in batch):
        shutil.copy(paths["train"].parent.parent / "images" / "train2017" / info["file_name"], pool / info["file_name"])
    options = parse_options(opts.options) if opts.options else {}

    def load(cfg: str, ckpt: str) -> Predictor:
        return Predictor(cfg, ckpt, device=opts.device, options=options)

    def noc(checkpoint: Path, name: str, data_root: Path = paths["val"].parent.parent) -> dict[str, Any]:
        print(f"NoC of {name} on {data_root}")
        return evaluate_noc(opts.config, checkpoint, data_root, out / "noc" / name, opts.options or [], opts.device)

    report: dict[str, Any] = {
        "config": str(Path(opts.config).resolve()), "checkpoint": str(source), "checkpoint_sha256": source_hash,
        "target": {"scene": asdict(scene), "scene_arg": opts.target_scene, "seed": opts.target_seed,
                   "pool_images": len(pool_infos), "held_out": opts.held_out, "data": str(out / "data")},
        "batch": opts.batch, "rounds": opts.rounds, "epochs": opts.epochs, "lr": opts.lr,
        "batch_size": opts.batch_size, "start": opts.start, "options": opts.options or [],
        "oracle": {"threshold": opts.threshold, "tolerance": opts.tolerance, "min_oks": opts.min_oks,
                   "max_placements": opts.max_placements},
        "threads": opts.threads, "device": opts.device,
    }
    report["source_noc"] = noc(source, "source")
    report["in_domain_noc"] = noc(source, "in_domain", Path(opts.in_domain)) if opts.in_domain else None
    if report["in_domain_noc"]:
        inside = report["in_domain_noc"]["NoC@90"]
        report["noc90_ratio_target_to_in_domain"] = report["source_noc"]["NoC@90"] / inside if inside else None

    per_image: dict[str, list] = {"without_adaptation": [], "with_adaptation": []}
    without: list[list[Tally]] = []
    annotations_source = out / "annotations_source.json"
    annotations_source.unlink(missing_ok=True)  # a previous run's file would resume its finished images
    predictor = load(opts.config, str(source))
    policy = OraclePolicy(np.asarray(predictor.metadata.sigmas, dtype=np.float64), opts.tolerance, opts.min_oks,
                          opts.max_placements)
    workspace = Workspace(pool, annotations_source, predictor, threshold=opts.threshold,
                          source=ModelSource(opts.config, source, load))
    try:
        hands = WorkspaceHands(workspace)
        for b, infos in enumerate(batches, start=1):
            print(f"without adaptation: batch {b} ({len(infos)} images)")
            without.append(annotate_batch(hands, policy, coco, infos))
    finally:
        workspace.close()

    annotations = out / "annotations.json"
    annotations.unlink(missing_ok=True)
    workspace = Workspace(pool, annotations, load(opts.config, str(source)), threshold=opts.threshold,
                          source=ModelSource(opts.config, source, load))
    rounds, batch_rows, model, current = [], [], "source", source
    try:
        hands = WorkspaceHands(workspace)
        for b, infos in enumerate(batches, start=1):
            print(f"with adaptation: batch {b} ({len(infos)} images) with the {model} model")
            in_use = workspace.model_info()["checkpoint"]  # what the workspace predicts the batch with
            tallies = annotate_batch(hands, policy, coco, infos)
            batch_rows.append({"batch": b, "images": [i["file_name"] for i in infos],
                               "annotated_before": sum(len(x) for x in batches[:b - 1]), "model": model,
                               "model_checkpoint": in_use,
                               "with_adaptation": batch_summary(tallies),
                               "without_adaptation": batch_summary(without[b - 1])})
            per_image["with_adaptation"] += [asdict(t) | {"batch": b, "clicks": t.actions} for t in tallies]
            per_image["without_adaptation"] += [asdict(t) | {"batch": b, "clicks": t.actions} for t in without[b - 1]]
            if b > opts.rounds:  # the batch after the last round: annotated with the last model, no fine-tuning
                continue
            new = out / f"round{b}" / "checkpoint.pth"
            new.parent.mkdir(parents=True, exist_ok=True)
            start = source if opts.start == "source" else current
            print(f"round {b}: fine-tuning from {start} on {b * opts.batch} images")
            tuned = fine_tune(opts, annotations, pool, start, new)
            workspace.switch_model(new)
            rounds.append({"round": b, "trained_images": tuned["train_images"], "trained_people": tuned["train_people"],
                           "started_from": str(start), "checkpoint": str(new.resolve()),
                           "finetune_seconds": tuned["seconds"], "loss_per_epoch": tuned["loss_per_epoch"],
                           "noc": noc(new, f"round{b}")})
            current, model = new, f"round {b}"
    finally:
        workspace.close()

    if digest(source) != source_hash:
        raise RuntimeError(f"the source checkpoint {source} changed during the run")
    report.update(batches=batch_rows, round_results=rounds, per_image=per_image,
                  annotation_file=str(annotations.resolve()), annotation_file_without=str(annotations_source.resolve()),
                  pool=str(pool.resolve()), seconds=round(time.time() - started, 1))
    report["headline"] = headline(report)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(out / "report.md", report)
    plot(out / "adapt_curve.png", report)
    return report


def _change(before: Optional[float], after: Optional[float]) -> Optional[float]:
    """Relative change after / before - 1 (None when undefined)."""
    return after / before - 1.0 if before and after is not None else None


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The last round against the source model: NoC@90 on the held-out images, and the clicks per image of the
    batch the last round's model annotated (if there was one) against the source model's on the same batch."""
    last = report["round_results"][-1] if report["round_results"] else None
    src = report["source_noc"].get("NoC@90")
    out: dict[str, Any] = {"trained_images": last["trained_images"] if last else 0,
                           "noc90_source": src, "noc90_adapted": last["noc"].get("NoC@90") if last else None}
    out["noc90_change"] = _change(src, out["noc90_adapted"])
    after = [b for b in report["batches"] if b["model"] == f"round {report['rounds']}"]
    if after:
        b = after[0]
        out["next_batch"] = b["batch"]
        out["clicks_per_image_source"] = b["without_adaptation"]["clicks_per_image"]
        out["clicks_per_image_adapted"] = b["with_adaptation"]["clicks_per_image"]
        out["clicks_change"] = _change(out["clicks_per_image_source"], out["clicks_per_image_adapted"])
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:+.0f}%"


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    t = report["target"]
    lines = ["# Adaptation benchmark (`tools/benchmark_adapt.py`)", "",
             f"Source: `{report['checkpoint']}` (config `{report['config']}`). Target: synthetic scene "
             f"`{report['target']['scene_arg']}` ({t['scene']}), seed {t['seed']}, {t['pool_images']} pool images, "
             f"{t['held_out']} held out. Batches of {report['batch']}, {report['rounds']} rounds, "
             f"{report['epochs']} epochs per fine-tuning from the {report['start']} checkpoint, "
             f"{report['threads']} threads on {report['device']}.", "",
             "## Clicks per image", "",
             "Clicks: the oracle's keypoint placements + visibility edits + deletions + boxes (tools/oracle_annotator"
             ".py's policy through the annotation tool's Workspace).", "",
             "| batch | images annotated before | model | clicks/image with adaptation | clicks/image without | "
             "placements/image with | placements/image without | unresolved with / without |",
             "|---|---|---|---|---|---|---|---|"]
    for b in report["batches"]:
        w, s = b["with_adaptation"], b["without_adaptation"]
        lines.append(f"| {b['batch']} | {b['annotated_before']} | {b['model']} | {w['clicks_per_image']:.1f} | "
                     f"{s['clicks_per_image']:.1f} | {w['placements_per_image']:.1f} | {s['placements_per_image']:.1f} "
                     f"| {w['unresolved']} / {s['unresolved']} |")
    lines += ["", "## NoC on the held-out target images", "",
              "| model | trained on | " + " | ".join(NOC_KEYS) + " | fine-tuning s |", "|---|---|" + "---|" * 4]
    src = report["source_noc"]
    lines.append("| source | - | " + " | ".join(_fmt(src.get(k)) for k in NOC_KEYS) + " | - |")
    for r in report["round_results"]:
        lines.append(f"| round {r['round']} | {r['trained_images']} images | "
                     + " | ".join(_fmt(r["noc"].get(k)) for k in NOC_KEYS) + f" | {r['finetune_seconds']:.0f} |")
    h = report["headline"]
    lines += ["", f"After fine-tuning on {h['trained_images']} images: NoC@90 {_fmt(h['noc90_source'])} -> "
              f"{_fmt(h['noc90_adapted'])} ({_pct(h['noc90_change'])})"
              + (f"; clicks per image of the next batch (batch {h['next_batch']}) "
                 f"{h['clicks_per_image_source']:.1f} -> {h['clicks_per_image_adapted']:.1f} "
                 f"({_pct(h['clicks_change'])})" if "next_batch" in h else "") + "."]
    if report.get("in_domain_noc"):
        inside = report["in_domain_noc"]
        lines += ["", f"Source model in domain: NoC@90 {_fmt(inside.get('NoC@90'))} on {inside.get('num_images')} "
                  f"images; target / in-domain = {_fmt(report.get('noc90_ratio_target_to_in_domain'))}."]
    lines += ["", "![clicks per image vs images annotated](adapt_curve.png)", ""]
    path.write_text("\n".join(lines))


def plot(path: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [b["annotated_before"] for b in report["batches"]]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(x, [b["with_adaptation"]["clicks_per_image"] for b in report["batches"]], marker="o",
            label="with adaptation")
    ax.plot(x, [b["without_adaptation"]["clicks_per_image"] for b in report["batches"]], marker="s",
            linestyle="--", label="without adaptation")
    ax.set_xlabel("target images annotated before the batch")
    ax.set_ylabel("clicks per image of the batch")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.benchmark_adapt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True, help="the source model (only read)")
    parser.add_argument("--out", required=True, help="the benchmark's folder")
    parser.add_argument("--target-scene", default="full",
                        help="a scene of datasets.synthetic.SCENES or key=value,... (default full)")
    parser.add_argument("--target-seed", type=int, default=DEFAULT_TARGET_SEED)
    parser.add_argument("--target-images", type=int, default=52, help="target images in all (default 52)")
    parser.add_argument("--held-out", type=int, default=12, help="of them held out for NoC (default 12)")
    parser.add_argument("--batch", type=int, default=10, help="images per batch (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="annotate + fine-tune rounds (default 3)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each fine-tuning (default 10)")
    parser.add_argument("--lr", type=float, default=None, help="fine-tuning lr (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=None, help="fine-tuning batch size (default: the config's)")
    parser.add_argument("--start", choices=("source", "previous"), default="source",
                        help="each round fine-tunes from the source checkpoint (default) or the previous round's, on "
                             "every image done so far")
    parser.add_argument("--seed", type=int, default=42, help="fine-tuning seed")
    parser.add_argument("--threshold", type=float, default=0.2, help="the page's score threshold")
    parser.add_argument("--tolerance", type=float, default=0.05, help="x the true box's diagonal")
    parser.add_argument("--min-oks", type=float, default=0.1)
    parser.add_argument("--max-placements", type=int, default=30)
    parser.add_argument("--in-domain", default=None, metavar="DATA_ROOT",
                        help="also measure the source model's NoC on DATA_ROOT's val2017 (e.g. data_synthetic)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--options", nargs="+", default=None,
                        help="config overrides key=value for every model built (annotation, fine-tuning, NoC)")
    opts = parser.parse_args(argv)
    if opts.batch < 1 or opts.rounds < 1 or opts.epochs < 1 or not 0 < opts.held_out < opts.target_images:
        parser.error("need --batch, --rounds, --epochs >= 1 and 0 < --held-out < --target-images")
    try:
        parse_scene(opts.target_scene)
    except Exception as exc:  # a bad spec: an unknown key or a value that is not a number
        parser.error(f"--target-scene: {exc}")
    return opts


def main(argv: Optional[Sequence[str]] = None) -> int:
    opts = parse_args(argv)
    import torch

    from util.errors import error_message, exit_code

    torch.set_num_threads(opts.threads)
    try:
        report = run(opts)
    except Exception as exc:
        if exit_code(exc) is None:
            raise
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return exit_code(exc)
    h = report["headline"]
    print(Path(opts.out, "report.md").read_text())
    if report.get("in_domain_noc"):
        print(f"NoC@90 target / in-domain (source model): {_fmt(report.get('noc90_ratio_target_to_in_domain'))}")
    print(f"NoC@90 after {h['trained_images']} images: {_pct(h['noc90_change'])}; report: "
          f"{Path(opts.out, 'report.md').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
