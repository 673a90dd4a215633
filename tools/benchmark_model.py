"""Model-only eval forward time on CPU, ours vs a baseline, measured interleaved in the same run.

Each implementation runs in its own worker process (the reference's packages are also called ``models`` and
``util``); the parent asks them for one forward at a time, alternating, and reports medians. This keeps the
comparison fair on a machine whose load changes.

Baselines:
- ``--reference-root DIR``: the original Click-Pose code (a checkout of IDEA-Research/Click-Pose). Its compiled
  deformable-attention module is replaced by the same pure-PyTorch function our 'pytorch' backend uses and the
  ImageNet download is skipped, so both sides do the same arithmetic.
- otherwise: this implementation with ``msda_backend='pytorch'`` and full masked self-attention in the keypoint
  layers (i.e. without the compiled op and without grouped attention).

    python -m tools.benchmark_model --size 512 640 --runs 7 [--reference-root /path/to/Click-Pose]
    python -m tools.benchmark_model --backbone swin_T_224_1k ...     # any backbone name, e.g. the Swin rows

``--checkpoint-memory`` instead measures one training step (forward with targets, criterion, backward) with and
without ``use_checkpoint`` (activation checkpointing of the backbone stages), each in a fresh process: the peak
resident memory of the process (CPU) or the peak CUDA allocation (``--device cuda``), and the step time.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
from pathlib import Path

from tools import harness
from tools.harness import REPO


# ---------------------------------------------------------------------------------------------- workers
def _our_config(path: Path) -> dict:
    try:
        from util.config import Config
        return Config.fromfile(path).to_dict()
    except ImportError:  # branches without the config module: plain execution of the config files
        import runpy
        values = runpy.run_path(str(path))
        merged: dict = {}
        for base in values.get("_base_", []):
            merged.update(_our_config(path.parent / base))
        merged.update({k: v for k, v in values.items() if not k.startswith("_")})
        return merged


def _inputs(height: int, width: int):
    import torch
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, height, width, generator=generator)
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]]), "labels": torch.ones(1, dtype=torch.long),
              "keypoints": torch.rand(1, 51, generator=generator), "area": torch.tensor([0.05])}
    return images, mask, [target]


def _ours_forward(height: int, width: int, backend: str | None, grouped: bool, backbone: str | None = None):
    import torch
    from models.clickpose import decoder as decoder_module
    from datasets.metadata import default_metadata_for_num_keypoints
    from models.clickpose.build import build_clickpose
    from util.misc import NestedTensor

    args = argparse.Namespace(**_our_config(REPO / "config" / "clickpose.cfg.py"))
    args.msda_backend = backend
    args.backbone = backbone or args.backbone
    model = build_clickpose(args, default_metadata_for_num_keypoints(args.num_body_points)).eval()
    if not grouped:  # baseline: the keypoint layers attend through the full block mask
        from models.clickpose.queries import expand_to_heads, group_block_mask
        run = decoder_module.Decoder.run_keypoint_layers

        def masked(self, output, refs, state, attn_mask=None, pin=None):
            if attn_mask is None:
                size = self.num_keypoints + 1
                block = group_block_mask(output.shape[1] // size, size, output.device)
                attn_mask = expand_to_heads(block[None].expand(output.shape[0], -1, -1), self.nheads)
            return run(self, output, refs, state, attn_mask, pin)
        decoder_module.Decoder.run_keypoint_layers = masked
    images, mask, _ = _inputs(height, width)
    samples = NestedTensor(images, mask)

    def forward():
        with torch.inference_mode():
            model(samples)
    return forward


def _reference_forward(height: int, width: int, root: str, backbone: str | None = None):
    import os
    import tempfile
    import types

    import torch
    import torchvision
    # our pure-PyTorch op, loaded from its file: in this process ``models`` is the original's package
    loader = importlib.util.spec_from_file_location("clickpose_msda_reference",
                                                    REPO / "models" / "clickpose" / "ops" / "reference.py")
    reference = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(reference)
    ms_deform_attn_reference = reference.ms_deform_attn_reference
    harness.prefer_checkout(root)

    shim = types.ModuleType("MultiScaleDeformableAttention")
    shim.ms_deform_attn_forward = lambda value, shapes, starts, locations, weights, step: \
        ms_deform_attn_reference(value, shapes, locations, weights)
    sys.modules["MultiScaleDeformableAttention"] = shim
    for name in ("resnet50", "resnet101"):  # no ImageNet download
        builder = getattr(torchvision.models, name)
        setattr(torchvision.models, name, lambda *a, _b=builder, pretrained=False, **k: _b(*a, weights=None, **k))
    from models.clickpose.clickpose import build_clickpose
    from util.config import Config
    from util.misc import NestedTensor

    args = argparse.Namespace(**Config.fromfile(Path(root) / "config" / "clickpose.cfg.py")._cfg_dict.to_dict())
    args.device = "cpu"
    args.backbone = backbone or args.backbone
    if args.backbone.startswith("swin"):  # it reads ImageNet weights from $pretrain_model_path: give it empty files
        folder = tempfile.mkdtemp()
        for name in ("swin_tiny_patch4_window7_224.pth", "swin_base_patch4_window12_384.pth",
                     "swin_large_patch4_window12_384_22k.pth"):
            torch.save({"model": {}}, os.path.join(folder, name))
        os.environ["pretrain_model_path"] = folder
    model = build_clickpose(args)[0]
    model.eval()  # (its Swin's train() returns None, so no chaining)
    images, mask, targets = _inputs(height, width)
    samples = NestedTensor(images, mask)

    def forward():
        with torch.inference_mode():
            model(samples, targets)  # the reference builds its eval mask from the targets
    return forward


def _training_step_memory(spec: dict) -> dict:
    """One training step of our model; peak memory of this process (fresh per measurement) and the step time."""
    import resource

    import torch
    from datasets.metadata import default_metadata_for_num_keypoints
    from models import build_model
    from tools.benchmark_train import make_inputs
    from util.misc import NestedTensor

    cfg = _our_config(REPO / "config" / "clickpose.cfg.py")
    cfg.update(backbone=spec["backbone"] or cfg["backbone"], use_checkpoint=spec["use_checkpoint"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model, criterion, _ = build_model(argparse.Namespace(**cfg), default_metadata_for_num_keypoints(
        cfg["num_body_points"]))
    model.to(device).train()
    inputs = make_inputs(cfg, spec["batch"], *spec["size"], coco=None)
    samples = NestedTensor(inputs["images"], inputs["mask"]).to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in inputs["targets"]]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = criterion(model(samples, targets), targets)
    sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    grad = sum(float(p.grad.double().abs().sum()) for p in model.parameters() if p.grad is not None)
    return {"peak_mb": peak, "step_s": time.perf_counter() - start, "grad_abs_sum": grad}


def checkpoint_memory(args: argparse.Namespace) -> None:
    results = {}
    for use_checkpoint in (False, True):
        spec = {"kind": "train_memory", "threads": args.threads, "size": args.size, "batch": args.batch,
                "backbone": args.backbone, "use_checkpoint": use_checkpoint, "device": args.device}
        results[use_checkpoint] = harness.run_worker("tools.benchmark_model", spec, threads=args.threads)
    off, on = results[False], results[True]
    what = "peak CUDA allocation" if args.device.startswith("cuda") else "peak process RSS"
    print(f"one training step, {args.backbone or 'config backbone'}, batch {args.batch} of "
          f"{args.size[0]}x{args.size[1]}, {args.device}, {args.threads} threads: {what}")
    print(f"  use_checkpoint=False: {off['peak_mb']:.0f} MiB, step {off['step_s']:.2f} s")
    print(f"  use_checkpoint=True:  {on['peak_mb']:.0f} MiB, step {on['step_s']:.2f} s")
    print(f"  saving {off['peak_mb'] - on['peak_mb']:.0f} MiB ({1 - on['peak_mb'] / off['peak_mb']:.1%}); "
          f"sum |grad| relative difference {abs(on['grad_abs_sum'] / off['grad_abs_sum'] - 1):.1e}")


def worker(spec: dict) -> None:
    import torch
    torch.set_num_threads(spec["threads"])
    height, width = spec["size"]
    if spec["kind"] == "train_memory":
        harness.emit(_training_step_memory(spec))
        return
    with contextlib.redirect_stdout(sys.stderr):  # the original prints on build: keep it off the protocol
        if spec["kind"] == "reference":
            forward = _reference_forward(height, width, spec["root"], spec.get("backbone"))
        else:
            forward = _ours_forward(height, width, spec.get("backend"), spec.get("grouped", True),
                                    spec.get("backbone"))
        forward()  # warm-up
    harness.serve(lambda _request: harness.timed(forward)[0])


# ---------------------------------------------------------------------------------------------- parent
def _spawn(spec: dict) -> harness.Worker:
    return harness.Worker("tools.benchmark_model", spec, threads=spec["threads"], name=spec["kind"])


def summarise(times: dict[str, list[float]]) -> dict:
    """Median seconds of each side, the ratio of the medians and the median of the interleaved pairs' ratios."""
    med = harness.medians(times)
    return {"median_s": med, "ratio": med["ours"] / med["baseline"],
            "paired_ratio": harness.paired_ratio(times["ours"], times["baseline"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=[512, 640], metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default=None, help="our msda_backend (default: fastest available)")
    parser.add_argument("--reference-root", default=None, help="checkout of the original Click-Pose code")
    parser.add_argument("--backbone", default=None, help="backbone name (default: the config's resnet50)")
    parser.add_argument("--checkpoint-memory", action="store_true",
                        help="measure a training step with and without use_checkpoint instead")
    parser.add_argument("--batch", type=int, default=1, help="images per training step (--checkpoint-memory)")
    parser.add_argument("--device", default="cpu", help="device of the training step (--checkpoint-memory)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.checkpoint_memory:
        checkpoint_memory(args)
        return
    common = {"size": args.size, "threads": args.threads, "backbone": args.backbone}
    ours = {**common, "kind": "ours", "backend": args.backend}
    if args.reference_root:
        baseline = {**common, "kind": "reference", "root": str(Path(args.reference_root).resolve())}
        baseline_name = "original Click-Pose (pure-PyTorch MSDA)"
    else:
        baseline = {**common, "kind": "ours", "backend": "pytorch", "grouped": False}
        baseline_name = "ours, pure-PyTorch MSDA, masked keypoint attention"
    workers: dict[str, harness.Worker] = {}
    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    try:
        workers["ours"], workers["baseline"] = _spawn(ours), _spawn(baseline)
        for _ in range(args.runs):
            for name, worker_process in workers.items():
                times[name].append(worker_process.ask("go"))
    finally:
        for worker_process in workers.values():
            worker_process.close()
    result = summarise(times)
    med = result["median_s"]
    print(f"model-only eval forward ({args.backbone or 'resnet50'}), CPU, {args.threads} threads, 1 image "
          f"{args.size[0]}x{args.size[1]}, "
          f"median of {args.runs} interleaved runs")
    print(f"  ours ({args.backend or 'auto'} MSDA): {med['ours']:.3f} s   {['%.2f' % t for t in times['ours']]}")
    print(f"  baseline [{baseline_name}]: {med['baseline']:.3f} s   {['%.2f' % t for t in times['baseline']]}")
    print(f"  ratio ours / baseline: {result['ratio']:.3f} (of medians), "
          f"{result['paired_ratio']:.3f} (median of the interleaved pairs' ratios)")


if __name__ == "__main__":
    main()
