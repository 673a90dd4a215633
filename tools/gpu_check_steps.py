"""The measurements of ``tools/gpu_check.py``; each step runs alone in a fresh process started by that script.

A step takes the run's sizes (``Sizes``: full 800x1333 on a GPU, small on the CPU) and returns a JSON-able dict:
``summary`` (one line for the report), optional ``tables`` ({title: [row dicts]}) and any raw numbers. Raising
``StepSkipped`` records the step as skipped with its reason; any other exception records it as failed.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from tools.harness import REPO, repeat, run_command

Result = Dict[str, Any]
PAPER_INFERENCE_MS = 48.0  # ED-Pose / Click-Pose R50 at 800x1333 (fp32), the figure to beat
CLICK_TARGET_MS = 10.0
KERNEL_SPEEDUP_TARGET = 10.0
# Half-precision tolerance: max |kernel - fp64 reference| <= HALF_TOLERANCE * max |reference| for the output and
# each gradient, the reference computed in fp64 on the same rounded inputs. 4 units of roundoff of the dtype: the
# kernels accumulate in fp32 and round once.
HALF_TOLERANCE = {"float16": 4 * 2.0 ** -11, "bfloat16": 4 * 2.0 ** -8}
FULL_TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
# Problem size of the accuracy checks: 32 channels (a full CUDA warp), few enough queries that fp32 sums stay small.
ACCURACY_PROBLEM = dict(batch=2, queries=20, heads=4, channels=32, points=4)


class StepSkipped(Exception):
    """The step does not apply here (no GPU, one GPU, kernel not built); its message is the reason."""


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the full GPU sizes, or small ones so the CPU version takes seconds."""

    device: str
    config: str                          # model config, relative to the repository root
    image: Tuple[int, int]               # (H, W) of the model inputs
    runs: int                            # timed repetitions (median reported)
    warmup: int
    msda_levels: Tuple[Tuple[int, int], ...]
    msda_cases: Tuple[str, ...]          # benchmark_msda case:batch specs
    train_steps: int                     # timed training steps per precision, after one warm-up step
    amp_dtype: str                       # autocast dtype of the AMP rows
    accuracy_levels: Tuple[Tuple[int, int], ...]


GPU_SIZES = Sizes(device="cuda", config="config/clickpose.cfg.py", image=(800, 1333), runs=20, warmup=3,
                  msda_levels=((100, 167), (50, 84), (25, 42), (13, 21)),
                  msda_cases=("encoder:1", "encoder:2", "decoder-900:1", "decoder-1800:2"), train_steps=3,
                  amp_dtype="float16", accuracy_levels=((20, 30), (10, 15), (5, 8), (3, 4)))
CPU_SIZES = Sizes(device="cpu", config="config/tiny.cfg.py", image=(160, 192), runs=2, warmup=1,
                  msda_levels=((16, 20), (8, 10), (4, 5), (2, 3)), msda_cases=("encoder:1", "decoder-300:1"),
                  train_steps=1, amp_dtype="bfloat16", accuracy_levels=((6, 8), (3, 4), (2, 2), (1, 1)))


# ------------------------------------------------------------------------------------------------ helpers
def _torch():
    import torch
    return torch


def _sync(device: str) -> None:
    if device == "cuda":
        _torch().cuda.synchronize()


def _median_ms(fn: Callable[[], Any], device: str, runs: int, warmup: int) -> Dict[str, float]:
    times = [t * 1e3 for t in repeat(fn, runs, warmup, sync=lambda: _sync(device))]
    return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3), "runs": runs}


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch = _torch()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> Optional[float]:
    """CUDA max allocated since the last reset; None on the CPU (see tools/benchmark_msda.py for CPU memory)."""
    if device != "cuda":
        return None
    return round(_torch().cuda.max_memory_allocated() / 2 ** 20, 1)


def _autocast(sizes: Sizes, enabled: bool):
    torch = _torch()
    return torch.autocast(device_type=sizes.device, dtype=getattr(torch, sizes.amp_dtype), enabled=enabled)


def _precisions(sizes: Sizes) -> List[Tuple[str, bool]]:
    return [("fp32", False), (f"amp {sizes.amp_dtype}", True)]


def _compiled_backend(device: str) -> str:
    from models.clickpose.ops import _library
    from models.clickpose.ops.function import available_backends
    if device not in available_backends():
        raise StepSkipped(f"no compiled {device.upper()} kernel ({_library.load()[1]}); {_library.BUILD_HINT}")
    return device


def build_model(sizes: Sizes, with_criterion: bool = False):
    """The configured model (random weights: nothing is downloaded) on the run's device; (model, criterion, args)."""
    from datasets import get_metadata
    from models import build_model as build
    from util.config import Config
    args = argparse.Namespace(**Config.fromfile(REPO / sizes.config).to_dict())
    args.device = sizes.device
    args.human_feedback = True
    model, criterion, _ = build(args, get_metadata(args))
    model.to(sizes.device)
    return model, (criterion.to(sizes.device) if with_criterion else None), args


def _images(sizes: Sizes, batch: int = 1):
    torch = _torch()
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, *sizes.image, generator=generator).to(sizes.device)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------ steps
def step_environment(sizes: Sizes) -> Result:
    """GPU(s), driver, CUDA (torch's and the toolkit's), torch and the deformable-attention backends."""
    torch = _torch()
    from models.clickpose.ops.function import available_backends
    env: Result = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
                   "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                   "cuda_available": torch.cuda.is_available(), "gpu_count": torch.cuda.device_count(),
                   "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "msda_backends": available_backends(), "nvcc": _nvcc_version(), "driver": _driver_version()}
    gpus = []
    for index in range(env["gpu_count"]):
        props = torch.cuda.get_device_properties(index)
        gpus.append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                     "memory_gib": round(props.total_memory / 2 ** 30, 1)})
    env["gpus"] = gpus
    where = ", ".join(f"{g['name']} (sm {g['capability']}, {g['memory_gib']} GiB)" for g in gpus) or \
        "no GPU (torch.cuda.is_available() is False)"
    env["summary"] = (f"{where}; driver {env['driver'] or 'n/a'}; torch {env['torch']} (CUDA {env['torch_cuda']}); "
                      f"nvcc {env['nvcc'] or 'not found'}; backends {', '.join(env['msda_backends'])}")
    env["tables"] = {"environment": [{"item": k, "value": str(v)} for k, v in env.items()
                                     if k not in ("gpus", "summary")]}
    return env


