"""Deformable transformer: multi-scale flattening, encoder, two-stage query selection, decoder, heads."""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from util.settings import TransformerCfg

from .decoder import Decoder, DecoderLayer
from .encoder import Encoder, EncoderLayer, EncoderState, encoder_output_proposals
from .layers import MLP
from .ops import MSDeformAttn


def valid_ratio(mask: Tensor) -> Tensor:
    """(B, H, W) padding mask -> (B, 2) (w, h) fraction of the level that holds image content."""
    _, height, width = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack((valid_w.float() / width, valid_h.float() / height), -1)


def make_prediction_heads(d_model: int, num_classes: int, num_layers: int, num_box_layers: int,
                          share_box: bool = False, share_class: bool = False, class_bias: bool = True
                          ) -> dict[str, Any]:
    """The per-layer heads, initialised as the reference (copies of one freshly initialised head).

    Returns ``bbox_embed`` (num_layers), ``class_embed`` (num_layers), ``pose_embed`` (one per keypoint layer
    plus the keypoint-initialisation head, last), ``pose_hw_embed`` (ONE module repeated per keypoint layer),
    and the prototypes ``box_head``/``class_head`` for the encoder-output heads.
    """
    class_head = nn.Linear(d_model, num_classes, bias=class_bias)
    if class_bias:
        prior = 0.01
        nn.init.constant_(class_head.bias, -math.log((1 - prior) / prior))
    box_head = MLP(d_model, d_model, 4, 3)
    nn.init.zeros_(box_head.layers[-1].weight)
    nn.init.zeros_(box_head.layers[-1].bias)
    pose_head = MLP(d_model, d_model, 2, 3)
    nn.init.zeros_(pose_head.layers[-1].weight)
    nn.init.zeros_(pose_head.layers[-1].bias)
    pose_hw_head = MLP(d_model, d_model, 2, 3)
    num_keypoint_layers = num_layers - num_box_layers

    def copies(head: nn.Module, count: int, share: bool) -> nn.ModuleList:
        return nn.ModuleList(head if share else copy.deepcopy(head) for _ in range(count))

    return {
        "bbox_embed": copies(box_head, num_layers, share_box),
        "class_embed": copies(class_head, num_layers, share_class),
        "pose_embed": copies(pose_head, num_keypoint_layers + 1, False),
        "pose_hw_embed": copies(pose_hw_head, num_keypoint_layers, True),
        "box_head": box_head,
        "class_head": class_head,
    }


