"""NoC semantics (the original's stop rule), summaries, and the report writers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from datasets.evaluation import KEYPOINT_STAT_NAMES
from datasets.evaluation.noc import (InteractiveResults, ap_vs_clicks_table, check_thresholds, noc_per_image,
                                     noc_summary, threshold_key)
from datasets.evaluation.report import (format_markdown, format_summary_table, log_tensorboard, plot_ap_vs_clicks,
                                        write_click_list, write_interactive_report)

MAX = 17
THRESHOLDS = (0.85, 0.90, 0.95)
COCO_NAMES = KEYPOINT_STAT_NAMES["coco"]


def _curves() -> np.ndarray:
    """Hand-made AP after 0..17 clicks for five images."""
    curves = np.zeros((5, MAX + 1))
    curves[0] = 0.96                                   # good before any click
    curves[1, :3], curves[1, 3:] = 0.5, 0.9            # 0.9 after 3 clicks, never 0.95
    curves[2] = [0.3] * 10 + [0.86] * 2 + [0.91] * 2 + [0.97] * 4  # rises in steps
    curves[3] = -1                                     # no GT
    curves[4, :MAX], curves[4, MAX] = 0.2, 0.99        # only the last (18th) evaluation reaches it
    return curves


def _original_loop(curve: np.ndarray, thr: float) -> int:
    """The original's loop: evaluate, stop when AP >= thr, else click; the count is the loop index."""
    for it in range(MAX + 1):
        if curve[it] >= thr:
            break
    return it


def test_noc_matches_the_original_loop():
    curves = _curves()
    thresholds = (0.85, 0.90, 0.95)
    clicks = noc_per_image(curves, thresholds, MAX)
    assert clicks[0.85].tolist() == [0, 3, 10, MAX, MAX]
    assert clicks[0.90].tolist() == [0, 3, 12, MAX, MAX]
    assert clicks[0.95].tolist() == [0, MAX, 14, MAX, MAX]
    rng = np.random.default_rng(0)
    random_curves = np.round(rng.uniform(-0.2, 1, (200, MAX + 1)), 2)
    for thr, counts in noc_per_image(random_curves, thresholds, MAX).items():
        assert counts.tolist() == [_original_loop(c, thr) for c in random_curves]


def test_noc_is_monotone_in_the_threshold():
    rng = np.random.default_rng(1)
    curves = np.maximum.accumulate(rng.uniform(0, 1, (100, MAX + 1)), axis=1)
    curves[::7] = rng.uniform(0, 1, (len(curves[::7]), MAX + 1))  # some that are not monotone in clicks
    thresholds = np.linspace(0.5, 1.0, 11)
    clicks = noc_per_image(curves, thresholds, MAX)
    for low, high in zip(thresholds[:-1], thresholds[1:]):
        assert np.all(clicks[low] <= clicks[high])
    assert clicks[thresholds[-1]].max() <= MAX


def test_summary_means_and_reached_share():
    summary = noc_summary(_curves(), (0.85, 0.95), MAX)
    assert summary["NoC@85"] == pytest.approx((0 + 3 + 10 + MAX + MAX) / 5)
    assert summary["NoC@95"] == pytest.approx((0 + MAX + 14 + MAX + MAX) / 5)
    assert summary["reached@85"] == pytest.approx(4 / 5)  # image 4 reaches it with the 17th click
    assert summary["reached@95"] == pytest.approx(3 / 5)
    assert summary["num_images"] == 5 and summary["num_images_without_gt"] == 1


def test_curve_length_checked_and_extra_rounds_ignored():
    with pytest.raises(ValueError, match="run more click rounds"):
        noc_per_image(np.zeros((3, 5)), (0.9,), MAX)
    short = _curves()[:, :MAX]  # the AP after the 17th click cannot change any count
    assert noc_per_image(short, (0.9,), MAX)[0.9].tolist() == noc_per_image(_curves(), (0.9,), MAX)[0.9].tolist()
    assert noc_per_image(_curves(), (0.9,), max_clicks=2)[0.9].tolist() == [0, 2, 2, 2, 2]


