"""Every key of config/clickpose.cfg.py is read by the code or refused.

Each key is set to a non-default value and one of these holds:
- REFUSED (util.config_support.UNSUPPORTED_KEYS): building refuses it, naming the key and why;
- REJECTED: the key is read and the chosen value is one this implementation cannot honour: a clear error;
- BUILT: what the builders make (model modules, attributes, shapes and initial weights; criterion, matcher and loss
  weights; optimizer groups and the learning-rate schedule; transforms; keypoint layout; dataset spec) changes;
- RUN: read by main.run / engine while training and evaluating (they decide loops, batching, EMA, checkpoints and
  the interactive evaluation); a recorded run shows each is read.
The test fails when a key of the config is in none of these (a new key must be read or refused).
"""
from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import pytest
import torch

from util.config import Config, ConfigError, apply_config_to_args
from util.config_support import UNSUPPORTED_KEYS

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "clickpose.cfg.py"
TINY = REPO / "config" / "tiny.cfg.py"

_DDETR = {"param_dict_type": "ddetr_in_mmdet"}  # the groups that read lr_backbone_names / lr_linear_proj_*
_CUSTOM_PATHS = {"dataset_file": "custom", "custom_train_ann": "a.json", "custom_train_img": "img",
                 "custom_val_ann": "b.json", "custom_val_img": "img"}
_PEM = {"pem_error_types": ["jitter"]}

