"""The per-image cache in the encoder state: a refinement reuses each keypoint layer's projected memory, and its
outputs equal the uncached path in every click_freeze mode, in eval and in training (outputs and gradients)."""
from __future__ import annotations

import pytest
import torch

from models.clickpose.build import build_clickpose
from models.clickpose.encoder import EncoderState
from models.clickpose.feedback import ClickSimulator

from tests.helpers import CONFIG_DIR, encoded_session, layout, load_args, make_images, make_targets

K = 17


class FixedMatcher:
    """Matches prediction i to ground truth i."""

    def __call__(self, outputs, targets):
        return [(torch.arange(len(t["boxes"])), torch.arange(len(t["boxes"]))) for t in targets], {}


@pytest.fixture(scope="module")
def session():
    return encoded_session(5, K)


def _value_projections(model, counter):
    return [layer.cross_attn.value_proj.register_forward_hook(lambda *_: counter.append(1))
            for layer in model.transformer.decoder.layers]


def test_the_first_pass_fills_the_cache_of_the_keypoint_layers_only(session):
    model, state, _, _ = session
    decoder = model.transformer.decoder
    keypoint_layers = decoder.num_layers - decoder.num_box_layers
    tokens = state.memory.shape[1]
    assert len(state._values) == keypoint_layers
    assert state.cache_bytes() == keypoint_layers * 2 * tokens * decoder.d_model * 4  # fp32, batch of 2


def test_a_cached_refinement_projects_no_memory(session):
    model, state, outputs, targets = session
    calls: list[int] = []
    hooks = _value_projections(model, calls)
    try:
        with torch.no_grad():
            model.click_rounds(state, outputs, targets, 2, ClickSimulator(FixedMatcher(), K))
            assert calls == []
            model.click_rounds(state.uncached(), outputs, targets, 2, ClickSimulator(FixedMatcher(), K))
    finally:
        for hook in hooks:
            hook.remove()
    decoder = model.transformer.decoder
    assert len(calls) == 2 * (decoder.num_layers - decoder.num_box_layers)  # every layer, every round


@pytest.mark.parametrize("mode", ["none", "round", "all"])
def test_cached_and_uncached_refinements_agree(session, mode):
    model, state, outputs, targets = session
    simulator = ClickSimulator(FixedMatcher(), K)
    with torch.no_grad():
        cached = model.click_rounds(state, outputs, targets, 3, simulator, click_freeze=mode)
        plain = model.click_rounds(state.uncached(), outputs, targets, 3, simulator, click_freeze=mode)
    assert len(cached) == len(plain) == 4
    for ours, reference in zip(cached[1:], plain[1:]):
        for layer, expected in zip(ours["refine_layers"], reference["refine_layers"]):
            for key in ("pred_logits", "pred_boxes", "pred_keypoints"):
                torch.testing.assert_close(layer[key], expected[key], atol=1e-5, rtol=0)
    assert (cached[3]["pred_keypoints"] != cached[1]["pred_keypoints"]).any()  # the rounds really moved


def test_the_cache_follows_the_grad_mode_and_can_be_cleared(session):
    model, state, outputs, _ = session
    attention = model.transformer.decoder.layers[-1].cross_attn
    with torch.no_grad():
        first = state.projected_value(attention)
        assert state.projected_value(attention) is first
    with torch.enable_grad():
        tracked = state.projected_value(attention)
    assert tracked is not first and tracked.requires_grad and not first.requires_grad
    torch.testing.assert_close(tracked.detach(), first)
    copy = EncoderState(state.memory, state.padding_mask, state.spatial_shapes, state.level_start_index,
                        state.valid_ratios)
    copy.projected_value(attention)
    copy.clear_cache()
    assert copy.cache_bytes() == 0 and state.detach().cache_bytes() == 0


def test_training_with_the_cache_equals_training_without(monkeypatch):
    """The training click loop reuses the cached projections: same outputs and gradients as recomputing them."""
    gen = torch.Generator().manual_seed(8)
    images, targets = make_images([(256, 320)], gen), make_targets([3], K, gen)

    def run(use_cache: bool):
        torch.manual_seed(0)
        args = load_args(human_feedback=True)
        model = build_clickpose(args, layout(args)).train()
        model.draw_training_click_rounds = lambda: 2
        if not use_cache:
            monkeypatch.setattr(EncoderState, "projected_value",
                                lambda self, attention, cache=True: attention.project_value(self.memory,
                                                                                            self.padding_mask))
        torch.manual_seed(1)
        out = model(images, targets)
        monkeypatch.undo()
        loss = sum(o["pred_keypoints"][..., :2 * K].sum() + o["pred_boxes"].sum() for o in [out] + out["aux_outputs"])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    cached_out, cached_grads = run(True)
    plain_out, plain_grads = run(False)
    torch.testing.assert_close(cached_out["aux_outputs"][-1]["pred_keypoints"],
                               plain_out["aux_outputs"][-1]["pred_keypoints"], atol=1e-5, rtol=0)
    assert cached_grads.keys() == plain_grads.keys()
    for name, grad in cached_grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_predictor_gets_the_cache_without_code_changes():
    """Predictor.correct goes through model.refine on the state of model(samples, return_state=True)."""
    import numpy as np

    from models.predictor import Predictor

    config = str(CONFIG_DIR / "demo.cfg.py")
    predictor = Predictor(config, None, options={"num_queries": 100, "num_group": 8, "num_group_refine": 4,
                                                 "dn_number": 4})
    image = np.random.default_rng(0).integers(0, 256, (224, 288, 3), dtype=np.uint8)
    people = predictor.predict(image)
    calls: list[int] = []
    hooks = _value_projections(predictor.model, calls)
    try:
        predictor.correct(person=people[0]["index"], keypoint=3, x=50.0, y=60.0)
        predictor.correct(person=people[1]["index"], keypoint=5, x=70.0, y=80.0)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []
