"""Interactive latency: the first prediction of an image and one click, ours cached vs uncached vs the original.

What is timed (median of ``--clicks`` clicks, ``--predicts`` predictions, interleaved between the variants; wall
time, and the worker's CPU time over all its threads, which other jobs on a shared machine disturb less):
- ``predict``: ``Predictor.predict(image)`` (transform, backbone, encoder, decoder, top ``num_group_refine``);
- ``correct``: ``Predictor.correct(person, keypoint, x, y)``: one click, the clicked person re-predicted (the
  default: the refinement groups are independent, so the others keep their poses);
- ``correct_all``: the same with ``refine_all=True``: every refined person (20) re-predicted, as in a round of the
  original's evaluation loop;
- ``refine_cached`` / ``refine_uncached``: the model call of ``correct_all``, ``model.refine(state, ...)`` on 20
  people with the image's cached state, and on ``state.uncached()`` (each decoder layer re-projects the encoder
  memory, as the original does on every click); ``refine_one_*``: the same for the one clicked person (``correct``);
- ``original click``: the original Click-Pose's ``human_feedback_loop_inference`` with ``CLICKPOSE_Click_Number=1``
  (match the top 20 to the ground truth, build its refinement mask, one round: one click, 20 people re-predicted),
  and ``original round``: the extra time of a second round (``=2`` minus ``=1``), on its own pure-PyTorch
  deformable attention (``--original DIR``; patched in memory as ``tools/benchmark_train.py`` does, nothing written
  to DIR). Without ``--original`` (or when DIR has no Click-Pose code) that column is skipped with a message.

Weights are random (the timing does not depend on them); the image is random noise of ``--size`` pixels, which the
Predictor's transform keeps at that size when it is 800x1333 (the original gets a tensor of the size ours used). Ours and the original run in separate worker
processes (both have packages called ``models`` and ``util``). ``--device cuda`` times ours on the GPU (the
original stays on the CPU: its CUDA path needs its compiled kernel).

    python -m tools.benchmark_click --original /path/to/Click-Pose [--size 800 1333] [--clicks 10] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tools import harness
from tools.harness import REPO

OURS_PHASES = ("predict", "correct", "correct_all", "refine_cached", "refine_uncached", "refine_one_cached",
               "refine_one_uncached")
ORIGINAL_PHASES = ("original_click", "original_two_clicks")


# ---------------------------------------------------------------------------------------------- workers
def _image(height: int, width: int):
    import numpy as np
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _sync(device: str):
    """A CUDA synchronize for ``harness.timed`` on a GPU, else None."""
    import torch
    return torch.cuda.synchronize if device.startswith("cuda") else None


def _ours(spec: dict):
    """Commands of our worker: each runs one timed call and returns its seconds."""
    import numpy as np
    import torch
    from PIL import Image

    from util import keypoint_codec as kp
    from models.clickpose.feedback import select_top
    from models.predictor import Predictor
    from util.misc import nested_tensor_from_tensor_list

    device = spec["device"]
    predictor = Predictor(spec["config"], None, device=device, options=spec.get("options") or None)
    image = _image(*spec["size"])
    people = predictor.predict(image)
    rng = np.random.default_rng(1)
    height, width = spec["size"]
    num_keypoints = predictor.num_keypoints

    # the image state and poses of the refine-level timings, built with the public model API
    model = predictor.model
    tensor, _ = predictor.transform(Image.fromarray(image), None)
    with torch.no_grad():
        outputs, state = model(nested_tensor_from_tensor_list([tensor.to(device)]), return_state=True)
    top = select_top(outputs, len(people))
    boxes, keypoints, logits = top["pred_boxes"], kp.coordinates(top["pred_keypoints"], num_keypoints), \
        top["pred_logits"]
    info = {"people": len(people), "cache_mib": state.cache_bytes() / 2 ** 20,
            "tokens": int(state.memory.shape[1]), "input": list(tensor.shape[-2:])}

    def click() -> tuple[int, int, float, float]:
        return (int(rng.integers(len(people))), int(rng.integers(num_keypoints)), float(rng.uniform(0, width)),
                float(rng.uniform(0, height)))

    @torch.no_grad()
    def refine(image_state, everyone: bool = True) -> None:
        person, joint, x, y = click()
        people = slice(None) if everyone else slice(person, person + 1)
        row = person if everyone else 0
        clicks = [torch.tensor([[row, joint, x / width, y / height]], device=device)]
        model.refine(image_state, boxes[:, people], keypoints[:, people], clicks, click_freeze="all",
                     logits=logits[:, people])

    uncached = state.uncached()
    commands = {
        "predict": lambda: predictor.predict(image),
        "correct": lambda: predictor.correct(*click()),
        "correct_all": lambda: predictor.correct(*click(), refine_all=True),
        "refine_cached": lambda: refine(state),
        "refine_uncached": lambda: refine(uncached),
        "refine_one_cached": lambda: refine(state, everyone=False),
        "refine_one_uncached": lambda: refine(uncached, everyone=False),
    }
    return commands, info


def _original(spec: dict):
    """Commands of the original's worker: its inference feedback loop with 1 and 2 click rounds."""
    import os

    import torch

    from tools.benchmark_train import import_original

    clickpose_module, args = import_original(spec["root"])
    from util.misc import nested_tensor_from_tensor_list

    args.feedback_inference = True
    model, _, _ = clickpose_module.build_clickpose(args)
    model.eval()
    captured = {}
    loop = model.human_feedback_loop_inference

    def capture(predictions, targets, memory):
        captured.update(predictions=predictions, targets=targets, memory=memory)
        return predictions
    model.human_feedback_loop_inference = capture
    height, width = spec["size"]
    images = torch.from_numpy(_image(height, width)).permute(2, 0, 1).float() / 255
    generator = torch.Generator().manual_seed(2)
    xy = torch.rand(1, args.num_body_points, 2, generator=generator) * 0.4 + 0.3
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]), "labels": torch.ones(1, dtype=torch.long),
              "keypoints": torch.cat((xy.flatten(1), torch.ones(1, args.num_body_points)), 1),
              "area": torch.tensor([0.16]), "size": torch.tensor([height, width])}
    os.environ["CLICKPOSE_Click_Number"] = "1"
    with torch.no_grad():
        model(nested_tensor_from_tensor_list([images]), [target])

    @torch.no_grad()
    def rounds(count: int) -> None:
        os.environ["CLICKPOSE_Click_Number"] = str(count)
        loop(captured["predictions"], captured["targets"], captured["memory"])

    commands = {"original_click": lambda: rounds(1), "original_two_clicks": lambda: rounds(2)}
    return commands, {"people": 1}