def _driver_version() -> Optional[str]:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = run_command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _nvcc_version() -> Optional[str]:
    import importlib.util
    spec = importlib.util.spec_from_file_location("msda_setup", REPO / "models" / "clickpose" / "ops" / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)  # safe: setup() only runs under __main__
    home = setup.find_cuda_home()
    if home is None:
        return None
    try:
        out = run_command([os.path.join(home, "bin", "nvcc"), "--version"], timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release ([\d.]+)", out)
    return f"{found.group(1) if found else '?'} ({home})"


def step_build(sizes: Sizes) -> Result:
    """Compile the CPU + CUDA kernels in place for the visible GPU's architecture."""
    torch = _torch()
    major, minor = torch.cuda.get_device_capability(0)
    arch = f"{major}.{minor}"
    start = time.perf_counter()
    out = run_command([sys.executable, "-m", "models.clickpose.ops.build", "--cuda", "--arch", arch], timeout=3600)
    seconds = round(time.perf_counter() - start, 1)
    if out.returncode != 0:
        raise RuntimeError(f"kernel build failed (exit {out.returncode}) after {seconds} s:\n"
                           f"{_tail(out.stdout, 10)}\n{_tail(out.stderr, 25)}")
    probe = run_command([sys.executable, "-c", "from models.clickpose.ops import _library; m, why = _library.load(); "
                         "print(bool(m and m.with_cuda), why)"], timeout=120)
    if not probe.stdout.startswith("True"):
        raise RuntimeError(f"the build finished but the CUDA kernel does not load: {probe.stdout}{probe.stderr}")
    return {"summary": f"CUDA kernel built for sm {arch} in {seconds} s", "arch": arch, "seconds": seconds}


def step_cuda_tests(sizes: Sizes) -> Result:
    """The deformable-attention test suite, where every CUDA-parametrised test now runs (slow build test left out)."""
    out = run_command([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                       "tests/models/clickpose/ops", "-m", "not slow"], timeout=3600)
    lines = out.stdout.strip().splitlines()
    summary = next((line.strip("= ") for line in reversed(lines) if re.search(r"\d+ (passed|failed|errors?)\b", line)),
                   lines[-1] if lines else "no output")
    # the ops tests' own reasons for leaving out a CUDA case ("needs a CUDA device ...", "... CUDA kernel ...")
    cuda_skips = [line for line in lines if line.startswith("SKIPPED") and ("CUDA device" in line or "CUDA kernel"
                                                                            in line)]
    if out.returncode != 0:
        raise RuntimeError(f"pytest tests/models/clickpose/ops exited {out.returncode}: {summary}\n"
                           f"{_tail(out.stdout, 40)}")
    if cuda_skips:
        raise RuntimeError("CUDA tests were skipped on a CUDA machine:\n" + "\n".join(cuda_skips[:10]))
    return {"summary": f"pytest tests/models/clickpose/ops: {summary}", "pytest_summary": summary}


def _half_errors(backend: str, device: str, dtype_name: str, levels) -> Dict[str, float]:
    """Max |kernel in dtype - fp64 reference| / max |reference| for the output and the three gradients; the
    reference sees the same rounded inputs and output gradient."""
    torch = _torch()
    from models.clickpose.ops import ms_deform_attn
    from models.clickpose.ops.testing import DIFFERENTIABLE, random_inputs
    low = random_inputs(levels, **ACCURACY_PROBLEM, dtype=getattr(torch, dtype_name), device=device)
    grad_seed = torch.Generator().manual_seed(1)
    results = {}
    for name, inputs, chosen in (("kernel", low, backend), ("reference", {
            k: (v.double() if v.is_floating_point() else v) for k, v in low.items()}, "pytorch")):
        leaves = {k: (v.detach().requires_grad_() if k in DIFFERENTIABLE else v) for k, v in inputs.items()}
        out = ms_deform_attn(**leaves, backend=chosen)
        if name == "kernel":
            grad_out = torch.randn(out.shape, generator=grad_seed, dtype=torch.float64).to(out)
        grads = torch.autograd.grad(out, [leaves[k] for k in DIFFERENTIABLE], grad_out.to(out.dtype))
        results[name] = [t.detach().double() for t in (out, *grads)]
    names = ("output", "grad_value", "grad_locations", "grad_weights")
    return {n: float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
            for n, a, b in zip(names, results["kernel"], results["reference"])}


def step_kernel_accuracy(sizes: Sizes) -> Result:
    """The compiled kernel against the pure-PyTorch path: fp64, fp32, fp16/bf16 and gradcheck."""
    torch = _torch()
    from models.clickpose.ops.testing import gradcheck, max_errors, random_inputs
    backend = _compiled_backend(sizes.device)
    rows, failures = [], []
    for dtype_name, tol in FULL_TOLERANCE.items():
        inputs = random_inputs(sizes.accuracy_levels, **ACCURACY_PROBLEM, dtype=getattr(torch, dtype_name),
                               device=sizes.device)
        errors = max_errors(inputs, backend)
        rows.append({"dtype": dtype_name, "measure": "max abs error", "tolerance": tol,
                     **{k: f"{v:.2e}" for k, v in errors.items()}, "ok": max(errors.values()) <= tol})
    for dtype_name, tol in HALF_TOLERANCE.items():
        errors = _half_errors(backend, sizes.device, dtype_name, sizes.accuracy_levels)
        rows.append({"dtype": dtype_name, "measure": "max abs error / max abs reference", "tolerance": f"{tol:.2e}",
                     **{k: f"{v:.2e}" for k, v in errors.items()}, "ok": max(errors.values()) <= tol})
    failures = [row["dtype"] for row in rows if not row["ok"]]
    passed_gradcheck = bool(gradcheck(backend, sizes.device))
    if not passed_gradcheck:
        failures.append("gradcheck")
    result = {"backend": backend, "rows": rows, "gradcheck": passed_gradcheck, "tables": {"kernel vs pure PyTorch":
              rows + [{"dtype": "float64", "measure": "torch.autograd.gradcheck", "ok": passed_gradcheck}]}}
    if failures:
        raise RuntimeError(f"{backend} kernel outside tolerance for {failures}: {rows}")
    result["summary"] = (f"{backend} kernel = pure PyTorch within tolerance in fp64, fp32, fp16, bf16; "
                         "gradcheck passed")
    return result


def step_msda_benchmark(sizes: Sizes) -> Result:
    """tools/benchmark_msda.py's cases: forward and forward+backward time and peak memory per backend."""
    torch = _torch()
    from tools import benchmark_msda as bench
    backends = bench.backends_for(sizes.device)
    dtype = torch.float32
    rows = []
    for spec in sizes.msda_cases:
        case, batch = spec.split(":")
        per_backend = {b: bench.runners(case, b, int(batch), sizes.device, dtype, sizes.msda_levels) for b in backends}
        times: Dict[str, Dict[str, float]] = {b: {} for b in backends}
        for kind in ("forward_ms", "forward_backward_ms"):
            measured = bench.time_interleaved({b: per_backend[b][kind] for b in backends}, sizes.runs)
            for b, ms in measured.items():
                times[b][kind] = ms
        del per_backend
        for b in backends:
            peak = bench.peak_memory_mib(case, b, int(batch), sizes.device, dtype, sizes.msda_levels)
            rows.append({"case": case, "batch": int(batch), "backend": b,
                         "forward_ms": round(times[b]["forward_ms"], 3),
                         "fwd_bwd_ms": round(times[b]["forward_backward_ms"], 3), "peak_mib": round(peak, 1),
                         "fwd_bwd_speedup_vs_pytorch": round(times["pytorch"]["forward_backward_ms"]
                                                             / times[b]["forward_backward_ms"], 2)})
    kernel_rows = [r for r in rows if r["backend"] == sizes.device and r["case"] == "encoder"]
    speedup = min((r["fwd_bwd_speedup_vs_pytorch"] for r in kernel_rows), default=None)
    memory = "CUDA max allocated" if sizes.device == "cuda" else "CPU peak RSS growth in this process (approximate)"
    summary = (f"encoder fwd+bwd: {sizes.device} kernel {speedup}x the pure-PyTorch path (target >= "
               f"{KERNEL_SPEEDUP_TARGET:g}x on a GPU)" if speedup else f"backends {backends}: no compiled kernel")
    original = [r for r in rows if r["backend"] == "original" and r["case"] == "encoder"]
    if original and kernel_rows:
        ratio = kernel_rows[0]["fwd_bwd_ms"] / original[0]["fwd_bwd_ms"]
        summary += f"; vs the original Deformable-DETR kernel: {ratio:.2f} of its fwd+bwd time"
    levels = " + ".join(f"{h}x{w}" for h, w in sizes.msda_levels)
    return {"summary": summary, "rows": rows, "encoder_speedup": speedup, "levels": levels, "memory": memory,
            "tables": {f"deformable attention, fp32, levels {levels}, peak memory = {memory}": rows}}


def step_inference(sizes: Sizes) -> Result:
    """Full-model inference latency (batch 1), fp32 and AMP, median of ``sizes.runs``."""
    torch = _torch()
    model, _, _ = build_model(sizes)
    model.eval()
    images = _images(sizes)
    rows = []
    outputs = {}
    for label, amp in _precisions(sizes):
        def forward(amp=amp):
            with torch.no_grad(), _autocast(sizes, amp):
                return model(images)
        _reset_peak(sizes.device)
        timing = _median_ms(forward, sizes.device, sizes.runs, sizes.warmup)
        outputs[label] = forward()
        finite = all(bool(torch.isfinite(v.float()).all()) for v in outputs[label].values())
        rows.append({"precision": label, **timing, "peak_mib": _peak_mib(sizes.device), "outputs_finite": finite})
    boxes = [o["pred_boxes"].float() for o in outputs.values()]
    drift = float((boxes[0] - boxes[1]).abs().max())
    if not all(row["outputs_finite"] for row in rows):
        raise RuntimeError(f"non-finite model outputs: {rows}")
    size = f"{sizes.image[0]}x{sizes.image[1]}"
    summary = (f"{Path(sizes.config).stem} at {size}: fp32 {rows[0]['median_ms']} ms, {rows[1]['precision']} "
               f"{rows[1]['median_ms']} ms (median of {sizes.runs}; paper: {PAPER_INFERENCE_MS:g} ms fp32)")
    return {"summary": summary, "rows": rows, "amp_max_box_difference": drift,
            "tables": {f"inference, {Path(sizes.config).stem}, batch 1, {size}": rows}}


def step_preannotate(sizes: Sizes) -> Result:
    """Pre-annotation throughput (``Predictor.detect_batch``, tools/preannotate.py's path): images per second at
    batch 1 and 4, fp32 and AMP, on four images of the run's size (random weights and pixels; two on the CPU)."""
    torch = _torch()
    import numpy as np
    from PIL import Image

    from models.predictor import Predictor
    from tools.preannotate import has_bfloat16

    predictor = Predictor(REPO / sizes.config, None, device=sizes.device)
    # emulated bfloat16 (a CPU without AVX512-BF16/AMX) is many times slower than fp32: not a number worth a row
    precisions = [(label, amp) for label, amp in _precisions(sizes)
                  if not amp or sizes.amp_dtype != "bfloat16" or has_bfloat16(sizes.device)]
    rng = np.random.default_rng(0)
    height, width = sizes.image
    count = 4 if sizes.device == "cuda" else 2  # the CPU version is a smoke run (bfloat16 emulated there)
    images = [Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)) for _ in range(count)]
    rows = []
    for label, amp in precisions:
        dtype = getattr(torch, sizes.amp_dtype) if amp else None
        for batch in (1, count):
            def run(batch=batch, dtype=dtype):
                return [predictor.detect_batch(images[i:i + batch], autocast_dtype=dtype)
                        for i in range(0, len(images), batch)]
            timing = _median_ms(run, sizes.device, sizes.runs, sizes.warmup)
            per_image = timing["median_ms"] / len(images)
            rows.append({"precision": label, "batch": batch, "ms_per_image": round(per_image, 2),
                         "images_per_s": round(1e3 / per_image, 2)})
    best = max(rows, key=lambda row: row["images_per_s"])
    summary = (f"{Path(sizes.config).stem} at {height}x{width}: fp32 batch 1 {rows[0]['images_per_s']} images/s; "
               f"best {best['images_per_s']} images/s ({best['precision']}, batch {best['batch']})"
               + ("" if len(precisions) > 1 else f"; no {sizes.amp_dtype} row: this device only emulates it"))
    return {"summary": summary, "rows": rows,
            "tables": {f"pre-annotation, {Path(sizes.config).stem}, {height}x{width}": rows}}


