"""mosaic_attention: reference and Triton kernel against a float64 row loop, gradients, errors."""
from __future__ import annotations

import math

import pytest
import torch

from mosaic_kernels import mosaic_attention, reference
from mosaic_kernels._triton_common import draw_seed, dropout_keep_mask, dropout_threshold
from tests import tolerances
from tests.conftest import in_bthd_memory, kernel_devices, rel_err
from tests.oracles import attention_dense, attention_loop


def _inputs(B, H, T, D, *, strided=False, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if strided:  # transposed views of (B, T, H*D) projections
        k = torch.randn(B, T, H * D, generator=g).view(B, T, H, D).transpose(1, 2)
        v = torch.randn(B, T, 2 * H * D, generator=g)[..., : H * D].reshape(B, T, H, D).transpose(1, 2)
    else:
        k = torch.randn(B, H, T, D, generator=g)
        v = torch.randn(B, H, T, D, generator=g)
    scale = torch.rand(H, generator=g) * 0.3 + 0.05
    return k.to(dtype), v.to(dtype), scale


def _check(fn, k, v, scale, tol, device="cpu", scale_kind="tensor"):
    kd, vd = k.to(device).requires_grad_(), v.to(device).requires_grad_()
    sd = {"tensor": scale.to(device).requires_grad_(), "float": 0.2, "none": None}[scale_kind]
    y = fn(kd, vd, sd)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(device, y.dtype)
    wrt = (kd, vd, sd) if scale_kind == "tensor" else (kd, vd)
    grads = torch.autograd.grad(y, wrt, g)
    k64, v64 = k.detach().double().requires_grad_(), v.detach().double().requires_grad_()
    s64 = {"tensor": scale.double().requires_grad_(), "float": 0.2, "none": None}[scale_kind]
    y64 = attention_loop(k64, v64, s64)
    refs = torch.autograd.grad(y64, (k64, v64, s64) if scale_kind == "tensor" else (k64, v64), g.double().cpu(),
                               allow_unused=True, materialize_grads=True)
    assert torch.isfinite(y).all()
    assert y.dtype == v.dtype and y.is_contiguous()
    assert torch.all(y[:, :, 0] == 0)
    assert rel_err(y, y64) <= tol
    for name, got, want in zip(("k", "v", "scale"), grads, refs):
        assert torch.isfinite(got).all(), name
        assert rel_err(got, want) <= tol, (name, rel_err(got, want))


# --------------------------------------------------------------------------- reference (CPU path)

@pytest.mark.parametrize("T", [1, 2, 17, 63], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("scale_kind", ["tensor", "float", "none"])
def test_reference_matches_loop(T, scale_kind):
    k, v, s = _inputs(2, 3, T, 16, strided=True)
    _check(reference.mosaic_attention, k, v, s, tolerances.FP32, scale_kind=scale_kind)


def test_dense_oracle_matches_the_loop():
    """The GPU tests' dense float64 oracle is the loop's function, dropout mask included."""
    k, v, s = (t.double().requires_grad_() for t in _inputs(2, 3, 19, 8))
    keep = torch.rand(2, 3, 19, 19, generator=torch.Generator().manual_seed(1)) > 0.3
    g = torch.randn(2, 3, 19, 8, dtype=torch.float64)
    for kw in ({}, dict(keep=keep, dropout_p=0.3)):
        a, b = attention_dense(k, v, s, **kw), attention_loop(k, v, s, **kw)
        # float64 sums of <= 19 terms in two orders: ~1e-15 relative.
        assert rel_err(a, b) < 1e-12
        for ga, gb in zip(torch.autograd.grad(a, (k, v, s), g), torch.autograd.grad(b, (k, v, s), g)):
            assert rel_err(ga, gb) < 1e-12


def test_reference_gradcheck_float64():
    k = torch.randn(1, 2, 7, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 7, 3, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(reference.mosaic_attention, (k, v, s))


# --------------------------------------------------------------------------- Triton kernel

@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 16), (2, 1, 2, 16), (1, 3, 17, 48), (2, 2, 63, 64),
                                     (1, 1, 100, 20)], ids=lambda v: str(v))
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
def test_kernel_matches_loop(device, B, H, T, D, strided, nan_outputs):
    k, v, s = _inputs(B, H, T, D, strided=strided)
    _check(mosaic_attention, k, v, s, tolerances.FP32, device)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)  # float64 runs the reference
