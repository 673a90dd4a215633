"""Each backbone family trains two iterations and runs the interactive evaluation on the COCO sample (CPU)."""
from __future__ import annotations

import argparse

import pytest
import torch

import engine
from util.config import Config, apply_config_to_args, parse_options

from tests.helpers import CONFIG_DIR

SMALL = ["num_queries=100", "dn_number=4", "num_group=8", "num_group_refine=4", "num_select=8", "max_clicks=2",
         "batch_size=2", "human_feedback=TRUE", "lr_backbone=0.001", "data_aug_scales=[224,256]",
         "data_aug_max_size=320", "data_aug_scales2_resize=[224,256]", "data_aug_scales2_crop=[192,256]"]


def _args(root, options) -> argparse.Namespace:
    cfg = Config.fromfile(CONFIG_DIR / "tiny.cfg.py")
    cfg.merge_from_dict(parse_options([*SMALL, *options]))
    return apply_config_to_args(cfg, argparse.Namespace(dataset_file="coco", coco_path=str(root), noc_filter=False))


def _train_two_iterations_and_evaluate(root, tmp_path, options):
    from datasets import build_dataset, build_evaluator, get_metadata
    from models import build_model
    from util.misc import collate_fn
    from models.optim import build_optimizer

    torch.manual_seed(0)
    args = _args(root, options)
    model, criterion, postprocessors = build_model(args, get_metadata(args))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    train = build_dataset("train", args)
    loader = torch.utils.data.DataLoader(train, batch_size=2, collate_fn=collate_fn, shuffle=False)
    optimizer = build_optimizer(args, model)
    engine.train_one_epoch(model, criterion, loader, optimizer, torch.device("cpu"), 0, args.clip_max_norm,
                           step=engine.StepOptions(max_iters=2), log_fn=lambda _: None)
    after = model.backbone.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    val = build_dataset("val", args)
    val_loader = torch.utils.data.DataLoader(val, batch_size=2, collate_fn=collate_fn)
    evaluator = build_evaluator(val, args)
    options = engine.EvalOptions(interactive=True, max_clicks=args.max_clicks, thresholds=tuple(args.noc_thresholds),
                                 max_iters=1)
    stats = engine.evaluate_interactive(model, postprocessors["pose"], val_loader, torch.device("cpu"), options,
                                        round_evaluator=engine.click_round_evaluator(evaluator.per_image_ap()),
                                        report_evaluator=evaluator, log_fn=lambda _: None).log_stats()
    assert {"NoC@85", "NoC@90", "NoC@95", "AP@0", "AP@1", "AP@2"} <= set(stats)
    assert all(0 <= stats[f"NoC@{t}"] <= 2 for t in (85, 90, 95))
    assert all(0.0 <= stats[f"AP@{k}"] <= 1.0 or stats[f"AP@{k}"] == -1 for k in range(3))
    return model, changed


@pytest.mark.slow
def test_resnet_with_batch_norm_trains_every_stage(sample_root, tmp_path):
    model, changed = _train_two_iterations_and_evaluate(
        sample_root("coco"), tmp_path, ["backbone=resnet18", "batch_norm_type=BatchNorm2d",
                                        "backbone_trainable_stages=all"])
    body = model.backbone[0].body
    assert isinstance(body.bn1, torch.nn.BatchNorm2d) and body.conv1.weight.requires_grad
    # the stem and layer1 learn, and real batch norm tracks statistics, in every stage
    for key in ("0.body.conv1.weight", "0.body.bn1.weight", "0.body.bn1.running_mean", "0.body.layer1.0.conv1.weight",
                "0.body.layer4.1.bn2.running_var"):
        assert key in changed, key


@pytest.mark.slow
def test_swin_trains_and_evaluates(sample_root, tmp_path):
    model, changed = _train_two_iterations_and_evaluate(sample_root("coco"), tmp_path, ["backbone=swin_T_224_1k"])
    assert {"0.patch_embed.proj.weight", "0.layers.0.blocks.1.attn.relative_position_bias_table",
            "0.norm3.weight"} <= changed
    assert "0.layers.0.blocks.0.attn.relative_position_index" not in changed  # a buffer, never trained


@pytest.mark.slow
def test_timm_model_trains_and_evaluates(sample_root, tmp_path):
    pytest.importorskip("timm")
    model, changed = _train_two_iterations_and_evaluate(
        sample_root("coco"), tmp_path, ["backbone=timm:resnet18", "backbone_freeze_keywords=[layer1]"])
    assert model.backbone.num_channels == [128, 256, 512]
    assert "0.body.layer4.0.conv1.weight" in changed and "0.body.conv1.weight" in changed
    assert not any(".layer1." in key for key in changed)  # frozen by keyword
