"""CPU training-step time, ours vs a baseline, measured interleaved in the same run.

One training step = forward with targets (denoising queries + the simulated-click feedback loop) + criterion +
backward + gradient clipping + AdamW step, fp32 on CPU, with the same batch for every implementation. The number
of training click rounds is drawn at random each step (P(k) proportional to 1/k^2); here it is fixed
(``--click-rounds``) so that every side does the same work. With two or more round counts the script also
reports the expected step under the training distribution (linear in k between the measured counts).

Each implementation runs in its own worker process (the original's packages are also called ``models`` and
``util``); the parent asks for one step at a time, alternating between workers, and reports medians of wall
time per phase, and of the worker's CPU time (all its threads) per step: on a shared machine the CPU time is
less sensitive to other jobs than the wall time.

Baselines:
- ``--original DIR``: the original Click-Pose code. The worker applies two patches in memory at import time:
  its compiled deformable attention is replaced by its own pure-PyTorch function (``ms_deform_attn_core_pytorch``),
  and torchvision's ResNet builders skip the ImageNet download. Nothing is written to DIR.
- otherwise: ours with ``msda_backend='pytorch'`` (the pure-PyTorch op, as the original uses on CPU); with
  ``--original`` and ``--with-pytorch`` that variant is timed as a third worker.

Inputs: ``--coco DIR`` (a COCO-layout root with annotations/person_keypoints_train2017.json and
images/train2017/) takes the first ``--batch`` training images with their real targets, resized to ``--size``;
without it, random images with synthetic people.

    python -m tools.benchmark_train --coco /path/to/coco --steps 5 [--click-rounds 1 3] [--original DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tools import harness
from tools.harness import REPO

PHASES = ("step", "step_cpu", "forward", "dn_queries", "click_loop", "criterion", "backward", "optimizer")


# ---------------------------------------------------------------------------------------------- inputs
def _load_config(path: Path) -> dict:
    from util.config import Config
    return Config.fromfile(path).to_dict()


def make_inputs(cfg: dict, batch: int, height: int, width: int, coco: str | None, seed: int = 0) -> dict:
    """{'images' (B, 3, H, W), 'mask' (B, H, W) all False, 'targets': list of model-layout dicts}."""
    import torch
    num_keypoints = cfg["num_body_points"]
    if coco:
        from datasets.coco import CocoKeypointDataset
        from datasets.metadata import default_metadata_for_num_keypoints
        from datasets.transforms import Compose, Normalize, RandomResize, ToTensor
        root = Path(coco)
        dataset = CocoKeypointDataset(root / "annotations" / "person_keypoints_train2017.json",
                                      root / "images" / "train2017",
                                      default_metadata_for_num_keypoints(num_keypoints),
                                      transforms=Compose([RandomResize([(height, width)]), ToTensor(), Normalize()]))
        if len(dataset) < batch:
            raise ValueError(f"{root} has {len(dataset)} training images with keypoints; --batch {batch} needs more")
        samples = [dataset[i] for i in range(batch)]
        images = torch.stack([image for image, _ in samples])
        targets = [target for _, target in samples]
    else:
        generator = torch.Generator().manual_seed(seed)
        images = torch.randn(batch, 3, height, width, generator=generator)
        targets = [_synthetic_target(generator, num_keypoints, image_id=i) for i in range(batch)]
    for target in targets:
        target["size"] = torch.tensor([height, width])
    return {"images": images, "mask": torch.zeros(batch, height, width, dtype=torch.bool), "targets": targets}


def _synthetic_target(generator, num_keypoints: int, image_id: int, people: int = 3) -> dict:
    import torch
    centre = 0.25 + 0.5 * torch.rand(people, 2, generator=generator)
    extent = 0.1 + 0.3 * torch.rand(people, 2, generator=generator)
    offsets = (torch.rand(people, num_keypoints, 2, generator=generator) - 0.5) * extent[:, None]
    xy = (centre[:, None] + offsets).reshape(people, -1)
    visible = (torch.rand(people, num_keypoints, generator=generator) < 0.8).float()
    return {"boxes": torch.cat([centre, extent], 1), "labels": torch.ones(people, dtype=torch.int64),
            "keypoints": torch.cat([xy, visible], 1), "area": extent.prod(1) * 0.6,
            "iscrowd": torch.zeros(people, dtype=torch.int64), "image_id": torch.tensor([image_id]),
            "orig_size": torch.tensor([1, 1])}


# ---------------------------------------------------------------------------------------------- workers
class PhaseTimer:
    """Accumulates wall time of wrapped callables per phase (reset every step)."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    def wrap(self, phase: str, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - start
        return timed


