"""Command line, start-up without a launcher, launcher spellings, and the run's config files."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main as clickpose_main
from util.config import Config, ConfigError
from tests.helpers.ports import free_port
from util.distributed import resolve_launch

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "config" / "clickpose.cfg.py")

ORIGINAL_FLAGS = ["--config_file", "-c", "--options", "--dataset_file", "--coco_path", "--remove_difficult",
                  "--fix_size", "--output_dir", "--note", "--device", "--seed", "--resume", "--pretrain_model_path",
                  "--finetune_ignore", "--start_epoch", "--eval", "--num_workers", "--test", "--debug",
                  "--find_unused_params", "--save_results", "--save_log", "--world_size", "--dist_url", "--rank",
                  "--local_rank", "--amp"]


def test_help_lists_every_original_flag():
    out = subprocess.run([sys.executable, str(REPO / "main.py"), "--help"], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    for flag in ORIGINAL_FLAGS + ["--local-rank"]:
        assert flag in out, flag


def test_original_defaults():
    args = clickpose_main.get_args_parser().parse_args(["-c", CONFIG])
    assert (args.dataset_file, args.device, args.seed, args.num_workers, args.world_size, args.dist_url, args.rank,
            args.start_epoch, args.local_rank, args.eval, args.amp) == ("coco", "cuda", 42, 10, 1, "env://", 0, 0,
                                                                      None, False, False)


@pytest.mark.parametrize("argv", [["--local-rank=0"], ["--local_rank", "0"], ["--local-rank", "3"],
                                  ["--local_rank=3"]])
def test_both_launch_spellings_of_local_rank(argv):
    args = clickpose_main.get_args_parser().parse_args(["-c", CONFIG, *argv])
    assert args.local_rank == int(argv[-1].split("=")[-1])


def _ns(**kw):
    args = clickpose_main.get_args_parser().parse_args(["-c", CONFIG])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_no_launcher_means_single_process():
    args = _ns()
    resolve_launch(args, {})
    assert (args.distributed, args.world_size, args.rank, args.local_rank) == (False, 1, 0, 0)


def test_torchrun_environment_uses_global_rank():
    args = _ns()
    resolve_launch(args, {"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1"})
    assert (args.distributed, args.world_size, args.rank, args.local_rank, args.gpu) == (True, 8, 5, 1, 1)


def test_launch_with_cli_local_rank_only():
    args = _ns(local_rank=1)
    resolve_launch(args, {"WORLD_SIZE": "2"})
    assert (args.distributed, args.rank, args.local_rank) == (True, 1, 1)


def test_slurm_environment():
    args = _ns()
    resolve_launch(args, {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NPROCS": "4"})
    assert (args.distributed, args.world_size, args.rank, args.local_rank) == (True, 4, 3, 1)


def test_prepare_writes_run_files_and_copies_config_onto_args(tmp_path):
    out = tmp_path / "run"
    args, cfg, _ = clickpose_main.prepare(
        ["-c", CONFIG, "--output_dir", str(out), "--options", "batch_size=3", "use_ema=TRUE"], environ={})
    assert args.distributed is False and args.batch_size == 3 and args.use_ema is True
    for name in ("config_cfg.py", "config_args_raw.json", "config_args_all.json", "info.txt"):
        assert (out / name).is_file(), name
    assert Config.fromfile(out / "config_cfg.py").to_dict() == cfg.to_dict()
    raw = json.loads((out / "config_args_raw.json").read_text())
    assert raw["options"] == {"batch_size": 3, "use_ema": True} and "lr" not in raw
    full = json.loads((out / "config_args_all.json").read_text())
    assert full["lr"] == 1e-4 and full["batch_size"] == 3
    info = (out / "info.txt").read_text()
    assert "sha" in info and "Command:" in info


def test_environment_variables_map_onto_args(tmp_path):
    args, _, _ = clickpose_main.prepare(["-c", CONFIG, "--dataset_file", "humanart"],
                                        environ={"CLICKPOSE_HumanArt_PATH": "/data/ha/", "CLICKPOSE_NoC_Test": "TRUE",
                                                 "NoC_thr": "0.9", "CLICKPOSE_Click_Number": "3",
                                                 "CLICKPOSE_SAVE_PATH": "x.json"})
    assert args.coco_path == "/data/ha/" and args.noc_filter is True
    assert args.noc_threshold_env == 0.9 and args.click_number_env == 3 and args.noc_save_path == "x.json"
    options = clickpose_main.evaluation_options(args, max_clicks=17)
    assert options.thresholds == tuple(args.noc_thresholds) + (0.9,) and options.report_round == 3
    assert options.click_list_paths == {0.9: "x.json"} and options.max_clicks == 17
    assert options.max_select == args.num_group_refine * args.num_classes
    args, _, _ = clickpose_main.prepare(["-c", CONFIG, "--coco_path", "/explicit"],
                                        environ={"CLICKPOSE_COCO_PATH": "/env"})
    assert args.coco_path == "/explicit" and args.noc_filter is False
    options = clickpose_main.evaluation_options(args, max_clicks=17)
    assert options.thresholds == tuple(args.noc_thresholds) and options.report_round is None
    assert options.click_list_paths == {} and options.interactive is False


def test_bad_override_exits_with_clear_message(tmp_path, capsys):
    code = clickpose_main.main(["-c", CONFIG, "--options", "human_feedback=FLASE"])
    assert code == 2
    assert "boolean" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        clickpose_main.prepare(["-c", CONFIG, "--options", "epoch=3"], environ={})


# ---- issue 13: loading policy, owed outputs, one-line errors (tiny model, synthetic data, CPU) -----------------

DEMO = str(REPO / "config" / "demo.cfg.py")
FAST = ["num_queries=100", "dn_number=4", "num_group=8", "num_group_refine=4", "num_select=8"]


class Payload:
    """Unpickling this creates ``self.marker``: it stands for any code a hostile checkpoint could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_payload_checkpoint(path: Path, marker: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "epoch": 0, "note": Payload(marker)}, path)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from datasets.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 8, seed=3, num_val=4)
    return root


