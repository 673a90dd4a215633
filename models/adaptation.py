"""Keypoint adaptation: start a model for one keypoint layout from a checkpoint trained on another.

The paper's third scenario: a 17-keypoint (COCO) model is fine-tuned into Human-Art's 21-keypoint layout. All
weights that do not depend on the keypoint count load as they are. The per-keypoint weights are matched by keypoint
*name*: a keypoint the source knows gets exactly the source's row(s); a new keypoint is initialised from the mean
of the source's keypoints (default) or from a chosen source keypoint (``init_from``, e.g. finger <- wrist).
Source keypoints the target lacks are dropped. ``AdaptationReport`` says what was copied, initialised, dropped.
When one layout does not contain the other (e.g. CrowdPose 14 -> Human-Art 21: 12 shared names), a warning names
the target keypoints that start untrained; layouts that share no name are an error (nothing would be adapted).

Per-keypoint tensors (K = keypoint count, G = num_group):
- ``transformer.decoder.hw.weight`` (K, 2): each keypoint's learned box-relative size;
- ``transformer.decoder.keypoint_embed.weight`` (G*K, d): keypoint query contents, group-major (G, K, d);
- ``label_enc_pose.weight`` (K+1, d): row 0 is shared, row 1+k belongs to keypoint k.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from util.checkpoint import load_model_weights, strip_prefix
from util.errors import CheckpointError, ConfigError
from util.keypoint_metadata import KeypointMetadata

log = logging.getLogger("clickpose")

# The built-in layout with a keypoint count (``datasets.metadata.default_metadata_for_num_keypoints``; the caller
# passes it in, as models do not import datasets).
LegacyLayout = Callable[[int], KeypointMetadata]

HW_KEY = "transformer.decoder.hw.weight"
# key -> (rows before the keypoint rows, whether rows are grouped (G, K, ...) )
PER_KEYPOINT_TENSORS: dict[str, tuple[int, bool]] = {
    HW_KEY: (0, False),
    "transformer.decoder.keypoint_embed.weight": (0, True),
    "label_enc_pose.weight": (1, False),
}


@dataclass
class AdaptationReport:
    source: str
    target: str
    copied: list[tuple[str, int, int]] = field(default_factory=list)  # (name, source index, target index)
    initialised: list[tuple[str, str]] = field(default_factory=list)  # (name, how)
    dropped: list[str] = field(default_factory=list)  # source keypoints the target lacks
    tensors: list[str] = field(default_factory=list)  # state-dict keys rebuilt for the target layout

    def format(self) -> str:
        lines = [f"keypoint adaptation {self.source} -> {self.target}: {len(self.copied)} keypoints copied, "
                 f"{len(self.initialised)} initialised, {len(self.dropped)} dropped; tensors: {self.tensors}"]
        lines += [f"  copied      {name}: source #{src} -> #{dst}" for name, src, dst in self.copied if src != dst]
        lines += [f"  initialised {name}: {how}" for name, how in self.initialised]
        lines += [f"  dropped     {name}" for name in self.dropped]
        return "\n".join(lines)

    @property
    def partial(self) -> bool:
        """Neither layout contains the other: some source keypoints are dropped while target keypoints are new."""
        return bool(self.dropped) and bool(self.initialised)

    def warning(self) -> str:
        """One line for a ``partial`` adaptation: what is copied, what starts untrained, and the fix."""
        total = len(self.copied) + len(self.initialised)
        return (f"keypoint adaptation {self.source} -> {self.target}: the layouts share only {len(self.copied)} "
                f"keypoint names, so {len(self.copied)} of the {total} keypoints are copied and "
                f"{len(self.initialised)} start untrained (initialised from other keypoints): "
                f"{', '.join(name for name, _ in self.initialised)} (the source's {', '.join(self.dropped)} are "
                f"dropped). If some are the same keypoints under other names, map them with adapt_keypoint_init "
                f"(target name: source name, e.g. {{'{self.initialised[0][0]}': '{self.dropped[0]}'}}) or name them "
                f"alike in custom_keypoint_names; else fine-tune long enough for the new keypoints to train")


def _plan(source: KeypointMetadata, target: KeypointMetadata, init_from: Optional[Mapping[str, str]],
          report: AdaptationReport) -> list[Optional[int]]:
    """Per target keypoint: its source index, or None (initialised from the mean / ``init_from``)."""
    index = {name: k for k, name in enumerate(source.keypoint_names)}
    init_from = dict(init_from or {})
    unknown = {new: old for new, old in init_from.items()
               if new not in target.keypoint_names or old not in index}
    if unknown:
        raise ConfigError(f"adapt_keypoint_init maps {unknown}: each key must be a keypoint of the target layout "
                          f"{list(target.keypoint_names)} and each value one of the source's "
                          f"{list(source.keypoint_names)}")
    plan: list[Optional[int]] = []
    for dst, name in enumerate(target.keypoint_names):
        if name in index:
            plan.append(index[name])
            report.copied.append((name, index[name], dst))
        elif name in init_from:
            plan.append(index[init_from[name]])
            report.initialised.append((name, f"copy of source keypoint {init_from[name]!r}"))
        else:
            plan.append(None)
            report.initialised.append((name, "mean of the source's keypoints"))
    report.dropped = [name for name in source.keypoint_names if name not in target.keypoint_names]
    return plan


def _remap(tensor: Tensor, plan: list[Optional[int]], num_source: int, lead: int, grouped: bool) -> Tensor:
    """Rebuild one per-keypoint tensor for the target layout following ``plan``."""
    head, body = tensor[:lead], tensor[lead:]
    if grouped:
        body = body.reshape(-1, num_source, *body.shape[1:])  # (G, K_src, ...)
    else:
        body = body.unsqueeze(0)  # (1, K_src, ...)
    mean = body.mean(dim=1)
    rows = [body[:, src] if src is not None else mean for src in plan]
    out = torch.stack(rows, dim=1)
    out = out.reshape(-1, *out.shape[2:]) if grouped else out[0]
    return torch.cat((head, out), dim=0).contiguous()


def adapt_state_dict(state_dict: Mapping[str, Tensor], source: KeypointMetadata, target: KeypointMetadata,
                     init_from: Optional[Mapping[str, str]] = None) -> tuple[dict[str, Tensor], AdaptationReport]:
    """A copy of ``state_dict`` (trained with layout ``source``) whose per-keypoint tensors fit ``target``.

    Warns when the layouts share only some names (``AdaptationReport.partial``); raises ``CheckpointError`` when no
    target keypoint gets a source keypoint (no shared name, no ``init_from``) and ``state_dict`` holds a
    per-keypoint tensor to adapt."""
    report = AdaptationReport(source.name, target.name)
    plan = _plan(source, target, init_from, report)
    if not any(key in state_dict for key in PER_KEYPOINT_TENSORS):  # none to adapt (e.g. all --finetune_ignore'd)
        return dict(state_dict), report
    if all(src is None for src in plan):
        raise CheckpointError(
            f"the checkpoint's keypoint layout {source.name!r} {list(source.keypoint_names)} and this run's "
            f"{target.name!r} {list(target.keypoint_names)} share no keypoint name, so no per-keypoint weight can be "
            f"carried over. If they are the same keypoints under other names, give custom_keypoint_names in the "
            f"checkpoint's names or map each new keypoint to a source one with adapt_keypoint_init; to train the "
            f"per-keypoint weights from scratch and keep the rest, pass --finetune_ignore "
            f"{' '.join(PER_KEYPOINT_TENSORS)}")
    if report.partial:
        log.warning(report.warning())
    adapted = dict(state_dict)
    for key, (lead, grouped) in PER_KEYPOINT_TENSORS.items():
        if key in adapted:
            adapted[key] = _remap(adapted[key], plan, source.num_keypoints, lead, grouped)
            report.tensors.append(key)
    return adapted, report


def source_metadata(ckpt: Mapping[str, Any], state_dict: Mapping[str, Tensor],
                    legacy_layout: LegacyLayout) -> KeypointMetadata:
    """The layout a checkpoint was trained with: its recorded ``keypoint_metadata``, else ``legacy_layout`` of its
    keypoint count (the built-in layouts: 17: COCO, as the released checkpoints; 14: CrowdPose)."""
    if ckpt.get("keypoint_metadata"):
        return KeypointMetadata.from_dict(ckpt["keypoint_metadata"])
    if HW_KEY not in state_dict:
        raise CheckpointError(f"cannot tell the checkpoint's keypoint layout: it records no keypoint_metadata and "
                              f"has no {HW_KEY}")
    return legacy_layout(int(state_dict[HW_KEY].shape[0]))


def load_pretrained(model: nn.Module, ckpt: Mapping[str, Any], target: KeypointMetadata, *,
                    legacy_layout: LegacyLayout, ignore_keywords: Optional[list[str]] = None,
                    init_from: Optional[Mapping[str, str]] = None,
                    source: str = "checkpoint") -> Optional[AdaptationReport]:
    """Load ``ckpt['model']`` into ``model`` (non-strict, as --pretrain_model_path), adapting the per-keypoint
    weights when the checkpoint's layout differs from ``target`` (a checkpoint without a recorded layout has
    ``legacy_layout`` of its keypoint count). Returns the report, or None if none was needed."""
    weights = strip_prefix(ckpt["model"])
    layout = source_metadata(ckpt, weights, legacy_layout)
    ignore = [word for word in (ignore_keywords or []) if word]
    # per-keypoint tensors that --finetune_ignore drops anyway are not adapted (nor can they block the load)
    weights = {k: v for k, v in weights.items()
               if not (k in PER_KEYPOINT_TENSORS and any(word in k for word in ignore))}
    report = None
    if layout.keypoint_names != target.keypoint_names:
        weights, report = adapt_state_dict(weights, layout, target, init_from)
        log.info(report.format())
    load_model_weights(model, weights, strict=False, ignore_keywords=ignore_keywords, source=source)
    return report
