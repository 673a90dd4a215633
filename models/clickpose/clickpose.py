"""``ClickPose``: the ED-Pose detector with pose-error-modeling queries and click refinement.

forward(samples, targets=None):
- eval: ``{'pred_logits' (B, G, C), 'pred_boxes' (B, G, 4), 'pred_keypoints' (B, G, 3K)}`` (no targets needed);
- training (targets required): the same plus the denoising entries (``dn_*``, ``num_tgt``), ``aux_outputs``
  (the earlier decoder layers, then, when ``human_feedback`` is truthy, the refinement layers of the last
  simulated click round) and ``interm_outputs`` (the encoder proposals).
The interactive API is :meth:`ClickPose.encode` + :meth:`ClickPose.decode` (or ``forward(...,
return_state=True)``), then :meth:`ClickPose.refine` or :meth:`ClickPose.click_rounds` on the cached state.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from util.keypoint_metadata import KeypointMetadata
from util.misc import NestedTensor, downsample_mask, nested_tensor_from_tensor_list
from util.settings import DenoisingCfg, FeedbackCfg

from .backbone import Joiner
from .encoder import EncoderState
from .error_modeling import DenoisingQueries, build_denoising_queries, draw_clicked_counts
from util import keypoint_codec as kp
from .feedback import (ClickSimulator, Clicks, Refinement, apply_clicks, check_click_freeze, flatten_clicks,
                       pinned_keypoints, run_click_rounds)
from .queries import box_stage_dn_mask, keypoint_stage_dn_mask
from .transformer import Transformer


class ClickPose(nn.Module):
    """See the module docstring. Sub-module names follow the reference checkpoints exactly."""

    def __init__(self, backbone: Joiner, transformer: Transformer, denoising: DenoisingCfg, feedback: FeedbackCfg,
                 metadata: KeypointMetadata, click_simulator: Optional[ClickSimulator] = None):
        """The shapes come from ``transformer`` (width, feature levels, groups) and ``metadata`` (K keypoints, their
        flip pairs and OKS sigmas, kept as ``keypoint_metadata`` and saved with the model); ``denoising`` and
        ``feedback`` are the training-time sections. ``click_simulator``: the oracle of the training click loop
        and the default of :meth:`click_rounds`."""
        super().__init__()
        hidden_dim = transformer.d_model
        decoder = transformer.decoder
        num_keypoints = metadata.num_keypoints
        if denoising.num_keypoints != num_keypoints or decoder.num_keypoints != num_keypoints:
            raise ValueError(f"the keypoint layout has {num_keypoints} keypoints, the denoising section "
                             f"{denoising.num_keypoints} and the decoder {decoder.num_keypoints}")
        num_group = decoder.num_group
        if feedback.num_group_refine > num_group:
            raise ValueError(f"num_group_refine ({feedback.num_group_refine}) cannot exceed num_group ({num_group})")
        check_click_freeze(feedback.click_freeze)
        self.transformer = transformer
        self.label_enc = nn.Embedding(denoising.labelbook_size + 1, hidden_dim)
        self.label_enc_pose = nn.Embedding(num_keypoints + 1, hidden_dim)
        self.input_proj = self._make_input_proj(backbone.num_channels, hidden_dim, transformer.num_feature_levels)
        self.backbone = backbone
        # the heads live in the decoder; registering them here too gives the reference's aliased keys
        self.bbox_embed = decoder.bbox_embed
        self.class_embed = decoder.class_embed
        self.pose_embed = decoder.pose_embed
        self.pose_hw_embed = decoder.pose_hw_embed

        self.denoising = denoising
        # plain copies of the section values: read by the model, the predictor and tools
        self.num_classes = denoising.num_classes
        self.num_feature_levels = transformer.num_feature_levels
        self.num_keypoints = num_keypoints
        self.num_group, self.num_group_refine, self.nheads = num_group, feedback.num_group_refine, decoder.nheads
        self.dn_number, self.dn_labelbook_size = denoising.number, denoising.labelbook_size
        self.dn_box_noise_scale, self.dn_kpt_noise_scale = denoising.box_noise_scale, denoising.kpt_noise_scale
        self.dn_box_label_noise_ratio = denoising.box_label_noise_ratio
        self.dn_kpt_label_noise_ratio = denoising.kpt_label_noise_ratio
        self.human_feedback = feedback.human_feedback
        self.click_freeze = feedback.click_freeze
        self.only_correction = feedback.only_correction
        self.pem_error_types = tuple(denoising.error_types)
        self.pem_error_prob = denoising.error_prob
        self.flip_pairs = tuple(metadata.flip_pairs)
        self.keypoint_sigmas = metadata.sigmas
        self.keypoint_metadata = metadata
        # a plain attribute (not a sub-module): its matcher has no weights and must not enter the state dict
        self.click_simulator = click_simulator

    @staticmethod
    def _make_input_proj(channels: Sequence[int], hidden_dim: int, num_levels: int) -> nn.ModuleList:
        """1x1 conv + GroupNorm per backbone level, then 3x3 stride-2 convs for the extra levels."""
        projections = [nn.Sequential(nn.Conv2d(c, hidden_dim, kernel_size=1), nn.GroupNorm(32, hidden_dim))
                       for c in channels]
        in_channels = channels[-1]
        for _ in range(num_levels - len(channels)):
            projections.append(nn.Sequential(nn.Conv2d(in_channels, hidden_dim, kernel_size=3, stride=2, padding=1),
                                             nn.GroupNorm(32, hidden_dim)))
            in_channels = hidden_dim
        for projection in projections:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.constant_(projection[0].bias, 0)
        return nn.ModuleList(projections)

    # ---- encoder side ------------------------------------------------------------------------------
    def encode(self, samples: NestedTensor | Sequence[Tensor] | Tensor) -> EncoderState:
        """Backbone, input projections (+ extra strided levels) and the deformable encoder."""
        if not isinstance(samples, NestedTensor):
            samples = nested_tensor_from_tensor_list(list(samples))
        features, positions = self.backbone(samples)
        srcs = [proj(feature.tensors) for proj, feature in zip(self.input_proj, features)]
        masks = [feature.mask for feature in features]
        positions = list(positions)
        for level in range(len(features), self.num_feature_levels):
            source = features[-1].tensors if level == len(features) else srcs[-1]
            src = self.input_proj[level](source)
            mask = downsample_mask(samples.mask, src.shape[-2:])
            srcs.append(src)
            masks.append(mask)
            positions.append(self.backbone[1](NestedTensor(src, mask)).to(src.dtype))
        return self.transformer.encode(srcs, masks, positions)

    # ---- decoder side ------------------------------------------------------------------------------
    def _denoising_queries(self, targets: Sequence[dict]) -> DenoisingQueries:
        return build_denoising_queries(targets, self.denoising, self.label_enc, self.label_enc_pose,
                                       clicked_subset=self.human_feedback, flip_pairs=self.flip_pairs,
                                       sigmas=self.keypoint_sigmas)

    def _layer_predictions(self, hs: list[Tensor], refs: list[Tensor], first: int = 0) -> list[dict[str, Tensor]]:
        """Predictions of decoder layers ``first..`` (each from its normed output and input references)."""
        decoder = self.transformer.decoder
        layers = []
        for layer_id, (layer_hs, layer_refs) in enumerate(zip(hs, refs)):
            if layer_id < first:
                continue
            if layer_id < decoder.num_box_layers:
                logits, boxes = decoder.predict_boxes(layer_id, layer_hs, layer_refs)
                keypoints = kp.zeros(boxes.shape[:2], self.num_keypoints, layer_hs)
            else:
                logits, boxes, keypoints = decoder.predict_groups(layer_id, layer_hs, layer_refs)
            layers.append({"pred_logits": logits, "pred_boxes": boxes, "pred_keypoints": keypoints})
        return layers

    def decode(self, state: EncoderState, targets: Optional[Sequence[dict]] = None) -> dict:
        """Two-stage proposals, (training: denoising queries), the decoder, predictions (module docstring)."""
        if self.training and targets is None:
            raise ValueError("ClickPose needs targets in training mode (denoising queries and the click loop)")
        tgt, refs_unsig, interm_content, interm_boxes = self.transformer.propose(state)
        dn = self._denoising_queries(targets) if self.training and self.dn_number > 0 else None
        num_dn, dn_groups, box_mask, keypoint_mask = 0, None, None, None
        if dn is not None:
            num_dn = dn.num_dn
            tgt = torch.cat((dn.content, tgt), 1)
            refs_unsig = torch.cat((dn.boxes_unsigmoid, refs_unsig), 1)
            dn_groups = (dn.keypoint_xy, dn.keypoint_content)
            box_mask = box_stage_dn_mask(dn.num_gt, num_dn, self.transformer.num_queries, self.nheads)
            keypoint_mask = keypoint_stage_dn_mask(dn.num_gt, num_dn, self.num_group, self.num_keypoints + 1,
                                                   self.nheads)
        hs, refs = self.transformer.decoder(tgt, refs_unsig, state, num_dn, dn_groups, box_mask, keypoint_mask)
        # in eval only the last layer is returned, so only it is predicted
        layers = self._layer_predictions(hs, refs, first=0 if self.training else len(hs) - 1)
        dn_layers = [{key: value[:, :num_dn] for key, value in layer.items()} for layer in layers]
        layers = [{key: value[:, num_dn:] for key, value in layer.items()} for layer in layers]
        out = dict(layers[-1])
        if not self.training:
            return out

        aux = [dict(layer) for layer in layers[:-1]]
        if dn is not None:
            dn_inputs = {"dn_class_input": dn.labels, "dn_bbox_input": dn.boxes, "dn_pose_input": dn.keypoints,
                         "num_tgt": num_dn}
            for entry, dn_layer in zip(aux + [out], dn_layers):
                entry.update(dn_inputs)
                entry.update({"dn_class_pred": dn_layer["pred_logits"], "dn_bbox_pred": dn_layer["pred_boxes"],
                              "dn_pose_pred": dn_layer["pred_keypoints"]})
        if self.human_feedback:
            aux += self._training_click_layers(state, out, targets)
        out["aux_outputs"] = aux
        out["interm_outputs"] = {
            "pred_logits": self.transformer.enc_out_class_embed(interm_content), "pred_boxes": interm_boxes,
            "pred_keypoints": kp.zeros(interm_boxes.shape[:2], self.num_keypoints, interm_boxes)}
        return out

    def _training_click_layers(self, state: EncoderState, out: dict, targets: Sequence[dict]) -> list[dict]:
        """The reference's training feedback loop: k ~ P(k) proportional to 1/k^2 simulated rounds; the
        refinement layers of the last round are returned (earlier rounds feed it through the gradient)."""
        main = {key: out[key] for key in ("pred_logits", "pred_boxes", "pred_keypoints")}
        rounds = self.click_rounds(state, main, targets, self.draw_training_click_rounds(), only_correction=False)
        return rounds[-1]["refine_layers"]

    def draw_training_click_rounds(self) -> int:
        """Rounds of one training step's click loop: k in 1..K with P(k) proportional to 1/k^2."""
        return int(draw_clicked_counts(1, 1, self.num_keypoints, torch.device("cpu"))[0, 0])

    def forward(self, samples: NestedTensor | Sequence[Tensor] | Tensor, targets: Optional[Sequence[dict]] = None,
                return_state: bool = False):
        """Returns the output dict, or (outputs, encoder state) with ``return_state=True``."""
        state = self.encode(samples)
        out = self.decode(state, targets)
        return (out, state) if return_state else out

    # ---- interaction -------------------------------------------------------------------------------
    def refine(self, state: EncoderState, boxes: Tensor, keypoints: Tensor, clicks: Clicks,
               click_freeze: Optional[str] = None, pinned: Optional[Tensor] = None,
               logits: Optional[Tensor] = None) -> Refinement:
        """Apply ``clicks`` to R people's poses and re-predict them with the box+keypoint decoder layers.

        The reference's recipe: each click moves its keypoint to (x, y) and grows its person's box to contain all K
        keypoints; the keypoint layers then run on R groups of [box, K keypoints] queries (contents ``label_enc(1)``
        and ``label_enc_pose(1..K)``, references the corrected poses) over the image's cached ``state``.

        state: from ``model(samples, return_state=True)``; boxes: (B, R, 4) cxcywh in [0, 1]; keypoints:
        (B, R, K, 2); clicks: (N, 5) ``[image, prediction, keypoint, x, y]`` or one (n_i, 4) tensor per image;
        click_freeze: None = the model's mode; pinned: (B, R, K) earlier clicks, kept fixed under 'all';
        logits: (B, R, C) carried into ``corrected`` (zeros when None).
        """
        mode = check_click_freeze(self.click_freeze if click_freeze is None else click_freeze)
        batch, num_people, num_keypoints, _ = keypoints.shape
        if num_keypoints != self.num_keypoints:
            raise ValueError(f"poses have {num_keypoints} keypoints, the model {self.num_keypoints}")
        boxes, keypoints, clicked = apply_clicks(boxes, keypoints, flatten_clicks(clicks, batch, keypoints.device))
        pin_mask = pinned_keypoints(clicked, mode, pinned)
        pin = (pin_mask, keypoints) if mode != "none" else None
        device = keypoints.device
        box_content = self.label_enc(torch.ones(batch, num_people, dtype=torch.long, device=device))
        kpt_types = torch.arange(1, num_keypoints + 1, device=device).expand(batch, num_people, -1)
        layers, hidden = self.transformer.decoder.refine_people(box_content, self.label_enc_pose(kpt_types), boxes,
                                                        keypoints, state, pin)
        if logits is None:
            logits = layers[-1]["pred_logits"].new_zeros(layers[-1]["pred_logits"].shape)
        corrected = {"pred_logits": logits, "pred_boxes": boxes, "pred_keypoints": kp.encode(keypoints)}
        return Refinement(layers, corrected, clicked, pin_mask, hidden)

    def click_rounds(self, state: EncoderState, outputs: dict[str, Tensor], targets: Sequence[dict],
                     num_rounds: int, simulator: Optional[ClickSimulator] = None, click_freeze: Optional[str] = None,
                     only_correction: Optional[bool] = None) -> list[dict]:
        """Simulated session on the cached state (see :func:`models.clickpose.feedback.run_click_rounds`);
        ``simulator`` None = the model's (built from config ``click_policy``)."""
        simulator = simulator or self.click_simulator
        if simulator is None:
            raise ValueError("no ClickSimulator: pass simulator=ClickSimulator(matcher, K) or build the model with "
                             "build_clickpose(args, matcher=...)")
        mode = check_click_freeze(self.click_freeze if click_freeze is None else click_freeze)

        def refine_fn(boxes: Tensor, keypoints: Tensor, clicks: Clicks, pinned: Optional[Tensor],
                      logits: Optional[Tensor]) -> Refinement:
            return self.refine(state, boxes, keypoints, clicks, mode, pinned, logits)

        return run_click_rounds(refine_fn, outputs, targets, num_rounds, simulator, self.num_group_refine,
                                self.only_correction if only_correction is None else only_correction)
