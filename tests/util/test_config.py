"""Config loading, _base_ merging, dump/reload, and --options parsing (reference DictAction semantics + ours)."""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pytest

from util.config import Config, ConfigError, DictAction, apply_config_to_args, parse_options

REPO = Path(__file__).resolve().parents[2]

# Every --options string of the original README, with the values the original DictAction produces
# (except human_feedback=FLASE, which is tested separately).
README_OPTIONS = [
    ("batch_size=4 epochs=100 lr_drop=80 use_ema=TRUE human_feedback=TRUE feedback_loop_NOC_test=FALSE "
     "feedback_inference=FALSE only_correction=FALSE",
     dict(batch_size=4, epochs=100, lr_drop=80, use_ema=True, human_feedback=True, feedback_loop_NOC_test=False,
          feedback_inference=False, only_correction=False)),
    ("batch_size=1 epochs=100 lr_drop=80 use_ema=TRUE human_feedback=TRUE feedback_loop_NOC_test=TRUE "
     "feedback_inference=TRUE only_correction=FALSE num_select=20",
     dict(batch_size=1, epochs=100, lr_drop=80, use_ema=True, human_feedback=True, feedback_loop_NOC_test=True,
          feedback_inference=True, only_correction=False, num_select=20)),
    ("batch_size=4 epochs=100 lr_drop=80 use_ema=TRUE human_feedback=TRUE feedback_loop_NOC_test=FALSE "
     "feedback_inference=TRUE only_correction=FALSE num_select=20",
     dict(batch_size=4, epochs=100, lr_drop=80, use_ema=True, human_feedback=True, feedback_loop_NOC_test=False,
          feedback_inference=True, only_correction=False, num_select=20)),
]


def _parse(cli: str) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--options", nargs="+", action=DictAction)
    return parser.parse_args(["--options", *cli.split()]).options


@pytest.mark.parametrize("cli,expected", README_OPTIONS)
def test_readme_options_parse_like_the_reference(cli, expected):
    parsed = _parse(cli)
    assert parsed == expected
    assert all(type(parsed[k]) is type(v) for k, v in expected.items())
    cfg = Config.fromfile(REPO / "config" / "clickpose.cfg.py")
    cfg.merge_from_dict(parsed)
    for key, value in expected.items():
        assert cfg[key] == value


def test_reference_scalar_rules():
    parsed = parse_options(["a=3", "b=0.5", "c=1e-4", "d=True", "e=fAlSe", "f=None", "g=null", "h=abc", "i=1,2,3",
                            "j=x,y", "k=-2", "m="])
    assert parsed == dict(a=3, b=0.5, c=1e-4, d=True, e=False, f=None, g=None, h="abc", i=[1, 2, 3], j=["x", "y"],
                          k=-2, m="")
    assert isinstance(parsed["a"], int) and isinstance(parsed["b"], float)


def test_brackets_tuples_and_quotes_are_parsed():
    parsed = parse_options(["a=[1,2]", "b=(3,4.5)", "c='a,b'", 'd="x y"', "e=[[1,2],[3]]", "f=[]", "g=[a,true]"])
    assert parsed == dict(a=[1, 2], b=(3, 4.5), c="a,b", d="x y", e=[[1, 2], [3]], f=[], g=["a", True])


def test_value_keeps_everything_after_first_equals():
    assert parse_options(["note=a=b"]) == {"note": "a=b"}


def test_item_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_options(["batch_size"])


def test_readme_typo_flase_fails_clearly():
    cfg = Config.fromfile(REPO / "config" / "clickpose.cfg.py")
    with pytest.raises(ConfigError, match="human_feedback.*boolean.*FLASE"):
        cfg.merge_from_dict(_parse("human_feedback=FLASE"))


def test_unknown_key_names_closest_known_key():
    cfg = Config.fromfile(REPO / "config" / "clickpose.cfg.py")
    with pytest.raises(ConfigError, match="unknown config key 'batchsize'.*batch_size"):
        cfg.merge_from_dict({"batchsize": 3})
    with pytest.raises(ConfigError, match="human_feedbak.*human_feedback"):
        cfg.merge_from_dict({"human_feedbak": True})


