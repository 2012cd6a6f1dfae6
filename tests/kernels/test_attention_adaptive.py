"""mosaic_attention(bandwidth=...): the adaptive bandwidth beta(n_t) = beta1 n_t^alpha + beta0 computed inside the
attention's kernels, against the two ops it replaces (row_bandwidth, then the attention with that per-row scale)
in float64: values and the gradients of k, v and the three rows, on every kind of band and both backward plans;
the reference path is that composition; errors."""
from __future__ import annotations

import pytest
import torch

from mosaic_kernels import mosaic_attention, reference
from mosaic_kernels.attention import band_table, row_bandwidth
from mosaic_kernels.attention.reference import band_mask
from mosaic_kernels.attention.reference import row_bandwidth as reference_row_bandwidth
from tests import tolerances
from tests.conftest import kernel_devices, rel_err

# (window, delay) of 3 heads: strictly causal; a window; per-sequence delays; v2's two memories as one call
# (per-head windows, one delay per sequence and head, as a band table).
BANDS = [(None, 1), (7, 1), (None, [2, 9]), ([6, 6, 40], [[1, 1, 5], [1, 1, 12]])]
IDS = ["causal", "window", "per_sequence", "v2_table"]


def _inputs(device, dtype=torch.float32, T=40, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(2, 3, T, D, generator=g), dim=-1)
    v = torch.randn(2, 3, T, D, generator=g)
    rows = torch.randn(3, 3, generator=g) * 0.5 + torch.tensor([[0.5], [0.0], [0.0]])  # unconstrained or not: > 0
    rows = rows.abs() + 0.1
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (k, v, rows)]


def _band(window, delay, device):
    """The public ops' band arguments: a table for per-head windows, else window= and delay=."""
    if isinstance(window, list):
        return {"band": band_table(torch.tensor(window, device=device), torch.tensor(delay, device=device), 2, 3, 40,
                                   device)}
    return {"window": window, "delay": torch.tensor(delay, device=device) if isinstance(delay, list) else delay}


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("unconstrained", [False, True], ids=["coefficients", "unconstrained"])
@pytest.mark.parametrize("window, delay", BANDS, ids=IDS)
def test_fused_bandwidth_is_row_bandwidth_then_the_attention(device, window, delay, unconstrained, nan_outputs):
    """Against the float64 composition of the two reference ops. y, dk, dv: float32 kernels against float64
    (FP32). The rows' gradients chain two ops (each row's d(scale), itself a sum over the row's keys, then a
    sum over the B T rows through beta's derivatives): FP32_CHAINED, as row_bandwidth feeding the attention."""
    k, v, rows = _inputs(device)
    band = _band(window, delay, device)
    y = mosaic_attention(k, v, bandwidth=rows, unconstrained=unconstrained, **band)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(device)
    grads = torch.autograd.grad(y, (k, v, rows), g)
    k64, v64, r64 = (t.detach().double().cpu().requires_grad_() for t in (k, v, rows))
    band64 = {n: (b.cpu() if isinstance(b, torch.Tensor) else b) for n, b in band.items()}
    scale = reference_row_bandwidth(*r64.unbind(0), 40, unconstrained=unconstrained, **band64)
    y64 = reference.mosaic_attention(k64, v64, scale, **band64)
    refs = torch.autograd.grad(y64, (k64, v64, r64), g.double().cpu())
    assert rel_err(y, y64) <= tolerances.FP32
    for name, got, want, tol in zip(("k", "v", "bandwidth"), grads, refs,
                                    (tolerances.FP32, tolerances.FP32, tolerances.FP32_CHAINED)):
        assert got.shape == want.shape and rel_err(got, want) <= tol, (name, rel_err(got, want))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("window, delay", BANDS, ids=IDS)