def worker(spec: dict) -> None:
    """Serve command names on stdin with one JSON line [wall seconds, CPU seconds] each."""
    import torch
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    commands, info = (_original if spec["kind"] == "original" else _ours)(spec)
    sync = _sync(spec.get("device", "cpu"))
    harness.serve(lambda name: harness.timed(commands[name], sync), info)


# ---------------------------------------------------------------------------------------------- parent
def _spawn(spec: dict) -> harness.Worker:
    return harness.Worker("tools.benchmark_click", spec, threads=spec["threads"], name=spec["kind"])


def summarise(times: dict[str, list[float]]) -> dict:
    """Medians (ms) per phase, the original's per-round estimate and the target ratios."""
    ms = harness.medians(times, 1000)
    if "original_click" in ms and "original_two_clicks" in ms:
        ms["original_round"] = ms["original_two_clicks"] - ms["original_click"]
    ratios = {}
    if "correct" in ms:
        ratios["correct / predict"] = ms["correct"] / ms["predict"]
    if "correct_all" in ms:
        ratios["correct_all / predict"] = ms["correct_all"] / ms["predict"]
    if "refine_uncached" in ms:
        ratios["refine cached / uncached"] = ms["refine_cached"] / ms["refine_uncached"]
    if "refine_one_uncached" in ms:
        ratios["refine one cached / uncached"] = ms["refine_one_cached"] / ms["refine_one_uncached"]
    if "original_click" in ms:
        ratios["correct_all / original click"] = ms["correct_all"] / ms["original_click"]
    return {"median_ms": ms, "ratios": ratios}