def test_heads_last_output_merges_for_free(device, dtype, nan_outputs):
    """heads_last=True gives the default's values and gradients bit for bit, with y in (B, T, H, D)
    memory, so merging the heads is a view of it."""
    k, v, s = _inputs(2, 3, 37, 16, strided=True, dtype=dtype)
    g = torch.randn(k.shape, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    runs = []
    for heads_last in (False, True):
        kd, vd, sd = (t.to(device).requires_grad_() for t in (k, v, s))
        y = mosaic_attention(kd, vd, sd, heads_last=heads_last)
        runs.append((y, *torch.autograd.grad(y, (kd, vd, sd), g)))
    y = runs[1][0]
    assert in_bthd_memory(y) and not in_bthd_memory(runs[0][0])
    assert y.transpose(1, 2).reshape(2, 37, 48).data_ptr() == y.data_ptr()
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("scale_kind", ["float", "none"])
def test_kernel_scale_kinds(device, scale_kind, nan_outputs):
    k, v, s = _inputs(1, 2, 33, 16)
    _check(mosaic_attention, k * 0.3, v, s, tolerances.FP32, device, scale_kind)


def _check_saturated(k, v, tol, device):
    """Large bandwidth: y and dv against float64; dk must be finite.

    With scale * |k|^2 = e^10 the softmax is one-hot and the true dk is ~1e-60, while the kernel's
    dk is ds = p (dp - delta) of recomputed probabilities: float32 resolves a log2-domain logit of
    ~3e4 only to ~2e-3, so dk is rounding noise there (up to ~5e2 on the H200). README.md says so.
    """
    kd, vd = k.to(device).requires_grad_(), v.to(device).requires_grad_()
    y = mosaic_attention(kd, vd)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(device, y.dtype)
    dk, dv = torch.autograd.grad(y, (kd, vd), g)
    k64, v64 = k.double().requires_grad_(), v.double().requires_grad_()
    y64 = attention_loop(k64, v64)
    _, dv64 = torch.autograd.grad(y64, (k64, v64), g.double().cpu())
    for t in (y, dk, dv):
        assert torch.isfinite(t).all()
    assert rel_err(y, y64) <= tol and rel_err(dv, dv64) <= tol


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_large_bandwidth_no_nan(device):
    """Pre-scaled unit keys with scale * |k|^2 = e^10 (the Library's clamp): y and dv are only as exact
    as float32 resolves logits of e^10 (tolerances.saturated_softmax), on the interpreter as on the GPU."""
    k, v, _ = _inputs(1, 2, 40, 16)
    bound = tolerances.saturated_softmax(16, math.exp(10.0))
    _check_saturated(torch.nn.functional.normalize(k, dim=-1) * math.exp(5.0), v, bound, device)


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_backward_deterministic_and_last_value_unused(device):
    k, v, s = _inputs(2, 2, 50, 16)
    k, v, s = (t.to(device).requires_grad_() for t in (k, v, s))
    g = torch.randn(2, 2, 50, 16).to(device)
    runs = [torch.autograd.grad(mosaic_attention(k, v, s), (k, v, s), g) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert torch.all(runs[0][1][:, :, -1] == 0)  # no query sees the last value


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("T", [37, 64, 100], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
def test_two_kernel_backward_matches_loop(device, T, strided, nan_outputs):
    """The backward's long-sequence plan (key-role kernel, then query-role kernel) on small tiles that
    leave partial blocks, against the float64 loop; bitwise equal over two runs."""
    from mosaic_kernels.attention.function import attention_backward, attention_forward, split_config

    k, v, s = _inputs(2, 2, T, 24, strided=strided)
    k, v, s = k.to(device), v.to(device), s.to(device)
    g = torch.randn(2, 2, T, 24, generator=torch.Generator().manual_seed(3))
    y, lse = attention_forward(k, v, s, dict(BLOCK_M=32, BLOCK_N=16, num_warps=1, num_stages=1))
    cfg = split_config((32, 16, 1, 1), (16, 16, 1, 1))
    runs = [attention_backward(k, v, y, lse, s, g.to(device), cfg) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    dk, dv, part = runs[0]
    k64, v64, s64 = (t.detach().double().cpu().requires_grad_() for t in (k, v, s))
    y64 = attention_loop(k64, v64, s64)
    refs = torch.autograd.grad(y64, (k64, v64, s64), g.double())
    assert rel_err(y, y64) <= tolerances.FP32
    for name, got, want in zip(("k", "v", "scale"), (dk, dv, part.sum(dim=(0, 2))), refs):
        assert torch.isfinite(got).all(), name
        assert rel_err(got, want) <= tolerances.FP32, (name, rel_err(got, want))


def test_backward_tiles_must_nest():
    from mosaic_kernels.attention.function import attention_backward

    k = torch.zeros(1, 1, 8, 16)
    with pytest.raises(ValueError, match="BLOCK_P"):
        attention_backward(k, k, k, torch.zeros(1, 1, 8), torch.ones(1), k,
                           dict(BLOCK_P=16, BLOCK_Q=32, BLOCK_K=16, num_warps=1, num_stages=1))


# --------------------------------------------------------------------------- dropout

def _drop_seed(device, generator_seed):
    """The Philox seed the op draws from a generator seeded with ``generator_seed``."""
    return draw_seed(torch.Generator(device=device).manual_seed(generator_seed), torch.device(device))


def _check_dropout(k, v, s, p, tol, device, plan=None):
    """The op with dropout (one-kernel or, with ``plan``, two-kernel backward) against the float64 oracle
    fed the kernels' own keep mask and rounded rate. Returns (y, grads)."""
    from mosaic_kernels.attention.function import attention_backward, attention_forward

    B, H, T, _ = k.shape
    kd, vd, sd = (t.to(device).requires_grad_() for t in (k, v, s))
    g = torch.randn(k.shape, generator=torch.Generator().manual_seed(7)).to(device, k.dtype)
    if plan is None:
        y = mosaic_attention(kd, vd, sd, dropout_p=p, generator=torch.Generator(device=device).manual_seed(5))
        grads = torch.autograd.grad(y, (kd, vd, sd), g)
    else:  # the launches directly, to pick the two-kernel plan on small tiles
        seed, thr = _drop_seed(device, 5), dropout_threshold(p)
        y, lse = attention_forward(kd, vd, sd, dict(BLOCK_M=32, BLOCK_N=16, num_warps=1, num_stages=1),
                                   seed=seed, threshold=thr)
        dk, dv, part = attention_backward(kd, vd, y, lse, sd, g, plan, seed=seed, threshold=thr)
        grads = (dk, dv, part.sum(dim=(0, 2)))
    # The oracle in float64: the row loop on the CPU, its dense form on the GPU (long sequences).
    where, oracle = ("cpu", attention_loop) if device == "cpu" else (device, attention_dense)
    keep = dropout_keep_mask(_drop_seed(device, 5), B, H, T, T, p).to(where)
    p_real = dropout_threshold(p) / 2 ** 16  # the rate the kernels really use
    k64, v64, s64 = (t.detach().double().to(where).requires_grad_() for t in (k, v, s))
    y64 = oracle(k64, v64, s64, keep=keep, dropout_p=p_real)
    refs = torch.autograd.grad(y64, (k64, v64, s64), g.double().to(where))
    assert torch.isfinite(y).all() and torch.all(y[:, :, 0] == 0)
    assert rel_err(y, y64) <= tol, rel_err(y, y64)
    for name, got, want in zip(("k", "v", "scale"), grads, refs):
        assert torch.isfinite(got).all(), name
        assert rel_err(got, want) <= tol, (name, rel_err(got, want))
    return y, grads


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("T,D", [(37, 16), (64, 24)], ids=str)
@pytest.mark.parametrize("plan", ["one-kernel", "two-kernel"])
def test_kernel_dropout_matches_loop_with_its_mask(device, T, D, plan, nan_outputs):
    """Output and every gradient equal the float64 loop given the kernels' keep mask, which the
    forward and the backward kernels regenerate (nothing stored), in both backward plans."""
    from mosaic_kernels.attention.function import split_config

    k, v, s = _inputs(2, 2, T, D, strided=True)
    cfg = {"one-kernel": None, "two-kernel": split_config((32, 16, 1, 1), (16, 16, 1, 1))}[plan]
    _check_dropout(k, v, s, 0.3, tolerances.FP32, device, cfg)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("plan", ["one-kernel", "two-kernel"])
def test_delta_in_kernel_matches_loop(device, plan, monkeypatch, nan_outputs):
    """DELTA_IN_KERNEL (the row term <y_t, dy_t> computed inside the backward's kernels from y, no launch of
    its own): output and every gradient equal the float64 loop, with dropout, in both backward plans."""
    from mosaic_kernels.attention import function
    from mosaic_kernels.attention.function import split_config

    monkeypatch.setattr(function, "DELTA_IN_KERNEL", True)
    k, v, s = _inputs(2, 2, 37, 24, strided=True)
    cfg = {"one-kernel": None, "two-kernel": split_config((32, 16, 1, 1), (16, 16, 1, 1))}[plan]
    _check_dropout(k, v, s, 0.3, tolerances.FP32, device, cfg)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("T, window", [(40, 13), (2100, None)], ids=["T40-window", "T2100-causal"])
def test_delta_in_kernel_gives_the_row_delta_path(device, T, window, monkeypatch):
    """Through the public op, with a delay, per-row scales and the output in (B, T, H, D) memory (y's strides
    reach the kernels): the in-kernel delta against the separate row_delta launch. The two differ only in the
    order of delta's float32 sum over D (and both are exact products of float32 inputs), so the gradients
    agree to float32 rounding: tolerances.FP32 of the float64 oracle's bound. A window of 13 keys takes the
    one-kernel plan; T = 2100 without a window the two-kernel one on the GPU (rows of 2048 keys or more at
    D = 64); on the CPU only T = 40 runs (the interpreter's time)."""
    from mosaic_kernels.attention import function

    if device == "cpu" and T > 64:
        pytest.skip("long rows: GPU only (the interpreter would take minutes)")
    B, H, D = 2, 3, 64
    if device != "cpu":  # the plan the docstring names (the interpreter always takes the one-kernel plan)
        assert ("key" in function._bwd_config(T, D, window, dtype=torch.float32)) == (window is None)
    k, v, _ = _inputs(B, H, T, D, strided=True)
    row_scale = torch.rand(B, H, T, generator=torch.Generator().manual_seed(4)) * 0.3 + 0.05
    g = torch.randn(B, T, H, D, generator=torch.Generator().manual_seed(5)).transpose(1, 2)  # as y: strided
    results = []
    for in_kernel in (False, True):
        monkeypatch.setattr(function, "DELTA_IN_KERNEL", in_kernel)
        kd, vd, sd = (t.to(device).requires_grad_() for t in (k, v, row_scale))
        y = mosaic_attention(kd, vd, sd, window=window, delay=2, heads_last=True)
        results.append((y, *torch.autograd.grad(y, (kd, vd, sd), g.to(device))))
    for name, a, b in zip(("y", "k", "v", "scale"), *results):
        assert torch.isfinite(b).all(), name
        assert rel_err(b, a.double()) <= tolerances.FP32, (name, rel_err(b, a.double()))


def test_delta_in_kernel_rule_picks_by_the_calls_work(monkeypatch):
    """By default (DELTA_IN_KERNEL None) the row term goes inside the kernels for 16-bit calls of work
    B * H * T * keys * D up to DELTA_IN_KERNEL_MAX_WORK, at the shapes whose A/B put them on each side of the line
    (function.py), never for float32; True or False forces the path at every shape."""
    from mosaic_kernels.attention import function

    monkeypatch.setattr(function, "DELTA_IN_KERNEL", None)
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    inside = [((16, 12, 512, 64), bf16, None), ((8, 12, 1024, 64), fp16, None), ((2, 12, 8192, 64), bf16, 256)]
    outside = [((4, 12, 2048, 64), bf16, None), ((1, 16, 8192, 128), bf16, 256), ((2, 12, 8192, 64), bf16, None),
               ((16, 12, 512, 64), fp32, None), ((32, 8, 563, 16), fp32, None)]
    for (B, H, T, D), dtype, window in inside:
        assert function.delta_in_kernel(B, H, T, D, dtype, window), (B, H, T, D, dtype, window)
    for (B, H, T, D), dtype, window in outside:
        assert not function.delta_in_kernel(B, H, T, D, dtype, window), (B, H, T, D, dtype, window)
    for forced in (True, False):
        monkeypatch.setattr(function, "DELTA_IN_KERNEL", forced)
        for (B, H, T, D), dtype, window in inside + outside:
            assert function.delta_in_kernel(B, H, T, D, dtype, window) is forced


@pytest.mark.parametrize("value, expected", [("0", "False"), ("1", "True"), ("auto", "None"), ("yes", "ValueError")])
def test_delta_in_kernel_setting_from_the_environment(value, expected):
    """MOSAIC_ATTN_DELTA_IN_KERNEL: 0 and 1 force a path, auto picks per call, anything else is an error at import
    naming the variable (a fresh interpreter: the module reads it once)."""
    import os
    import subprocess
    import sys

    code = ("from mosaic_kernels.attention import function\n"
            "print(function.DELTA_IN_KERNEL)")
    env = {**os.environ, "MOSAIC_ATTN_DELTA_IN_KERNEL": value}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if expected == "ValueError":
        assert run.returncode != 0 and "MOSAIC_ATTN_DELTA_IN_KERNEL must be 0, 1 or auto" in run.stderr
    else:
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == expected


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_dropout_keeps_at_its_rate_and_rescales(device):
    """With equal keys every weight of row t is 1/t, and one-hot values (v_j = e_j) make y_t[j] the
    dropped-out weight itself: each is 0 or 1 / (t (1 - p)), the zeros are where the keep mask says,
    and the kept fraction of the T(T-1)/2 weights is 1 - p within five standard deviations."""
    B, H, T, p = 2, 2, 64, 0.25
    k = torch.zeros(B, H, T, T, device=device)
    v = torch.eye(T, device=device).expand(B, H, T, T).contiguous()
    y = mosaic_attention(k, v, dropout_p=p, generator=torch.Generator(device=device).manual_seed(11)).cpu().double()
    keep = dropout_keep_mask(_drop_seed(device, 11), B, H, T, T, p).cpu()
    lower = torch.ones(T, T, dtype=torch.bool).tril(-1)
    t = torch.arange(T, dtype=torch.float64).clamp_min(1)[:, None]
    want = torch.where(keep & lower, 1.0 / (t * (1.0 - p)), 0.0)
    assert torch.allclose(y, want, rtol=1e-6, atol=0)  # one float32 product and quotient per entry
    kept = (keep & lower).sum().item() / (B * H * lower.sum().item())
    n = B * H * lower.sum().item()
    assert abs(kept - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_dropout_same_generator_same_result(device):
    """A generator in the same state gives the same mask, output and gradients (bitwise); the next draw,
    a different mask."""
    k, v, s = (t.to(device) for t in _inputs(1, 2, 40, 16))
    gen = torch.Generator(device=device).manual_seed(3)
    outs = []
    for seed in (3, 3):
        kd = k.clone().requires_grad_()
        y = mosaic_attention(kd, v, s, dropout_p=0.5, generator=gen.manual_seed(seed))
        outs.append((y, torch.autograd.grad(y, kd, torch.ones_like(y))[0]))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][0], mosaic_attention(k, v, s, dropout_p=0.5, generator=gen))


def test_reference_dropout_is_unbiased():
    """The CPU reference's dropout: each weight kept with probability 1 - p and rescaled, so the mean
    output over many draws is the output without dropout (checked to 5 standard errors)."""
    k, v, s = _inputs(1, 1, 12, 8)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([reference.mosaic_attention(k, v, s, dropout_p=0.5, generator=gen) for _ in range(4000)])
    exact = reference.mosaic_attention(k, v, s)
    err = (draws.mean(0) - exact).abs()
    assert torch.all(err <= 5 * draws.std(0) / 4000 ** 0.5 + 1e-6)


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize("k,v,scale,match", [
    (torch.randn(2, 3, 4), torch.randn(2, 3, 4), None, "k must have 4 dimensions"),
    (torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 5), None, "v must have the shape of k"),
    (torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4).double(), None, "v must have the dtype of k"),
    (torch.ones(1, 2, 3, 4, dtype=torch.int64), torch.ones(1, 2, 3, 4, dtype=torch.int64), None, "k must have dtype"),
    (torch.randn(1, 2, 3, 300), torch.randn(1, 2, 3, 300), None, "head dim D <= 256"),
    (torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.ones(3), r"scale must have shape \(2,\)"),
    (torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.ones(2, dtype=torch.long), "floating-point"),
    (torch.randn(1, 2, 0, 4), torch.randn(1, 2, 0, 4), None, "non-zero sizes"),
    (torch.randn(1, 2, 3, 4), "v", None, "v must be a torch.Tensor"),
])
def test_bad_arguments_raise_value_error(k, v, scale, match):
    with pytest.raises(ValueError, match=match):
        mosaic_attention(k, v, scale)


@pytest.mark.parametrize("kw,match", [
    (dict(dropout_p=1.0), r"dropout_p must be a float in \[0, 1\)"),
    (dict(dropout_p=-0.1), r"dropout_p must be a float in \[0, 1\)"),
    (dict(dropout_p=True), r"dropout_p must be a float in \[0, 1\)"),
    (dict(dropout_p=0.1, generator=3), "generator must be a torch.Generator"),
], ids=["p-one", "p-negative", "p-bool", "generator"])
def test_bad_dropout_arguments_raise_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        mosaic_attention(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), **kw)