def _argv(data: Path, out: Path, *extra: str, options=()) -> list[str]:
    return ["-c", DEMO, "--coco_path", str(data), "--output_dir", str(out), "--device", "cpu", "--num_workers", "0",
            *extra, "--options", *FAST, *options]


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory) -> Path:
    """A run of one epoch: its output folder (checkpoint.pth, log.txt, best_metric.json)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert clickpose_main.main(_argv(synthetic, out, options=["epochs=1"])) == 0
    return out


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("path_kind", ["pretrain_train", "pretrain_eval", "resume", "planted"])
def test_pickle_payload_in_a_checkpoint_never_runs(synthetic, tmp_path, capsys, path_kind):
    marker = tmp_path / "marker"
    evil = write_payload_checkpoint(tmp_path / "evil.pth", marker)
    out = tmp_path / "out"
    extra = {"pretrain_train": ["--pretrain_model_path", str(evil)],
             "pretrain_eval": ["--eval", "--pretrain_model_path", str(evil)],
             "resume": ["--resume", str(evil)], "planted": []}[path_kind]
    if path_kind == "planted":
        write_payload_checkpoint(out / "checkpoint.pth", marker)
    assert clickpose_main.main(_argv(synthetic, out, *extra, options=["epochs=1"])) == 1
    assert not marker.exists()
    err = _error_line(capsys)
    assert "not loaded" in err and "--trust_checkpoint" in err and ("evil.pth" in err or "checkpoint.pth" in err)


def test_eval_evaluates_the_named_file_not_a_planted_checkpoint(synthetic, trained, tmp_path):
    """--eval --pretrain_model_path X with output_dir/checkpoint.pth present reads X (the planted file is a payload:
    reading it would create the marker)."""
    marker, out = tmp_path / "marker", tmp_path / "eval"
    write_payload_checkpoint(out / "checkpoint.pth", marker)
    named = trained / "checkpoint.pth"
    assert clickpose_main.main(_argv(synthetic, out, "--eval", "--pretrain_model_path", str(named))) == 0
    assert not marker.exists()
    assert f"loaded weights from {named}" in (out / "info.txt").read_text()
    assert "test_coco_eval_keypoints_detr" in json.loads((out / "log.txt").read_text().splitlines()[-1])


def test_explicit_resume_wins_over_output_dir_checkpoint(synthetic, trained, tmp_path):
    marker, out = tmp_path / "marker", tmp_path / "run"
    write_payload_checkpoint(out / "checkpoint.pth", marker)
    assert clickpose_main.main(_argv(synthetic, out, "--resume", str(trained / "checkpoint.pth"),
                                     options=["epochs=1"])) == 0
    assert not marker.exists()
    assert f"resumed from {trained / 'checkpoint.pth'} (next epoch 1)" in (out / "info.txt").read_text()


def test_training_from_pretrained_weights_into_a_foreign_run_is_refused(synthetic, trained, tmp_path, capsys):
    """checkpoint.pth in output_dir did not start from the given file: resuming it or overwriting it could both
    lose work, so the user chooses."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = (out / "checkpoint.pth").read_bytes()
    assert clickpose_main.main(_argv(synthetic, out, "--pretrain_model_path", str(trained / "checkpoint.pth"),
                                     options=["epochs=2"])) == 1
    err = _error_line(capsys)
    assert "already holds checkpoint.pth" in err and f"--resume {out / 'checkpoint.pth'}" in err
    assert (out / "checkpoint.pth").read_bytes() == before


