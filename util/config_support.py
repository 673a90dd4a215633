"""The original's interface that has no section of its own: its config keys this implementation does not support,
its environment variables and its command-line flags that do nothing (the one adapter for them).

Unsupported keys: setting one to another value than the reference's default is an error that says why. Each entry:
key -> (the only accepted value, the reason). The decisions are listed in ``docs/deviations.md``
("Keypoint layouts, keypoint adaptation, config keys"). Every other key of ``config/clickpose.cfg.py`` is read by the code.
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping

from util.config import ConfigError

# Dataset root per --dataset_file, from the reference's environment variables.
DATASET_ROOT_ENV = {
    "coco": "CLICKPOSE_COCO_PATH",
    "crowdpose": "CLICKPOSE_CrowdPose_PATH",
    "humanart": "CLICKPOSE_HumanArt_PATH",
    "ochuman": "CLICKPOSE_OCHuman_PATH",
}
# The reference's command-line flags that change nothing (accepted so that its commands keep working).
DEAD_FLAGS = ("--remove_difficult", "--fix_size", "--test", "--save_results")

_NOT_IN_REFERENCE = "the reference defines it in its config but never reads it, so no value ever had an effect"
_DINO_ONLY = ("a DINO/DN-DETR option whose non-default path the reference's Click-Pose model does not use "
              "(its two-stage, 4-d anchor decoder fixes it)")

UNSUPPORTED_KEYS: dict[str, tuple[Any, str]] = {
    "ddetr_lr_param": (False, _NOT_IN_REFERENCE + " (param_dict_type selects the parameter groups)"),
    "dln_hw_noise": (0.2, _NOT_IN_REFERENCE),
    "dln_xy_noise": (0.2, _NOT_IN_REFERENCE),
    "indices_idx_list": ([1, 2, 3, 4, 5, 6, 7], _NOT_IN_REFERENCE),
    "two_stage_default_hw": (0.05, _NOT_IN_REFERENCE + " (proposals use 0.05 * 2**level, as the reference)"),
    "no_mmpose_keypoint_evaluator": (True, _NOT_IN_REFERENCE + " (evaluation always uses pycocotools / "
                                           "faster-coco-eval)"),
    "enc_loss_coef": (1.0, _NOT_IN_REFERENCE + " (interm_loss_coef weights the encoder-proposal losses)"),
    "kpvis_loss_coef": (1.0, _NOT_IN_REFERENCE + " (there is no keypoint-visibility loss)"),
    "match_unstable_error": (False, _NOT_IN_REFERENCE),
    "set_cost_kpvis": (0.0, "the reference passes it to its matcher, which never uses it in the cost"),
    "frozen_weights": (None, "a DETR option for training a segmentation head on a frozen detector (it requires "
                             "masks=True); Click-Pose has no segmentation head. To start from weights use "
                             "--pretrain_model_path"),
    "masks": (False, "segmentation masks are not part of Click-Pose (the reference has no mask head either)"),
    "strong_aug": (False, "the reference's strong augmentation is not reimplemented; the COCO transformer "
                          "recipe (data_aug_* keys) is what the paper trains with"),
    "dec_layer_number": (None, _DINO_ONLY),
    "dec_pred_pose_embed_share": (False, "sharing the keypoint heads across decoder layers changes the "
                                         "checkpoint layout; the released models do not share them"),
    "decoder_module_seq": (["sa", "ca", "ffn"], "the decoder layer order is fixed (self-attention, "
                                                "cross-attention, feed-forward), as in every released model"),
    "decoder_sa_type": ("sa", "the reference asserts 'sa' (plain self-attention)"),
    "embed_init_tgt": (False, _DINO_ONLY),
    "fix_refpoints_hw": (-1, _DINO_ONLY),
    "num_patterns": (0, _DINO_ONLY),
    "random_refpoints_xy": (False, _DINO_ONLY),
    "rm_detach": (None, _DINO_ONLY),
    "rm_self_attn_layers": (None, _DINO_ONLY),
    "two_stage_keep_all_tokens": (False, _DINO_ONLY),
    "two_stage_learn_wh": (False, _DINO_ONLY),
    "dn_attn_mask_type_list": (["match2dn", "dn2dn", "group2group"], "the denoising attention masks are built "
                                                                     "with all three rules, as the reference"),
    "dn_batch_gt_fuse": (False, "the reference asserts it is False"),
}


def _same(value: Any, default: Any) -> bool:
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value) == list(default)
    if isinstance(default, bool) or default is None:
        return value is default or value == default
    return value == default


def refuse_unsupported_keys(args: Any) -> None:
    """Raise ``ConfigError`` naming every unsupported key that ``args`` (a namespace, a mapping or a
    ``util.config.Config``) sets to a non-default value."""
    as_mapping = isinstance(args, Mapping) or (hasattr(args, "__contains__") and hasattr(args, "__getitem__"))
    given = ({key: args[key] for key in UNSUPPORTED_KEYS if key in args} if as_mapping else
             {key: getattr(args, key) for key in UNSUPPORTED_KEYS if hasattr(args, key)})
    problems = [f"{key}={given[key]!r} (only {default!r} is supported: {reason})"
                for key, (default, reason) in UNSUPPORTED_KEYS.items()
                if key in given and not _same(given[key], default)]
    if problems:
        raise ConfigError("unsupported config values:\n  " + "\n  ".join(problems) +
                          "\nRemove them from the config / --options (see docs/deviations.md).")


def add_dead_flags(parser: argparse.ArgumentParser) -> None:
    """Accept the reference's flags that never had an effect (``DEAD_FLAGS``)."""
    for flag in DEAD_FLAGS:
        parser.add_argument(flag, action="store_true", help="unused (kept for compatibility)")


def resolve_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Map the reference's environment variables onto ``args`` (main.py calls it; nothing else reads them):
    CLICKPOSE_<DATASET>_PATH (the dataset root when --coco_path is not given), CLICKPOSE_NoC_Test=TRUE (evaluate
    only the images the training filter keeps), NoC_thr (one more NoC threshold), CLICKPOSE_Click_Number (the
    round of the full report) and CLICKPOSE_SAVE_PATH (where NoC_thr's click list goes)."""
    if not args.coco_path:
        var = DATASET_ROOT_ENV.get(args.dataset_file)
        args.coco_path = environ.get(var) if var else None
    args.noc_filter = environ.get("CLICKPOSE_NoC_Test") == "TRUE"
    args.noc_threshold_env = float(environ["NoC_thr"]) if environ.get("NoC_thr") else None
    args.click_number_env = int(environ["CLICKPOSE_Click_Number"]) if environ.get("CLICKPOSE_Click_Number") else None
    if args.click_number_env is not None and args.click_number_env < 1:
        raise ConfigError("CLICKPOSE_Click_Number must be >= 1")
    args.noc_save_path = environ.get("CLICKPOSE_SAVE_PATH")
