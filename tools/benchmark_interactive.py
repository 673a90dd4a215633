"""Benchmark: the full interactive evaluation end to end (model + metrics), ours vs the original, same images.

What a researcher runs to get NoC@85/90/95 and AP after k = 1..17 clicks:
- ours: ONE pass (``engine.evaluate_interactive``: model, 17 click rounds on the cached image state, per-image AP
  of every round for NoC, dataset-level stats of every round, the full evaluator on the reported round) plus the
  report files;
- the original: 3 NoC runs (``feedback_loop_NOC_test``, one per ``NoC_thr``: per image, up to 18 rounds, each
  reloading the GT file and running COCOeval on the image) + 17 AP runs (``feedback_inference`` with
  ``CLICKPOSE_Click_Number`` = k: model, k click rounds, post-process, its CocoEvaluator), each a full pass.

Both use the R50 config (``config/clickpose.cfg.py`` of each code base) with the SAME random weights (ours saved,
loaded into the original with strict=True), on the same preprocessed images of the COCO sample (resized so the
short side is ``--short-side``), on CPU with ``--threads`` threads. The original runs in its own process with its
compiled attention replaced by its pure-PyTorch function (no compiled op on CPU) and no ImageNet download. Random
weights never reach an AP threshold, so every NoC run makes all 17 clicks on every image: the original's worst
case (a trained model stops earlier; see docs/benchmarks.md for the scaling).

    python -m tools.benchmark_interactive --original /path/to/Click-Pose --coco ../shared/data/coco \
        [--images 2] [--short-side 320] [--ap-runs 1 9 17]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tools import harness
from tools.harness import REPO

GT_RELATIVE = "annotations/person_keypoints_val2017.json"


def _our_args(coco_root: str, short_side: int, max_size: int) -> argparse.Namespace:
    from util.config import Config, apply_config_to_args
    cfg = Config.fromfile(REPO / "config" / "clickpose.cfg.py")
    cfg.merge_from_dict({"data_aug_scales": [short_side], "data_aug_max_size": max_size})
    return apply_config_to_args(cfg, argparse.Namespace(dataset_file="coco", coco_path=coco_root, noc_filter=False))


def prepare(coco_root: str, num_images: int, short_side: int, max_size: int, out: Path) -> None:
    """Save the preprocessed images, targets and one set of random weights that both sides use."""
    import torch
    from datasets import build_dataset, get_metadata
    from models import build_model
    torch.manual_seed(0)
    args = _our_args(coco_root, short_side, max_size)
    dataset = build_dataset("val", args)
    items = [dataset[i] for i in range(min(num_images, len(dataset)))]
    model, _, _ = build_model(args, get_metadata(args))
    torch.save({"items": items, "state_dict": model.state_dict()}, out)


# ---------------------------------------------------------------------------------------------- workers
def _ours(spec: dict) -> dict:
    import copy

    import torch

    import engine
    from datasets import get_metadata
    from datasets.evaluation import KeypointEvaluator, PerImageKeypointAP, resolve_max_clicks, write_interactive_report
    from datasets.metadata import COCO_KEYPOINTS
    from models import build_model
    from util.misc import collate_fn

    args = _our_args(spec["coco"], spec["short_side"], spec["max_size"])
    data = torch.load(spec["inputs"], weights_only=False)
    model, _, postprocessors = build_model(args, get_metadata(args))
    model.load_state_dict(data["state_dict"])
    postprocess = copy.copy(postprocessors["pose"])
    postprocess.num_select = args.num_group_refine * args.num_classes
    loader = [collate_fn([item]) for item in data["items"]]
    gt = str(Path(spec["coco"]) / GT_RELATIVE)
    times, cpu_times = [], []
    for _ in range(spec["repeats"]):
        start, start_cpu = time.perf_counter(), time.process_time()
        options = engine.EvalOptions(interactive=True, thresholds=tuple(args.noc_thresholds),
                                     max_clicks=resolve_max_clicks(args.max_clicks, COCO_KEYPOINTS.num_keypoints))
        results = engine.evaluate_interactive(
            model, postprocess, loader, torch.device("cpu"), options,
            round_evaluator=engine.click_round_evaluator(PerImageKeypointAP(gt, sigmas=COCO_KEYPOINTS.sigmas)),
            report_evaluator=KeypointEvaluator(gt, sigmas=COCO_KEYPOINTS.sigmas, log=None), log_fn=lambda _: None)
        with tempfile.TemporaryDirectory() as tmp:
            write_interactive_report(tmp, results, printer=None)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
    return {"seconds": times, "cpu_seconds": cpu_times, "noc": {str(t): c.tolist() for t, c in results.clicks.items()},
            "ap_after_k": [s[0] for s in results.round_stats]}


def _patch_original_imports(root: str) -> None:
    """Without a GPU the original runs its pure-PyTorch attention; its backbone is built without the download."""
    import types

    import torchvision
    stand_in = types.ModuleType("MultiScaleDeformableAttention")
    stand_in.ms_deform_attn_forward = stand_in.ms_deform_attn_backward = None
    sys.modules["MultiScaleDeformableAttention"] = stand_in
    for name in ("resnet50", "resnet101"):
        builder = getattr(torchvision.models, name)
        setattr(torchvision.models, name, lambda *a, _b=builder, pretrained=False, **k: _b(*a, weights=None, **k))
    harness.prefer_checkout(root)
    from models.clickpose.ops.functions.ms_deform_attn_func import ms_deform_attn_core_pytorch
    from models.clickpose.ops.modules import ms_deform_attn

    class PurePyTorch:
        @staticmethod
        def apply(value, shapes, _starts, locations, weights, _step):
            return ms_deform_attn_core_pytorch(value, shapes, locations, weights)
    ms_deform_attn.MSDeformAttnFunction = PurePyTorch


def _original(spec: dict) -> dict:
    import torch
    _patch_original_imports(spec["root"])
    from pycocotools.coco import COCO

    from models.clickpose import clickpose as clickpose_module
    from util.config import Config
    from util.misc import nested_tensor_from_tensor_list

    # its datasets package imports crowdposetools (not needed here): load the evaluator module on its own
    loader = importlib.util.spec_from_file_location("original_coco_eval", Path(spec["root"]) / "datasets" / "coco_eval.py")
    coco_eval = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(coco_eval)
    CocoEvaluator = coco_eval.CocoEvaluator
    cfg = Config.fromfile(Path(spec["root"]) / "config" / "clickpose.cfg.py")._cfg_dict.to_dict()
    args = argparse.Namespace(**cfg)
    args.device, args.num_select = "cpu", 20  # the original's interactive evaluation needs 20 (it fails with more)
    model, _, postprocessors = clickpose_module.build_clickpose(args)
    data = torch.load(spec["inputs"], weights_only=False)
    model.load_state_dict(data["state_dict"], strict=True)
    model.eval()
    os.environ["CLICKPOSE_COCO_PATH"] = spec["coco"]
    with contextlib.redirect_stdout(io.StringIO()):
        base = COCO(str(Path(spec["coco"]) / GT_RELATIVE))

    def one_run() -> tuple[dict, list, float]:
        """One of the original's evaluation runs over the images (its engine.evaluate's work)."""
        start, start_cpu, clicks = time.perf_counter(), time.process_time(), []
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            evaluator = CocoEvaluator(base, ["bbox", "keypoints"], useCats=True)
            for image, target in data["items"]:
                outputs = model(nested_tensor_from_tensor_list([image]), [target])
                clicks.append(outputs.get("click_num"))
                results = postprocessors["pose"](outputs, target["orig_size"][None])
                evaluator.update({int(target["image_id"]): results[0]})
            evaluator.synchronize_between_processes()
            evaluator.accumulate()
            evaluator.summarize()
        times = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu}
        return times, clicks, float(evaluator.coco_eval["keypoints"].stats[0])

    noc, ap_runs = {}, {}
    model.feedback_loop_NOC_test = True
    for threshold in spec["thresholds"]:
        os.environ["NoC_thr"] = str(threshold)
        times, clicks, _ = one_run()
        noc[str(threshold)] = {**times, "clicks": clicks}
    model.feedback_loop_NOC_test, model.feedback_inference = False, True
    for k in spec["ap_runs"]:
        os.environ["CLICKPOSE_Click_Number"] = str(k)
        times, _, ap = one_run()
        ap_runs[str(k)] = {**times, "ap": ap}
    return {"noc": noc, "ap_runs": ap_runs}


def worker(spec: dict) -> None:
    import torch
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    harness.emit(_original(spec) if spec["kind"] == "original" else _ours(spec))


def _run_worker(spec: dict) -> dict:
    try:
        return harness.run_worker("tools.benchmark_interactive", spec, threads=spec["threads"])
    except RuntimeError as error:
        raise SystemExit(f"{spec['kind']} {error}")


def _original_total(orig: dict, max_clicks: int, key: str = "seconds") -> tuple[float, float, float]:
    """(NoC runs, 17 AP runs, total) seconds (``key``: wall 'seconds' or 'cpu_seconds'); AP runs not timed are
    interpolated linearly in k (a run with k clicks costs one model pass + k click rounds + the evaluator)."""
    import numpy as np
    noc_s = sum(run[key] for run in orig["noc"].values())
    ks = np.array([int(k) for k in orig["ap_runs"]], dtype=float)
    secs = np.array([run[key] for run in orig["ap_runs"].values()])
    if ks.size == 1:
        ap_s = float(secs[0]) * max_clicks
    else:
        slope, intercept = np.polyfit(ks, secs, 1)
        ap_s = float(sum(intercept + slope * k for k in range(1, max_clicks + 1)))
    return noc_s, ap_s, noc_s + ap_s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--original", help="root of the original Click-Pose code")
    parser.add_argument("--coco", default=str(REPO.parent / "shared" / "data" / "coco"), help="COCO root (val split)")
    parser.add_argument("--images", type=int, default=2, help="val images used (the same on both sides)")
    parser.add_argument("--short-side", type=int, default=320, help="images resized to this short side")
    parser.add_argument("--max-size", type=int, default=512, help="and at most this long side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes of ours (median reported)")
    parser.add_argument("--ap-runs", type=int, nargs="+", default=list(range(1, 18)),
                        help="the original's AP-after-k runs timed (others interpolated linearly in k)")
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    if not args.original:
        parser.error("--original is required (the original Click-Pose checkout)")
    from datasets.metadata import COCO_KEYPOINTS
    from util.config import Config
    from datasets.evaluation import resolve_max_clicks
    cfg = Config.fromfile(REPO / "config" / "clickpose.cfg.py")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        inputs = tmp / "inputs.pt"
        prepare(args.coco, args.images, args.short_side, args.max_size, inputs)
        common = {"inputs": str(inputs), "coco": str(Path(args.coco).resolve()), "threads": args.threads,
                  "short_side": args.short_side, "max_size": args.max_size, "thresholds": list(cfg.noc_thresholds)}
        ours = _run_worker({**common, "kind": "ours", "repeats": args.repeats})
        orig = _run_worker({**common, "kind": "original", "root": str(Path(args.original).resolve()),
                            "ap_runs": args.ap_runs})
    print(f"{args.images} COCO val images, short side {args.short_side}, R50 (same random weights), "
          f"{args.threads} threads; wall time depends on other jobs, process CPU time much less")
    print(f"ours, one pass (model + 17 rounds + NoC@all + AP@0..17 + full evaluator + report): clicks {ours['noc']}")
    print("original NoC runs: clicks " + ", ".join(f"@{t}: {r['clicks']}" for t, r in orig["noc"].items()))
    for key, label in (("seconds", "wall"), ("cpu_seconds", "process CPU")):
        ours_s = statistics.median(ours[key])
        max_clicks = resolve_max_clicks(cfg.max_clicks, COCO_KEYPOINTS.num_keypoints)  # 17: the original's
        noc_s, ap_s, orig_s = _original_total(orig, max_clicks, key)
        print(f"[{label}] ours {ours_s:.1f} s (runs: {', '.join(f'{s:.1f}' for s in ours[key])}); original: NoC runs "
              + ", ".join(f"{r[key]:.1f}" for r in orig["noc"].values()) + " s; AP runs "
              + ", ".join(f"k={k}: {r[key]:.1f}" for k, r in orig["ap_runs"].items()) + " s")
        print(f"[{label}] original total {noc_s:.1f} s (3 NoC runs) + {ap_s:.1f} s (17 AP runs"
              f"{'' if len(args.ap_runs) == 17 else ', linear in k from the timed ones'}) = {orig_s:.1f} s; "
              f"ratio ours / original {ours_s / orig_s:.4f} (per image: ours {ours_s / args.images:.2f} s, original "
              f"{orig_s / args.images:.1f} s)")


if __name__ == "__main__":
    main()
