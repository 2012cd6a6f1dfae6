"""peek_ahead_value: reference and Triton kernel against a float64 row loop, gradients, errors."""
from __future__ import annotations

import pytest
import torch

from mosaic_kernels import peek_ahead_value, reference
from tests import tolerances
from tests.conftest import head_split, in_bthd_memory, kernel_devices, rel_err
from tests.oracles import peek_ahead_loop


def _inputs(B, H, T, D, *, strided=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    if strided:  # a transposed view of a (B, T, H*D) projection, as the model passes it
        x = torch.randn(B, T, H * D, generator=g).view(B, T, H, D).transpose(1, 2)
    else:
        x = torch.randn(B, H, T, D, generator=g)
    mix = torch.rand(H, generator=g) * 1.4 - 0.2  # unconstrained in the model: go past [0, 1]
    scale = torch.rand(H, generator=g) * 2 + 0.5
    return x, mix, scale


def _check_against_loop(fn, x, mix, scale, tol, device="cpu", dtype=torch.float32):
    xd = x.to(device, dtype).requires_grad_()
    cd, sd = mix.to(device).requires_grad_(), scale.to(device).requires_grad_()
    y = fn(xd, cd, scale=sd)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(y, (xd, cd, sd), g.to(device, y.dtype))
    x64, c64, s64 = (t.detach().cpu().double().requires_grad_() for t in (xd, mix, scale))
    y64 = peek_ahead_loop(x64, c64, s64)
    refs = torch.autograd.grad(y64, (x64, c64, s64), g.double())
    assert torch.isfinite(y).all()
    assert rel_err(y, y64) <= tol
    for name, got, want in zip(("x", "mix", "scale"), grads, refs):
        assert torch.isfinite(got).all(), name
        # A per-head gradient can be exactly 0 (T = 1: the norm removes the mix); then the error
        # is measured against the size of the x gradient instead of against 0.
        err = float((got.detach().cpu().double() - want).norm())
        assert err <= tol * max(float(want.norm()), float(refs[0].norm())), (name, err)


@pytest.mark.parametrize("T", [1, 2, 37], ids=lambda t: f"T{t}")
def test_reference_matches_loop(T):
    x, mix, scale = _inputs(2, 3, T, 8)
    _check_against_loop(reference.peek_ahead_value, x, mix, scale, tolerances.FP32)


def test_reference_gradcheck_float64():
    x = torch.randn(1, 2, 9, 3, dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0.3, 1.2], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([1.5, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, c, s: reference.peek_ahead_value(x, c, scale=s), (x, c, s))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("T,D", [(1, 16), (17, 48), (70, 64), (33, 20)], ids=str)
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
def test_kernel_matches_loop(device, T, D, strided, nan_outputs):
    x, mix, scale = _inputs(2, 3, T, D, strided=strided)
    _check_against_loop(peek_ahead_value, x, mix, scale, tolerances.FP32, device)


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_gradient_follows_a_head_split_input(device, nan_outputs):
    """dx of a head-split x is written in x's (B, T, H, D) memory (the split's backward is a view),
    with the values of a contiguous x's dx."""
    x, mix, scale = _inputs(2, 3, 37, 16, strided=True)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(device)
    grads = []
    for xv in (head_split(x.to(device)), x.contiguous().to(device).requires_grad_()):
        grads.append(torch.autograd.grad(peek_ahead_value(xv, mix.to(device), scale=scale.to(device)), xv, g)[0])
    assert in_bthd_memory(grads[0]) and grads[1].is_contiguous()
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_zero_rows_are_finite(device):
    """A row whose mix is exactly 0 (the clamped norm): zero output and zero gradient, no NaN."""
    x = torch.randn(1, 2, 5, 16)
    x[:, :, 2:4] = 0  # z_2 = mix*x_2 + (1-mix)*x_3 = 0
    _check_against_loop(peek_ahead_value, x, torch.tensor([0.4, 0.7]), torch.tensor([1.0, 2.0]), tolerances.FP32, device)


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_float_arguments(device):
    x = torch.randn(2, 3, 20, 16)
    y = peek_ahead_value(x.to(device), 0.25)
    assert rel_err(y, peek_ahead_loop(x.double(), 0.25)) < tolerances.FP32


@pytest.mark.parametrize("kwargs,match", [
    (dict(x=torch.randn(2, 3, 4)), "x must have 4 dimensions"),
    (dict(x=torch.ones(1, 2, 3, 4, dtype=torch.int64)), "x must have dtype"),
    (dict(mix=None), "mix must be"),
    (dict(mix=torch.ones(3)), r"mix must have shape \(2,\)"),
    (dict(scale=torch.ones(2, device="meta")), "scale must be on cpu"),
    (dict(eps=-1.0), "eps must be a positive float"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(x=torch.randn(1, 2, 3, 4), mix=0.5)
    args.update(kwargs)
    x, mix = args.pop("x"), args.pop("mix")
    with pytest.raises(ValueError, match=match):
        peek_ahead_value(x, mix, **args)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 1, 16), (4, 12, 1000, 64), (2, 5, 777, 48), (1, 4, 300, 256)], ids=str)
def test_gpu_dtypes_and_shapes(dtype, shape, nan_outputs):
    x, mix, scale = _inputs(*shape, seed=4)
    tol = tolerances.FP32 if dtype == torch.float32 else tolerances.LOW_PRECISION
    _check_against_loop(peek_ahead_value, x, mix, scale, tol, "cuda", dtype)
