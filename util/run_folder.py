"""A run folder's policy (``--output_dir``): which checkpoint a run starts from, the best metric so far, the log,
snapshot names, and tidying after a killed run. Files a run writes go through ``util.files.atomic_write``.

Pure policy on paths and plain values: the model, the optimiser and the evaluation stay with the caller.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

from util.checkpoint import read_checkpoint
from util.errors import CheckpointError
from util.files import append_line, atomic_write, atomic_write_text, remove_stale_temp_files, repair_line_log

# Files a run writes in output_dir through util.files.atomic_write (stale temporaries are theirs).
RUN_FILES = ("checkpoint", "best_metric.json", "log.txt", "config_")
AP_KEY = "coco_eval_keypoints_detr"  # the evaluator's keypoint stats; [0] is the AP the best checkpoints follow


def tidy_output_dir(output_dir: Path, logger: logging.Logger) -> None:
    """Remove temporary files of a killed save and a log line cut short by a kill."""
    for path in remove_stale_temp_files(output_dir, RUN_FILES):
        logger.info(f"removed {path}, left by a save that was stopped")
    if repair_line_log(output_dir / "log.txt"):
        logger.warning(f"{output_dir / 'log.txt'} ended in a partial line (a stopped run); it was removed")


def choose_checkpoint(output_dir: Optional[Path], *, resume: str, pretrain: Optional[str], evaluating: bool,
                      trust: bool, logger: logging.Logger) -> tuple[Optional[Path], str]:
    """The file to start from and how: 'resume' (weights, then the training state unless evaluating) or 'pretrain'
    (weights only). An explicit ``resume`` or ``pretrain`` wins over output_dir/checkpoint.pth, except that
    training from ``pretrain`` continues a checkpoint.pth that started from the same file; one that started
    elsewhere is an error (either choice could lose the user's work)."""
    auto = output_dir / "checkpoint.pth" if output_dir is not None else None
    auto = auto if auto is not None and auto.is_file() else None
    if resume:
        if auto is not None and not evaluating and Path(resume).resolve() != auto.resolve():
            logger.warning(f"--resume {resume}: {auto} is not resumed, and this run's epochs replace it")
        return Path(resume), "resume"
    if pretrain:
        if auto is None or evaluating:
            return Path(pretrain), "pretrain"
        started = getattr(read_checkpoint(auto, trust=trust).get("args"), "pretrain_model_path", None)
        if started and Path(started).resolve() == Path(pretrain).resolve():
            logger.info(f"{auto} continues a run that started from {started}: resuming it")
            return auto, "resume"
        raise CheckpointError(
            f"--output_dir {output_dir} already holds checkpoint.pth of a run that started from "
            f"{started or 'no pretrained weights'}, not from --pretrain_model_path {pretrain}. "
            f"To continue that run, pass --resume {auto}; to train from {pretrain}, choose a new "
            "--output_dir (or move that checkpoint.pth away)")
    return (auto, "resume") if auto is not None else (None, "")


def read_log(path: Path) -> list[dict]:
    """The JSON entries of a ``log.txt`` (lines that do not parse are skipped)."""
    entries = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def write_log_line(output_dir: Path, log_stats: dict, epoch: Optional[int] = None, writer: Any = None) -> None:
    """One JSON line in ``log.txt``; with ``epoch`` and a TensorBoard ``writer``, its numbers as scalars too."""
    append_line(output_dir / "log.txt", json.dumps(log_stats, default=float))
    if writer is not None and epoch is not None:
        for key, value in log_stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(key, value, epoch)
        writer.flush()


def snapshot_path(output_dir: Optional[Path], epoch: int, lr_drop: int, interval: int) -> Optional[Path]:
    """``checkpointNNNN.pth`` when ``epoch`` ends an lr_drop period or a save_checkpoint_interval."""
    if output_dir is None or ((epoch + 1) % lr_drop and (epoch + 1) % interval):
        return None
    return output_dir / f"checkpoint{epoch:04}.pth"


def copy_checkpoint(source: Path, target: Path) -> None:
    """An atomic copy (a snapshot the stopped run owed is checkpoint.pth as it was saved)."""
    with open(source, "rb") as handle:
        atomic_write(target, lambda out: shutil.copyfileobj(handle, out, 2**24))


class BestMetricHolder:
    """Best value (larger is better) and its epoch, overall and per kind ('regular', 'ema').

    ``summary()`` has the reference's log keys: ``best_res``/``best_ep`` without EMA; ``all_``, ``regular_`` and
    ``ema_`` prefixed ones with EMA. ``update`` returns True when this kind improved on its own best.
    """

    def __init__(self, use_ema: bool = False):
        self.use_ema = use_ema
        self.best = {kind: (0.0, -1) for kind in ("all", "regular", "ema")}

    def update(self, value: float, epoch: int, is_ema: bool = False) -> bool:
        kind = "ema" if is_ema else "regular"
        if value > self.best["all"][0]:
            self.best["all"] = (value, epoch)
        if value > self.best[kind][0]:
            self.best[kind] = (value, epoch)
            return True
        return False

    def summary(self) -> dict[str, float]:
        if not self.use_ema:
            value, epoch = self.best["all"]
            return {"best_res": value, "best_ep": epoch}
        out: dict[str, float] = {}
        for kind in ("all", "regular", "ema"):
            value, epoch = self.best[kind]
            out.update({f"{kind}_best_res": value, f"{kind}_best_ep": epoch})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"use_ema": self.use_ema, "best": dict(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = {k: tuple(v) for k, v in state["best"].items()}


def load_best_metric(best: BestMetricHolder, folder: Path, logger: logging.Logger) -> None:
    """The best AP so far from ``best_metric.json``; rebuilt from ``log.txt`` when that file is missing or
    unreadable (so a damaged side file never blocks a resume, and the best checkpoints stay the best)."""
    path = folder / "best_metric.json"
    if path.is_file():
        try:
            best.load_state_dict(json.loads(path.read_text()))
            return
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning(f"{path} is unreadable ({type(exc).__name__}: {exc}); rebuilding the best metric so far "
                           f"from {folder / 'log.txt'}")
    for entry in read_log(folder / "log.txt"):
        if "epoch" in entry and f"test_{AP_KEY}" in entry:
            best.update(float(entry[f"test_{AP_KEY}"][0]), entry["epoch"])
            if f"ema_test_{AP_KEY}" in entry:
                best.update(float(entry[f"ema_test_{AP_KEY}"][0]), entry["epoch"], is_ema=True)


def save_best_metric(best: BestMetricHolder, output_dir: Path) -> None:
    """``best_metric.json``, a small side file, so a resumed run keeps its best so far without rewriting
    checkpoint.pth."""
    atomic_write_text(output_dir / "best_metric.json", json.dumps(best.state_dict()))