# key -> (what to probe, the non-default setting incl. the context it needs); the baseline is the context alone
# (the setting without the key, or BASELINES[key] where the setting changes coupled keys together)
BUILT: dict[str, tuple[str, dict]] = {
    "data_aug_scales": ("transforms", {"data_aug_scales": [256, 288]}),
    "data_aug_max_size": ("transforms", {"data_aug_max_size": 1000}),
    "data_aug_scales2_resize": ("transforms", {"data_aug_scales2_resize": [300]}),
    "data_aug_scales2_crop": ("transforms", {"data_aug_scales2_crop": [200, 300]}),
    "data_aug_scale_overlap": ("transforms", {"data_aug_scale_overlap": 0.5}),
    "flip_exact": ("transforms", {"flip_exact": True}),
    "crop_marks_invisible": ("transforms", {"crop_marks_invisible": True}),
    "lr": ("optim", {"lr": 5e-5}),
    "lr_backbone": ("optim", {"lr_backbone": 5e-6}),
    "lr_backbone_names": ("optim", {**_DDETR, "lr_backbone_names": ["backbone.0.body.layer4"]}),
    "lr_linear_proj_mult": ("optim", {**_DDETR, "lr_linear_proj_mult": 0.5}),
    "lr_linear_proj_names": ("optim", {**_DDETR, "lr_linear_proj_names": ["attention_weights"]}),
    "param_dict_type": ("optim", _DDETR),
    "weight_decay": ("optim", {"weight_decay": 5e-5}),
    "lr_drop": ("optim", {"lr_drop": 7}),
    "lr_drop_list": ("optim", {"multi_step_lr": True, "lr_drop_list": [5, 9]}),
    "multi_step_lr": ("optim", {"multi_step_lr": True}),
    "onecyclelr": ("optim", {"onecyclelr": True}),
    "backbone": ("model", {"backbone": "resnet34"}),
    "backbone_weights": ("model", {"backbone_weights": "<resnet18 weights>"}),
    "batch_norm_type": ("model", {"batch_norm_type": "BatchNorm2d"}),
    "use_checkpoint": ("model", {"use_checkpoint": True}),
    "backbone_freeze_keywords": ("optim", {"backbone_freeze_keywords": ["layer4"]}),
    "backbone_trainable_stages": ("optim", {"backbone_trainable_stages": "all"}),
    "cls_no_bias": ("model", {"cls_no_bias": True}),
    "dec_layers": ("model", {"dec_layers": 4, "num_humanfeedback_layers": 2}),
    "num_box_decoder_layers": ("model", {"num_box_decoder_layers": 1, "num_humanfeedback_layers": 2}),
    "dec_n_points": ("model", {"dec_n_points": 2}),
    "dec_pred_bbox_embed_share": ("model", {"dec_pred_bbox_embed_share": True}),
    "dec_pred_class_embed_share": ("model", {"dec_pred_class_embed_share": True}),
    "two_stage_bbox_embed_share": ("model", {"dec_pred_bbox_embed_share": True, "dec_pred_class_embed_share": True,
                                             "two_stage_bbox_embed_share": True}),
    "two_stage_class_embed_share": ("model", {"dec_pred_bbox_embed_share": True, "dec_pred_class_embed_share": True,
                                              "two_stage_class_embed_share": True}),
    "dilation": ("model", {"backbone": "resnet50", "dilation": True}),
    "return_interm_indices": ("model", {"return_interm_indices": [0, 1, 2, 3], "num_feature_levels": 5}),
    "dim_feedforward": ("model", {"dim_feedforward": 96}),
    "dropout": ("model", {"dropout": 0.1}),
    "enc_layers": ("model", {"enc_layers": 2}),
    "enc_n_points": ("model", {"enc_n_points": 2}),
    "hidden_dim": ("model", {"hidden_dim": 128}),
    "nheads": ("model", {"nheads": 8}),
    "num_classes": ("model", {"num_classes": 3}),
    "num_feature_levels": ("model", {"num_feature_levels": 3}),
    "num_queries": ("model", {"num_queries": 200}),
    "pe_temperatureH": ("model", {"pe_temperatureH": 10}),
    "pe_temperatureW": ("model", {"pe_temperatureW": 10}),
    "transformer_activation": ("model", {"transformer_activation": "gelu"}),
    "human_feedback": ("model", {"human_feedback": True}),
    "num_group": ("model", {"num_group": 12}),
    "num_group_refine": ("model", {"num_group_refine": 6}),
    "only_correction": ("model", {"only_correction": True}),
    "nms_iou_threshold": ("model", {"nms_iou_threshold": 0.5}),
    "num_select": ("model", {"num_select": 10}),
    "dn_box_label_noise_ratio": ("model", {"dn_box_label_noise_ratio": 0.2}),
    "dn_box_noise_scale": ("model", {"dn_box_noise_scale": 0.2}),
    "dn_kpt_label_noise_ratio": ("model", {"dn_kpt_label_noise_ratio": 0.2}),
    "dn_kpt_noise_scale": ("model", {"dn_kpt_noise_scale": 0.2}),
    "dn_labelbook_size": ("model", {"dn_labelbook_size": 50}),
    "dn_number": ("model", {"dn_number": 5}),
    "use_dn": ("model", {"use_dn": False}),
    "click_freeze": ("model", {"click_freeze": "all"}),
    "msda_backend": ("model", {"msda_backend": "pytorch"}),
    "pem_error_prob": ("model", {**_PEM, "pem_error_prob": 0.5}),
    "pem_error_types": ("model", _PEM),
    "num_body_points": ("model", {"dataset_file": "custom", "num_body_points": 14}),
    "aux_loss": ("criterion", {"aux_loss": False}),
    "bbox_loss_coef": ("criterion", {"bbox_loss_coef": 1.0}),
    "cls_loss_coef": ("criterion", {"cls_loss_coef": 1.0}),
    "giou_loss_coef": ("criterion", {"giou_loss_coef": 1.0}),
    "interm_loss_coef": ("criterion", {"interm_loss_coef": 0.5}),
    "keypoints_loss_coef": ("criterion", {"keypoints_loss_coef": 1.0}),
    "no_interm_box_loss": ("criterion", {"no_interm_box_loss": True}),
    "oks_loss_coef": ("criterion", {"oks_loss_coef": 1.0}),
    "dn_bbox_coef": ("criterion", {"dn_bbox_coef": 0.2}),
    "dn_keypoints_coef": ("criterion", {"dn_keypoints_coef": 0.2}),
    "dn_label_coef": ("criterion", {"dn_label_coef": 0.2}),
    "focal_alpha": ("criterion", {"focal_alpha": 0.5}),
    "cls_quality_target": ("criterion", {"cls_quality_target": "oks"}),
    "set_cost_bbox": ("criterion", {"set_cost_bbox": 1.0}),
    "set_cost_class": ("criterion", {"set_cost_class": 1.0}),
    "set_cost_giou": ("criterion", {"set_cost_giou": 1.0}),
    "set_cost_keypoints": ("criterion", {"set_cost_keypoints": 1.0}),
    "set_cost_oks": ("criterion", {"set_cost_oks": 1.0}),
    "custom_keypoint_names": ("layout", {"dataset_file": "custom", "custom_keypoint_names": list("abcdefghijklmnopq")}),
    "custom_flip_pairs": ("layout", {"dataset_file": "custom", "custom_flip_pairs": [[0, 1]]}),
    "custom_sigmas": ("layout", {"dataset_file": "custom", "custom_sigmas": [0.1] * 17}),
    "custom_skeleton": ("layout", {"dataset_file": "custom", "custom_skeleton": [[0, 1]]}),
    "keypoint_field": ("layout", {"dataset_file": "humanart", "num_body_points": 21, "keypoint_field": "keypoints_21"}),
    "custom_evaluator": ("spec", {**_CUSTOM_PATHS, "custom_evaluator": "crowdpose"}),
    "custom_train_ann": ("spec", {**_CUSTOM_PATHS, "custom_train_ann": "c.json"}),
    "custom_train_img": ("spec", {**_CUSTOM_PATHS, "custom_train_img": "other"}),
    "custom_val_ann": ("spec", {**_CUSTOM_PATHS, "custom_val_ann": "c.json"}),
    "custom_val_img": ("spec", {**_CUSTOM_PATHS, "custom_val_img": "other"}),
}