def test_the_two_kernel_backward_reads_the_same_bandwidth(device, window, delay):
    """The long-row plan (key role, then query role) on small tiles: the fused bandwidth's dk, dv and rows'
    gradient equal those of the per-row scale that row_bandwidth writes, run through the same plan; the
    forward's y and log-sum-exp too. Both compute beta1 n^alpha + beta0 with the same float32 operations, so
    they agree to float32 rounding (FP32; bitwise in the interpreter, 2026-12-06)."""
    from mosaic_kernels.attention.function import (
        _bandwidth_backward,
        attention_backward,
        attention_forward,
        kernel_band,
        split_config,
    )

    k, v, rows = (t.detach() for t in _inputs(device))
    band = _band(window, delay, device)
    w, d, delays = kernel_band(band.get("window"), band.get("delay", 1), band.get("band"), 2, 3, 40, k.device)
    scale = row_bandwidth(*rows.unbind(0), 40, unconstrained=True, **band).expand(2, 3, 40).contiguous()
    fwd = dict(BLOCK_M=32, BLOCK_N=16, num_warps=1, num_stages=1)
    bwd = split_config((32, 16, 1, 1), (16, 16, 1, 1))
    g = torch.randn(k.shape, generator=torch.Generator().manual_seed(4)).to(device)
    window_arg = None if w < 0 else w
    row_scales = torch.empty_like(scale)
    fused = attention_forward(k, v, rows, fwd, window=window_arg, delay=d, delays=delays, adaptive=3,
                              row_scales=row_scales)
    plain = attention_forward(k, v, scale, fwd, window=window_arg, delay=d, delays=delays)
    assert rel_err(row_scales, scale) <= tolerances.FP32                     # the scales the forward wrote
    for a, b in zip(fused, plain):
        assert rel_err(a, b) <= tolerances.FP32
    dk, dv, d_rows = attention_backward(k, v, *fused, row_scales, g, bwd, window=window_arg, delay=d, delays=delays)
    dk2, dv2, d_scale = attention_backward(k, v, *plain, scale, g, bwd, window=window_arg, delay=d, delays=delays)
    assert rel_err(dk, dk2) <= tolerances.FP32 and rel_err(dv, dv2) <= tolerances.FP32
    assert rel_err(d_rows, d_scale) <= tolerances.FP32           # both (B, H, T): the rows' d(scale)
    grads = _bandwidth_backward(d_rows, *rows.unbind(0), 40, w, d, delays, True)
    assert grads.shape == (3, 3) and torch.isfinite(grads).all()


@pytest.mark.parametrize("device", kernel_devices())
def test_dropout_sees_the_same_mask(device, nan_outputs):
    """With dropout the fused bandwidth and the per-row scale that row_bandwidth writes draw the same Philox seed
    from the same generator state, so the same mask: equal outputs and gradients (FP32, as above)."""
    k, v, rows = _inputs(device)
    band = _band([6, 6, 40], [[1, 1, 5], [1, 1, 12]], device)
    outs = []
    for fused in (True, False):
        kk, vv, rr = (t.detach().clone().requires_grad_() for t in (k, v, rows))
        gen = torch.Generator(device=device).manual_seed(11)
        if fused:
            y = mosaic_attention(kk, vv, bandwidth=rr, unconstrained=True, dropout_p=0.2, generator=gen, **band)
        else:
            scale = row_bandwidth(*rr.unbind(0), 40, unconstrained=True, **band)
            y = mosaic_attention(kk, vv, scale, dropout_p=0.2, generator=gen, **band)
        outs.append((y, *torch.autograd.grad(y.square().sum(), (kk, vv, rr))))
    for a, b in zip(*outs):
        assert rel_err(a, b) <= tolerances.FP32


def test_the_reference_is_the_composition():
    """On the CPU (no interpreter) the op runs the reference: row_bandwidth's scale, then the attention."""
    k, v, rows = (t.detach().double() for t in _inputs("cpu"))
    delays = torch.tensor([2, 9])
    got = reference.mosaic_attention(k, v, bandwidth=rows, unconstrained=True, window=7, delay=delays)
    scale = reference_row_bandwidth(*rows.unbind(0), 40, window=7, delay=delays, unconstrained=True)
    assert torch.equal(got, reference.mosaic_attention(k, v, scale, window=7, delay=delays))


def test_bad_bandwidth_arguments_name_themselves():
    k, v, rows = (t.detach() for t in _inputs("cpu"))
    for kwargs, msg in ((dict(scale=0.5, bandwidth=rows), "either scale or bandwidth"),
                        (dict(bandwidth=rows[:2]), r"bandwidth must be a tensor of shape \(3, 3\)"),
                        (dict(bandwidth=rows.long()), "bandwidth must be a floating-point tensor"),
                        (dict(unconstrained=True), "unconstrained applies to bandwidth="),
                        (dict(bandwidth=rows, unconstrained=1), "unconstrained must be a bool")):
        with pytest.raises(ValueError, match=msg):
            mosaic_attention(k, v, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [300, 4097])
