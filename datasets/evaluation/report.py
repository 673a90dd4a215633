"""Outputs of interactive evaluation: JSON, markdown, a plot of AP vs clicks, TensorBoard scalars, a printed table.

``write_interactive_report`` writes them all from the ``InteractiveResults`` that ``engine.evaluate_interactive``
returns (nothing is recomputed here); the single writers are public for callers that want only one.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datasets.evaluation.noc import InteractiveResults, threshold_key


def _plain(x: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python numbers/lists."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    return x


def write_click_list(path: str | Path, clicks: Sequence[int] | np.ndarray) -> Path:
    """The original's CLICKPOSE_SAVE_PATH file: a JSON list with one click count per image (one threshold)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([int(c) for c in np.asarray(clicks).reshape(-1)]))
    return path


def write_noc_json(path: str | Path, image_ids: Sequence[Any], ap_curves: np.ndarray,
                   clicks: dict[float, np.ndarray], summary: dict[str, float],
                   ap_table: Sequence[dict[str, float]] = ()) -> Path:
    """Everything in one JSON: summary, AP-vs-clicks rows, and per image its AP after every round and click counts."""
    curves = np.asarray(ap_curves, dtype=np.float64)
    per_image = [
        {"image_id": _plain(img_id), "ap_per_round": curves[i].tolist(),
         "clicks": {threshold_key(t): int(c[i]) for t, c in clicks.items()}}
        for i, img_id in enumerate(image_ids)
    ]
    payload = {"summary": summary, "ap_vs_clicks": list(ap_table), "images": per_image}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(payload), indent=1))
    return path


def format_markdown(summary: dict[str, float], ap_table: Sequence[dict[str, float]],
                    thresholds: Sequence[float]) -> str:
    """A NoC table (mean clicks, share reached) and an AP-vs-clicks table, as markdown."""
    lines = [f"## Number of clicks (cap {summary.get('max_clicks', '?')}, {summary.get('num_images', '?')} images)",
             "", "| metric | " + " | ".join(threshold_key(t) for t in thresholds) + " |",
             "|---|" + "---|" * len(thresholds),
             "| mean clicks | " + " | ".join(f"{summary[threshold_key(t)]:.3f}" for t in thresholds) + " |",
             "| images reaching it | " + " | ".join(f"{100 * summary[threshold_key(t, 'reached')]:.1f}%"
                                                    for t in thresholds) + " |"]
    if ap_table:
        names = [k for k in ap_table[0] if k != "clicks"]
        lines += ["", "## AP after k clicks", "", "| clicks | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        lines += [f"| {row['clicks']} | " + " | ".join(f"{row[n]:.4f}" for n in names) + " |" for row in ap_table]
    return "\n".join(lines) + "\n"


def write_markdown(path: str | Path, summary: dict[str, float], ap_table: Sequence[dict[str, float]],
                   thresholds: Sequence[float]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_markdown(summary, ap_table, thresholds))
    return path


def plot_ap_vs_clicks(path: str | Path, ap_table: Sequence[dict[str, float]],
                      stat_names: Sequence[str] = ("AP", "AP50", "AP75"), title: str = "AP vs clicks") -> Path:
    """PNG line plot of the chosen stats against the number of clicks (matplotlib, Agg backend)."""
    # A bare Figure renders PNG with the Agg canvas and leaves pyplot's global backend alone (no display needed).
    from matplotlib.figure import Figure

    if not ap_table:
        raise ValueError("ap_table is empty: nothing to plot (evaluate at least one click round)")
    clicks = [row["clicks"] for row in ap_table]
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    for name in stat_names:
        if name in ap_table[0]:
            ax.plot(clicks, [row[name] for row in ap_table], marker="o", markersize=3, label=name)
    ax.set_xlabel("clicks per person")
    ax.set_ylabel("keypoint AP")
    ax.set_title(title)
    ax.set_xticks(clicks)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def log_tensorboard(writer: Any, summary: dict[str, float], ap_table: Sequence[dict[str, float]] = (),
                    step: int = 0, prefix: str = "interactive") -> None:
    """NoC/reached scalars at ``step``, and each AP-vs-clicks stat with the click count as its step."""
    if writer is None:
        return
    for key, value in summary.items():
        if key.startswith(("NoC@", "reached@")):
            writer.add_scalar(f"{prefix}/{key}", value, step)
    for row in ap_table:
        for name, value in row.items():
            if name != "clicks":
                writer.add_scalar(f"{prefix}/{name}_vs_clicks", value, row["clicks"])
    writer.flush()


def format_summary_table(summary: dict[str, float], ap_table: Sequence[dict[str, float]],
                         thresholds: Sequence[float], color: bool = True) -> str:
    """Plain-text table for the console (headers coloured with termcolor when available and ``color``)."""
    def head(text: str) -> str:
        if not color:
            return text
        try:
            from termcolor import colored
        except ImportError:
            return text
        return colored(text, "cyan", attrs=["bold"])

    lines = [head(f"Interactive evaluation: {summary.get('num_images', '?')} images, "
                  f"cap {summary.get('max_clicks', '?')} clicks")]
    lines.append("  " + "  ".join(f"{threshold_key(t):>8}" for t in thresholds))
    lines.append("  " + "  ".join(f"{summary[threshold_key(t)]:>8.3f}" for t in thresholds))
    lines.append("  " + "  ".join(f"{100 * summary[threshold_key(t, 'reached')]:>7.1f}%" for t in thresholds)
                 + "   (images reaching it)")
    if ap_table:
        names = [k for k in ap_table[0] if k != "clicks"]
        lines.append(head("AP after k clicks"))
        lines.append(f"  {'k':>3} " + " ".join(f"{n:>7}" for n in names))
        lines += [f"  {row['clicks']:>3} " + " ".join(f"{row[n]:>7.4f}" for n in names) for row in ap_table]
    return "\n".join(lines)


def write_interactive_report(output_dir: str | Path, results: InteractiveResults, tb_writer: Any = None,
                             click_list_paths: dict[float, str | Path] | None = None,
                             printer: Any = print) -> dict[str, Path]:
    """Write every output of ``results`` into ``output_dir``; returns {name: path}.

    Files: ``noc_results.json``, ``noc_report.md``, ``noc_clicks_<85>.json`` per threshold (the original's per-image
    click lists), ``ap_vs_clicks.png`` when there are per-round stats; TensorBoard scalars when ``tb_writer`` is given.
    Args:
        click_list_paths: optional {threshold: path} for extra original-compatible click lists (CLICKPOSE_SAVE_PATH).
        printer: called with the console table (None: print nothing).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, thresholds, table = results.summary, results.thresholds, results.ap_table()
    files = {"json": write_noc_json(out / "noc_results.json", results.image_ids, results.ap_curves, results.clicks,
                                    summary, table),
             "markdown": write_markdown(out / "noc_report.md", summary, table, thresholds)}
    for thr in thresholds:
        key = threshold_key(thr)
        files[f"clicks_{key}"] = write_click_list(out / f"noc_clicks_{key.split('@')[1]}.json", results.clicks[thr])
        if click_list_paths and thr in click_list_paths:
            files[f"clicks_{key}_compat"] = write_click_list(click_list_paths[thr], results.clicks[thr])
    if table:
        files["plot"] = plot_ap_vs_clicks(out / "ap_vs_clicks.png", table)
    log_tensorboard(tb_writer, summary, table)
    if printer is not None:
        printer(format_summary_table(summary, table, thresholds))
    return files
