"""The ED-Pose / Click-Pose decoder: box layers, then layers over groups of one box + K keypoint queries.

Reference-point conventions (they matter for numerical equality with the reference checkpoints):
- every layer updates its references from its *un-normed* output; the prediction heads read the normed output;
- the next layer gets detached references, while the non-detached ones are returned for the predictions;
- boxes are (cx, cy, w, h) in [0, 1]; a keypoint reference is (x, y, w, h) with w, h = box size * sigmoid(hw[k]).
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from util.misc import inverse_sigmoid

from util import keypoint_codec as kp
from .encoder import EncoderState
from .layers import MLP, activation_fn
from .ops import MSDeformAttn
from .position_encoding import query_sine_embedding
from .queries import interleave_groups, split_groups

VISIBILITY_LOGIT = 1.0  # the reference has no visibility head: the slot is the constant sigmoid(1)


class DecoderLayer(nn.Module):
    """Post-norm: self-attention (norm2), deformable cross-attention (norm1), feed-forward (norm3)."""

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4, msda_backend: Optional[str] = None):
        super().__init__()
        # registration order = the checkpoints' key order
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, backend=msda_backend)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1, self.linear2 = nn.Linear(d_model, d_ffn), nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.activation = activation_fn(activation)
        self.dropout = nn.Dropout(dropout)  # stateless: one module serves every residual branch

    def _self_attention(self, tgt: Tensor, query_pos: Tensor, attn_mask: Optional[Tensor],
                        group_size: Optional[int]) -> Tensor:
        query = tgt + query_pos
        if group_size is None:
            return self.self_attn(query, query, tgt, attn_mask=attn_mask, need_weights=False)[0]
        # block-diagonal attention: attending within each group of `group_size` consecutive queries equals
        # the full attention under the block mask, at a fraction of the cost
        batch, length, channels = tgt.shape
        query = query.reshape(-1, group_size, channels)
        out = self.self_attn(query, query, tgt.reshape(-1, group_size, channels), need_weights=False)[0]
        return out.reshape(batch, length, channels)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, state: EncoderState,
                attn_mask: Optional[Tensor] = None, group_size: Optional[int] = None,
                cache_value: bool = False) -> Tensor:
        """tgt, query_pos: (B, N, C); reference_points: (B, N, L, 4); attn_mask: (B * heads, N, N) bool or
        group_size: attend only within consecutive groups of this size; cache_value: keep this layer's projected
        memory in ``state`` for the next pass over the same image. Returns (B, N, C)."""
        tgt = self.norm2(tgt + self.dropout(self._self_attention(tgt, query_pos, attn_mask, group_size)))
        value = state.projected_value(self.cross_attn, cache=cache_value)
        attended = self.cross_attn.attend(tgt + query_pos, reference_points, value, state.spatial_shapes,
                                          state.level_start_index)
        tgt = self.norm1(tgt + self.dropout(attended))
        hidden = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(hidden))


class Decoder(nn.Module):
    """Decoder layers plus the learned keypoint pieces (``hw``, ``keypoint_embed``) and the prediction heads.

    The heads (``bbox_embed``, ``pose_embed``, ``pose_hw_embed``, ``class_embed``) are created by
    :func:`models.clickpose.transformer.make_prediction_heads` and set here by the ``Transformer``; the model
    registers the same modules at its top level (checkpoint aliasing).
    """

    def __init__(self, layer: DecoderLayer, num_layers: int, d_model: int, num_keypoints: int, num_group: int,
                 num_box_layers: int):
        super().__init__()
        if not 0 < num_box_layers < num_layers:
            raise ValueError(f"num_box_decoder_layers ({num_box_layers}) must be between 1 and dec_layers - 1 "
                             f"({num_layers - 1}): the keypoint layers come after the box layers")
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.hw = nn.Embedding(num_keypoints, 2)
        self.keypoint_embed = nn.Embedding(num_keypoints * num_group, d_model)
        self.num_layers = num_layers
        self.num_box_layers = num_box_layers
        self.num_keypoints = num_keypoints
        self.num_group = num_group
        self.d_model = d_model
        self.nheads = layer.self_attn.num_heads
        self.bbox_embed: nn.ModuleList
        self.pose_embed: nn.ModuleList
        self.pose_hw_embed: nn.ModuleList
        self.class_embed: nn.ModuleList

    # ---- one layer -------------------------------------------------------------------------------
    def run_layer(self, layer_id: int, tgt: Tensor, refs: Tensor, state: EncoderState,
                  attn_mask: Optional[Tensor] = None, group_size: Optional[int] = None) -> Tensor:
        """Layer ``layer_id`` on queries ``tgt`` (B, N, C) with box references ``refs`` (B, N, 4) in [0, 1].

        The keypoint layers, which every refinement reruns on the same image, keep their projected memory in
        ``state``; the box layers run once per image and cache nothing.
        """
        refs_per_level = refs[:, :, None] * state.reference_scale
        query_pos = self.ref_point_head(query_sine_embedding(refs_per_level[:, :, 0], self.d_model // 2))
        return self.layers[layer_id](tgt, query_pos, refs_per_level, state, attn_mask, group_size,
                                     cache_value=layer_id >= self.num_box_layers)

    def box_update(self, layer_id: int, output: Tensor, refs: Tensor) -> Tensor:
        """New box references (B, N, 4) from the un-normed output (B, N, C)."""
        return (self.bbox_embed[layer_id](output) + inverse_sigmoid(refs)).sigmoid()

    def group_update(self, layer_id: int, output: Tensor, refs: Tensor, pin: Optional[tuple[Tensor, Tensor]] = None
                     ) -> Tensor:
        """New references of grouped queries: boxes by ``bbox_embed``, keypoint xy by ``pose_embed``,
        keypoint wh by ``pose_hw_embed``. pin: ((B, G, K) bool, (B, G, K, 2) xy) held fixed. Returns (B, N, 4)."""
        stage = layer_id - self.num_box_layers
        out_box, out_kpt = split_groups(output, self.num_keypoints)
        ref_box, ref_kpt = split_groups(inverse_sigmoid(refs), self.num_keypoints)
        new_box = (self.bbox_embed[layer_id](out_box) + ref_box).sigmoid()
        new_xy = (ref_kpt[..., :2] + self.pose_embed[stage](out_kpt)).sigmoid()
        new_wh = (ref_kpt[..., 2:] + self.pose_hw_embed[stage](out_kpt)).sigmoid()
        if pin is not None:
            new_xy = torch.where(pin[0][..., None], pin[1], new_xy)
        return interleave_groups(new_box, torch.cat((new_xy, new_wh), -1))

    # ---- building groups -------------------------------------------------------------------------
    def keypoint_references(self, box_refs: Tensor, keypoint_xy: Tensor) -> Tensor:
        """(B, G, 4) boxes + (B, G, K, 2) keypoint xy -> (B, G, K, 4) with wh = box wh * sigmoid(hw[k])."""
        wh = box_refs[..., 2:][:, :, None] * self.hw.weight.sigmoid()
        return torch.cat((keypoint_xy, wh), -1)

    def keypoint_contents(self) -> Tensor:
        """(num_group, K, C): slot g's keypoint contents, learned per (slot, keypoint type), not per image."""
        return self.keypoint_embed.weight.view(self.num_group, self.num_keypoints, self.d_model)

    def initial_keypoints(self, box_refs: Tensor, slots: Optional[Tensor] = None) -> Tensor:
        """Where the learned keypoint queries start in boxes: (B, G, 4) cxcywh in [0, 1] -> (B, G, K, 2) xy.

        Box g gets slot ``slots[g]``'s learned offsets (default: slot g, the ``num_group`` detected boxes); the
        Predictor starts a user's box from slot 0 this way.
        """
        content = self.keypoint_contents()
        if slots is not None:
            content = content[slots]
        offset = self.pose_embed[-1](content)[..., :2]  # (G, K, 2)
        return (inverse_sigmoid(box_refs[..., :2])[:, :, None] + offset).sigmoid()

    def select_groups(self, output: Tensor, refs: Tensor) -> tuple[Tensor, Tensor]:
        """The end of the box layers: keep the ``num_group`` best boxes (class head of the last box layer on
        the un-normed output) and give each a learned keypoint group.

        output: (B, Q, C) un-normed; refs: (B, Q, 4) updated box references.
        Returns grouped queries (B, G * (K + 1), C) and references (B, G * (K + 1), 4).
        """
        batch = output.shape[0]
        scores = self.class_embed[self.num_box_layers - 1](output).max(-1)[0]
        chosen = torch.topk(scores, self.num_group, dim=1)[1]  # (B, G), best first
        box_refs = torch.gather(refs, 1, chosen[..., None].expand(-1, -1, refs.shape[-1]))
        box_out = torch.gather(output, 1, chosen[..., None].expand(-1, -1, output.shape[-1]))
        kpt_refs = self.keypoint_references(box_refs, self.initial_keypoints(box_refs))
        kpt_content = self.keypoint_contents()[None].expand(batch, -1, -1, -1)
        return interleave_groups(box_out, kpt_content), interleave_groups(box_refs, kpt_refs)

    # ---- whole passes ----------------------------------------------------------------------------
    def run_keypoint_layers(self, output: Tensor, refs: Tensor, state: EncoderState,
                            attn_mask: Optional[Tensor] = None, pin: Optional[tuple[Tensor, Tensor]] = None
                            ) -> tuple[list[Tensor], list[Tensor]]:
        """Layers ``num_box_layers..num_layers-1`` on grouped queries. ``refs`` enter as given (the
        refinement passes keep their gradient); later layers get detached references.
        attn_mask: None = each group attends only to itself. Returns (normed outputs, new references) per layer.
        """
        group_size = None if attn_mask is not None else self.num_keypoints + 1
        hs, new_refs = [], []
        for layer_id in range(self.num_box_layers, self.num_layers):
            output = self.run_layer(layer_id, output, refs, state, attn_mask, group_size)
            hs.append(self.norm(output))
            updated = self.group_update(layer_id, output, refs, pin)
            new_refs.append(updated)
            refs = updated.detach()
        return hs, new_refs

    def forward(self, tgt: Tensor, refs_unsigmoid: Tensor, state: EncoderState, num_dn: int = 0,
                dn_groups: Optional[tuple[Tensor, Tensor]] = None, box_attn_mask: Optional[Tensor] = None,
                keypoint_attn_mask: Optional[Tensor] = None) -> tuple[list[Tensor], list[Tensor]]:
        """Full decoder pass.

        tgt: (B, D + Q, C) contents (D denoising queries first); refs_unsigmoid: (B, D + Q, 4).
        dn_groups: denoising keypoints ((B, D, K, 2) xy in [0, 1], (B, D, K, C) contents), needed when D > 0.
        Returns ``hs`` (per layer, normed outputs) and ``refs`` (num_layers + 1 entries: the input references
        of each layer, then the last update); after the box layers the queries are grouped, denoising first.
        """
        refs = refs_unsigmoid.sigmoid()
        all_refs, hs = [refs], []
        output = tgt
        for layer_id in range(self.num_box_layers):
            output = self.run_layer(layer_id, output, refs, state, box_attn_mask)
            hs.append(self.norm(output))
            updated = self.box_update(layer_id, output, refs)
            if layer_id == self.num_box_layers - 1:
                output, updated = self._form_groups(output, updated, num_dn, dn_groups)
            all_refs.append(updated)
            refs = updated.detach()
        kpt_hs, kpt_refs = self.run_keypoint_layers(output, refs, state, keypoint_attn_mask)
        return hs + kpt_hs, all_refs + kpt_refs

    def _form_groups(self, output: Tensor, refs: Tensor, num_dn: int,
                     dn_groups: Optional[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        match_out, match_refs = self.select_groups(output[:, num_dn:], refs[:, num_dn:])
        if num_dn == 0:
            return match_out, match_refs
        if dn_groups is None:
            raise ValueError("the decoder got denoising queries but no denoising keypoint groups")
        dn_xy, dn_content = dn_groups
        dn_box_refs = refs[:, :num_dn]
        dn_out = interleave_groups(output[:, :num_dn], dn_content)
        dn_refs = interleave_groups(dn_box_refs, self.keypoint_references(dn_box_refs, dn_xy))
        return torch.cat((dn_out, match_out), 1), torch.cat((dn_refs, match_refs), 1)

    def refine_people(self, box_content: Tensor, keypoint_content: Tensor, boxes: Tensor, keypoints: Tensor,
                      state: EncoderState, pin: Optional[tuple[Tensor, Tensor]] = None
                      ) -> tuple[list[dict[str, Tensor]], Tensor]:
        """The refinement pass: R people as groups of [box, K keypoints] queries through the keypoint layers.

        box_content (B, R, C), keypoint_content (B, R, K, C): the query contents; boxes (B, R, 4) cxcywh and
        keypoints (B, R, K, 2) in [0, 1]: the references; pin: see :meth:`group_update`.
        Returns per keypoint layer {'pred_logits', 'pred_boxes', 'pred_keypoints'} of the R people, and the last
        layer's normed keypoint-query outputs (B, R, K, C).
        """
        box_refs = inverse_sigmoid(boxes).sigmoid()  # the reference passes boxes through logit space first
        refs = interleave_groups(box_refs, self.keypoint_references(box_refs, keypoints))
        hs, new_refs = self.run_keypoint_layers(interleave_groups(box_content, keypoint_content), refs, state,
                                                attn_mask=None, pin=pin)
        layers = []
        for offset, (layer_hs, layer_refs) in enumerate(zip(hs, [refs] + new_refs)):
            logits, layer_boxes, layer_kpts = self.predict_groups(self.num_box_layers + offset, layer_hs,
                                                                  layer_refs, pin)
            layers.append({"pred_logits": logits, "pred_boxes": layer_boxes, "pred_keypoints": layer_kpts})
        return layers, split_groups(hs[-1], self.num_keypoints)[1]

    # ---- predictions (normed outputs) ----------------------------------------------------------------
    def predict_boxes(self, layer_id: int, hs: Tensor, refs: Tensor) -> tuple[Tensor, Tensor]:
        """Box-layer predictions: logits (B, N, classes), boxes (B, N, 4)."""
        boxes = (self.bbox_embed[layer_id](hs) + inverse_sigmoid(refs)).sigmoid()
        return self.class_embed[layer_id](hs), boxes

    def predict_groups(self, layer_id: int, hs: Tensor, refs: Tensor, pin: Optional[tuple[Tensor, Tensor]] = None
                       ) -> tuple[Tensor, Tensor, Tensor]:
        """Keypoint-layer predictions per group: logits (B, G, classes), boxes (B, G, 4), keypoints (B, G, 3K)
        laid out ``[x1, y1, ..., xK, yK, v1, ..., vK]`` (v = sigmoid(1), the reference's constant)."""
        hs_box, hs_kpt = split_groups(hs, self.num_keypoints)
        ref_box, ref_kpt = split_groups(refs, self.num_keypoints)
        boxes = (self.bbox_embed[layer_id](hs_box) + inverse_sigmoid(ref_box)).sigmoid()
        logits = self.class_embed[layer_id](hs_box)
        xy = (self.pose_embed[layer_id - self.num_box_layers](hs_kpt) + inverse_sigmoid(ref_kpt[..., :2])).sigmoid()
        if pin is not None:
            xy = torch.where(pin[0][..., None], pin[1], xy)
        visibility = xy.new_full(xy.shape[:-1], VISIBILITY_LOGIT).sigmoid()
        return logits, boxes, kp.encode(xy, visibility)