def _ours(spec: dict, timer: PhaseTimer):
    """Our model, criterion and optimizer; returns (model, criterion, optimizer, NestedTensor, set_rounds)."""
    from datasets.metadata import default_metadata_for_num_keypoints
    from models import build_model
    from models.clickpose import clickpose as clickpose_module
    from models.optim import build_optimizer

    args = argparse.Namespace(**_load_config(Path(spec["config"])))
    args.human_feedback = True
    args.device = "cpu"
    if spec.get("backend"):
        args.msda_backend = spec["backend"]
    model, criterion, _ = build_model(args, default_metadata_for_num_keypoints(args.num_body_points))
    optimizer = build_optimizer(args, model)
    model._denoising_queries = timer.wrap("dn_queries", model._denoising_queries)
    for name in ("box_stage_dn_mask", "keypoint_stage_dn_mask"):
        setattr(clickpose_module, name, timer.wrap("dn_queries", getattr(clickpose_module, name)))
    model._training_click_layers = timer.wrap("click_loop", model._training_click_layers)

    def set_rounds(rounds: int) -> None:
        model.draw_training_click_rounds = lambda: rounds
        if not hasattr(type(model), "draw_training_click_rounds"):  # branches that still draw inline
            import torch
            clickpose_module.clicked_count_probabilities = \
                lambda k: torch.nn.functional.one_hot(torch.tensor(rounds - 1), k).double()
    from util.misc import NestedTensor
    return model, criterion, optimizer, NestedTensor, set_rounds, args.clip_max_norm


class _FixedLoopRounds:
    """Stands in for the ``random`` module inside the original's model file: the draw of the click-loop round
    count (a ``choices`` call from a helper of ``human_feedback_loop``) returns the fixed count; every other
    draw goes to the real ``random``."""

    def __init__(self, real):
        self._real = real
        self.rounds = 1

    def __getattr__(self, name):
        return getattr(self._real, name)

    def choices(self, *args, **kwargs):
        if sys._getframe(2).f_code.co_name == "human_feedback_loop":
            return [self.rounds]
        return self._real.choices(*args, **kwargs)


def import_original(root: str, device: str = "cpu"):
    """Import the original's model module with the two in-memory patches of the module docstring (its own
    pure-PyTorch deformable attention; no ImageNet download). Returns (its ``models.clickpose.clickpose`` module,
    an args namespace from its ``config/clickpose.cfg.py``). The original's packages shadow ours in this process."""
    import types

    import torchvision

    def unavailable(*_args, **_kwargs):
        raise RuntimeError("compiled MultiScaleDeformableAttention is not used by the benchmark")
    stand_in = types.ModuleType("MultiScaleDeformableAttention")
    stand_in.ms_deform_attn_forward = stand_in.ms_deform_attn_backward = unavailable
    sys.modules["MultiScaleDeformableAttention"] = stand_in
    for name in ("resnet50", "resnet101"):  # random initialisation instead of the ImageNet download
        builder = getattr(torchvision.models, name)
        setattr(torchvision.models, name, lambda *a, _b=builder, pretrained=False, **k: _b(*a, weights=None, **k))
    harness.prefer_checkout(root)
    from models.clickpose import clickpose as clickpose_module
    from models.clickpose.ops.functions.ms_deform_attn_func import ms_deform_attn_core_pytorch
    from models.clickpose.ops.modules import ms_deform_attn as attention_module
    from util.config import Config

    class PurePyTorch:  # the original's own CPU path, autograd through grid_sample
        @staticmethod
        def apply(value, shapes, _starts, locations, weights, _step):
            return ms_deform_attn_core_pytorch(value, shapes, locations, weights)
    attention_module.MSDeformAttnFunction = PurePyTorch
    cfg = Config.fromfile(Path(root) / "config" / "clickpose.cfg.py")._cfg_dict.to_dict()
    args = argparse.Namespace(**cfg)
    args.device = device
    return clickpose_module, args


def _original(spec: dict, timer: PhaseTimer):
    import random

    import torch

    clickpose_module, args = import_original(spec["root"])
    from util.get_param_dicts import get_param_dict
    from util.misc import NestedTensor

    fixed = _FixedLoopRounds(random)
    clickpose_module.random = fixed
    args.human_feedback = True
    model, criterion, _ = clickpose_module.build_clickpose(args)
    optimizer = torch.optim.AdamW(get_param_dict(args, model), lr=args.lr, weight_decay=args.weight_decay)
    model.prepare_for_dn2 = timer.wrap("dn_queries", model.prepare_for_dn2)
    model.human_feedback_loop = timer.wrap("click_loop", model.human_feedback_loop)

    def set_rounds(rounds: int) -> None:
        fixed.rounds = rounds
    return model, criterion, optimizer, NestedTensor, set_rounds, args.clip_max_norm