BASELINES = {"dec_layers": {}, "num_box_decoder_layers": {}, **{k: _CUSTOM_PATHS for k in _CUSTOM_PATHS}}
BASELINES["custom_evaluator"] = _CUSTOM_PATHS

# key -> (value, error type, message part): read, and a value outside what is supported is a clear error
REJECTED: dict[str, tuple[object, type, str]] = {
    "modelname": ("detr", ValueError, "unknown modelname"),
    "matcher_type": ("SimpleMatcher", ValueError, "unknown matcher_type"),
    "pre_norm": (True, ValueError, "pre_norm"),
    "query_dim": (2, ValueError, "query_dim"),
    "two_stage_type": ("no", ValueError, "two_stage_type"),
    "position_embedding": ("learned", ValueError, "position_embedding"),
    "num_humanfeedback_layers": (2, ValueError, "num_humanfeedback_layers"),
}

# read by main.run / engine (see the recorded run below); the value used there: non-default
RUN = {"batch_size": 1, "clip_max_norm": 0.2, "epochs": 1, "save_checkpoint_interval": 7, "use_ema": True,
       "ema_decay": 0.5, "ema_unique_params": True, "ema_epoch": 1, "feedback_loop_NOC_test": False,
       "feedback_inference": True, "max_clicks": 1, "noc_thresholds": [0.5], "adapt_keypoint_init": {},
       "click_policy": "worst_l2"}


def _config_keys() -> list[str]:
    return list(Config.fromfile(CONFIG).keys())


def test_every_config_key_is_covered():
    keys = _config_keys()
    groups = [set(UNSUPPORTED_KEYS), set(REJECTED), set(BUILT), set(RUN)]
    missing = [k for k in keys if not any(k in g for g in groups)]
    assert missing == [], f"config keys neither read nor refused by any test: {missing}"
    doubled = [k for k in keys if sum(k in g for g in groups) > 1]
    assert doubled == [], doubled
    stale = [k for g in groups for k in g if k not in keys]
    assert stale == [], f"listed keys the config does not have: {stale}"


def _args(**overrides) -> argparse.Namespace:
    cfg = Config.fromfile(TINY)
    args = apply_config_to_args(cfg, argparse.Namespace(dataset_file="coco", device="cpu"))
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.mark.parametrize("key", sorted(UNSUPPORTED_KEYS))
def test_unsupported_keys_are_refused(key):
    from datasets import get_metadata
    from models import build_model

    default = UNSUPPORTED_KEYS[key][0]
    if isinstance(default, bool) or default is None:
        value = {None: [1], True: False, False: True}[default]
    else:
        value = [] if isinstance(default, list) else default + ("_x" if isinstance(default, str) else 1)
    args = _args(**{key: value})
    with pytest.raises(ConfigError, match=re.escape(f"{key}={value!r} (only {default!r} is supported")):
        build_model(args, get_metadata(args))


@pytest.mark.parametrize("key", sorted(REJECTED))
def test_unsupported_values_are_errors(key):
    from datasets import get_metadata
    from models import build_model

    value, error, message = REJECTED[key]
    args = _args(**{key: value})
    with pytest.raises(error, match=message):
        build_model(args, get_metadata(args))


def _scalars(obj) -> dict:
    """Plain attributes of an object (numbers, strings, flags, tuples of them, and functions by name)."""
    plain = (bool, int, float, str, type(None))
    out = {}
    for k, v in vars(obj).items():
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, plain) or (isinstance(v, (list, tuple)) and all(isinstance(x, plain + (tuple, list))
                                                                          for x in v)):
            out[k] = repr(v)
        elif callable(v) and not isinstance(v, torch.nn.Module) and hasattr(v, "__name__"):
            out[k] = v.__name__
    return out


