"""Command line, start-up without a launcher, launcher spellings, and the run's config files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import main as clickpose_main
from util.config import Config, ConfigError
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
    args, _, _ = clickpose_main.prepare(["-c", CONFIG, "--coco_path", "/explicit"],
                                        environ={"CLICKPOSE_COCO_PATH": "/env"})
    assert args.coco_path == "/explicit" and args.noc_filter is False


def test_bad_override_exits_with_clear_message(tmp_path, capsys):
    code = clickpose_main.main(["-c", CONFIG, "--options", "human_feedback=FLASE"])
    assert code == 2
    assert "boolean" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        clickpose_main.prepare(["-c", CONFIG, "--options", "epoch=3"], environ={})
