"""The original's Swin backbones: state-dict keys, official release weights, padding, levels, checkpointing."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.clickpose.backbones.swin import (SWIN_CONFIGS, SwinBackbone, SwinConfig, relative_position_index,
                                             shifted_window_mask)
from models.clickpose.build import build_clickpose
from util.misc import nested_tensor_from_tensor_list

from tests.helpers import layout, load_args

KEYS_FILE = Path(__file__).resolve().parents[1] / "data" / "original_swin_state_dict_keys.txt"
SMALL = SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, pretrain_img_size=224)


def _original_keys(config: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = [line.split("\t") for line in KEYS_FILE.read_text().splitlines() if not line.startswith("#")]
    return [(key, tuple(int(n) for n in shape.strip("()").split(",") if n.strip())) for cfg, key, shape in rows
            if cfg == config]


@pytest.mark.parametrize("name,indices,levels", [("swin_T_224_1k", [1, 2, 3], 4),
                                                 ("swin_L_384_22k", [0, 1, 2, 3], 5)])
def test_full_model_keys_and_shapes_equal_the_original(name, indices, levels):
    """Built on the meta device (no memory, no time): the backbone keys are the original's, in its order, and the
    rest of the model is the ResNet-50 model's (same levels) with input projections sized for the Swin widths."""
    with torch.device("meta"):
        swin_args = load_args("clickpose.cfg.py", backbone=name, return_interm_indices=indices,
                              num_feature_levels=levels)
        resnet_args = load_args("clickpose.cfg.py", return_interm_indices=indices, num_feature_levels=levels)
        swin = build_clickpose(swin_args, layout(swin_args)).state_dict()
        resnet = build_clickpose(resnet_args, layout(resnet_args)).state_dict()
    expected = _original_keys(f"{name}[{','.join(map(str, indices))}]")
    assert len(expected) == {"swin_T_224_1k": 187, "swin_L_384_22k": 357}[name]
    assert [(k, tuple(v.shape)) for k, v in swin.items() if k.startswith("backbone.")] == expected
    def rest(state):  # everything but the backbone and the per-level input projections
        return [(k, tuple(v.shape)) for k, v in state.items() if not k.startswith(("backbone.", "input_proj."))]

    assert rest(swin) == rest(resnet)
    assert len([k for k in swin if k.startswith("input_proj.")]) == 4 * levels  # conv w, b + group norm w, b
    widths = [SWIN_CONFIGS[name].embed_dim * 2 ** i for i in indices]
    assert [swin[f"input_proj.{i}.0.weight"].shape[1] for i in range(len(indices))] == widths
    assert swin[f"input_proj.{len(indices)}.0.weight"].shape[1] == widths[-1]  # the extra stride-2 level


def test_official_release_file_loads_and_a_wrong_one_names_the_keys(tmp_path):
    source = SwinBackbone("small", [0, 1, 2, 3], config=SMALL)
    state = {k: v.clone() for k, v in source.state_dict().items() if not k.startswith("norm")}
    # what the official files also hold: the classifier, the final norm, stored shift masks
    state.update({"head.weight": torch.zeros(10, 128), "norm.weight": torch.ones(128),
                  "layers.0.blocks.1.attn_mask": torch.zeros(4, 49, 49)})
    torch.save({"model": state}, tmp_path / "release.pth")
    target = SwinBackbone("small", [1, 2, 3], config=SMALL, weights_path=str(tmp_path / "release.pth"))
    assert torch.equal(target.layers[2].blocks[1].mlp.fc1.weight, source.layers[2].blocks[1].mlp.fc1.weight)
    assert torch.equal(target.patch_embed.norm.bias, source.patch_embed.norm.bias)
    # dilation: the last stage (other width) and the dropped patch merging are skipped, not an error
    dilated = SwinBackbone("small", [1, 2, 3], config=SMALL, dilation=True, weights_path=str(tmp_path / "release.pth"))
    assert torch.equal(dilated.layers[1].downsample.reduction.weight, source.layers[1].downsample.reduction.weight)
    wider = SwinConfig(24, (2, 2, 2, 2), (1, 2, 2, 4), 7, 224)
    with pytest.raises(ValueError, match=r"does not fit this backbone: wrong shape \(\d+\): patch_embed.proj.weight "
                                         r"\(16, 3, 4, 4\) \(model \(24, 3, 4, 4\)\).*official Swin"):
        SwinBackbone("wider", [1, 2, 3], config=wider, weights_path=str(tmp_path / "release.pth"))
    del state["layers.1.blocks.0.attn.qkv.weight"]
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"missing \(1\): layers.1.blocks.0.attn.qkv.weight"):
        SwinBackbone("small", [1, 2, 3], config=SMALL, weights_path=str(tmp_path / "partial.pth"))


