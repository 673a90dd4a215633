"""Typed model settings: one frozen section per component, built once from the flat config keys.

The flat config (``config/clickpose.cfg.py`` and the files built on it, ``--options``, or the ``args`` an old
checkpoint recorded) has ~135 keys; the model code reads only these sections. :func:`model_settings` is the one
place that knows the flat names: it fills every key the given mapping lacks from ``config/clickpose.cfg.py`` (the
one home of defaults, so a checkpoint of the original, which lacks this implementation's additions, still builds),
refuses the unsupported keys (``util.config_support``), checks the couplings between keys and derives what must not
be set by hand (the number of refinement layers).

Sections carry the shared sizes they need (``num_keypoints``, ``num_classes``, ...), so each builder takes one.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from util.config import Config, ConfigError
from util.config_support import refuse_unsupported_keys

DEFAULTS_FILE = Path(__file__).resolve().parents[1] / "config" / "clickpose.cfg.py"
# main.py's command-line keys that the model reads (they are not config keys, so the config file cannot hold them)
RUNTIME_DEFAULTS: dict[str, Any] = {"distributed": False, "device": "cuda"}


@dataclass(frozen=True)
class BackboneCfg:
    """The backbone and its position encoding (``models.clickpose.backbone.build_backbone``)."""
    name: str
    return_interm_indices: tuple[int, ...]
    dilation: bool
    weights: Optional[str]
    batch_norm: str
    use_checkpoint: bool
    trainable: bool  # lr_backbone > 0
    trainable_stages: Any  # None | 'all' | list of name parts (validated by set_trainable)
    freeze_keywords: Any  # None | list of name parts
    hidden_dim: int  # the position encoding gives hidden_dim / 2 features per axis
    position_embedding: str
    temperature_h: float
    temperature_w: float


@dataclass(frozen=True)
class TransformerCfg:
    """Encoder, two-stage proposals, decoder and its heads (``models.clickpose.transformer.Transformer``)."""
    d_model: int
    nheads: int
    num_queries: int
    enc_layers: int
    dec_layers: int
    num_box_decoder_layers: int
    dim_feedforward: int
    dropout: float
    activation: str
    num_feature_levels: int
    enc_n_points: int
    dec_n_points: int
    num_keypoints: int
    num_group: int
    num_classes: int
    dec_pred_bbox_embed_share: bool
    dec_pred_class_embed_share: bool
    two_stage_bbox_embed_share: bool
    two_stage_class_embed_share: bool
    cls_no_bias: bool
    msda_backend: Optional[str]
    two_stage_type: str
    pre_norm: bool
    query_dim: int

    @property
    def num_refine_layers(self) -> int:
        """The keypoint layers, which the click refinement reruns."""
        return self.dec_layers - self.num_box_decoder_layers


@dataclass(frozen=True)
class DenoisingCfg:
    """The denoising (pose error modeling) queries of training (``error_modeling.build_denoising_queries``)."""
    number: int  # denoising instances per image; 0 when use_dn is off
    num_keypoints: int
    num_classes: int  # the "no object" label of an image without people
    labelbook_size: int
    box_noise_scale: float
    kpt_noise_scale: float
    box_label_noise_ratio: float
    kpt_label_noise_ratio: float
    error_types: tuple[str, ...]
    error_prob: float


@dataclass(frozen=True)
class FeedbackCfg:
    """The click feedback loop (training rounds, refinement, simulated user)."""
    human_feedback: bool
    num_keypoints: int
    only_correction: bool
    click_freeze: str
    click_policy: str
    num_group_refine: int
    num_refine_layers: int  # derived: dec_layers - num_box_decoder_layers


@dataclass(frozen=True)
class MatcherCfg:
    """The Hungarian matcher's costs (``models.clickpose.matcher.build_matcher``)."""
    matcher_type: str
    cost_class: float
    cost_bbox: float
    cost_giou: float
    cost_keypoints: float
    cost_oks: float
    focal_alpha: float
    num_keypoints: int