def worker(spec: dict) -> None:
    """Serve 'rounds' requests on stdin with one JSON line of phase times each."""
    import random

    import numpy as np
    import torch
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    timer = PhaseTimer()
    build = _original if spec["kind"] == "original" else _ours
    model, criterion, optimizer, nested_tensor, set_rounds, clip = build(spec, timer)
    model.train()
    criterion.train()
    inputs = torch.load(spec["inputs"], weights_only=False)
    samples = nested_tensor(inputs["images"], inputs["mask"])
    targets = inputs["targets"]
    weights = criterion.weight_dict

    def step(line: str) -> dict[str, float]:
        set_rounds(int(line))
        timer.totals.clear()
        start, start_cpu = time.perf_counter(), time.process_time()
        outputs = model(samples, targets)
        after_forward = time.perf_counter()
        losses = criterion(outputs, targets)
        total = sum(losses[k] * weights[k] for k in losses if k in weights)
        after_criterion = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        after_backward = time.perf_counter()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        end, end_cpu = time.perf_counter(), time.process_time()
        if not torch.isfinite(total):
            raise RuntimeError(f"non-finite loss {float(total)} in the benchmark step")
        return {"step": end - start, "step_cpu": end_cpu - start_cpu, "forward": after_forward - start,
                "criterion": after_criterion - after_forward, "backward": after_backward - after_criterion,
                "optimizer": end - after_backward, "dn_queries": timer.totals.get("dn_queries", 0.0),
                "click_loop": timer.totals.get("click_loop", 0.0)}
    harness.serve(step)


# ---------------------------------------------------------------------------------------------- parent
def _spawn(spec: dict) -> harness.Worker:
    return harness.Worker("tools.benchmark_train", spec, threads=spec["threads"], name=spec["name"])


def _step(worker_process: harness.Worker, rounds: int) -> dict[str, float]:
    return worker_process.ask(str(rounds))


def expected_rounds(num_keypoints: int) -> float:
    """Mean training click-round count: k in 1..K with P(k) proportional to 1/k^2."""
    weights = [1.0 / k ** 2 for k in range(1, num_keypoints + 1)]
    return sum(k * w for k, w in zip(range(1, num_keypoints + 1), weights)) / sum(weights)


def summarise(times: dict[str, dict[int, list[dict]]], baseline: str, mean_rounds: float) -> dict:
    """Medians per implementation, round count and phase; step ratios to the baseline; expected step."""
    result: dict = {"medians": {}, "ratio": {}, "paired_ratio": {}, "cpu_ratio": {}, "expected_step": {}}
    for name, per_rounds in times.items():
        result["medians"][name] = {
            rounds: {phase: statistics.median(step[phase] for step in steps) for phase in PHASES}
            for rounds, steps in per_rounds.items()}
        counts = sorted(per_rounds)
        if len(counts) >= 2:  # least-squares line through the medians, evaluated at the mean count
            ys = [result["medians"][name][k]["step"] for k in counts]
            mean_k, mean_y = statistics.fmean(counts), statistics.fmean(ys)
            slope = sum((k - mean_k) * (y - mean_y) for k, y in zip(counts, ys)) / \
                sum((k - mean_k) ** 2 for k in counts)
            result["expected_step"][name] = mean_y + slope * (mean_rounds - mean_k)
    for name, per_rounds in times.items():
        if name == baseline:
            continue
        result["ratio"][name] = {k: result["medians"][name][k]["step"] / result["medians"][baseline][k]["step"]
                                 for k in per_rounds}
        result["cpu_ratio"][name] = {
            k: result["medians"][name][k]["step_cpu"] / result["medians"][baseline][k]["step_cpu"] for k in per_rounds}
        result["paired_ratio"][name] = {
            k: harness.paired_ratio([a["step"] for a in per_rounds[k]], [b["step"] for b in times[baseline][k]])
            for k in per_rounds}
        if name in result["expected_step"] and baseline in result["expected_step"]:
            result["ratio"][name]["expected"] = result["expected_step"][name] / result["expected_step"][baseline]
    return result


