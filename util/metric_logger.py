"""Smoothed metrics and a progress printer with ETA (train/eval loops)."""
from __future__ import annotations

import datetime
import time
from collections import deque
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.distributed as dist

from .distributed import is_dist_avail_and_initialized


class SmoothedValue:
    """Windowed median/average plus the global average of a scalar series."""

    def __init__(self, window_size: int = 20, fmt: Optional[str] = None):
        self.window: deque[float] = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt or "{median:.4f} ({global_avg:.4f})"

    def update(self, value: float, n: int = 1) -> None:
        self.window.append(float(value))
        self.count += n
        self.total += float(value) * n

    def synchronize_between_processes(self) -> None:
        """Sum count/total over ranks (the window stays local)."""
        if not is_dist_avail_and_initialized():
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64)
        dist.all_reduce(t)
        self.count, self.total = int(t[0].item()), float(t[1].item())

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.window)).median().item()) if self.window else 0.0

    @property
    def avg(self) -> float:
        return sum(self.window) / len(self.window) if self.window else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def max(self) -> float:
        return max(self.window) if self.window else 0.0

    @property
    def value(self) -> float:
        return self.window[-1] if self.window else 0.0

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, max=self.max,
                               value=self.value)


class MetricLogger:
    """Named ``SmoothedValue`` meters and ``log_every``, which prints progress, ETA and timings."""

    def __init__(self, delimiter: str = "  ", display: Optional[Iterable[str]] = None):
        self.meters: dict[str, SmoothedValue] = {}
        self.delimiter = delimiter
        # meters shown in progress lines (None: all); every meter is still tracked and returned
        self.display = None if display is None else list(display)

    def update(self, **values) -> None:
        for name, value in values.items():
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.meters.setdefault(name, SmoothedValue()).update(float(value))

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def __getattr__(self, name: str) -> SmoothedValue:
        meters = self.__dict__.get("meters", {})
        if name in meters:
            return meters[name]
        raise AttributeError(f"MetricLogger has no meter '{name}'")

    def __str__(self) -> str:
        shown = self.meters if self.display is None else {k: self.meters[k] for k in self.display if k in self.meters}
        return self.delimiter.join(f"{name}: {meter}" for name, meter in shown.items())

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def log_every(self, iterable: Iterable, print_freq: int, header: str = "",
                  log: Callable[[str], None] = print) -> Iterator:
        """Yield from ``iterable``; every ``print_freq`` steps (and at the end) log progress and ETA."""
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        iter_time, data_time = SmoothedValue(fmt="{avg:.4f}"), SmoothedValue(fmt="{avg:.4f}")
        width = len(str(total)) if total else 1
        start = end = time.time()
        i = 0
        for item in iterable:
            data_time.update(time.time() - end)
            yield item
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or (total is not None and i == total - 1):
                parts = [header, f"[{i:>{width}}/{total if total is not None else '?'}]"]
                if total is not None:
                    eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - i - 1)))
                    parts.append(f"eta: {eta}")
                parts += [str(self), f"time: {iter_time}", f"data: {data_time}"]
                if torch.cuda.is_available():
                    parts.append(f"max mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}MB")
                log(self.delimiter.join(p for p in parts if p))
            i += 1
            end = time.time()
        elapsed = datetime.timedelta(seconds=int(time.time() - start))
        log(f"{header} Total time: {elapsed} ({(time.time() - start) / max(i, 1):.4f} s / it)")
