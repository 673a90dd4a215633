"""MSDeformAttn: backends agree through the module, padding is respected, both reference-point forms work."""
from __future__ import annotations

import pytest
import torch

from models.clickpose.ops import MSDeformAttn, _library

SHAPES = torch.tensor([[8, 6], [4, 3], [2, 2]])
TOKENS = int(SHAPES.prod(1).sum())
STARTS = torch.cat([SHAPES.new_zeros(1), SHAPES.prod(1).cumsum(0)[:-1]])


def make_module(backend, d_model=32, heads=4):
    torch.manual_seed(0)
    module = MSDeformAttn(d_model, n_levels=3, n_heads=heads, n_points=2, backend=backend).double()
    with torch.no_grad():  # non-trivial offsets and weights (the initialisation zeroes their weights)
        module.sampling_offsets.weight.normal_(0, 0.2)
        module.attention_weights.weight.normal_(0, 0.2)
    return module


def inputs(ref_dim, batch=2, queries=5, d_model=32):
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(batch, queries, d_model, generator=gen, dtype=torch.float64)
    ref = torch.rand(batch, queries, 3, ref_dim, generator=gen, dtype=torch.float64)
    flat = torch.randn(batch, TOKENS, d_model, generator=gen, dtype=torch.float64)
    mask = torch.zeros(batch, TOKENS, dtype=torch.bool)
    mask[1, STARTS[1] - 10:STARTS[1]] = True  # padded columns of image 1, level 0
    mask[1, -1] = True
    return query, ref, flat, mask


@pytest.mark.parametrize("ref_dim", [2, 4], ids=["points", "boxes"])
def test_backend_matches_reference_through_module(backend, ref_dim):
    query, ref, flat, mask = inputs(ref_dim)
    outputs, grads = [], []
    for name in ("pytorch", backend):
        module = make_module(name).to(backend)
        args = [t.to(backend).requires_grad_(t.is_floating_point()) for t in (query, ref, flat)]
        out = module(args[0], args[1], args[2], SHAPES.to(backend), STARTS.to(backend), mask.to(backend))
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append([a.grad for a in args] + [p.grad for p in module.parameters()])
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-10, rtol=0)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


def test_padding_is_ignored(any_backend):
    device = "cuda" if any_backend == "cuda" else "cpu"
    query, ref, flat, mask = (t.to(device) for t in inputs(2))
    shapes, starts = SHAPES.to(device), STARTS.to(device)
    module = make_module(any_backend).to(device)
    out = module(query, ref, flat, shapes, starts, mask)
    changed = flat.masked_fill(mask[..., None], 1e3)
    torch.testing.assert_close(module(query, ref, changed, shapes, starts, mask), out, atol=1e-12, rtol=0)
    # and the mask is what makes the difference
    unmasked = module(query, ref, changed, shapes, starts)
    assert (unmasked[1] - out[1]).abs().max() > 1e-3


def test_rejects_bad_reference_points():
    query, ref, flat, _ = inputs(2)
    module = make_module("pytorch")
    with pytest.raises(ValueError, match="reference_points"):
        module(query, torch.cat([ref, ref[..., :1]], -1), flat, SHAPES, STARTS)


@pytest.mark.skipif(not (torch.cuda.is_available() and _library.has_cuda_kernel()),
                    reason="needs a CUDA device and the CUDA kernel "
                           "(FORCE_CUDA=1 python -m models.clickpose.ops.build)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_on_cuda(dtype):
    query, ref, flat, mask = (t.cuda() for t in inputs(4))
    module = make_module("cuda").float().cuda()
    args = (query.float(), ref.float(), flat.float(), SHAPES.cuda(), STARTS.cuda(), mask)
    expected = module(*args)
    with torch.autocast("cuda", dtype=dtype):
        out = module(*args)
        out.float().square().sum().backward()
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())
