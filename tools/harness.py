"""Benchmark workers in fresh subprocesses, and the timing arithmetic the benchmarks share.

Every worker is this repository's tool module started again, ``python -m tools.X ... --worker SPEC`` with the
repository root as its working directory, so it imports ``models``/``util``/``tools`` from this checkout without
touching ``sys.path`` (a worker for the original Click-Pose puts that checkout first: :func:`prefer_checkout`).

Two shapes of worker:

- one-shot (:func:`run_worker`): the worker computes and calls :func:`emit` once; the parent gets that value back;
- serving (:class:`Worker` in the parent, :func:`serve` in the child): the worker builds its model once, then
  answers one request line at a time, so the parent can interleave several implementations run by run.

The protocol lines carry a prefix (``READY``/``RESULT``) and JSON; anything else a worker prints on stdout (the
original's build prints) is passed on to stderr, not mistaken for a reply. Nothing here imports the project or
torch, so an original's worker can still import its own ``models``/``util``.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
READY, RESULT = "READY ", "RESULT "


# ------------------------------------------------------------------------------------------------ commands
def module_command(module: str, *args: str) -> list[str]:
    """``[python, -m, module, *args]`` with this interpreter (run it with ``cwd=REPO``)."""
    return [sys.executable, "-m", module, *args]


def worker_command(module: str, spec: Any, *args: str) -> list[str]:
    """The command of a worker of ``module``: its ``--worker`` option carries ``spec`` as JSON."""
    return module_command(module, *args, "--worker", json.dumps(spec))


def child_env(threads: Optional[int] = None, env: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """This process's environment, the OpenMP/MKL thread count set to ``threads`` when given, plus ``env``."""
    merged = dict(os.environ)
    if threads is not None:
        merged.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    merged.update(env or {})
    return merged


def run_command(command: Sequence[str], timeout: Optional[float] = None,
                env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess:
    """Run ``command`` from the repository root, output captured as text; ``env`` is added to this environment."""
    return subprocess.run(list(command), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=child_env(env=env))


def run_logged(command: Sequence[str], log: Path, timeout: float) -> Optional[int]:
    """Run ``command`` from the repository root in its own process group, stdout and stderr into ``log``; its exit
    status, or None when it ran past ``timeout`` seconds (then the whole group is killed: pytest, builds, torchrun
    workers it started included)."""
    with open(log, "w") as out:
        process = subprocess.Popen(list(command), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
            return None
        except BaseException:  # Ctrl-C: the child is in its own session and would outlive us
            kill_group(process)
            raise


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group of ``process`` (started with ``start_new_session=True``) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def prefer_checkout(root: str) -> None:
    """Worker side, for the original Click-Pose: import its ``models``/``util``/... from ``root`` instead of ours
    (call before any of them is imported; this process then cannot import our packages of those names)."""
    sys.path.insert(0, str(root))


# ------------------------------------------------------------------------------------------------ protocol
def emit(value: Any) -> None:
    """Worker side of :func:`run_worker`: hand ``value`` (JSON-able) back to the parent."""
    print(RESULT + json.dumps(value), flush=True)


def run_worker(module: str, spec: Any, *args: str, threads: Optional[int] = None,
               env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None) -> Any:
    """Run one worker of ``module`` to its end and return the value it :func:`emit`-ted (its last one)."""
    done = subprocess.run(worker_command(module, spec, *args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=child_env(threads, env))
    replies = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not replies:
        raise RuntimeError(f"worker {module} {json.dumps(spec)[:200]} failed (exit {done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(replies[-1][len(RESULT):])


def serve(handle: Callable[[str], Any], info: Any = None) -> None:
    """Worker side of :class:`Worker`: announce readiness (with ``info``), then answer each stdin line with
    ``handle(line)`` until stdin closes."""
    print(READY + json.dumps(info), flush=True)
    for line in sys.stdin:
        print(RESULT + json.dumps(handle(line.strip())), flush=True)


class Worker:
    """Parent side of a serving worker: ``Worker(module, spec)`` starts it and waits until it is ready (its
    ``info``); ``ask(request)`` sends one line and returns the decoded reply; ``close()`` ends it."""

    def __init__(self, module: str, spec: Any, *args: str, threads: Optional[int] = None,
                 env: Optional[Mapping[str, str]] = None, name: Optional[str] = None) -> None:
        self.name = name or module
        self.process = subprocess.Popen(worker_command(module, spec, *args), cwd=REPO, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=child_env(threads, env))
        try:
            self.info = self._read(READY, "to start")
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise

    def _read(self, prefix: str, during: str) -> Any:
        for line in self.process.stdout:
            if line.startswith(prefix):
                return json.loads(line[len(prefix):])
            sys.stderr.write(line)  # the worker's own prints
        raise RuntimeError(f"benchmark worker '{self.name}' stopped {during} (see its traceback above)")

    def ask(self, request: str) -> Any:
        self.process.stdin.write(request + "\n")
        self.process.stdin.flush()
        return self._read(RESULT, f"during '{request}'")

    def close(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        self.process.wait()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------ timing
def timed(function: Callable[[], Any], sync: Optional[Callable[[], None]] = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all its threads) of one call; ``sync`` (e.g. a CUDA
    synchronize) runs before the clocks start and before they stop."""
    if sync:
        sync()
    start, start_cpu = time.perf_counter(), time.process_time()
    function()
    if sync:
        sync()
    return time.perf_counter() - start, time.process_time() - start_cpu


def repeat(function: Callable[[], Any], runs: int, warmup: int = 0,
           sync: Optional[Callable[[], None]] = None) -> list[float]:
    """Wall seconds of ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        function()
    return [timed(function, sync)[0] for _ in range(runs)]


def interleaved(functions: Mapping[str, Callable[[], Any]], runs: int, warmup: int = 1,
                sync: Optional[Callable[[], None]] = None) -> dict[str, list[float]]:
    """Wall seconds per name; the functions alternate within each run, so a changing load hits all alike."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(runs):
        for name, function in functions.items():
            times[name].append(timed(function, sync)[0])
    return times


def medians(times: Mapping[str, Sequence[float]], scale: float = 1.0) -> dict[str, float]:
    """Median of each non-empty series, times ``scale`` (1000: seconds to milliseconds)."""
    return {name: statistics.median(values) * scale for name, values in times.items() if len(values)}


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of the ratios of interleaved pairs (less sensitive to a load change than the ratio of medians)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))