def _top_people(outputs: Dict[str, Any], num_keypoints: int, count: int):
    """Boxes (B, R, 4) and keypoints (B, R, K, 2) of the ``count`` highest-scoring predictions."""
    torch = _torch()
    scores = outputs["pred_logits"].sigmoid().amax(-1)
    index = scores.topk(count, dim=1).indices
    boxes = torch.gather(outputs["pred_boxes"], 1, index[..., None].expand(-1, -1, 4))
    coords = outputs["pred_keypoints"][..., :2 * num_keypoints]  # layout [x1, y1, ..., xK, yK, v1, ..., vK]
    coords = torch.gather(coords, 1, index[..., None].expand(-1, -1, coords.shape[-1]))
    return boxes, coords.unflatten(-1, (num_keypoints, 2))


def step_click(sizes: Sizes) -> Result:
    """Latency of one click round (``model.refine`` of the top predictions on the cached image state)."""
    torch = _torch()
    model, _, args = build_model(sizes)
    model.eval()
    images = _images(sizes)
    people = int(args.num_group_refine)
    rows = []
    for label, amp in _precisions(sizes):
        with torch.no_grad(), _autocast(sizes, amp):
            outputs, state = model(images, return_state=True)
            boxes, keypoints = _top_people(outputs, model.num_keypoints, people)
            person = torch.arange(people, device=sizes.device)
            joint = person % model.num_keypoints
            target = (keypoints[0, person, joint] + 0.01).clamp(0, 1).float()
            clicks = [torch.cat((person[:, None].float(), joint[:, None].float(), target), 1)]

        def click(amp=amp, boxes=boxes, keypoints=keypoints, clicks=clicks, state=state):
            with torch.no_grad(), _autocast(sizes, amp):
                return model.refine(state, boxes, keypoints, clicks)
        _reset_peak(sizes.device)
        timing = _median_ms(click, sizes.device, sizes.runs, sizes.warmup)
        last = click().layers[-1]["pred_keypoints"]
        rows.append({"precision": label, "people": people, **timing, "peak_mib": _peak_mib(sizes.device),
                     "outputs_finite": bool(torch.isfinite(last.float()).all())})
    if not all(row["outputs_finite"] for row in rows):
        raise RuntimeError(f"non-finite refinement outputs: {rows}")
    summary = (f"one click round ({people} people refined): fp32 {rows[0]['median_ms']} ms, {rows[1]['precision']} "
               f"{rows[1]['median_ms']} ms (target < {CLICK_TARGET_MS:g} ms on a GPU)")
    return {"summary": summary, "rows": rows, "tables": {"click refinement on the cached state": rows}}


