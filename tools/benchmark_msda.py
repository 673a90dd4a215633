"""Benchmark multi-scale deformable attention backends on the shapes of an 800x1333 image.

Cases: the encoder (every token queries the 4 levels: 100x167, 50x84, 25x42, 13x21 = 22,223 tokens) and the
decoder (900 queries per image, 1800 with the denoising/feedback groups), 8 heads x 32 channels, 4 levels,
4 points. For each available backend: median forward time (no autograd), median forward+backward time, and peak
memory of forward+backward (CUDA: max allocated; CPU: peak resident-set growth, measured in a fresh process per
backend). Backends alternate within each repetition; ratios are against the pure-PyTorch path of the same run.

    python -m tools.benchmark_msda                      # CPU, few repetitions (a couple of minutes on 2 cores)
    python -m tools.benchmark_msda --device cuda --reps 20
If the original Deformable-DETR extension (module `MultiScaleDeformableAttention`) is importable, it is timed too
as backend 'original' (CUDA only).
"""
from __future__ import annotations

import argparse
import json
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from models.clickpose.ops.function import available_backends, ms_deform_attn
from tools import harness

LEVELS = [(100, 167), (50, 84), (25, 42), (13, 21)]
HEADS, CHANNELS, POINTS = 8, 32, 4


def make_inputs(case: str, batch: int, device: str, dtype: torch.dtype, seed: int = 0,
                levels: Sequence[Tuple[int, int]] = LEVELS) -> Dict[str, torch.Tensor]:
    """Realistic sampling pattern: points a few cells around each query's reference point."""
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.long)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    if case == "encoder":  # reference point = the query's own cell centre
        refs = torch.cat([torch.stack(torch.meshgrid((torch.arange(w) + 0.5) / w, (torch.arange(h) + 0.5) / h,
                                                     indexing="xy"), -1).reshape(-1, 2) for h, w in levels])
        refs = refs.expand(batch, -1, -1)
    else:
        refs = torch.rand(batch, int(case.split("-")[1]), 2, generator=gen)
    queries = refs.shape[1]
    cells = torch.randn(batch, queries, HEADS, len(levels), POINTS, 2, generator=gen) * 2.0
    normalizer = shapes.flip(-1).to(torch.float32)  # (W, H)
    locations = refs[:, :, None, None, None, :] + cells / normalizer[:, None, :]
    logits = torch.randn(batch, queries, HEADS, len(levels) * POINTS, generator=gen)
    weights = logits.softmax(-1).view(batch, queries, HEADS, len(levels), POINTS)
    value = torch.randn(batch, int(sizes.sum()), HEADS, CHANNELS, generator=gen)
    as_dev = dict(device=device, dtype=dtype)
    return dict(value=value.to(**as_dev), spatial_shapes=shapes.to(device), level_start_index=starts.to(device),
                sampling_locations=locations.to(**as_dev), attention_weights=weights.to(**as_dev))


def original_op() -> Callable:
    """The original Deformable-DETR extension behind an autograd function (only when it is installed)."""
    import MultiScaleDeformableAttention as original  # noqa: N813

    class Original(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value, shapes, starts, locations, weights):
            ctx.save_for_backward(value, shapes, starts, locations, weights)
            return original.ms_deform_attn_forward(value, shapes, starts, locations, weights, 64)

        @staticmethod
        def backward(ctx, grad):
            grads = original.ms_deform_attn_backward(*ctx.saved_tensors, grad.contiguous(), 64)
            return grads[0], None, None, grads[1], grads[2]

    return lambda value, spatial_shapes, level_start_index, sampling_locations, attention_weights: Original.apply(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


def op_for(backend: str) -> Callable:
    if backend == "original":
        return original_op()
    return lambda **kw: ms_deform_attn(**kw, backend=backend)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process. Not getrusage's ru_maxrss: that survives exec, so a child
    started by a large parent would report the parent's size."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def runners(case: str, backend: str, batch: int, device: str, dtype: torch.dtype,
            levels: Sequence[Tuple[int, int]] = LEVELS) -> Dict[str, Callable]:
    """Closures running the op forward (no autograd) and forward+backward on fixed inputs."""
    inputs = make_inputs(case, batch, device, dtype, levels=levels)
    op = op_for(backend)
    differentiable = ("value", "sampling_locations", "attention_weights")

    def forward() -> None:
        with torch.no_grad():
            op(**inputs)
        sync(device)

    def forward_backward() -> None:
        leaves = {k: (v.detach().requires_grad_() if k in differentiable else v) for k, v in inputs.items()}
        out = op(**leaves)
        out.backward(torch.ones_like(out))
        sync(device)

    return {"forward_ms": forward, "forward_backward_ms": forward_backward}