def print_report(result: dict, names: dict[str, str], baseline: str, header: str, mean_rounds: float) -> None:
    print(header)
    print(f"baseline: {baseline} = {names[baseline]}")
    for name, label in names.items():
        print(f"  {name}: {label}")
    print("| implementation | click rounds | " + " | ".join(f"{p} s" for p in PHASES) + " |")
    print("|---|---|" + "---|" * len(PHASES))
    for name, per_rounds in result["medians"].items():
        for rounds, medians in per_rounds.items():
            print(f"| {name} | {rounds} | " + " | ".join(f"{medians[p]:.3f}" for p in PHASES) + " |")
    for name, ratios in result["ratio"].items():
        for rounds, ratio in ratios.items():
            paired = result["paired_ratio"][name].get(rounds)
            extra = "" if paired is None else \
                f" (median of paired ratios {paired:.3f}; CPU time {result['cpu_ratio'][name][rounds]:.3f})"
            what = f"{rounds} click rounds" if rounds != "expected" else f"expected step (E[k] = {mean_rounds:.2f})"
            print(f"ratio {name} / {baseline}, {what}: {ratio:.3f}{extra}")
    for name, value in result["expected_step"].items():
        print(f"expected step {name} (E[k] = {mean_rounds:.2f}): {value:.3f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "config" / "clickpose.cfg.py"), help="our config file")
    parser.add_argument("--original", default=None, help="root of the original Click-Pose code (baseline)")
    parser.add_argument("--coco", default=None, help="COCO-layout root for real images and targets")
    parser.add_argument("--size", type=int, nargs=2, default=[512, 640], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per implementation and round count")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per implementation first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--click-rounds", type=int, nargs="+", default=[1], metavar="K")
    parser.add_argument("--backend", default=None, help="our msda_backend (default: the config's, i.e. fastest)")
    parser.add_argument("--with-pytorch", action="store_true",
                        help="with --original: also time ours with msda_backend='pytorch' (the op's share of the gain)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.steps < 1 or min(args.click_rounds) < 1:
        parser.error("--steps and --click-rounds must be >= 1")
    import torch
    torch.manual_seed(0)
    cfg = _load_config(Path(args.config))
    if args.original and Path(args.config).resolve() != (REPO / "config" / "clickpose.cfg.py").resolve():
        print("note: the original always runs its own config/clickpose.cfg.py", file=sys.stderr)
    height, width = args.size
    with tempfile.TemporaryDirectory() as tmp:
        inputs_path = Path(tmp) / "inputs.pt"
        inputs = make_inputs(cfg, args.batch, height, width, args.coco)
        torch.save(inputs, inputs_path)
        common = {"threads": args.threads, "inputs": str(inputs_path), "config": str(Path(args.config).resolve())}
        specs = [{**common, "name": "ours", "kind": "ours", "backend": args.backend}]
        names = {"ours": f"this implementation ({args.backend or cfg.get('msda_backend') or 'fastest'} MSDA)"}
        if args.original and args.with_pytorch:
            specs.append({**common, "name": "ours-pytorch", "kind": "ours", "backend": "pytorch"})
            names["ours-pytorch"] = "this implementation, msda_backend='pytorch'"
        if args.original:
            specs.append({**common, "name": "original", "kind": "original", "root": str(Path(args.original).resolve())})
            names["original"] = "original Click-Pose, its pure-PyTorch MSDA, no ImageNet download"
        else:
            specs.append({**common, "name": "ours-pytorch", "kind": "ours", "backend": "pytorch"})
            names["ours-pytorch"] = "this implementation, msda_backend='pytorch' (no original given)"
        baseline = specs[-1]["name"]
        workers = {}
        try:
            for spec in specs:
                workers[spec["name"]] = _spawn(spec)
            for process in workers.values():
                for rounds in args.click_rounds:
                    for _ in range(args.warmup):
                        _step(process, rounds)
            times = {name: {k: [] for k in args.click_rounds} for name in workers}
            for _ in range(args.steps):
                for rounds in args.click_rounds:
                    for name, process in workers.items():
                        times[name][rounds].append(_step(process, rounds))
        finally:
            for worker_process in workers.values():
                worker_process.close()
    mean_rounds = expected_rounds(cfg["num_body_points"])
    result = summarise(times, baseline, mean_rounds)
    people = sum(len(t["boxes"]) for t in inputs["targets"])
    header = (f"training step, CPU fp32, {args.threads} threads, torch {torch.__version__}, config "
              f"{Path(args.config).name}, batch {args.batch} of {height}x{width} "
              f"({'COCO train images' if args.coco else 'synthetic inputs'}, {people} people), "
              f"median of {args.steps} interleaved steps after {args.warmup} warm-up")
    print_report(result, names, baseline, header, mean_rounds)
    if args.json:
        payload = {"header": header, "names": names, "baseline": baseline, "mean_rounds": mean_rounds,
                   "times": times, **result}
        Path(args.json).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