def test_dotted_keys(tmp_path):
    (tmp_path / "c.py").write_text("model = dict(depth=50, neck=dict(ch=256))\nlr = 0.1\n")
    cfg = Config.fromfile(tmp_path / "c.py")
    cfg.merge_from_dict(parse_options(["model.neck.ch=128", "model.depth=18"]))
    assert cfg.model.neck.ch == 128 and cfg.model.depth == 18
    with pytest.raises(ConfigError, match="model.nek"):
        cfg.merge_from_dict({"model.nek.ch": 1})


def test_base_merging_child_wins_delete_and_lists(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\nshared = dict(p=1, q=2)\nlst = [1, 2]\n")
    (tmp_path / "b.py").write_text("y = 'b'\nother = dict(k=1)\n")
    (tmp_path / "child.py").write_text(textwrap.dedent("""
        _base_ = ['a.py', 'b.py']
        x = 10
        shared = dict(q=3, r=4)
        other = dict(_delete_=True, z=9)
        import math
        def helper():
            return 1
    """))
    cfg = Config.fromfile(tmp_path / "child.py")
    assert cfg.x == 10 and cfg.y == "b" and cfg.lst == [1, 2]
    assert cfg.shared.to_dict() == {"p": 1, "q": 3, "r": 4}
    assert cfg.other.to_dict() == {"z": 9}
    assert "math" not in cfg and "helper" not in cfg and "_base_" not in cfg


def test_single_string_base_and_nested_bases(tmp_path):
    (tmp_path / "root.py").write_text("a = 1\nb = 2\n")
    (tmp_path / "mid.py").write_text("_base_ = 'root.py'\nb = 3\n")
    (tmp_path / "leaf.py").write_text("_base_ = ['mid.py']\n_defines_keys_ = True\nc = 4\n")
    assert Config.fromfile(tmp_path / "leaf.py").to_dict() == {"a": 1, "b": 3, "c": 4}


def test_duplicate_key_across_bases_is_an_error(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("x = 2\n")
    (tmp_path / "c.py").write_text("_base_ = ['a.py', 'b.py']\n")
    with pytest.raises(ConfigError, match="'x' is defined by two base configs"):
        Config.fromfile(tmp_path / "c.py")


def test_missing_file_and_broken_file_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Config.fromfile(tmp_path / "nope.py")
    (tmp_path / "bad.py").write_text("x = (\n")
    with pytest.raises(ConfigError, match="bad.py"):
        Config.fromfile(tmp_path / "bad.py")


@pytest.mark.parametrize("name", ["clickpose.cfg.py", "coco_transformer.py"])
def test_dump_then_reload_gives_same_dict(tmp_path, name):
    cfg = Config.fromfile(REPO / "config" / name)
    cfg.merge_from_dict(parse_options(["lr_drop_list=[1,2]"]) if "lr_drop_list" in cfg else {})
    out = tmp_path / "config_cfg.py"
    cfg.dump(out)
    assert Config.fromfile(out).to_dict() == cfg.to_dict()


def test_reference_config_has_reference_defaults():
    cfg = Config.fromfile(REPO / "config" / "clickpose.cfg.py")
    expected = dict(num_classes=2, lr=1e-4, lr_backbone=1e-5, batch_size=2, epochs=50, lr_drop=11, clip_max_norm=0.1,
                    hidden_dim=256, nheads=8, num_queries=900, enc_layers=6, dec_layers=6, dim_feedforward=2048,
                    num_feature_levels=4, two_stage_type="standard", num_select=50, use_dn=True, dn_number=50,
                    dn_labelbook_size=100, num_group=50, num_group_refine=20, num_body_points=17,
                    num_box_decoder_layers=2, human_feedback=False, ema_decay=0.9997,
                    set_cost_oks=4.0, oks_loss_coef=4.0, focal_alpha=0.25, pe_temperatureH=20,
                    return_interm_indices=[1, 2, 3], data_aug_max_size=1333)
    for key, value in expected.items():
        assert cfg[key] == value, key
    from util.settings import model_settings

    assert model_settings(cfg.to_dict()).feedback.num_refine_layers == 4  # the reference's 4, derived


def test_config_keys_become_args_and_collisions_fail():
    cfg = Config({"lr": 0.1, "epochs": 3})
    args = apply_config_to_args(cfg, argparse.Namespace(seed=1))
    assert args.lr == 0.1 and args.epochs == 3
    with pytest.raises(ConfigError, match="collides.*--seed"):
        apply_config_to_args(Config({"seed": 3}), argparse.Namespace(seed=1))


# ---- issue 13: values type-checked against the defaults, misspelt keys in files, ranges ----------------------

CLICKPOSE = REPO / "config" / "clickpose.cfg.py"


@pytest.mark.parametrize("option, message", [
    ("epochs=abc", r"'epochs' must be an integer \(default 50\), got 'abc'"),
    ("hidden_dim=None", r"'hidden_dim' must be an integer .* got None"),
    ("lr=true", r"'lr' must be a number"),
    ("epochs=2.5", r"'epochs' must be an integer"),
    ("data_aug_max_size=[1,2]", r"'data_aug_max_size' must be an integer .* got \[1, 2\]"),
])
def test_override_of_another_type_is_a_one_line_error(option, message):
    cfg = Config.fromfile(CLICKPOSE)
    with pytest.raises(ConfigError, match=message) as info:
        cfg.merge_from_dict(parse_options([option]))
    assert "\n" not in str(info.value)


def test_override_conversions_that_keep_meaning():
    cfg = Config.fromfile(CLICKPOSE)
    cfg.merge_from_dict(parse_options(["lr=1", "pem_error_types=jitter", "click_freeze=none", "backbone_weights=x"]))
    assert cfg.lr == 1 and cfg.pem_error_types == ["jitter"] and cfg.click_freeze == "none"
    assert cfg.backbone_weights == "x"  # a default of None takes any value


def test_misspelt_key_in_a_config_file_names_the_closest_key(tmp_path):
    (tmp_path / "mine.py").write_text(f"_base_ = ['{CLICKPOSE}']\nlr_dorp = 5\n")
    with pytest.raises(ConfigError, match=r"mine.py: key 'lr_dorp' is not defined by its base configs. Did you "
                                          r"mean: lr_drop"):
        Config.fromfile(tmp_path / "mine.py")


def test_wrong_type_in_a_config_file_names_the_file(tmp_path):
    (tmp_path / "mine.py").write_text(f"_base_ = ['{CLICKPOSE}']\nepochs = '12'\n")
    with pytest.raises(ConfigError, match=r"mine.py: 'epochs' must be an integer"):
        Config.fromfile(tmp_path / "mine.py")


def test_every_shipped_config_passes_the_checks():
    from util.config import check_ranges

    for path in sorted((REPO / "config").glob("*.py")):
        check_ranges(Config.fromfile(path).to_dict())


@pytest.mark.parametrize("option, message", [
    ("lr_drop=0", "'lr_drop' must be a finite number >= 1, got 0"),
    ("save_checkpoint_interval=0", "'save_checkpoint_interval' must be"),
    ("epochs=-1", "'epochs' must be a finite number >= 1, got -1"),
    ("batch_size=0", "'batch_size'"),
    ("lr=inf", "'lr' must be a finite number"),
    ("ema_decay=1.5", "'ema_decay' must be between 0 and 1.0"),
    ("data_aug_scales=[]", "'data_aug_scales' must not be an empty list"),
    ("lr_drop_list=0,5", "'lr_drop_list' must hold epochs >= 1"),
])
def test_values_out_of_range_are_refused(option, message):
    from util.config import check_ranges

    cfg = Config.fromfile(CLICKPOSE)
    cfg.merge_from_dict(parse_options([option]))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_ranges(cfg.to_dict())