def peak_memory_mib(case: str, backend: str, batch: int, device: str, dtype: torch.dtype,
                    levels: Sequence[Tuple[int, int]] = LEVELS) -> float:
    """Extra memory of one forward+backward: CUDA max allocated, or CPU peak RSS growth (call in a fresh process)."""
    run = runners(case, backend, batch, device, dtype, levels)["forward_backward_ms"]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:  # reset the peak to the current size (Linux >= 4.0), so input creation does not count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base = rss_bytes("VmRSS")
    run()
    return (rss_bytes("VmHWM") - base) / 2**20


def time_interleaved(fns: Dict[str, Callable], reps: int) -> Dict[str, float]:
    """Median milliseconds per backend; backends alternate within each repetition so load drift hits all alike."""
    return harness.medians(harness.interleaved(fns, reps, warmup=1), 1e3)


def backends_for(device: str) -> List[str]:
    names = [b for b in available_backends() if b == "pytorch" or b == device]
    if device == "cuda":
        try:
            import MultiScaleDeformableAttention  # noqa: F401
            names.append("original")
        except ImportError:
            pass
    return names


def cpu_peak_memory_mib(case: str, backend: str, batch: int, dtype: str) -> float:
    """``peak_memory_mib`` on the CPU in a fresh process (RSS growth measured alone)."""
    spec = {"case": case, "backend": backend, "batch": batch, "dtype": dtype}
    return float(harness.run_worker("tools.benchmark_msda", spec))


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--cases", default="encoder:1,encoder:2,decoder-900:1,decoder-1800:2",
                        help="comma-separated case:batch list; cases: encoder, decoder-<queries>")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    reps = args.reps or (3 if args.device == "cpu" else 20)
    if args.worker:  # CPU peak memory of one (case, batch, backend), alone in this process
        spec = json.loads(args.worker)
        dtype = getattr(torch, spec["dtype"])
        harness.emit(peak_memory_mib(spec["case"], spec["backend"], spec["batch"], "cpu", dtype))
        return
    backends = backends_for(args.device)
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} reps={reps} "
          f"backends={backends} torch={torch.__version__}")
    print("| case | batch | backend | forward ms | fwd+bwd ms | peak MiB | forward / pytorch | fwd+bwd / pytorch |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.cases.split(","):
        case, batch = spec.split(":")
        per_backend = {b: runners(case, b, int(batch), args.device, dtype) for b in backends}
        rows: Dict[str, Dict[str, float]] = {b: {} for b in backends}
        for kind in ("forward_ms", "forward_backward_ms"):
            for b, ms in time_interleaved({b: per_backend[b][kind] for b in backends}, reps).items():
                rows[b][kind] = ms
        del per_backend
        for b in backends:
            if args.device == "cpu":
                rows[b]["peak_mib"] = cpu_peak_memory_mib(case, b, int(batch), args.dtype)
            else:
                rows[b]["peak_mib"] = peak_memory_mib(case, b, int(batch), args.device, dtype)
        base = rows["pytorch"]
        for b, r in rows.items():
            print(f"| {case} | {batch} | {b} | {r['forward_ms']:.1f} | {r['forward_backward_ms']:.1f} "
                  f"| {r['peak_mib']:.0f} | {r['forward_ms'] / base['forward_ms']:.3f} "
                  f"| {r['forward_backward_ms'] / base['forward_backward_ms']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
