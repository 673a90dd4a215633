"""Every compiled backend equals the pure-PyTorch reference: forward and the three gradients."""
from __future__ import annotations

import pytest
import torch

from models.clickpose.ops import _library, ms_deform_attn, ms_deform_attn_reference
from models.clickpose.ops.testing import forward_and_grads, gradcheck, max_errors, random_inputs

NOT_BUILT = f"compiled kernels not built: {_library.BUILD_HINT}"
LEVELS = [(6, 4), (3, 2), (1, 1), (2, 5)]


def naive_ms_deform_attn(value, shapes, locations, weights):
    """Per-sample loops, written from the definition: pixel = loc * size - 0.5, zero outside the map."""
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = value.new_zeros(batch, queries, heads, channels)
    starts = [0] + torch.tensor([h * w for h, w in shapes.tolist()]).cumsum(0).tolist()
    for b, q, m, l, p in torch.cartesian_prod(*(torch.arange(n) for n in (batch, queries, heads, levels, points))):
        h, w = shapes[l].tolist()
        px = float(locations[b, q, m, l, p, 0]) * w - 0.5
        py = float(locations[b, q, m, l, p, 1]) * h - 0.5
        x0, y0 = int(torch.tensor(px).floor()), int(torch.tensor(py).floor())
        for x, y, coeff in ((x0, y0, (1 - (px - x0)) * (1 - (py - y0))), (x0 + 1, y0, (px - x0) * (1 - (py - y0))),
                            (x0, y0 + 1, (1 - (px - x0)) * (py - y0)), (x0 + 1, y0 + 1, (px - x0) * (py - y0))):
            if 0 <= x < w and 0 <= y < h:
                out[b, q, m] += weights[b, q, m, l, p] * coeff * value[b, starts[l] + y * w + x, m]
    return out.flatten(2)


def test_reference_matches_the_definition():
    inputs = random_inputs([(3, 4), (2, 1)], batch=1, queries=3, heads=2, channels=3, points=2)
    expected = naive_ms_deform_attn(inputs["value"], inputs["spatial_shapes"], inputs["sampling_locations"],
                                    inputs["attention_weights"])
    got = ms_deform_attn_reference(inputs["value"], inputs["spatial_shapes"], inputs["sampling_locations"],
                                   inputs["attention_weights"])
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
def test_equals_reference(backend, dtype, tol):
    errors = max_errors(random_inputs(LEVELS, dtype=dtype, device=backend), backend)
    assert all(e <= tol for e in errors.values()), errors


@pytest.mark.parametrize("channels", [32, 24, 64, 6], ids=["D32", "D24-partial-warp", "D64-multi-warp", "D6"])
def test_equals_reference_for_head_widths(backend, channels):
    # The CUDA backward reduces channels in warp groups: a full power of two, a partial group, and several warps;
    # the CPU kernels work on lanes of 8 channels plus a remainder.
    inputs = random_inputs(LEVELS, batch=1, queries=5, channels=channels, device=backend)
    errors = max_errors(inputs, backend)
    assert all(e <= 1e-10 for e in errors.values()), errors


@pytest.fixture
def portable_cpu_kernel():
    """Forces the portable CPU variant (the AVX2 one is chosen on CPUs that have it) for the test's duration."""
    library = _library.load()[0]
    if library is None:
        pytest.skip(NOT_BUILT)
    yield library.cpu_isa(True)
    library.cpu_isa(False)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
def test_portable_cpu_variant_equals_reference(portable_cpu_kernel, dtype, tol):
    assert portable_cpu_kernel == "portable"
    for channels in (8, 5):
        errors = max_errors(random_inputs(LEVELS, channels=channels, dtype=dtype), "cpu")
        assert all(e <= tol for e in errors.values()), errors


def test_gradcheck(backend):
    assert gradcheck(backend, backend)


