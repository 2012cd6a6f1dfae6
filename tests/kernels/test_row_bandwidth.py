"""row_bandwidth, the per-row scale beta(n_t) = beta1 n_t^alpha + beta0 of a band: the counts against the band
mask, the reference against a plain loop, the kernels against the reference in float64 (values and the three
gradients), the custom op's registration and compile, errors."""
from __future__ import annotations

import math

import pytest
import torch

from mosaic_kernels import mosaic_attention
from mosaic_kernels.attention import row_bandwidth
from mosaic_kernels.attention.reference import band_mask, row_counts
from mosaic_kernels.attention.reference import row_bandwidth as reference_row_bandwidth
from tests import tolerances
from tests.conftest import kernel_devices, rel_err

# (window, delay) pairs: strict causal, short-term windows, long-term delays, one delay per sequence (a
# negative one counts as 0, one past T leaves every row empty); one window per head (3 heads) with one delay
# per sequence and head: v2's short-term and long-term memories in one call (window T or more is none); one
# window per head with an int delay (the result keeps the (H, T) shape of an int delay).
BANDS = [(None, 1), (7, 1), (None, 5), (10, 3), (0, 0), (None, [0, 3, 60, -2]), (5, [1, 2]),
         ([4, 4, 99], [[1, 1, 6], [1, 1, 30]]), ([0, 8, 2], [[0, -1, 3], [2, 50, 1]]), ([3, 9, 99], 2)]
IDS = ["causal", "window7", "delay5", "window10_delay3", "self_only", "per_sequence", "window5_per_sequence",
       "per_head_v2", "per_head_mixed", "per_head_window"]


def _delay(delay, device="cpu"):
    """A list (of lists) as the tensor the ops take: (B,) or (B, H) delays, (H,) windows."""
    return torch.tensor(delay, device=device) if isinstance(delay, list) else delay


def _band_at(window, delay, r, h):
    """(window or None, delay) of sequence r and head h, from the test's lists."""
    w = window[h] if isinstance(window, list) else window
    d = delay if not isinstance(delay, list) else delay[r][h] if isinstance(delay[r], list) else delay[r]
    return w, d


def _params(H, seed, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    b0, b1 = torch.rand(H, generator=g) * 2, torch.rand(H, generator=g) * 2 + 0.1
    alpha = torch.rand(H, generator=g)
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (b0, b1, alpha)]


@pytest.mark.parametrize("window, delay", BANDS, ids=IDS)
def test_row_counts_are_the_band_masks_row_sums(window, delay):
    T = 45
    mask = band_mask(T, _delay(window), _delay(delay), "cpu")
    assert torch.equal(row_counts(T, _delay(window), _delay(delay), "cpu"), mask.sum(-1))


@pytest.mark.parametrize("window, delay", BANDS, ids=IDS)
def test_reference_is_the_formula_row_by_row(window, delay):
    """A plain loop over heads, rows (and sequences) in Python floats: beta1 n^alpha + beta0, beta0 at n = 0."""
    H, T = 3, 21
    b0, b1, a = (t.detach() for t in _params(H, 0, torch.float64))
    out = reference_row_bandwidth(b0, b1, a, T, window=_delay(window), delay=_delay(delay))
    R = len(delay) if isinstance(delay, list) else 1
    assert out.shape == ((R, H, T) if isinstance(delay, list) else (H, T))
    for r in range(R):
        for h in range(H):
            w, d = _band_at(window, delay, r, h)
            for t in range(T):
                lo, hi = (0 if w is None else max(t - w, 0)), t - max(d, 0)
                n = max(hi - lo + 1, 0)
                want = float(b1[h]) * n ** float(a[h]) + float(b0[h]) if n else float(b0[h])
                got = out[r, h, t] if isinstance(delay, list) else out[h, t]
                assert math.isclose(float(got), want, rel_tol=1e-14), (r, h, t)