def _probe(kind: str, args) -> dict:
    """What the builders make from ``args`` (one part, to keep the test cheap)."""
    from datasets import get_metadata
    from datasets.coco import spec_from_args
    from datasets.transforms import build_transforms_from_args

    torch.manual_seed(0)
    if kind == "layout":
        return {"layout": repr(get_metadata(args))}
    if kind == "spec":
        return {"spec": repr(spec_from_args(args))}
    if kind == "transforms":
        flip = get_metadata(args).flip_permutation()
        return {split: repr(build_transforms_from_args(split, args, flip)) for split in ("train", "val")}
    if kind == "criterion":
        from models.clickpose.criterion import build_criterion
        from models.clickpose.matcher import build_matcher

        from util.settings import model_settings

        settings = model_settings(args)
        criterion = build_criterion(settings.loss, build_matcher(settings.matcher, get_metadata(args).sigmas))
        return {"weights": repr(sorted(criterion.weight_dict.items())), **_scalars(criterion),
                **{f"matcher.{k}": v for k, v in _scalars(criterion.matcher).items()}}
    from models import build_model

    model, _, post = build_model(args, get_metadata(args))
    if kind == "optim":
        from models.optim import build_optimizer
        from util.training import build_lr_scheduler

        optimizer = build_optimizer(args, model)
        scheduler, per_iter = build_lr_scheduler(args, optimizer, 10)
        lrs = []
        for _ in range(40):
            scheduler.step()
            lrs.append([round(g["lr"], 12) for g in optimizer.param_groups])
        names = {id(p): n for n, p in model.named_parameters()}
        return {"groups": repr([(g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
                                for g in optimizer.param_groups]),
                "schedule": repr((per_iter, lrs))}
    out = {f"{name}.{k}": v for name, module in model.named_modules() for k, v in _scalars(module).items()}
    out.update({f"post.{k}": v for k, v in _scalars(post["bbox"]).items()})
    out.update({f"tensor.{k}": (tuple(v.shape), round(float(v.double().abs().sum()), 4))
                for k, v in model.state_dict().items()})
    return out


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    import torchvision

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return str(path)


_BASELINE_PROBES: dict = {}


@pytest.mark.parametrize("key", sorted(BUILT))
def test_built_keys_change_what_is_built(key, resnet18_weights):
    kind, setting = BUILT[key]
    setting = {k: (resnet18_weights if v == "<resnet18 weights>" else v) for k, v in setting.items()}
    context = BASELINES.get(key, {k: v for k, v in setting.items() if k != key})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache_key = (kind, repr(sorted(context.items())))
        if cache_key not in _BASELINE_PROBES:  # many keys share a baseline: build it once
            _BASELINE_PROBES[cache_key] = _probe(kind, _args(**context))
        before = _BASELINE_PROBES[cache_key]
        after = _probe(kind, _args(**setting))
    assert before != after, f"setting {key}={setting[key]!r} changed nothing that {kind} builds"


class _Recording(argparse.Namespace):
    """A namespace that records which attributes are read."""

    def __getattribute__(self, name):
        if not name.startswith("_"):
            object.__getattribute__(self, "_read").add(name)
        return object.__getattribute__(self, name)


@pytest.mark.slow
def test_run_keys_are_read_by_a_training_run(tmp_path):
    """One short training + interactive evaluation run (from a checkpoint of the same model) reads every RUN key."""
    import main as clickpose_main
    from datasets.synthetic import write_synthetic_dataset
    from util.checkpoint import save_checkpoint

    write_synthetic_dataset(tmp_path / "data", 3, seed=1, num_val=1)
    options = [f"{k}={v!r}".replace("'", "") if not isinstance(v, (list, dict)) else f"{k}={v}"
               for k, v in RUN.items() if k != "adapt_keypoint_init"]
    argv = ["-c", str(REPO / "config" / "demo.cfg.py"), "--coco_path", str(tmp_path / "data"), "--output_dir",
            str(tmp_path / "out"), "--device", "cpu", "--num_workers", "0", "--options", "num_queries=100",
            "dn_number=4", "num_group=8", "num_group_refine=4", "num_select=8", *options]
    args, _, logger = clickpose_main.prepare(argv, environ={})
    args.adapt_keypoint_init = RUN["adapt_keypoint_init"]
    from datasets import get_metadata
    from models import build_model

    model = build_model(args, get_metadata(args))[0]
    save_checkpoint(tmp_path / "start.pth", model, with_rng=False)
    args.pretrain_model_path = str(tmp_path / "start.pth")
    recording = _Recording(**vars(args))
    recording._read = set()
    assert clickpose_main.run(recording, logger) == 0
    unread = sorted(k for k in RUN if k not in recording._read)
    assert unread == [], f"not read by main.run / engine: {unread}"
    assert (tmp_path / "out" / "noc_results.json").is_file()  # the interactive evaluation ran
