"""GPU readiness in one bounded command (``make gpu-check``): build, test and measure the CUDA path; write a report.

    python -m tools.gpu_check [--out gpu_check] [--budget 480] [--device auto|cuda|cpu] [--skip-build]

With CUDA: compiles the kernels for the visible GPU, runs the deformable-attention tests, then records the kernel
against the pure-PyTorch path (fp64, fp32, fp16, bf16, gradcheck), forward and forward+backward time and peak memory
of each backend on the 800x1333 encoder and decoder shapes, the R50 model's inference latency at 800x1333 (median
of 20, fp32 and AMP), the latency of one click (refinement on the cached image state), one training step (fp32 and
AMP, batch 2), a 2-process NCCL run when 2+ GPUs are visible, and the environment.
Without CUDA: the report says so, the GPU-only steps are skipped, and the other steps run at small sizes on the CPU
(well under a minute); the exit status is 0 when nothing failed.

Every step runs in its own process with its own timeout (capped by what is left of --budget seconds), so a crash or
hang in one is recorded and the next one still runs. The report (OUT/report.md and OUT/report.json, rewritten
atomically after each step) and each step's full output (OUT/logs/STEP.log) go to --out. Exit status: 0 when no
step failed or timed out, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

from tools import gpu_check_steps as steps  # (imports torch only inside the steps)
from tools import harness
from util.files import atomic_write_text


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    gpu_timeout_s: float   # cap of the step on a GPU (full sizes)
    cpu_timeout_s: float   # cap of the CPU version (small sizes)
    gpu_only: bool = False


PLAN: List[Step] = [
    Step("environment", "Environment", 60, 60),
    Step("build", "Kernel build (FORCE_CUDA=1)", 300, 0, gpu_only=True),
    Step("cuda_tests", "CUDA tests (tests/models/clickpose/ops)", 180, 0, gpu_only=True),
    Step("kernel_accuracy", "Kernel vs pure PyTorch", 90, 60),
    Step("msda_benchmark", "Deformable attention: time and memory", 120, 60),
    Step("inference", "Model inference latency", 120, 60),
    Step("preannotate", "Pre-annotation throughput", 120, 120),
    Step("click", "Click refinement latency", 90, 60),
    Step("train_step", "Training step", 150, 90),
    Step("nccl", "NCCL, 2 processes", 150, 0, gpu_only=True),
]
MIN_STEP_S = 10  # a step is not started with less budget left than this


# ------------------------------------------------------------------------------------------------ one step
def run_step_here(name: str, mode: str, result_path: Path) -> int:
    """Child side: run one step, write {'status', ...} to ``result_path``; an exception exits 1 with its trace."""
    sizes = steps.GPU_SIZES if mode == "cuda" else steps.CPU_SIZES
    try:
        if name not in steps.STEPS:
            raise KeyError(f"unknown step {name!r}; the steps are {sorted(steps.STEPS)}")
        data: Dict[str, Any] = {"status": "ok", **steps.STEPS[name](sizes)}
    except steps.StepSkipped as skipped:
        data = {"status": "skipped", "summary": str(skipped)}
    except Exception as error:  # recorded by the parent; the next step still runs
        traceback.print_exc()
        data = {"status": "failed", "summary": f"{type(error).__name__}: {error}"}
    atomic_write_text(result_path, json.dumps(data, indent=1, default=str))
    return 0 if data["status"] != "failed" else 1


def run_step_child(step: Step, mode: str, timeout: float, logs: Path) -> Dict[str, Any]:
    """Parent side: the step in a fresh process group, killed as a whole on timeout."""
    log_path = logs / f"{step.name}.log"
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        result_path = Path(tmp) / "result.json"
        command = harness.module_command("tools.gpu_check", "--run-step", step.name, "--device", mode,
                                         "--result", str(result_path))
        start = time.perf_counter()
        code = harness.run_logged(command, log_path, timeout)  # None: killed (with its children) at the limit
        seconds = round(time.perf_counter() - start, 1)
        if code is None:
            return {"status": "timeout", "seconds": seconds,
                    "summary": f"killed after its {timeout:.0f} s limit", "log_tail": _tail(log_path)}
        if not result_path.is_file():
            return {"status": "failed", "seconds": seconds, "summary": f"step process exited {code} without a result",
                    "log_tail": _tail(log_path)}
        data = json.loads(result_path.read_text())
    data["seconds"] = seconds
    if data["status"] == "failed":
        data["log_tail"] = _tail(log_path)
    return data


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------ report
def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_table(rows: List[Dict[str, Any]]) -> List[str]:
    columns: List[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def render_markdown(report: Dict[str, Any]) -> str:
    lines = ["# Click-Pose GPU check", "", f"- started: {report['started']}", f"- host: {report['host']}",
             f"- mode: {report['mode_line']}", f"- budget: {report['budget_s']:g} s, used {report['elapsed_s']:g} s",
             f"- result: {report['result']}", "", "| step | status | seconds | summary |", "|---|---|---|---|"]
    for step in PLAN:
        entry = report["steps"].get(step.name)
        if entry:
            lines.append(f"| {step.title} | {entry['status']} | {_cell(entry.get('seconds'))} "
                         f"| {_cell(entry.get('summary'))} |")
    for step in PLAN:
        entry = report["steps"].get(step.name) or {}
        if not entry.get("tables") and not entry.get("log_tail"):
            continue
        lines += ["", f"## {step.title}", ""]
        for title, rows in (entry.get("tables") or {}).items():
            lines += [f"{title}:", ""] + _markdown_table(rows) + [""]
        if entry.get("log_tail"):
            lines += [f"Last lines of logs/{step.name}.log:", "", "```", entry["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: Dict[str, Any]) -> None:
    failed = [name for name, e in report["steps"].items() if e["status"] in ("failed", "timeout")]
    report["result"] = f"FAILED: {', '.join(failed)}" if failed else "no step failed"
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, default=str))
    atomic_write_text(out / "report.md", render_markdown(report))


# ------------------------------------------------------------------------------------------------ the run
def resolve_mode(requested: str) -> tuple[str, str]:
    """('cuda' | 'cpu', a sentence for the report)."""
    import torch
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False (no GPU, no driver, or a "
                         "CPU-only torch); run with --device auto to record the CPU parts")
    if requested == "cpu" or not available:
        why = "--device cpu" if available else "NO GPU: torch.cuda.is_available() is False"
        small = steps.CPU_SIZES
        return "cpu", (f"{why}; the GPU steps (build, CUDA tests, NCCL) are skipped and the other steps ran on the "
                       f"CPU at small sizes ({Path(small.config).name}, {small.image[0]}x{small.image[1]}): these "
                       "are not the GPU numbers")
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    full = steps.GPU_SIZES
    return "cuda", (f"CUDA: {torch.cuda.device_count()} GPU(s) visible ({names}); full sizes "
                    f"({Path(full.config).name}, {full.image[0]}x{full.image[1]})")


def run_plan(out: Path, mode: str, mode_line: str, budget: float, skip: List[str]) -> Dict[str, Any]:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: Dict[str, Any] = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "host": os.uname().nodename, "mode": mode, "gpu": mode == "cuda",
                              "mode_line": mode_line, "budget_s": budget, "elapsed_s": 0, "steps": {}}
    for step in PLAN:
        left = budget - (time.perf_counter() - started)
        cap = step.gpu_timeout_s if mode == "cuda" else step.cpu_timeout_s
        if step.gpu_only and mode != "cuda":
            entry = {"status": "skipped", "summary": "no CUDA device: GPU-only step"}
        elif step.name in skip:
            entry = {"status": "skipped", "summary": "skipped on request (--skip-build)"}
        elif left < MIN_STEP_S:
            entry = {"status": "skipped", "summary": f"budget exhausted ({left:.0f} s left of {budget:g} s)"}
        else:
            print(f"[gpu-check] {step.name} (limit {min(cap, left):.0f} s) ...", flush=True)
            entry = run_step_child(step, mode, min(cap, left), out / "logs")
        print(f"[gpu-check] {step.name}: {entry['status']}: {entry.get('summary', '')}", flush=True)
        report["steps"][step.name] = entry
        report["elapsed_s"] = round(time.perf_counter() - started, 1)
        write_report(out, report)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check", help="report folder (default: gpu_check/)")
    parser.add_argument("--budget", type=float, default=480, help="seconds for all steps together (default 480)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                        help="auto: CUDA when available; cpu: the small CPU version even on a GPU machine")
    parser.add_argument("--skip-build", action="store_true", help="use the kernel already built in place")
    parser.add_argument("--run-step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_step:
        return run_step_here(args.run_step, args.device, Path(args.result))
    if args.budget < MIN_STEP_S:
        parser.error(f"--budget must be at least {MIN_STEP_S} seconds")
    mode, mode_line = resolve_mode(args.device)
    out = Path(args.out).resolve()
    print(f"[gpu-check] {mode_line}\n[gpu-check] report: {out / 'report.md'}", flush=True)
    report = run_plan(out, mode, mode_line, args.budget, ["build"] if args.skip_build else [])
    print(f"[gpu-check] {report['result']}; report: {out / 'report.md'} (and report.json, logs/)", flush=True)
    return 1 if report["result"].startswith("FAILED") else 0


if __name__ == "__main__":
    sys.exit(main())