def _unconstrained_params(H, seed, device="cpu", spread=3.0):
    """Unconstrained (p0, p1, pa): softplus(p0), softplus(p1) and sigmoid(pa) are the coefficients."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(H, generator=g) * spread).to(device).requires_grad_() for _ in range(3)]


def _check_kernel(device, T, window, delay, H=3, seed=1, unconstrained=False, params=None):
    """The kernels (float32) against the float64 reference: values and the gradients of the three
    parameters (the coefficients, or with ``unconstrained`` the parameters that softplus, softplus and
    sigmoid map to them).

    Values: n^alpha is exp2(alpha log2 n) in float32: log2 n and its product with alpha are each rounded
    (relative u), an exponent of size <= alpha log2 T <= 13 then errs by <= 2 * 13 u absolute, and exp2
    adds a few ulps: <= 32 u relative per element (2e-6). Unconstrained, the kernel's float32 sigmoid and
    softplus (an exp, an add, a log or a quotient: <= 4 u relative each, e.g. |d alpha| <= 4 u alpha) move
    the exponent by a further <= 4 * 13 u and the coefficients by 4 u: <= 96 u per element in all (6e-6),
    inside FP32's 1e-5 for the RMS error.
    Gradients: sums over every row (R * T terms) of the incoming gradient times values of the accuracy
    above, then times the map's derivative (a few u more); a float32 sum of N terms errs by at most N u
    times the sum of |terms| (Higham 4.2), whatever the kernel's order, so the bound is (96 + N) u sum|terms|
    per head, the terms taken with the derivative."""
    delay_t = _delay(delay, device)
    p32 = params or (_unconstrained_params(H, seed, device) if unconstrained else _params(H, seed, device=device))
    p64 = [p.detach().cpu().double().requires_grad_() for p in p32]
    got = row_bandwidth(*p32, T, window=_delay(window, device), delay=delay_t, unconstrained=unconstrained)
    want = reference_row_bandwidth(*p64, T, window=_delay(window), delay=_delay(delay), unconstrained=unconstrained)
    assert got.dtype == torch.float32 and got.shape == want.shape and got.device.type == device
    assert rel_err(got, want) <= tolerances.FP32
    w = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grads = torch.autograd.grad((got * w.to(device)).sum(), p32)
    refs = torch.autograd.grad((want * w).sum(), p64)
    n = row_counts(T, _delay(window), _delay(delay), "cpu").double()
    n = n[None] if n.dim() == 1 else n                                      # broadcasts against (B, H, T)
    raw = [p.detach()[:, None] for p in p64]
    if unconstrained:     # the coefficients, and each one's derivative in its parameter
        b1, a = torch.nn.functional.softplus(raw[1]), torch.sigmoid(raw[2])
        chain = [torch.sigmoid(raw[0]), torch.sigmoid(raw[1]), a * (1 - a)]
    else:
        b1, a, chain = raw[1], raw[2], [1.0, 1.0, 1.0]
    power = torch.where(n > 0, n.clamp_min(1).pow(a), 0.0)
    terms = [w * chain[0], w * power * chain[1], w * b1 * power * n.clamp_min(1).log() * chain[2]]  # summands
    N = want.numel() // H
    for name, g, ref, term in zip(("beta0", "beta1", "alpha"), grads, refs, terms):
        assert g.dtype == torch.float32
        dims = tuple(i for i in range(term.dim()) if i != term.dim() - 2)  # every axis but the head's
        bound = (96 + N) * tolerances.U_FP32 * term.abs().sum(dim=dims)
        assert ((g.double().cpu() - ref).abs() <= bound).all(), (name, (g.double().cpu() - ref).abs(), bound)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("unconstrained", [False, True], ids=["coefficients", "unconstrained"])
@pytest.mark.parametrize("window, delay", BANDS, ids=IDS)
def test_kernels_give_the_reference(device, window, delay, unconstrained, nan_outputs):
    """T = 45: three of the interpreter's 16-step tiles (one of the GPU's); every element written."""
    _check_kernel(device, 45, window, delay, unconstrained=unconstrained)


@pytest.mark.parametrize("device", kernel_devices())
def test_unconstrained_extremes(device, nan_outputs):
    """Parameters far out on both sides: softplus(-30) = 9e-14 must not round to 0 (the kernel's log1p),
    softplus(30) = 30, sigmoid(+-20) = 1 - 2e-9 and 2e-9; values and gradients within the same bounds."""
    ps = [torch.tensor(v, device=device).requires_grad_()
          for v in ([-30.0, 30.0, 0.0, -5.0], [30.0, -30.0, 5.0, -5.0], [-20.0, 20.0, 0.0, 3.0])]
    _check_kernel(device, 45, 10, [1, 4], H=4, unconstrained=True, params=ps)
    tiny = row_bandwidth(*[p.detach() for p in ps], 45, window=10, unconstrained=True)[0, 0]  # row 0: n = 0
    # e^-30 in float32 on the GPU is 2^(x log2 e) with x log2 e = -43.3 rounded (absolute error <= 43.3 u, so a
    # relative error of ln 2 * 43.3 u = 30 u in the power) and ex2.approx's own few ulp; the log1p then adds a
    # few roundings: (30 + 8) u = 2.3e-6 relative. Measured on an H100 (Triton 3.6, 2026-12-06): 1.15e-6.
    assert tiny.item() > 0 and math.isclose(tiny.item(), math.log1p(math.exp(-30.0)), rel_tol=38 * tolerances.U_FP32)


_V2_DELAYS = [64, 100, 256, 200, 70, 64, 128, 255]


@pytest.mark.gpu
@pytest.mark.parametrize("window, delay", [(256, 1), (None, 64), (None, _V2_DELAYS),
                                           ([256] * 6 + [8192] * 6, [[1] * 6 + [d] * 6 for d in _V2_DELAYS])],
                         ids=["short_term", "long_term", "long_term_per_sequence", "both_memories_per_head"])
def test_gpu_long_rows(window, delay, nan_outputs):
    """T = 8,192 at v2's bands: 8 of the GPU's 1,024-step tiles, in both directions, both parametrisations;
    deterministic."""
    _check_kernel("cuda", 8192, window, delay, H=12)
    _check_kernel("cuda", 8192, window, delay, H=12, unconstrained=True)
    p = _params(12, 3, device="cuda")
    runs = [torch.autograd.grad(row_bandwidth(*p, 8192, window=_delay(window, "cuda"), delay=_delay(delay, "cuda")).sum(), p)
            for _ in range(2)]
    for x, y in zip(*runs):
        assert torch.equal(x, y)


@pytest.mark.parametrize("device", kernel_devices())
def test_custom_op_opcheck_and_compile_with_the_attention(device):
    """torch.library.opcheck of the registered op, and row_bandwidth feeding mosaic_attention's per-row
    scale inside torch.compile(fullgraph=True): the eager values and gradients (FP32_CHAINED: two ops)."""
    from mosaic_kernels.attention.function import ROW_BANDWIDTH

    p = _params(3, 4, device=device)
    delays = torch.tensor([3, 9], device=device, dtype=torch.int32)
    for args in ((*p, 40, 8, 1, None, False), (*p, 40, -1, 0, delays, False), (*p, 40, 8, 1, None, True)):
        torch.library.opcheck(ROW_BANDWIDTH.fwd, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    g = torch.Generator().manual_seed(5)
    k = torch.nn.functional.normalize(torch.randn(2, 3, 40, 16, generator=g), dim=-1).to(device)
    v = torch.randn(2, 3, 40, 16, generator=g).to(device)

    def read(b0, b1, a):
        scale = row_bandwidth(b0, b1, a, 40, delay=delays)
        return mosaic_attention(k, v, scale, delay=delays).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(read, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")
    results = []
    for fn in (read, compiled):
        ps = [t.detach().clone().requires_grad_() for t in p]
        out = fn(*ps)
        results.append((out, *torch.autograd.grad(out, ps)))
    for eager, comp in zip(*results):
        assert rel_err(comp, eager) <= tolerances.FP32_CHAINED


def test_bad_arguments_name_themselves():
    b = torch.ones(3)
    for call, msg in ((lambda: row_bandwidth(torch.ones(3, 1), b, b, 8), "beta0"),
                      (lambda: row_bandwidth(b, torch.ones(4), b, 8), r"beta1 must have shape \(3,\)"),
                      (lambda: row_bandwidth(b, b, torch.ones(3, dtype=torch.int64), 8), "alpha must be a floating"),
                      (lambda: row_bandwidth(b, b, b, 0), "T must be an int >= 1"),
                      (lambda: row_bandwidth(b, b, b, 8, window=-1), "window must be None or an int >= 0"),
                      (lambda: row_bandwidth(b, b, b, 8, delay=-1), "delay must be an int >= 0"),
                      (lambda: row_bandwidth(b, b, b, 8, delay=torch.ones(2)), "delay must be an int or an integer")):
        with pytest.raises(ValueError, match=msg):
            call()