def test_non_contiguous_inputs(backend):
    inputs = random_inputs(LEVELS, device=backend)
    expected = forward_and_grads(inputs, backend)
    strided = dict(inputs)
    # value as a (B, S, M, D) view of a (B, S, D, M) tensor; locations and weights as slices of wider tensors
    strided["value"] = inputs["value"].transpose(2, 3).contiguous().transpose(2, 3)
    wide_loc = torch.cat([inputs["sampling_locations"], inputs["sampling_locations"]], dim=-1)
    strided["sampling_locations"] = wide_loc[..., :2]
    weights = inputs["attention_weights"]
    strided["attention_weights"] = torch.stack([weights, -weights], -1).flatten(-2)[..., ::2]
    assert not any(strided[k].is_contiguous() for k in ("value", "sampling_locations", "attention_weights"))
    for got, want in zip(forward_and_grads(strided, backend), expected):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_tiny_levels_and_far_away_locations(backend):
    inputs = random_inputs([(1, 1), (1, 3), (4, 4)], device=backend, spread=0.2)
    far = inputs["sampling_locations"].clone()
    far[:, :, :, 0] = 7.5    # level 0 (1x1) sampled far right/below
    far[:, :, :, 1] = -3.0   # level 1 (1x3) sampled far left/above
    inputs["sampling_locations"] = far
    errors = max_errors(inputs, backend)
    assert all(e <= 1e-10 for e in errors.values()), errors
    _, _, grad_loc, grad_w = forward_and_grads(inputs, backend)
    assert grad_loc[:, :, :, :2].abs().max() == 0 and grad_w[:, :, :, :2].abs().max() == 0


def test_empty_level(backend):
    # A level with no pixels contributes nothing and reads nothing.
    inputs = random_inputs([(0, 3), (2, 2)], device=backend, spread=0.0)
    out, grad_value, grad_loc, grad_w = forward_and_grads(inputs, backend)
    only_level_1 = {k: v for k, v in inputs.items()}
    only_level_1["spatial_shapes"] = inputs["spatial_shapes"][1:]
    only_level_1["level_start_index"] = inputs["level_start_index"][1:]
    only_level_1["sampling_locations"] = inputs["sampling_locations"][:, :, :, 1:].contiguous()
    only_level_1["attention_weights"] = inputs["attention_weights"][:, :, :, 1:].contiguous()
    expected = forward_and_grads(only_level_1, "pytorch")
    torch.testing.assert_close(out, expected[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(grad_value, expected[1], atol=1e-12, rtol=0)
    assert grad_loc[:, :, :, 0].abs().max() == 0 and grad_w[:, :, :, 0].abs().max() == 0


def test_locations_exactly_on_borders(backend):
    # With H = W = 4 every coordinate below is exact in binary: pixel -1, -0.5, 0, W - 1, W - 0.5, W, W + 0.5.
    pixel = torch.tensor([-1.5, -1.0, -0.5, 0.0, 3.0, 3.5, 4.0, 4.5], dtype=torch.float64)
    locs = (pixel + 0.5) / 4
    grid = torch.cartesian_prod(locs, locs)  # (64, 2) as (x, y)
    inputs = random_inputs([(4, 4)], batch=1, queries=grid.shape[0], heads=1, channels=5, points=1, device=backend)
    inputs["sampling_locations"] = grid.view(1, -1, 1, 1, 1, 2).to(backend)
    errors = max_errors(inputs, backend)
    assert all(e <= 1e-12 for e in errors.values()), errors
    # On the pixel -1 line the value is zero but the location gradient is not (as grid_sample).
    _, _, grad_loc, _ = forward_and_grads(inputs, backend)
    on_minus_one = (grid[:, 0] == locs[1]) & (grid[:, 1] > 0) & (grid[:, 1] < 1)
    assert grad_loc.view(-1, 2)[on_minus_one.to(backend), 0].abs().min() > 0


def test_half_inputs_run_in_fp32_or_native(backend):
    inputs = random_inputs(LEVELS, dtype=torch.float32, device=backend)
    expected = ms_deform_attn(**inputs, backend=backend)
    for dtype in (torch.float16, torch.bfloat16):
        low = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
        out = ms_deform_attn(**low, backend=backend)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)
        grads = forward_and_grads(low, backend)[1:]
        assert [g.dtype for g in grads] == [dtype] * 3 and all(torch.isfinite(g.float()).all() for g in grads)


def test_mixed_dtypes_are_promoted(backend):
    # AMP: value in half precision, locations and (softmaxed) weights in fp32 -> computed in fp32, value's dtype out.
    inputs = random_inputs(LEVELS, dtype=torch.float32, device=backend)
    mixed = dict(inputs, value=inputs["value"].half())
    out = ms_deform_attn(**mixed, backend=backend)
    assert out.dtype == torch.float16
    expected = ms_deform_attn(**dict(inputs, value=mixed["value"].float()), backend=backend)
    torch.testing.assert_close(out.float(), expected, atol=2e-3, rtol=2e-3)