# --------------------------------------------------------------------------- GPU (H200)

GPU_SHAPES = [(2, 3, 1, 64), (2, 3, 2, 64), (2, 3, 17, 64), (2, 4, 1000, 64), (1, 2, 4097, 64)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [16, 32, 48, 64, 96, 128, 256], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("B,H,T", [(2, 3, 1), (2, 3, 2), (2, 3, 17), (2, 4, 1000), (1, 2, 4097)], ids=str)
def test_gpu_dtypes_and_shapes(dtype, D, B, H, T, nan_outputs):
    """Against the float64 dense reference: y, dk, dv within FP32 / LOW_PRECISION relative. The scale's
    gradient is one sum over every (t, j) pair of a head with heavy cancellation (in bf16 its relative
    error reached 1.055e-2 at D = 96, T = 4097 on the H200, 2026-11-22): in 16 bits each head's is bounded
    by LOW_PRECISION times the sum of its terms' magnitudes (tolerances.scale_gradient_magnitudes). That sum is
    about 200 times the result here (a CPU check at D = 96, T = 300), so the 16-bit cases catch only gross
    errors in it; the float32 cases pin its formula."""
    tol = tolerances.FP32 if dtype == torch.float32 else tolerances.LOW_PRECISION
    k, v, s = _inputs(B, H, T, D, strided=True)
    k = k / math.sqrt(math.sqrt(D))  # logits of order 1
    kd, vd = k.to("cuda", dtype).requires_grad_(), v.to("cuda", dtype).requires_grad_()
    sd = s.cuda().requires_grad_()
    y = mosaic_attention(kd, vd, sd)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).cuda()
    grads = torch.autograd.grad(y, (kd, vd, sd), g.to(dtype))
    # Reference: the dense PyTorch attention in float64 on the GPU (checked against the loop above).
    k64, v64, s64 = (t.detach().double().requires_grad_() for t in (kd, vd, sd))
    y64 = reference.mosaic_attention(k64, v64, s64)
    refs = torch.autograd.grad(y64, (k64, v64, s64), g.double())
    assert torch.isfinite(y).all() and torch.all(y[:, :, 0] == 0)
    if T > 1:
        assert rel_err(y, y64) <= tol
    for name, got, want in zip(("k", "v", "scale"), grads, refs):
        assert torch.isfinite(got).all(), name
        if want.abs().max() == 0:  # T <= 2: a one-key softmax has exactly zero k and scale gradients
            assert float(got.abs().max()) <= 1e-4 * float(g.abs().max()), name
        elif name == "scale" and dtype != torch.float32:
            mask = torch.ones(T, T, dtype=torch.bool, device="cuda").tril(-1)    # j < t
            terms = tolerances.scale_gradient_magnitudes(k64.detach(), v64.detach(), y64.detach(), g.double(),
                                                         s64.detach().view(1, H, 1), mask)
            err = (got.double() - want).abs()
            assert (err <= tol * terms.sum(dim=(0, 2))).all(), (err / terms.sum(dim=(0, 2))).max().item()
        else:
            assert rel_err(got, want) <= tol, (name, rel_err(got, want))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_gpu_large_bandwidth(dtype):
    """scale * |k|^2 = e^10 (bf16/fp16 keys of norm e^5): no NaN or Inf, still accurate."""
    g = torch.Generator().manual_seed(5)
    k = torch.nn.functional.normalize(torch.randn(2, 4, 300, 64, generator=g), dim=-1) * math.exp(5.0)
    v = torch.randn(2, 4, 300, 64, generator=g)
    k, v = k.to(dtype).float(), v.to(dtype).float()  # the oracle sees the same rounded inputs
    # The backward recomputes p = exp2(s - lse) from logits of ~e^10: float32 resolves them only to
    # tolerances.saturated_softmax (1.05e-2 at D = 64), in any dtype; 16-bit outputs add their rounding.
    bound = tolerances.saturated_softmax(64, math.exp(10.0))
    _check_saturated(k.to(dtype), v.to(dtype), bound + (0 if dtype == torch.float32 else tolerances.LOW_PRECISION), "cuda")


