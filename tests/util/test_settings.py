"""util.settings: sections from flat keys, defaults from config/clickpose.cfg.py, derived and refused values."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from util.config import Config, ConfigError
from util.settings import DEFAULTS_FILE, ModelSettings, config_defaults, model_settings

REPO = Path(__file__).resolve().parents[2]


def test_partial_mapping_takes_the_config_file_defaults():
    # an old checkpoint's args: the original's keys only (none of this implementation's additions)
    file_values = Config.fromfile(REPO / "config" / "clickpose.cfg.py").to_dict()
    settings = model_settings({"hidden_dim": 64, "dec_layers": 3, "num_body_points": 14})
    assert isinstance(settings, ModelSettings)
    assert settings.transformer.d_model == 64 and settings.backbone.hidden_dim == 64
    assert settings.num_keypoints == settings.matcher.num_keypoints == settings.denoising.num_keypoints == 14
    assert settings.backbone.weights == file_values["backbone_weights"]
    assert settings.feedback.click_policy == file_values["click_policy"]
    assert settings.feedback.click_freeze == file_values["click_freeze"]
    assert settings.transformer.msda_backend == file_values["msda_backend"]
    assert settings.loss.cls_quality_target == file_values["cls_quality_target"]
    assert settings.denoising.error_types == tuple(file_values["pem_error_types"])
    assert settings.denoising.error_prob == file_values["pem_error_prob"]
    assert settings.transformer.num_queries == file_values["num_queries"]
    assert settings.matcher.cost_oks == file_values["set_cost_oks"]
    # derived, not read: the refinement runs the keypoint layers
    assert settings.feedback.num_refine_layers == 3 - file_values["num_box_decoder_layers"]
    assert settings.transformer.num_refine_layers == settings.feedback.num_refine_layers


def test_namespace_and_mapping_give_the_same_settings():
    values = {"num_queries": 100, "use_dn": False, "human_feedback": True}
    assert model_settings(argparse.Namespace(**values)) == model_settings(values)
    settings = model_settings(values)
    assert settings.denoising.number == 0  # use_dn off
    assert settings.loss.num_aux_outputs == config_defaults()["dec_layers"] - 1 + settings.feedback.num_refine_layers


def test_defaults_live_in_the_config_file():
    assert DEFAULTS_FILE == REPO / "config" / "clickpose.cfg.py"
    assert model_settings({}) == model_settings(config_defaults())
    sections = [cls for cls in typing.get_type_hints(ModelSettings).values() if dataclasses.is_dataclass(cls)]
    assert len(sections) == 7
    for cls in sections:  # no second home of defaults: every field is required
        assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   for f in dataclasses.fields(cls)), cls


def test_disagreeing_num_humanfeedback_layers_is_an_error():
    with pytest.raises(ConfigError, match=r"num_humanfeedback_layers \(2\) must equal dec_layers - "
                                          r"num_box_decoder_layers \(4\).*set num_humanfeedback_layers=4"):
        model_settings({"dec_layers": 6, "num_box_decoder_layers": 2, "num_humanfeedback_layers": 2})
    # agreeing, or absent (derived): fine
    assert model_settings({"dec_layers": 4, "num_humanfeedback_layers": 2}).feedback.num_refine_layers == 2


def test_refinement_layers_follow_the_decoder_without_being_set():
    from util.config import Config

    cfg = Config.fromfile(REPO / "config" / "clickpose.cfg.py")
    cfg.merge_from_dict({"dec_layers": 4})  # the config file derives num_humanfeedback_layers: nothing else to set
    assert model_settings(cfg.to_dict()).feedback.num_refine_layers == 2
    cfg.merge_from_dict({"num_humanfeedback_layers": 2})  # the original's key, accepted when it agrees
    assert model_settings(cfg.to_dict()).feedback.num_refine_layers == 2
    assert model_settings({"dec_layers": 4}).feedback.num_refine_layers == 2


def test_refused_keys_stay_refused():
    with pytest.raises(ConfigError, match=r"masks=True \(only False is supported"):
        model_settings({"masks": True})
    with pytest.raises(ConfigError, match="num_patterns=3"):
        model_settings(argparse.Namespace(num_patterns=3))


def test_no_constructor_in_models_clickpose_has_more_than_ten_parameters():
    too_many = []
    for path in sorted((REPO / "models" / "clickpose").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) - 1  # without self
                    count += bool(args.vararg) + bool(args.kwarg)
                    if count > 10:
                        too_many.append(f"{path.relative_to(REPO)}:{node.name} ({count})")
    assert too_many == []


def test_model_builders_read_no_flat_keys_with_defaults():
    # the model's modules get sections; only util.settings reads (and defaults) the flat keys
    offenders = []
    for path in [REPO / "models" / "__init__.py", *sorted((REPO / "models" / "clickpose").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                    and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "args":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


# The config adapter: the only modules that read flat keys with a default.
ADAPTER = {"util/settings.py", "util/config.py", "util/config_support.py"}


def _project_files():
    skip = {"tests", ".venv", "build", "demo_output", "data_synthetic"}
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        # hidden folders hold environments (.venv, .venv-ls) and tooling, not project code
        if not skip & set(rel.parts) and not any(part.startswith(".") for part in rel.parts):
            yield rel, ast.parse(path.read_text())


def test_no_function_of_the_project_takes_more_than_ten_parameters():
    too_many = []
    for rel, tree in _project_files():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                count -= bool(a.args) and a.args[0].arg in ("self", "cls")
                if count > 10:
                    too_many.append(f"{rel}:{node.name} ({count})")
    assert too_many == []


def test_flat_keys_are_defaulted_only_in_the_config_adapter():
    offenders = []
    for rel, tree in _project_files():
        if str(rel) in ADAPTER:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                    and len(node.args) == 3 and isinstance(node.args[0], ast.Name) and node.args[0].id == "args":
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == [], "read these through a section of util.settings instead"