class Transformer(nn.Module):
    """Encoder + two-stage proposals + decoder. State-dict names follow the reference checkpoints."""

    def __init__(self, cfg: TransformerCfg):
        super().__init__()
        d_model = cfg.d_model
        self.d_model = d_model
        self.num_queries = cfg.num_queries
        self.num_feature_levels = cfg.num_feature_levels
        self.level_embed = nn.Parameter(torch.empty(cfg.num_feature_levels, d_model))
        self.encoder = Encoder(EncoderLayer(d_model, cfg.dim_feedforward, cfg.dropout, cfg.activation,
                                            cfg.num_feature_levels, cfg.nheads, cfg.enc_n_points, cfg.msda_backend),
                               cfg.enc_layers)
        self.decoder = Decoder(DecoderLayer(d_model, cfg.dim_feedforward, cfg.dropout, cfg.activation,
                                            cfg.num_feature_levels, cfg.nheads, cfg.dec_n_points, cfg.msda_backend),
                               cfg.dec_layers, d_model, cfg.num_keypoints, cfg.num_group, cfg.num_box_decoder_layers)
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self._reset_parameters()
        # the heads are created after the xavier pass, so they keep their own initialisation (as the reference)
        heads = make_prediction_heads(d_model, cfg.num_classes, cfg.dec_layers, cfg.num_box_decoder_layers,
                                      cfg.dec_pred_bbox_embed_share, cfg.dec_pred_class_embed_share,
                                      not cfg.cls_no_bias)
        for name in ("bbox_embed", "pose_embed", "pose_hw_embed", "class_embed"):
            setattr(self.decoder, name, heads[name])
        if cfg.two_stage_bbox_embed_share or cfg.two_stage_class_embed_share:
            if not (cfg.dec_pred_bbox_embed_share and cfg.dec_pred_class_embed_share):
                raise ValueError("two_stage_*_embed_share needs dec_pred_bbox_embed_share and "
                                 "dec_pred_class_embed_share")
        self.enc_out_bbox_embed = (heads["box_head"] if cfg.two_stage_bbox_embed_share
                                   else copy.deepcopy(heads["box_head"]))
        self.enc_out_class_embed = (heads["class_head"] if cfg.two_stage_class_embed_share
                                    else copy.deepcopy(heads["class_head"]))

    def _reset_parameters(self) -> None:
        # xavier on every matrix first, then the attention modules' own init, then the level embedding
        matrices = [p for p in self.parameters() if p.dim() > 1]
        for matrix in matrices:
            nn.init.xavier_uniform_(matrix)
        for attention in (m for m in self.modules() if isinstance(m, MSDeformAttn)):
            attention._reset_parameters()
        nn.init.normal_(self.level_embed)

    def encode(self, srcs: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor]) -> EncoderState:
        """Per-level (B, C, H_l, W_l) features, (B, H_l, W_l) masks and encodings -> the encoder state."""
        flat_src, flat_mask, flat_pos, shapes = [], [], [], []
        for level, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            shapes.append(src.shape[-2:])
            flat_src.append(src.flatten(2).transpose(1, 2))
            flat_mask.append(mask.flatten(1))
            flat_pos.append(pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        src = torch.cat(flat_src, 1)
        padding_mask = torch.cat(flat_mask, 1)
        pos = torch.cat(flat_pos, 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([valid_ratio(m) for m in masks], 1)
        memory = self.encoder(src, pos, spatial_shapes, level_start_index, valid_ratios, padding_mask)
        return EncoderState(memory, padding_mask, spatial_shapes, level_start_index, valid_ratios)

    def propose(self, state: EncoderState) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Two-stage ('standard') selection of the ``num_queries`` best encoder tokens.

        Returns detached decoder inputs (contents (B, Q, C), unsigmoided boxes (B, Q, 4)) and, for the
        intermediate loss, the same contents and sigmoided boxes with their gradient.
        """
        if state.memory.shape[1] < self.num_queries:
            raise ValueError(f"the encoder has {state.memory.shape[1]} tokens but num_queries={self.num_queries} "
                             "proposals are selected from them; use larger images or a smaller num_queries")
        memory, proposals = encoder_output_proposals(state.memory, state.padding_mask, state.spatial_shapes)
        memory = self.enc_output_norm(self.enc_output(memory))
        scores = self.enc_out_class_embed(memory).max(-1)[0]
        boxes_unsig = self.enc_out_bbox_embed(memory) + proposals
        chosen = torch.topk(scores, self.num_queries, dim=1)[1]
        refs = torch.gather(boxes_unsig, 1, chosen[..., None].expand(-1, -1, 4))
        contents = torch.gather(memory, 1, chosen[..., None].expand(-1, -1, self.d_model))
        return contents.detach(), refs.detach(), contents, refs.sigmoid()


def build_transformer(cfg: TransformerCfg) -> Transformer:
    """The transformer section's transformer; refuses the reference options this implementation lacks."""
    if cfg.two_stage_type != "standard":
        raise ValueError(f"two_stage_type {cfg.two_stage_type!r} is not supported; only 'standard' (the "
                         "Click-Pose configuration) is implemented")
    if cfg.pre_norm:
        raise ValueError("pre_norm=True is not supported (the reference uses post-norm layers only)")
    if cfg.query_dim != 4:
        raise ValueError("query_dim must be 4 (box references)")
    return Transformer(cfg)