@dataclass(frozen=True)
class LossCfg:
    """The criterion's loss terms and weights (``models.clickpose.criterion.build_criterion``)."""
    num_classes: int
    num_keypoints: int
    focal_alpha: float
    cls_loss_coef: float
    bbox_loss_coef: float
    giou_loss_coef: float
    keypoints_loss_coef: float
    oks_loss_coef: float
    dn_number: int  # > 0: the denoising losses are computed
    use_dn: bool  # the denoising losses are weighted
    dn_label_coef: float
    dn_bbox_coef: float
    dn_keypoints_coef: float
    aux_loss: bool
    num_aux_outputs: int  # derived: decoder layers but the last, plus the refinement layers under human feedback
    num_box_decoder_layers: int
    interm_loss: bool  # two-stage proposals are supervised
    interm_loss_coef: float
    no_interm_box_loss: bool
    cls_quality_target: Optional[str]


@dataclass(frozen=True)
class PostprocessCfg:
    num_select: int
    nms_iou_threshold: float
    num_keypoints: int


@dataclass(frozen=True)
class ModelSettings:
    """Every section of the model; build it with :func:`model_settings`."""
    modelname: str
    num_keypoints: int
    backbone: BackboneCfg
    transformer: TransformerCfg
    denoising: DenoisingCfg
    feedback: FeedbackCfg
    matcher: MatcherCfg
    loss: LossCfg
    postprocess: PostprocessCfg


@functools.lru_cache(maxsize=1)
def _file_defaults() -> dict[str, Any]:
    return Config.fromfile(DEFAULTS_FILE).to_dict()


def config_defaults() -> dict[str, Any]:
    """The keys and values of ``config/clickpose.cfg.py`` (a fresh copy)."""
    return copy.deepcopy(_file_defaults())


class _FlatKeys:
    """Read access to the flat keys: the given value, else the config file's. Only the keys the model uses are
    read (a namespace's other attributes stay untouched)."""

    def __init__(self, args: Any):
        self._args = args
        self._is_mapping = isinstance(args, Mapping) or isinstance(args, Config)
        self._defaults = _file_defaults()

    def given(self, key: str) -> bool:
        return key in self._args if self._is_mapping else hasattr(self._args, key)

    def given_value(self, key: str) -> Any:
        return self._args[key] if self._is_mapping else getattr(self._args, key)

    def __getitem__(self, key: str) -> Any:
        if self.given(key):
            return self.given_value(key)
        if key in RUNTIME_DEFAULTS:
            return RUNTIME_DEFAULTS[key]
        return copy.deepcopy(self._defaults[key])  # a copy: the cached defaults must not be changed through it


def _tuple(value: Any) -> tuple:
    return tuple(value) if value is not None else ()