def test_threshold_keys():
    assert [threshold_key(t) for t in (0.85, 0.9, 0.95)] == ["NoC@85", "NoC@90", "NoC@95"]
    assert threshold_key(0.875, "reached") == "reached@87.5"


def _stats(rounds: int = MAX + 1, num: int = 10) -> list[list[float]]:
    return [[0.6 + 0.02 * k + 0.001 * j for j in range(num)] for k in range(rounds)]


def test_thresholds_checked_sorted_unique():
    assert check_thresholds([0.95, 0.5, 0.95, 1]) == (0.5, 0.95, 1.0)
    for bad in ([], [0.0], [1.5], [-0.1, 0.9]):
        with pytest.raises(ValueError, match=r"in \(0, 1\]"):
            check_thresholds(bad)


def test_ap_vs_clicks_table():
    table = ap_vs_clicks_table(_stats(3), COCO_NAMES)
    assert [row["clicks"] for row in table] == [0, 1, 2]
    assert table[1]["AP"] == pytest.approx(0.62) and table[1]["ARl"] == pytest.approx(0.629)
    assert list(table[0])[1:] == list(COCO_NAMES)
    with pytest.raises(ValueError, match="stat_names"):
        ap_vs_clicks_table([[0.1] * 11], COCO_NAMES)


def test_crowdpose_report_uses_crowdpose_names(tmp_path):
    """CrowdPose's 9 stats: AP, AP50, AP75, AR, AR50, AR75, AP easy/medium/hard (not COCO's APm/APl/ARm/...)."""
    names = KEYPOINT_STAT_NAMES["crowdpose"]
    assert names == ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard")
    stats = _stats(3, num=9)
    results = InteractiveResults.from_curves([1, 2, 3, 4, 5], _curves(), THRESHOLDS, MAX, round_stats=stats,
                                             stat_names=names)
    files = write_interactive_report(tmp_path, results, printer=None)
    rows = json.loads(files["json"].read_text())["ap_vs_clicks"]
    assert list(rows[2]) == ["clicks", *names]
    assert rows[2]["AR"] == pytest.approx(stats[2][3]) and rows[2]["AP_hard"] == pytest.approx(stats[2][8])
    markdown = files["markdown"].read_text()
    assert "| clicks | AP | AP50 | AP75 | AR | AR50 | AR75 | AP_easy | AP_medium | AP_hard |" in markdown
    assert "APm" not in markdown and "ARl" not in markdown
    assert "AP_easy" in format_summary_table(results.summary, results.ap_table(), THRESHOLDS, color=False)


def _results(curves=None, **rest) -> InteractiveResults:
    return InteractiveResults.from_curves([785, 40083, 1, 2, 3], _curves() if curves is None else curves,
                                          THRESHOLDS, MAX, **rest)