@pytest.mark.gpu
def test_gpu_backward_bitwise_deterministic():
    k = torch.randn(4, 12, 2048, 64, device="cuda", dtype=torch.bfloat16).mul(0.3).requires_grad_()
    v = torch.randn_like(k).requires_grad_()
    s = torch.rand(12, device="cuda").requires_grad_()
    g = torch.randn_like(k)
    runs = [torch.autograd.grad(mosaic_attention(k, v, s), (k, v, s), g) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_extra_memory_linear_in_T():
    """Forward+backward allocates O(B*H*T*D), never a T x T matrix."""
    k = torch.randn(1, 4, 16384, 64, device="cuda", dtype=torch.bfloat16).mul(0.3).requires_grad_()
    v = torch.randn_like(k).requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    y = mosaic_attention(k, v)
    y.backward(torch.ones_like(y))
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < 8 * k.numel() * k.element_size()  # a T x T bf16 score matrix would be 512 MiB


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("B,H,T,D", [(2, 3, 300, 64), (2, 2, 1000, 128), (1, 2, 2100, 64), (1, 2, 300, 96)], ids=str)
def test_gpu_dropout_matches_dense_float64_with_its_mask(dtype, B, H, T, D, nan_outputs):
    """Dropout 0.05 on the H200 tiles: the one-kernel plan, and from T = 2048 at D = 64 the two-kernel
    one, against the dense float64 oracle fed the kernels' mask."""
    tol = tolerances.FP32 if dtype == torch.float32 else tolerances.LOW_PRECISION
    k, v, s = _inputs(B, H, T, D, strided=True)
    k = (k / math.sqrt(math.sqrt(D))).to(dtype)  # logits of order 1
    _check_dropout(k, v.to(dtype), s, 0.05, tol, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("p", [0.0, 0.05])
def test_gpu_long_sequence_at_head_dim_128(dtype, p, nan_outputs):
    """T = 8192 at D = 128 takes the long tiles, whose forward needs more shared memory than the H200
    has with dropout (240 KiB at 3 stages, measured 2026-11-30) and, at twice the bytes, in float32: the
    launch drops pipeline stages until it fits (_triton_common.launch). Against the dense float64
    oracle fed the kernels' mask (all kept at p = 0)."""
    B, H, T, D = 1, 1, 8192, 128
    # Sums of up to T + D terms: sqrt(T + D) * u = 5.4e-6 in float32, with the same 8x margin for the
    # condition of the softmax as tolerances.FP32 takes at T <= 300 (4.4e-5). Low precision: one to three
    # roundings to 16 bits dominate at any T (tolerances.LOW_PRECISION).
    tol = 8 * math.sqrt(T + D) * tolerances.U_FP32 if dtype == torch.float32 else tolerances.LOW_PRECISION
    k, v, s = _inputs(B, H, T, D, strided=True)
    k = (k / math.sqrt(math.sqrt(D))).to(dtype)  # logits of order 1
    _check_dropout(k, v.to(dtype), s, p, tol, "cuda")


@pytest.mark.gpu
def test_gpu_dropout_backward_bitwise_deterministic():
    k = torch.randn(4, 12, 2048, 64, device="cuda", dtype=torch.bfloat16).mul(0.3).requires_grad_()
    v = torch.randn_like(k).requires_grad_()
    g = torch.randn_like(k)
    runs = []
    for _ in range(2):
        y = mosaic_attention(k, v, dropout_p=0.1, generator=torch.Generator(device="cuda").manual_seed(0))
        runs.append(torch.autograd.grad(y, (k, v), g))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_float32_inputs_take_their_own_tiles_on_the_gpu(monkeypatch):
    """On the GPU (the interpreter's 16-row tiles left aside) float32 inputs plan with the float32 tables, whose
    tiles fit the exact-float32 products in registers, 16-bit inputs with the 16-bit ones: forward and backward,
    short and long rows (the two-kernel plan from the same row length), a band table's backward included."""
    from mosaic_kernels.attention import function as fn
    monkeypatch.setattr(fn, "interpreter_enabled", lambda: False)
    for D in (16, 64):
        for T in (512, 8192):
            long = T >= fn.LONG_T[D]
            for dtype, fwd, fwd_long, one, two, band in (
                    (torch.float32, fn.FWD_TILES_FLOAT32, fn.FWD_LONG_TILES_FLOAT32, fn.BWD_TILES_FLOAT32,
                     fn.BWD_LONG_TILES_FLOAT32, fn.BWD_LONG_TILES_FLOAT32),
                    (torch.bfloat16, fn.FWD_TILES, fn.FWD_LONG_TILES, fn.BWD_TILES, fn.BWD_LONG_TILES,
                     fn.BWD_BAND_TABLE_TILES)):
                bm, bn, w, st = (fwd_long if long else fwd)[D]
                assert fn._fwd_config(T, D, dtype=dtype) == dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
                for table, tiles in ((False, two), (True, band)):
                    got = fn._bwd_config(T, D, band_table=table, dtype=dtype)
                    if long:
                        assert got == fn.split_config(*tiles[D])
                    else:
                        bp, bq, bk, w, st = one[D]
                        assert got == dict(BLOCK_P=bp, BLOCK_Q=bq, BLOCK_K=bk, num_warps=w, num_stages=st)