def model_settings(args: Union[Mapping[str, Any], Any]) -> ModelSettings:
    """The sections from a flat ``args`` (namespace, mapping or ``Config``); keys it lacks take the values of
    ``config/clickpose.cfg.py``. Raises ``ConfigError`` on refused keys and on a ``num_humanfeedback_layers`` that
    disagrees with the decoder."""
    refuse_unsupported_keys(args)
    v = _FlatKeys(args)

    refine_layers = v["dec_layers"] - v["num_box_decoder_layers"]
    # the old explicit key is accepted when it agrees (checkpoints and configs carry it); the value is derived
    if v.given("num_humanfeedback_layers") and v["num_humanfeedback_layers"] is not None \
            and v["num_humanfeedback_layers"] != refine_layers:
        raise ConfigError(f"num_humanfeedback_layers ({v['num_humanfeedback_layers']}) must equal dec_layers - "
                          f"num_box_decoder_layers ({refine_layers}): the refinement runs those layers; set "
                          f"num_humanfeedback_layers={refine_layers} or remove it (it is derived)")
    if v["batch_norm_type"] == "SyncBatchNorm" and v["distributed"] and str(v["device"]).startswith("cpu"):
        raise ConfigError("batch_norm_type='SyncBatchNorm' needs CUDA devices under distributed training (PyTorch "
                          "synchronises batch statistics only on GPUs); use 'BatchNorm2d' on CPUs")

    num_keypoints = int(v["num_body_points"])
    num_classes = v["num_classes"]
    human_feedback = bool(v["human_feedback"])  # the reference tests truthiness ('FLASE' counts as True)
    backbone = BackboneCfg(
        name=v["backbone"], return_interm_indices=tuple(v["return_interm_indices"]), dilation=bool(v["dilation"]),
        weights=v["backbone_weights"], batch_norm=v["batch_norm_type"], use_checkpoint=bool(v["use_checkpoint"]),
        trainable=v["lr_backbone"] > 0, trainable_stages=v["backbone_trainable_stages"],
        freeze_keywords=v["backbone_freeze_keywords"], hidden_dim=v["hidden_dim"],
        position_embedding=v["position_embedding"], temperature_h=v["pe_temperatureH"],
        temperature_w=v["pe_temperatureW"])
    transformer = TransformerCfg(
        d_model=v["hidden_dim"], nheads=v["nheads"], num_queries=v["num_queries"], enc_layers=v["enc_layers"],
        dec_layers=v["dec_layers"], num_box_decoder_layers=v["num_box_decoder_layers"],
        dim_feedforward=v["dim_feedforward"], dropout=v["dropout"], activation=v["transformer_activation"],
        num_feature_levels=v["num_feature_levels"], enc_n_points=v["enc_n_points"], dec_n_points=v["dec_n_points"],
        num_keypoints=num_keypoints, num_group=v["num_group"], num_classes=num_classes,
        dec_pred_bbox_embed_share=v["dec_pred_bbox_embed_share"],
        dec_pred_class_embed_share=v["dec_pred_class_embed_share"],
        two_stage_bbox_embed_share=v["two_stage_bbox_embed_share"],
        two_stage_class_embed_share=v["two_stage_class_embed_share"], cls_no_bias=v["cls_no_bias"],
        msda_backend=v["msda_backend"], two_stage_type=v["two_stage_type"], pre_norm=v["pre_norm"],
        query_dim=v["query_dim"])
    denoising = DenoisingCfg(
        number=v["dn_number"] if v["use_dn"] else 0, num_keypoints=num_keypoints, num_classes=num_classes,
        labelbook_size=v["dn_labelbook_size"], box_noise_scale=v["dn_box_noise_scale"],
        kpt_noise_scale=v["dn_kpt_noise_scale"], box_label_noise_ratio=v["dn_box_label_noise_ratio"],
        kpt_label_noise_ratio=v["dn_kpt_label_noise_ratio"], error_types=_tuple(v["pem_error_types"]),
        error_prob=v["pem_error_prob"])
    feedback = FeedbackCfg(
        human_feedback=human_feedback, num_keypoints=num_keypoints, only_correction=v["only_correction"], click_freeze=v["click_freeze"],
        click_policy=v["click_policy"], num_group_refine=v["num_group_refine"], num_refine_layers=refine_layers)
    matcher = MatcherCfg(
        matcher_type=v["matcher_type"], cost_class=v["set_cost_class"], cost_bbox=v["set_cost_bbox"],
        cost_giou=v["set_cost_giou"], cost_keypoints=v["set_cost_keypoints"], cost_oks=v["set_cost_oks"],
        focal_alpha=v["focal_alpha"], num_keypoints=num_keypoints)
    loss = LossCfg(
        num_classes=num_classes, num_keypoints=num_keypoints, focal_alpha=v["focal_alpha"],
        cls_loss_coef=v["cls_loss_coef"], bbox_loss_coef=v["bbox_loss_coef"], giou_loss_coef=v["giou_loss_coef"],
        keypoints_loss_coef=v["keypoints_loss_coef"], oks_loss_coef=v["oks_loss_coef"], dn_number=v["dn_number"],
        use_dn=bool(v["use_dn"]), dn_label_coef=v["dn_label_coef"], dn_bbox_coef=v["dn_bbox_coef"],
        dn_keypoints_coef=v["dn_keypoints_coef"], aux_loss=bool(v["aux_loss"]),
        num_aux_outputs=v["dec_layers"] - 1 + (refine_layers if human_feedback else 0),
        num_box_decoder_layers=v["num_box_decoder_layers"], interm_loss=v["two_stage_type"] != "no",
        interm_loss_coef=v["interm_loss_coef"], no_interm_box_loss=bool(v["no_interm_box_loss"]),
        cls_quality_target=v["cls_quality_target"])
    postprocess = PostprocessCfg(num_select=v["num_select"], nms_iou_threshold=v["nms_iou_threshold"],
                                 num_keypoints=num_keypoints)
    return ModelSettings(modelname=v["modelname"], num_keypoints=num_keypoints, backbone=backbone,
                         transformer=transformer, denoising=denoising, feedback=feedback, matcher=matcher, loss=loss,
                         postprocess=postprocess)


def as_model_settings(settings_or_args: Any) -> ModelSettings:
    """``ModelSettings`` as given, or built from flat config keys."""
    return settings_or_args if isinstance(settings_or_args, ModelSettings) else model_settings(settings_or_args)