def parse_options(options: list[str] | None) -> dict | None:
    """``KEY=VALUE`` overrides; values are Python literals where they parse as one, else strings."""
    import ast
    if not options:
        return None
    parsed = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise SystemExit(f"error: --options takes KEY=VALUE, got {option!r}")
        try:
            parsed[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed[key] = value
    return parsed


def run(args: argparse.Namespace) -> dict:
    height, width = args.size
    common = {"threads": args.threads, "size": [height, width]}
    ours_spec = {**common, "kind": "ours", "config": str(Path(args.config).resolve()), "device": args.device,
                 "options": parse_options(args.options)}
    original = Path(args.original).resolve() if args.original else None
    if original is not None and not (original / "models" / "clickpose" / "clickpose.py").is_file():
        print(f"skipping the original: {original} has no models/clickpose/clickpose.py", file=sys.stderr)
        original = None
    elif original is None:
        print("skipping the original: pass --original DIR (a checkout of IDEA-Research/Click-Pose)", file=sys.stderr)
    workers, infos = {}, {}
    phases = OURS_PHASES + (ORIGINAL_PHASES if original else ())
    times: dict[str, list[float]] = {phase: [] for phase in phases}
    cpu_times: dict[str, list[float]] = {phase: [] for phase in phases}
    try:
        workers["ours"] = _spawn(ours_spec)
        infos["ours"] = workers["ours"].info
        if original is not None:  # the original gets the tensor size our transform made of the image
            spec = {**common, "kind": "original", "root": str(original), "size": infos["ours"]["input"]}
            workers["original"] = _spawn(spec)
            infos["original"] = workers["original"].info
        for phase in times:  # one untimed call each
            workers["original" if phase.startswith("original") else "ours"].ask(phase)
        for index in range(max(args.clicks, args.predicts)):
            for phase in times:
                if phase == "predict" and index >= args.predicts:
                    continue
                wall, cpu = workers["original" if phase.startswith("original") else "ours"].ask(phase)
                times[phase].append(wall)
                cpu_times[phase].append(cpu)
    finally:
        for worker_process in workers.values():
            worker_process.close()
    cpu = summarise(cpu_times)
    return {"times": times, "cpu_times": cpu_times, "info": infos, **summarise(times),
            "cpu_median_ms": cpu["median_ms"], "cpu_ratios": cpu["ratios"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "config" / "clickpose.cfg.py"), help="our config file")
    parser.add_argument("--options", nargs="*", default=None, metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--original", default=None, help="root of the original Click-Pose code (baseline)")
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--clicks", type=int, default=10, help="timed clicks per variant")
    parser.add_argument("--predicts", type=int, default=3, help="timed predictions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="our device: cpu or cuda")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.clicks < 1 or args.predicts < 1:
        parser.error("--clicks and --predicts must be >= 1")
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is visible")
    result = run(args)
    ours = result["info"]["ours"]
    print(f"one click, {args.device} ours / cpu original, {args.threads} threads, {Path(args.config).name}, "
          f"image {args.size[0]}x{args.size[1]} (model input {ours['input'][0]}x{ours['input'][1]}, "
          f"{ours['tokens']} encoder tokens), {ours['people']} people found, median of {args.clicks} clicks and "
          f"{args.predicts} predictions; cache {ours['cache_mib']:.1f} MiB per image")
    print(f"  {'':<20} {'wall':>10}    {'CPU (all threads)':>17}")
    for phase, value in result["median_ms"].items():
        print(f"  {phase:<20} {value:10.1f} ms {result['cpu_median_ms'][phase]:14.1f} ms")
    for name, value in result["ratios"].items():
        print(f"  ratio {name:<26} {value:.4f} wall, {result['cpu_ratios'][name]:.4f} CPU")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **result}, indent=1))


if __name__ == "__main__":
    main()