def test_report_files(tmp_path):
    curves = _curves()
    compat = tmp_path / "orig" / "clicks_90.json"
    results = _results(curves, round_stats=_stats(), stat_names=COCO_NAMES)
    files = write_interactive_report(tmp_path / "out", results, click_list_paths={0.90: compat}, printer=None)
    data = json.loads(files["json"].read_text())
    assert data["summary"]["NoC@90"] == pytest.approx(results.summary["NoC@90"])
    assert data["images"][1] == {"image_id": 40083, "ap_per_round": curves[1].tolist(),
                                 "clicks": {"NoC@85": 3, "NoC@90": 3, "NoC@95": MAX}}
    assert len(data["ap_vs_clicks"]) == MAX + 1
    # the original's CLICKPOSE_SAVE_PATH format: a plain JSON list of ints
    assert json.loads(compat.read_text()) == [0, 3, 12, MAX, MAX]
    assert json.loads(files["clicks_NoC@95"].read_text()) == [0, MAX, 14, MAX, MAX]
    markdown = files["markdown"].read_text()
    assert "| mean clicks | 9.400 | 9.800 | 13.000 |" in markdown
    assert markdown.count("\n| ") == 3 + 1 + MAX + 1  # NoC header + 2 rows, AP header + a row per click count
    png = files["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import matplotlib.image
    image = matplotlib.image.imread(files["plot"])
    assert image.shape[0] > 200 and image.shape[1] > 300 and image[..., :3].std() > 0.05  # not a blank canvas


def test_plot_needs_rows(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_ap_vs_clicks(tmp_path / "x.png", [])


def test_write_click_list_flattens_numpy(tmp_path):
    path = write_click_list(tmp_path / "c.json", np.array([[1], [17]], dtype=np.int64))
    assert path.read_text() == "[1, 17]"


class _FakeWriter:
    def __init__(self):
        self.scalars, self.flushed = [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushed = True


def test_tensorboard_scalars():
    summary = noc_summary(_curves(), THRESHOLDS, MAX)
    writer = _FakeWriter()
    log_tensorboard(writer, summary, ap_vs_clicks_table(_stats(2), COCO_NAMES), step=5)
    tags = {(tag, step) for tag, _, step in writer.scalars}
    assert ("interactive/NoC@85", 5) in tags and ("interactive/reached@95", 5) in tags
    assert ("interactive/AP_vs_clicks", 0) in tags and ("interactive/AP_vs_clicks", 1) in tags
    assert not any(tag.endswith("num_images") for tag, _ in tags)
    assert writer.flushed
    log_tensorboard(None, summary)  # no writer: nothing to do


def test_real_summary_writer_writes_events(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    log_tensorboard(writer, noc_summary(_curves(), THRESHOLDS, MAX), ap_vs_clicks_table(_stats(2), COCO_NAMES))
    writer.close()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100


def test_printed_and_markdown_tables():
    summary = noc_summary(_curves(), THRESHOLDS, MAX)
    text = format_summary_table(summary, ap_vs_clicks_table(_stats(2), COCO_NAMES), THRESHOLDS, color=False)
    assert "NoC@85" in text and "9.400" in text and "0.6200" in text
    assert "\x1b[" not in text
    assert "| 1 | 0.6200 |" in format_markdown(summary, ap_vs_clicks_table(_stats(2), COCO_NAMES), THRESHOLDS)


def test_results_log_stats():
    results = _results(round_stats=_stats(3), stat_names=COCO_NAMES, report_round=2,
                       report_stats={"coco_eval_keypoints_detr": _stats(3)[2]})
    stats = results.log_stats()
    assert stats["NoC@85"] == pytest.approx((0 + 3 + 10 + MAX + MAX) / 5)
    assert [stats[f"AP@{k}"] for k in range(3)] == pytest.approx([0.6, 0.62, 0.64])
    assert stats["coco_eval_keypoints_detr"][0] == pytest.approx(stats["AP@2"])
    assert results.clicks[0.9].tolist() == [0, 3, 12, MAX, MAX]


@pytest.mark.parametrize("layout, expected", [("coco", 17), ("crowdpose", 14), ("humanart21", 21)])
def test_click_cap_defaults_to_the_layouts_keypoint_count(layout, expected):
    """The original's cap is one click per keypoint (17 on COCO); a 14- or 21-keypoint layout gets its own K."""
    from pathlib import Path

    from datasets.metadata import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, HUMANART21_KEYPOINTS
    from util.config import Config
    from datasets.evaluation.noc import resolve_max_clicks

    metadata = {"coco": COCO_KEYPOINTS, "crowdpose": CROWDPOSE_KEYPOINTS, "humanart21": HUMANART21_KEYPOINTS}[layout]
    config = Config.fromfile(Path(__file__).resolve().parents[3] / "config" / "clickpose.cfg.py")
    assert resolve_max_clicks(config.max_clicks, metadata.num_keypoints) == expected
    assert resolve_max_clicks(5, metadata.num_keypoints) == 5  # an explicit value wins, also above K
    assert resolve_max_clicks(30, metadata.num_keypoints) == 30


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "17"])
def test_click_cap_must_be_a_positive_integer_or_none(value):
    from util.config import ConfigError
    from datasets.evaluation.noc import resolve_max_clicks

    with pytest.raises(ConfigError, match=r"max_clicks=.*integer >= 1, or None \(one click per keypoint: 21"):
        resolve_max_clicks(value, 21)