# --- data ------------------------------------------------------------------------------------------------------
# Command-line keys the dataset code reads (main.py's flags and resolve_environment; not config keys).
DATA_RUNTIME_DEFAULTS: dict[str, Any] = {"dataset_file": "coco", "coco_path": None, "data_root": None,
                                         "noc_filter": False, "trust_image_sizes": False}


@dataclass(frozen=True)
class AugmentCfg:
    """The training and evaluation transforms (``datasets.transforms.build_transforms``)."""
    scales: tuple[int, ...]
    max_size: int
    scales2_resize: tuple[int, ...]
    scales2_crop: tuple[int, ...]
    scale_overlap: Optional[float]
    flip_exact: bool
    crop_marks_invisible: bool


@dataclass(frozen=True)
class CustomDataCfg:
    """``dataset_file='custom'``: the split files and the keypoint layout (``custom_*`` config keys)."""
    train_ann: Optional[str] = None
    train_img: Optional[str] = None
    val_ann: Optional[str] = None
    val_img: Optional[str] = None
    evaluator: str = "coco"
    keypoint_names: Optional[tuple] = None
    flip_pairs: Optional[tuple] = None
    sigmas: Optional[tuple] = None
    skeleton: Optional[tuple] = None

    def stray_keys(self) -> list[str]:
        """The ``custom_*`` keys set to something else than their default (read only with dataset_file='custom')."""
        default = CustomDataCfg()
        return [f"custom_{name}" for name in self.__dataclass_fields__
                if getattr(self, name) != getattr(default, name)]


@dataclass(frozen=True)
class DataCfg:
    """Which dataset, where, and how it is read (``datasets.build_dataset``, ``datasets.get_metadata``)."""
    dataset_file: str
    root: Optional[str]  # --coco_path (alias --data_root): every dataset's root, not only COCO's
    keypoint_field: str
    num_keypoints: Optional[int]  # num_body_points as configured; checked against the dataset's layout
    noc_filter: bool  # evaluate only images the training filter keeps (the reference's CLICKPOSE_NoC_Test=TRUE)
    trust_image_sizes: bool
    augment: AugmentCfg
    custom: CustomDataCfg


def _optional_tuple(value: Any) -> Optional[tuple]:
    if value is None:
        return None
    return tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in value)


def data_settings(args: Union[Mapping[str, Any], Any]) -> DataCfg:
    """The data section from flat keys; missing ones take ``config/clickpose.cfg.py``'s values (and the command
    line's defaults for ``dataset_file``, the root and the two switches)."""
    v = _FlatKeys(args)

    def get(key: str) -> Any:
        return v.given_value(key) if v.given(key) else (DATA_RUNTIME_DEFAULTS[key] if key in DATA_RUNTIME_DEFAULTS
                                                        else v[key])

    augment = AugmentCfg(
        scales=tuple(get("data_aug_scales")), max_size=int(get("data_aug_max_size")),
        scales2_resize=tuple(get("data_aug_scales2_resize")), scales2_crop=tuple(get("data_aug_scales2_crop")),
        scale_overlap=get("data_aug_scale_overlap"), flip_exact=bool(get("flip_exact")),
        crop_marks_invisible=bool(get("crop_marks_invisible")))
    custom = CustomDataCfg(
        train_ann=get("custom_train_ann"), train_img=get("custom_train_img"), val_ann=get("custom_val_ann"),
        val_img=get("custom_val_img"), evaluator=get("custom_evaluator") or "coco",
        keypoint_names=_optional_tuple(get("custom_keypoint_names")),
        flip_pairs=_optional_tuple(get("custom_flip_pairs")), sigmas=_optional_tuple(get("custom_sigmas")),
        skeleton=_optional_tuple(get("custom_skeleton")))
    # only a given count is checked (a mapping without it takes the dataset's layout)
    configured = v.given_value("num_body_points") if v.given("num_body_points") else None
    return DataCfg(dataset_file=get("dataset_file") or "coco", root=get("coco_path") or get("data_root"),
                   keypoint_field=get("keypoint_field") or "keypoints",
                   num_keypoints=None if configured is None else int(configured),
                   noc_filter=bool(get("noc_filter")), trust_image_sizes=bool(get("trust_image_sizes")),
                   augment=augment, custom=custom)


def as_data_settings(settings_or_args: Any) -> DataCfg:
    """``DataCfg`` as given, or built from flat config keys."""
    return settings_or_args if isinstance(settings_or_args, DataCfg) else data_settings(settings_or_args)