@pytest.mark.parametrize("dilation", [False, True])
def test_any_image_size_gives_the_levels_and_masks(dilation):
    backbone = SwinBackbone("small", [0, 1, 2, 3], config=SMALL, dilation=dilation).eval()
    samples = nested_tensor_from_tensor_list([torch.randn(3, 61, 90), torch.randn(3, 45, 45)])
    features = backbone(samples)
    assert list(features) == ["0", "1", "2", "3"]
    sizes = [(16, 23), (8, 12), (4, 6), (4, 6) if dilation else (2, 3)]  # ceil(61/4) = 16, ceil(90/4) = 23, ...
    assert [tuple(f.tensors.shape[-2:]) for f in features.values()] == sizes
    assert backbone.num_channels == ([16, 32, 64, 64] if dilation else [16, 32, 64, 128])
    assert [f.tensors.shape[1] for f in features.values()] == backbone.num_channels
    first = features["0"].mask
    assert not first[0].any() and first[1, :, 12:].all() and not first[1, :12, :11].any()
    # padding the batch does not change the first image's features (the padding is all on the second image's side)
    alone = backbone(nested_tensor_from_tensor_list([samples.tensors[0]]))
    torch.testing.assert_close(alone["3"].tensors[0], features["3"].tensors[0], atol=1e-5, rtol=1e-5)


def test_window_helpers():
    index = relative_position_index(2)
    # tokens (0,0),(0,1),(1,0),(1,1); offset (dy, dx) -> (dy + 1) * 3 + (dx + 1)
    assert index.tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    mask = shifted_window_mask(14, 14, 7, 3, torch.device("cpu"))
    assert mask.shape == (4, 49, 49)
    assert not mask[0].any()  # the first window lies in one region
    # last window: rows 7..10 (region 1) and 11..13 (region 2) do not see each other; columns likewise
    assert mask[3, 0, 1] == 0 and mask[3, 0, 4] == -100 and mask[3, 0, 4 * 7] == -100 and mask[3, 0, 7] == 0
    assert set(mask[1].unique().tolist()) == {0.0, -100.0} and mask[1, 0, 3] == 0 and mask[1, 0, 4] == -100


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = SwinBackbone("small", [1, 2, 3], config=SMALL).train()
    recomputed = SwinBackbone("small", [1, 2, 3], config=SMALL, use_checkpoint=True).train()
    recomputed.load_state_dict(plain.state_dict())
    samples = nested_tensor_from_tensor_list([torch.randn(3, 64, 90), torch.randn(3, 50, 70)])
    grads = []
    for model in (plain, recomputed):
        torch.manual_seed(3)  # the same stochastic-depth draws (checkpointing replays them)
        loss = sum((f.tensors ** 2).mean() for f in model(samples).values())
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all(g is not None for g in grads[0].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_unknown_swin_and_bad_levels_are_errors():
    with pytest.raises(ValueError, match="not a Swin; choose one of"):
        SwinBackbone("swin_S_224_1k", [1, 2, 3])
    with pytest.raises(ValueError, match="stage indices in 0..3"):
        SwinBackbone("small", [1, 4], config=SMALL)