def step_train(sizes: Sizes) -> Result:
    """Training steps through ``engine.train_one_epoch`` (batch 2, denoising + one simulated click round),
    fp32 and AMP (GradScaler for fp16), on synthetic people."""
    torch = _torch()
    import engine
    from tools.benchmark_train import make_inputs
    from util.misc import NestedTensor
    from models.optim import build_optimizer
    model, criterion, args = build_model(sizes, with_criterion=True)
    model.draw_training_click_rounds = lambda: 1  # the most frequent draw; fixed so both precisions do equal work
    optimizer = build_optimizer(args, model)
    batch = make_inputs(vars(args), 2, *sizes.image, coco=None)
    samples = NestedTensor(batch["images"], batch["mask"])
    rows = []
    for label, amp in _precisions(sizes):
        dtype = getattr(torch, sizes.amp_dtype)
        scaler = torch.amp.GradScaler(sizes.device, enabled=amp and dtype == torch.float16)

        def steps(count: int, amp=amp, dtype=dtype, scaler=scaler) -> Dict[str, float]:
            return engine.train_one_epoch(model, criterion, [(samples, batch["targets"])] * count, optimizer,
                                          torch.device(sizes.device), 0, args.clip_max_norm,
                                          step=engine.StepOptions(amp=amp, amp_dtype=dtype, scaler=scaler),
                                          log_fn=lambda _: None)
        steps(1)  # warm-up (allocator, cuDNN autotuning)
        _reset_peak(sizes.device)
        start = time.perf_counter()
        stats = steps(sizes.train_steps)
        _sync(sizes.device)
        step_ms = (time.perf_counter() - start) * 1e3 / sizes.train_steps
        rows.append({"precision": label, "batch": 2, "step_ms": round(step_ms, 1), "steps": sizes.train_steps,
                     "loss": round(stats["loss"], 4), "peak_mib": _peak_mib(sizes.device),
                     "grad_scaler": scaler.is_enabled()})
    size = f"{sizes.image[0]}x{sizes.image[1]}"
    summary = f"training step, batch 2 at {size}: " + ", ".join(f"{r['precision']} {r['step_ms']} ms" for r in rows)
    return {"summary": summary, "rows": rows,
            "tables": {f"training step, {Path(sizes.config).stem}, batch 2, {size}": rows}}


def step_nccl(sizes: Sizes) -> Result:
    """Two processes of main.py under torchrun with NCCL: one epoch of 2 iterations on a tiny synthetic set."""
    torch = _torch()
    if sizes.device != "cuda" or torch.cuda.device_count() < 2:
        raise StepSkipped(f"needs 2 GPUs; {torch.cuda.device_count()} visible")
    from datasets.synthetic import write_synthetic_dataset
    with tempfile.TemporaryDirectory(prefix="clickpose_nccl_") as tmp:
        write_synthetic_dataset(Path(tmp) / "data", 8, seed=3, num_val=4)
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port",
                   str(_free_port()), "main.py", "-c", "config/demo.cfg.py", "--coco_path", str(Path(tmp) / "data"),
                   "--output_dir", str(Path(tmp) / "run"), "--device", "cuda", "--num_workers", "0", "--options",
                   "epochs=1", "batch_size=1", "num_queries=100", "dn_number=4", "num_group=8",
                   "num_group_refine=4", "num_select=8"]
        start = time.perf_counter()
        out = run_command(command, timeout=3600, env={"OMP_NUM_THREADS": "1"})
        seconds = round(time.perf_counter() - start, 1)
    text = out.stdout + out.stderr
    if out.returncode != 0 or "backend nccl" not in text or "[1/2]" not in text:
        raise RuntimeError(f"torchrun exited {out.returncode} after {seconds} s (expected NCCL init and 2 "
                           f"iterations per rank):\n{_tail(out.stdout, 20)}\n{_tail(out.stderr, 20)}")
    return {"summary": f"2 processes x 2 iterations with NCCL: ok in {seconds} s", "seconds": seconds}


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STEPS: Dict[str, Callable[[Sizes], Result]] = {
    "environment": step_environment, "build": step_build, "cuda_tests": step_cuda_tests,
    "kernel_accuracy": step_kernel_accuracy, "msda_benchmark": step_msda_benchmark, "inference": step_inference,
    "preannotate": step_preannotate, "click": step_click, "train_step": step_train, "nccl": step_nccl,
}