def test_gpu_bf16_at_v2s_bands(T, nan_outputs):
    """bf16 on the GPU's tiles (one-kernel backward at T = 300, the two-kernel plan at 4,097): v2's call of
    short-term heads (window 256) and long-term ones (per-sequence delays in [64, 256]) as a band table, against
    the float64 composition; two runs bitwise equal; the rows' gradient equal to the bf16 composition's
    (row_bandwidth's scale, then the attention: the same per-row d(scale) sums in float32, FP32).

    The rows' gradient is ill-conditioned: each d(scale)_t sums terms of both signs (sum_j p_tj (dp_tj - delta_t)
    is 0), and the rows sum d(scale)_t over B T rows of both signs; on these inputs sum |terms| / |result| is
    8 to 560 (measured on the H100, 2026-12-06, and so the relative error 7% at T = 300 and 15% at 4,097 for both
    paths). Its bound is therefore per entry, LOW_PRECISION (about three bf16 roundings: of y in delta_t, of dy,
    of the stored y) times the sum of the absolute values of its terms (tolerances.scale_gradient_magnitudes
    carried to the rows by J_t = d scale_t / d rows >= 0: softplus', n^alpha softplus', n^alpha log n sigmoid'
    beta1), as for any rounded sum (Higham, section 4.2). That bound is loose here (1 to 11 times the entries
    themselves, on a CPU check at T = 40): what pins the bf16 rows' gradient is its equality with the
    composition's, whose per-row d(scale) is the one the float32 tests above compare with float64."""
    g = torch.Generator().manual_seed(6)
    k = torch.nn.functional.normalize(torch.randn(2, 4, T, 64, generator=g), dim=-1) * 2
    v = torch.randn(2, 4, T, 64, generator=g)
    rows = torch.randn(3, 4, generator=g) * 0.3
    table = band_table(torch.tensor([256, 256, T, T]), torch.tensor([[1, 1, 64, 64], [1, 1, 200, 200]]), 2, 4, T)
    kd, vd = (t.cuda().bfloat16().requires_grad_() for t in (k, v))
    rd, td = rows.cuda().requires_grad_(), table.cuda()
    dy = torch.randn(2, 4, T, 64, generator=g).cuda().bfloat16()
    runs = []
    for _ in range(2):
        y = mosaic_attention(kd, vd, bandwidth=rd, unconstrained=True, band=td)
        runs.append((y, *torch.autograd.grad(y, (kd, vd, rd), dy)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    scale = row_bandwidth(*rd.unbind(0), T, unconstrained=True, band=td)
    composed = torch.autograd.grad(mosaic_attention(kd, vd, scale, band=td), rd, dy)[0]
    assert rel_err(runs[0][3], composed) <= tolerances.FP32
    # The float64 oracle on the GPU (the dense (B, H, T, T) terms of T = 4097 are 1 GiB each).
    k64, v64, r64 = (t.detach().double().requires_grad_() for t in (kd, vd, rd))
    scale64 = reference_row_bandwidth(*r64.unbind(0), T, unconstrained=True, band=td)
    y64 = reference.mosaic_attention(k64, v64, scale64, band=td)
    refs = torch.autograd.grad(y64, (k64, v64, r64), dy.double(), retain_graph=True)   # scale64's, for the bound
    assert rel_err(runs[0][0], y64) <= tolerances.LOW_PRECISION
    for name, got, want in zip(("k", "v"), runs[0][1:3], refs):
        assert rel_err(got, want) <= tolerances.LOW_PRECISION, (name, rel_err(got, want))
    mask = band_mask(T, td[..., 0], td[..., 1], "cuda")
    terms = tolerances.scale_gradient_magnitudes(k64.detach(), v64.detach(), y64.detach(), dy.double(),
                                                 scale64.detach(), mask)
    bound = torch.autograd.grad(scale64, r64, terms)[0]
    err = (runs[0][3].double() - refs[2]).abs()
    assert (err <= tolerances.LOW_PRECISION * bound).all(), (err / bound).max().item()