@pytest.mark.slow
def test_resume_after_a_kill_between_checkpoint_and_snapshot_writes_what_was_owed(synthetic, tmp_path, monkeypatch):
    """The snapshot and the log line of the epoch whose checkpoint.pth was written, then the run killed."""
    import util.checkpoint

    out = tmp_path / "run"
    real_save = util.checkpoint.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(path, *args, **kwargs):
        if Path(path).name == "checkpoint0000.pth":
            raise Killed
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(util.checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        clickpose_main.main(_argv(synthetic, out, options=["epochs=2", "lr_drop=1"]))
    monkeypatch.setattr(util.checkpoint, "save_checkpoint", real_save)
    assert (out / "checkpoint.pth").is_file() and not (out / "checkpoint0000.pth").exists()
    assert not (out / "log.txt").exists()
    assert clickpose_main.main(_argv(synthetic, out, options=["epochs=2", "lr_drop=1"])) == 0
    from util.checkpoint import read_checkpoint

    assert read_checkpoint(out / "checkpoint0000.pth")["epoch"] == 0
    assert read_checkpoint(out / "checkpoint0001.pth")["epoch"] == 1
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [0, 1]
    saved = read_checkpoint(out / "checkpoint0000.pth")["train_stats"]
    assert log[0]["train_loss"] == pytest.approx(saved["loss"])


def test_empty_best_metric_file_does_not_block_resume(synthetic, trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    best_before = json.loads((trained / "best_metric.json").read_text())
    (out / "best_metric.json").write_text("")  # as a crash mid-write left it before writes were atomic
    assert clickpose_main.main(_argv(synthetic, out, options=["epochs=2"])) == 0
    assert "rebuilding the best metric so far" in (out / "info.txt").read_text()
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [0, 1]
    best_after = json.loads((out / "best_metric.json").read_text())
    first = best_before["best"]["all"]
    assert best_after["best"]["all"][0] >= first[0] and (best_after["best"]["all"][0] > first[0]
                                                          or best_after["best"]["all"][1] == first[1])


@pytest.mark.parametrize("option, message", [("lr_drop=0", "'lr_drop' must be"),
                                             ("save_checkpoint_interval=0", "'save_checkpoint_interval' must be"),
                                             ("epochs=-1", "'epochs' must be"), ("epochs=abc", "'epochs' must be an "
                                                                                               "integer")])
def test_values_that_would_lose_an_epoch_stop_before_training(synthetic, tmp_path, capsys, option, message):
    assert clickpose_main.main(_argv(synthetic, tmp_path / "run", options=[option])) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_bad_annotation_is_one_error_line_naming_file_and_id(synthetic, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synthetic, data)
    ann_file = data / "annotations" / "person_keypoints_train2017.json"
    content = json.loads(ann_file.read_text())
    content["annotations"][1]["keypoints"][4] = float("nan")
    ann_file.write_text(json.dumps(content))
    assert clickpose_main.main(_argv(data, tmp_path / "run", options=["epochs=1"])) == 1
    err = _error_line(capsys)
    assert str(ann_file) in err and f"annotation id {content['annotations'][1]['id']}" in err and "NaN" in err


def test_huge_lr_is_reported_as_divergence_with_epoch_and_iteration(synthetic, tmp_path, capsys):
    assert clickpose_main.main(_argv(synthetic, tmp_path / "run", options=["epochs=1", "lr=1e30", "batch_size=1",
                                                                            "clip_max_norm=0.0"])) == 1
    err = _error_line(capsys)
    assert "not finite" in err and "at epoch 0, iteration" in err and "training diverged" in err, err


def _backbone_weights_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pth"
    if kind == "strings":
        torch.save({"note": "not a tensor", "epoch": "3"}, path)
    elif kind == "text":
        path.write_text("these are not weights\n")
    else:  # a Python object: torch's own refusal advises weights_only=False
        torch.save({"model": {"conv1.weight": torch.zeros(1)}, "note": Payload(tmp_path / "marker")}, path)
    return path


@pytest.mark.parametrize("case", ["return_interm_indices=[0,0,1]", "num_feature_levels=2",
                                  "backbone=timm:does_not_exist", "backbone_weights:strings", "backbone_weights:text",
                                  "backbone_weights:object", "backbone_weights:missing"])
def test_model_config_errors_are_one_error_line_naming_the_key(synthetic, tmp_path, capsys, case):
    """Values that only the model build can check stop with exit code 2 (a ConfigError) and one line."""
    if case.startswith("backbone_weights:"):
        kind = case.split(":")[1]
        path = tmp_path / "none.pth" if kind == "missing" else _backbone_weights_file(tmp_path, kind)
        option = f"backbone_weights={path}"
    else:
        option = case
    key = option.split("=")[0]
    assert clickpose_main.main(_argv(synthetic, tmp_path / "run", "--eval", options=[option])) == 2
    err = _error_line(capsys)
    assert [line.startswith("error:") for line in err.splitlines()] == [True], err
    assert key in err and "weights_only=False" not in err, err
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("kind", ["missing", "directory", "empty"])
def test_unusable_checkpoint_is_one_error_line(synthetic, tmp_path, capsys, kind):
    path = {"missing": tmp_path / "none.pth", "directory": tmp_path, "empty": tmp_path / "empty.pth"}[kind]
    (tmp_path / "empty.pth").write_bytes(b"")
    assert clickpose_main.main(_argv(synthetic, tmp_path / "run", "--eval", "--resume", str(path))) == 1
    err = _error_line(capsys)
    assert {"missing": "not found", "directory": "is a directory", "empty": "is empty (0 bytes)"}[kind] in err


def test_debug_shows_the_traceback(synthetic, tmp_path):
    from util.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        clickpose_main.main(_argv(synthetic, tmp_path / "run", "--eval", "--debug", "--resume", str(tmp_path / "x")))


def test_start_removes_stale_temporaries_and_a_cut_log_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # checkpoint.pth's, best_metric.json's and a snapshot's (checkpoint_best_* share the prefix)
    stale = [out / ".checkpoint.pth.1a2b3c4d.tmp", out / ".best_metric.json.00ff00ff.tmp",
             out / ".checkpoint0004.pth.abcd1234.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    unrelated = out / ".mine.tmp"
    unrelated.write_text("the user's")
    real = {out / name: name.encode() for name in ("checkpoint.pth", "checkpoint0004.pth", "best_metric.json")}
    for path, content in real.items():
        path.write_bytes(content)
    (out / "log.txt").write_text('{"epoch": 0}\n{"epoch": 1, "trai')
    clickpose_main.prepare(["-c", CONFIG, "--output_dir", str(out)], environ={})
    assert not any(path.exists() for path in stale) and unrelated.exists()
    assert all(path.read_bytes() == content for path, content in real.items())
    assert (out / "log.txt").read_text() == '{"epoch": 0}\n'


def test_disk_full_is_an_expected_error():
    import errno

    from util.files import DiskFullError

    from util.errors import exit_code

    assert exit_code(DiskFullError(errno.ENOSPC, "no space left on the device")) == 1
    assert exit_code(OSError(errno.ENOSPC, "No space left on device")) == 1
    assert exit_code(KeyError("a bug")) is None


def _torchrun(data: Path, out: Path, *options: str) -> None:
    import os

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port", str(free_port()),
           str(REPO / "main.py"), *_argv(data, out, options=[*options, "batch_size=1"])]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_two_process_resume_equals_an_uninterrupted_run(synthetic, tmp_path):
    """Every rank's random state is saved and restored: 2 epochs == 1 epoch, stop, resume to 2 (2 ranks, gloo)."""
    from util.checkpoint import read_checkpoint

    _torchrun(synthetic, tmp_path / "full", "epochs=2")
    _torchrun(synthetic, tmp_path / "split", "epochs=1")
    assert len(read_checkpoint(tmp_path / "split" / "checkpoint.pth")["rng_state_per_rank"]) == 2
    _torchrun(synthetic, tmp_path / "split", "epochs=2")
    full = read_checkpoint(tmp_path / "full" / "checkpoint.pth")
    split = read_checkpoint(tmp_path / "split" / "checkpoint.pth")
    assert full["epoch"] == split["epoch"] == 1
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key


@pytest.mark.slow
def test_amp_float16_resume_equals_an_uninterrupted_run(synthetic, tmp_path):
    """The GradScaler's scale and growth tracker are saved and restored: under --amp (float16, CPU autocast) 2 epochs
    == 1 epoch, stop, resume to 2, bit for bit. Batches of one give enough steps for the scale to fall from its
    initial value in epoch 0, so a resume that restarted the scale would skip other steps in epoch 1."""
    from util.checkpoint import read_checkpoint

    amp = ("--amp", "--amp_dtype", "float16")
    for out, epochs in (("full", 2), ("split", 1), ("split", 2)):
        assert clickpose_main.main(_argv(synthetic, tmp_path / out, *amp, options=[f"epochs={epochs}",
                                                                                    "batch_size=1"])) == 0
        if (out, epochs) == ("split", 1):
            saved = read_checkpoint(tmp_path / "split" / "checkpoint.pth").get("scaler", {})
            assert {"scale", "_growth_tracker"} <= set(saved), saved
    full = read_checkpoint(tmp_path / "full" / "checkpoint.pth")
    split = read_checkpoint(tmp_path / "split" / "checkpoint.pth")
    assert full["epoch"] == split["epoch"] == 1
    assert full["scaler"] == split["scaler"]
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key
