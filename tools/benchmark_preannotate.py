"""Pre-annotation throughput against this machine's arithmetic floor, and against a plain Predictor.predict loop.

    python -m tools.benchmark_preannotate [--config config/clickpose.cfg.py] [--checkpoint CKPT] \\
        [--images 3] [--size 800 1333] [--runs 3] [--batch-sizes 1 2] [--dtypes float32 bfloat16] [--device cpu]

In one run, on the same images: the machine's matmul peak (a 2048x2048 fp32 product, best of several, the
threads torch uses; measured before and after every run and the highest taken, so a slow moment does not lower the
floor), the model's FLOPs for one image (torch's FlopCounterMode; the deformable-attention sampling is
not counted, so the floor is optimistic), and the median seconds per image of

- ``predict``: ``Predictor.predict`` one image at a time (the page's path: it also runs one refinement for the
  keypoint confidence);
- ``preannotate bN``: ``Predictor.detect_batch`` in batches of N (tools/preannotate.py's path), per dtype.

The floor is FLOPs / peak; the ratio printed is floor / measured (1.0 = at the machine's limit). bfloat16 runs only
where the CPU has bfloat16 instructions (AVX512-BF16 or AMX) or on CUDA, unless ``--force-dtypes``; its keypoints
are compared with float32's on the same images (max pixel difference of the top person). Untrained weights
(no ``--checkpoint``) do the same arithmetic as trained ones.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def matmul_peak(dtype, device, size: int = 2048, repeats: int = 7) -> float:
    """GFLOP/s of the best of ``repeats`` square products."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up first
            times.append(time.perf_counter() - start)
    return 2 * size ** 3 / min(times) / 1e9


def model_gflop(predictor, image) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    predictor.model.requires_grad_(False)  # the counter's module tracker needs no autograd graph
    with torch.no_grad(), counter:
        predictor.model(predictor._samples([image]))
    return counter.get_total_flops() / 1e9


def seconds_per_image(run, images, batch: int, sync) -> float:
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        run(images[i:i + batch])
    sync()
    return (time.perf_counter() - start) / len(images)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/clickpose.cfg.py")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16",
                                                                                         "float16"])
    parser.add_argument("--force-dtypes", action="store_true", help="run bfloat16 even without hardware support")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--allocator", choices=("keep", "default"), default="keep",
                        help="keep: glibc keeps freed large blocks, as tools/preannotate.py sets it "
                             "(util/allocator.py); default: the C library's own policy")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.allocator == "keep":
        from util.allocator import keep_freed_memory

        keep_freed_memory()

    import numpy as np
    import torch
    from PIL import Image

    from models.predictor import Predictor
    from tools.preannotate import has_bfloat16

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    height, width = args.size
    images = [Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)) for _ in range(args.images)]
    predictor = Predictor(args.config, args.checkpoint, device=args.device)
    dtypes = [d for d in args.dtypes if d == "float32" or args.force_dtypes
              or (d == "bfloat16" and has_bfloat16(args.device)) or (d == "float16" and device.type == "cuda")]
    skipped = sorted(set(args.dtypes) - set(dtypes))

    peaks = [matmul_peak(torch.float32, device)]  # measured again after every run: the highest one counts
    gflop = model_gflop(predictor, images[0])
    methods = {"predict": (lambda batch: [predictor.predict(image) for image in batch], 1)}
    for dtype in dtypes:
        autocast = None if dtype == "float32" else getattr(torch, dtype)
        for batch in args.batch_sizes:
            methods[f"preannotate b{batch} {dtype}"] = (
                lambda chunk, a=autocast: predictor.detect_batch(chunk, autocast_dtype=a), batch)
    for run, batch in methods.values():  # warm-up (allocator, kernels)
        run(images[:batch])
    times: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(args.runs):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))  # alternate: a changing load hits all
        for name in order:
            run, batch = methods[name]
            times[name].append(seconds_per_image(run, images, batch, sync))
        peaks.append(matmul_peak(torch.float32, device))
    peak = max(peaks)
    floor = gflop / peak

    deviation = {}
    if "bfloat16" in dtypes:
        full = predictor.detect_batch(images[:1])[0]
        half = predictor.detect_batch(images[:1], autocast_dtype=torch.bfloat16)[0]
        if full and half:
            deviation["bfloat16 top-person keypoints max |px| vs float32"] = float(
                np.abs(np.asarray(full[0]["keypoints"]) - np.asarray(half[0]["keypoints"])).max())

    baseline = statistics.median(times["predict"])
    print(f"device {args.device}, {torch.get_num_threads()} threads, allocator {args.allocator}, images "
          f"{height}x{width}, {args.images} images x {args.runs} runs")
    print(f"fp32 matmul peak {peak:.1f} GFLOP/s (highest of {len(peaks)}: "
          f"{', '.join(f'{p:.0f}' for p in peaks)}); model {gflop:.1f} GFLOP per image; floor {floor:.2f} s per image")
    print("| method | s per image (median) | images/s | vs predict | floor / measured |")
    print("|---|---|---|---|---|")
    rows = {}
    for name, values in times.items():
        median = statistics.median(values)
        rows[name] = {"seconds_per_image": median, "runs": values}
        print(f"| {name} | {median:.2f} | {1 / median:.3f} | {baseline / median:.2f}x | {floor / median:.2f} |")
    if skipped:
        print(f"not run: {', '.join(skipped)} (no hardware support here; --force-dtypes runs it emulated)")
    for key, value in deviation.items():
        print(f"{key}: {value:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_gflops": peak, "peaks": peaks, "model_gflop": gflop,
                                               "floor_s": floor,
                                               "methods": rows, "skipped": skipped, **deviation}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
