"""leaky_average with a time-varying decay ((B, H, T) or (B, H, T, D)) and a gate: the reference and the
Triton kernels against a float64 time loop, chunked, gated, normalised; gates beyond float32's range
through stable_gate_and_decay; errors."""
from __future__ import annotations

import pytest
import torch

from mosaic_kernels import leaky_average, reference
from mosaic_kernels.leaky_average import stable_gate_and_decay
from tests import tolerances
from tests.conftest import in_bthd_memory, kernel_devices, rel_err

KINDS = ["per_step", "per_channel"]


def tv_loop(x, decay, gate=None, normalize=False, scale=None, eps=1e-12):
    """Plain time loop: h_t = g_t x_t + a_t h_{t-1} (a_t one per head or per channel), then normalised."""
    B, H, T, D = x.shape
    h = torch.zeros(B, H, D, dtype=x.dtype)
    out = []
    # unbind, not x[:, :, t]: indexing's backward writes a full-size zero gradient per step (O(T^2) work,
    # minutes at T = 20,000), unbind's stacks the T slices' gradients once.
    xs = x.unbind(2)
    decays = (decay if decay.dim() == 4 else decay[..., None]).unbind(2)
    gates = gate[..., None].unbind(2) if gate is not None else [1.0] * T
    for t in range(T):
        h = gates[t] * xs[t] + decays[t] * h
        out.append(h)
    y = torch.stack(out, dim=2)
    if normalize:
        y = y / y.norm(dim=-1, keepdim=True).clamp_min(eps)
        if scale is not None:
            y = y * (scale.view(1, H, 1, 1) if isinstance(scale, torch.Tensor) else scale)
    return y


def _inputs(B, H, T, D, kind, gated, *, seed=0, dtype=torch.float32, edges=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H, D, generator=g).transpose(1, 2).to(dtype)  # the model's strided head split
    decay = torch.rand((B, H, T) if kind == "per_step" else (B, H, T, D), generator=g)
    if edges and T > 2:  # exact resets and exact carries
        decay[0, 0, T // 2] = 0.0
        decay[-1, -1, 1] = 1.0
    gate = torch.rand(B, H, T, generator=g) * 2 + 0.1 if gated else None
    return x, decay, gate, torch.rand(H, generator=g) + 0.5


def _check(fn, x, decay, gate, scale, normalize, tol, device, **kw):
    xs = x.to(device).requires_grad_()
    ds = decay.to(device).requires_grad_()
    gs = gate.to(device).requires_grad_() if gate is not None else None
    ss = scale.to(device).requires_grad_() if normalize else None
    y = fn(xs, ds, gate=gs, normalize=normalize, scale=ss, **kw)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9)).to(device, y.dtype)
    ins = [t for t in (xs, ds, gs, ss) if t is not None]
    grads = torch.autograd.grad(y, ins, gy, allow_unused=True, materialize_grads=True)  # T = 1: no decay used
    x64, d64 = x.double().requires_grad_(), decay.double().requires_grad_()
    g64 = gate.double().requires_grad_() if gate is not None else None
    s64 = scale.double().requires_grad_() if normalize else None
    y64 = tv_loop(x64, d64, g64, normalize, s64)
    refs = torch.autograd.grad(y64, [t for t in (x64, d64, g64, s64) if t is not None], gy.double().cpu())
    assert torch.isfinite(y).all() and y.dtype == x.dtype
    assert rel_err(y, y64) <= tol, rel_err(y, y64)
    for name, got, want in zip(("x", "decay", "gate", "scale"), grads, refs):
        assert torch.isfinite(got).all(), name
        assert got.shape == want.shape, name
        assert rel_err(got, want) <= tol, (name, rel_err(got, want))
    return y


# --------------------------------------------------------------------------- reference

@pytest.mark.parametrize("T", [1, 2, 17, 63], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "norm"])
def test_reference_matches_the_loop(T, kind, gated, normalize):
    """float64 both; recursive doubling against the loop: sums of <= 63 terms in two orders."""
    if T == 1 and gated and normalize:
        pytest.skip("normalize(g x) does not depend on g: the gate's true gradient is 0 and rel_err undefined")
    x, d, g, s = _inputs(2, 3, T, 8, kind, gated, dtype=torch.float64)
    _check(reference.leaky_average, x, d.double(), g.double() if g is not None else None, s.double(), normalize,
           1e-12, "cpu")


def test_reference_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 9, 3, dtype=torch.float64, generator=g, requires_grad=True)
    d = torch.rand(1, 2, 9, dtype=torch.float64, generator=g).requires_grad_()
    gate = (torch.rand(1, 2, 9, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    fn = lambda x, d, gate: reference.leaky_average(x, d, gate=gate, normalize=True, scale=1.3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, d, gate))


def test_constant_time_varying_decay_is_the_per_head_scan():
    x, _, _, s = _inputs(2, 3, 40, 8, "per_step", False)
    per_head = torch.tensor([0.0, 0.5, 0.95])
    a = reference.leaky_average(x, per_head, normalize=True, scale=s)
    b = reference.leaky_average(x, per_head.view(1, 3, 1).expand(2, 3, 40), normalize=True, scale=s)
    assert rel_err(b, a) <= tolerances.FP32


# --------------------------------------------------------------------------- Triton kernels

@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("T", [2, 17, 63, 100], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "norm"])
def test_kernel_matches_the_loop(device, T, kind, gated, normalize, nan_outputs):
    x, d, g, s = _inputs(2, 3, T, 20, kind, gated)
    _check(leaky_average, x, d, g, s, normalize, tolerances.FP32, device)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_len", [16, 32], ids=lambda c: f"chunk{c}")
def test_kernel_time_chunks_carry_the_decay_products(device, kind, chunk_len, nan_outputs):
    """Time split into chunks (forced lengths): each chunk's summary holds its end state and the product
    of its decays, folded into the next chunks' carry, forward and backward."""
    from mosaic_kernels.leaky_average.function import leaky_average_triton

    x, d, g, s = _inputs(2, 2, 90, 16, kind, True)
    _check(lambda *a, **k: leaky_average_triton(*a, **k, chunk_len=chunk_len), x, d, g, s, True, tolerances.FP32,
           device)


def _split_devices_and_dtypes() -> list:
    # Triton's interpreter multiplies float16 tiles but not bfloat16 ones: bf16 on the GPU only.
    cases = [pytest.param(d, torch.float16, id=f"{d}-fp16") for d in kernel_devices() if d in ("cpu", "cuda")]
    if torch.cuda.is_available():
        cases.append(pytest.param("cuda", torch.bfloat16, id="cuda-bf16"))
    return cases or [pytest.param("none", torch.float16, marks=pytest.mark.skip(reason="no kernel device"))]


@pytest.mark.parametrize("device, dtype", _split_devices_and_dtypes())
@pytest.mark.parametrize("precision", ["tf32x3", "split"])
@pytest.mark.parametrize("case", ["per_step", "per_step_gated", "per_head_gated", "per_step_large_gated"])
def test_16_bit_forward_keeps_float32_state_accuracy(device, dtype, precision, case, monkeypatch, nan_outputs):
    """The forward of a 16-bit time-varying or gated scan under either TIME_VARYING_FWD_PRECISION: the state's
    norm (float32, before any 16-bit store) against the float64 loop on the same 16-bit inputs.

    "split" multiplies W[i, j] g_j, split into a high and a low 16-bit part, by the 16-bit input (exact): each
    coefficient is represented to u^2 relative (u the dtype's unit roundoff: the high part's rounding is at most
    u |w|, the low part rounds that remainder to u of itself), and the float32 sums add ~FP32. The state's error
    is then at most u^2 sum_j |W'_ij x_j|, relative to |u_t| that sum's ratio to |sum_j W'_ij x_j|, a few for
    these decays in [0, 1] and gates in [0.1, 2.1] (at most a few dozen terms weigh): 16 u^2 + FP32, 1.9e-6 for
    float16 and 2.4e-4 for bfloat16, where a matrix kept in one 16-bit part would be off by u (4.9e-4, 3.9e-3).
    Gates 1e5 times larger: the same relative bound (the split divides the gates by their largest, so W g stays
    within float16's range; folded in as they are, they would overflow it)."""
    from mosaic_kernels.leaky_average import function

    monkeypatch.setattr(function, "TIME_VARYING_FWD_PRECISION", precision)
    kind = "per_step" if case.startswith("per_step") else None
    x, d, g, s = _inputs(2, 3, 100, 20, kind or "per_step", case.endswith("gated"), dtype=dtype)
    if case == "per_step_large_gated":
        g = g * 1e5   # W g past float16's largest value (65,504): the split rescales the gates by their maximum
    if kind is None:
        d = torch.rand(3, generator=torch.Generator().manual_seed(4))   # one decay per head
    xs, ds, ss = x.to(device), d.to(device), s.to(device)
    gs = g.to(device) if g is not None else None
    y, norm = function._launch_forward(xs, ds, ss, True, 1e-12, 0, False, gs)
    d64 = d.double() if d.dim() == 3 else d.double().view(1, 3, 1).expand(2, 3, 100)
    u64 = tv_loop(x.double(), d64, g.double() if g is not None else None)
    u = {torch.float16: tolerances.U_FP16, torch.bfloat16: tolerances.U_BF16}[dtype]
    assert rel_err(norm, u64.norm(dim=-1)) <= 16 * u ** 2 + tolerances.FP32
    assert y.dtype == dtype and torch.isfinite(y).all()


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_heads_last_output_and_gradient_layout(device, nan_outputs):
    x, d, g, s = _inputs(2, 3, 33, 16, "per_step", True)
    xs = x.to(device).requires_grad_()
    y = leaky_average(xs, d.to(device), gate=g.to(device), normalize=True, scale=s.to(device), heads_last=True)
    (dx,) = torch.autograd.grad(y, (xs,), torch.ones_like(y))
    assert in_bthd_memory(y) and in_bthd_memory(dx)


@pytest.mark.parametrize("device", kernel_devices())
def test_gates_beyond_float32_through_stable_gate_and_decay(device):
    """Log-gates from -300 to 300 (exp overflows float32 past 88): the stabilised pair gives the float64
    loop's normalised keys and the gradients of both logs; shifting every log-gate by 5,000 changes
    nothing (the normalisation cancels a common factor). Tolerance: float32's, as the stabilised gates and
    decays are <= 1 and every state holds an input of coefficient 1 (no cancellation of large terms)."""
    gen = torch.Generator().manual_seed(4)
    B, H, T, D = 2, 2, 40, 16
    x = torch.randn(B, H, T, D, generator=gen)
    log_gate = (torch.rand(B, H, T, generator=gen) * 600 - 300).requires_grad_()
    log_decay = (-torch.rand(B, H, T, generator=gen) * 3).requires_grad_()
    xs = x.to(device).requires_grad_()

    def ours(lg):
        gate, decay = stable_gate_and_decay(lg.to(device), log_decay.to(device))
        return leaky_average(xs, decay, gate=gate, normalize=True)

    y = ours(log_gate)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(device)
    grads = torch.autograd.grad(y, (xs, log_gate, log_decay), gy)
    x64, lg64, ld64 = (t.detach().double().requires_grad_() for t in (x, log_gate, log_decay))
    # The direction of the gated sum, without the eps floor: rescaled, the state's largest term has
    # coefficient 1, where exp(-300) x itself would fall below eps = 1e-12.
    y64 = tv_loop(x64, ld64.exp(), lg64.exp(), normalize=True, eps=1e-300)
    refs = torch.autograd.grad(y64, (x64, lg64, ld64), gy.double().cpu())
    assert torch.isfinite(y).all() and rel_err(y, y64) <= tolerances.FP32
    assert rel_err(grads[0], refs[0]) <= tolerances.FP32
    # d/d log_gate_s = <lambda_s, g_s x_s> and d/d log_decay_t = <lambda_t, a_t u_{t-1}>: for the input
    # that dominates a state the output does not move with its scale, so these sums of D products cancel
    # to far below their terms (true values ~1e-16 against terms ~1). Their float32 error is bounded by the
    # terms' absolute sum, not by the result: compare with FP32 times the float64 sum of |terms|.
    gate, decay = (t.double() for t in stable_gate_and_decay(log_gate.detach(), log_decay.detach()))
    xg = (gate.unsqueeze(-1) * x.double()).requires_grad_()
    u = tv_loop(xg, decay)
    (lam,) = torch.autograd.grad(u / u.norm(dim=-1, keepdim=True), (xg,), gy.double().cpu())
    u_prev = torch.cat([torch.zeros_like(u[:, :, :1]), u[:, :, :-1]], dim=2).detach()
    for name, got, want, terms in (("log_gate", grads[1], refs[1], lam * xg),
                                   ("log_decay", grads[2], refs[2], lam * decay.unsqueeze(-1) * u_prev)):
        bound = tolerances.FP32 * terms.abs().sum(dim=-1).norm()
        assert (got.double().cpu() - want).norm() <= bound, (name, float((got.double().cpu() - want).norm()), float(bound))
    shifted = ours(log_gate.detach() + 5000.0)
    assert rel_err(shifted, y) <= tolerances.FP32


def test_stable_pair_stays_in_range():
    gen = torch.Generator().manual_seed(6)
    lg, ld = torch.randn(2, 3, 500, generator=gen) * 1e4, -torch.rand(2, 3, 500, generator=gen) * 50
    gate, decay = stable_gate_and_decay(lg, ld)
    assert torch.all((gate >= 0) & (gate <= 1)) and torch.all((decay >= 0) & (decay <= 1))
    assert torch.allclose(gate.amax(dim=-1), torch.ones(2, 3))  # the largest input has coefficient 1 somewhere


def _logs(B, H, T, gate_spread, decay_spread, seed, dtype=torch.float32):
    """Log-gates and log-decays as the model passes them: (B, H, T) transposed views of (B, T, H)."""
    g = torch.Generator().manual_seed(seed)
    lg = torch.randn(B, T, H, generator=g) * gate_spread
    ld = -torch.rand(B, T, H, generator=g) * decay_spread
    return lg.to(dtype).transpose(1, 2), ld.to(dtype).transpose(1, 2)


@pytest.mark.parametrize("spreads", [(0.3, 0.1), (3.0, 1.0)], ids=["state_wins", "mixed"])
def test_decay_gradient_passes_where_the_state_outweighs_the_input(spreads):
    """Gates that vary less than the decays (the state's earlier inputs outweigh the new one at most
    steps, where the stabilised decay's exponent is exactly 0) and wider ones: the pair's gradients
    through the scan are the float64 loop's. A gradient lost at those steps (clamp's gradient at its
    bound is 0 in some torch releases) is off by O(1). The PyTorch path, on the CPU in float64 (to
    the pair's float32 rounding: FP32). Wider gates are the test above's."""
    lg, ld = (t.double().requires_grad_() for t in _logs(2, 3, 64, *spreads, seed=8))
    x = torch.randn(2, 3, 64, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    gate, decay = stable_gate_and_decay(lg, ld)
    y = leaky_average(x, decay.double(), gate=gate.double(), normalize=True)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    got = torch.autograd.grad(y, (lg, ld), gy)
    lg64, ld64 = (t.detach().clone().requires_grad_() for t in (lg, ld))
    want = torch.autograd.grad(tv_loop(x, ld64.exp(), lg64.exp(), normalize=True), (lg64, ld64), gy)
    for a, b in zip(got, want):
        assert rel_err(a, b) <= tolerances.FP32


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("spreads", [(0.3, 0.1), (300.0, 3.0), (1e4, 50.0)], ids=["state_wins", "wide", "extreme"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_stable_pair_kernel_gives_the_pytorch_pair(device, spreads, dtype, nan_outputs):
    """The one-launch kernel (strided (B, T, H) logs, several tiles: T = 45 against the interpreter's
    16-step tiles, T = 2,500 against the GPU's 1,024) against the PyTorch path on the same logs in
    float64: the same formulas in float64 up to the order of the cumulative sum (relative 1e-16 of
    the exponents, which are as large as T times the decay spread: <= 1.3e5, so <= 1e-11 absolute),
    then each exponent rounded to float32 and exponentiated in float32 (a few ulps, plus the
    argument's relative rounding times its size for the GPU's exp2-based exp: up to ~90 * 2^-24 where
    the result underflows anyway). Elementwise: |a - b| <= 8 u (1 + |x|) b + 1e-30 with x the
    exponent. Gradients are each value times its gradient: the same bound. Every element written
    (nan_outputs)."""
    for T in (45, 2500) if device == "cuda" else (45,):
        lg, ld = _logs(2, 3, T, *spreads, seed=11, dtype=dtype)
        lg, ld = (t.to(device).requires_grad_() for t in (lg, ld))
        lg64, ld64 = (t.detach().cpu().double().requires_grad_() for t in (lg, ld))
        pair = stable_gate_and_decay(lg, ld)
        ref = stable_gate_and_decay(lg64, ld64)
        w = [torch.randn(2, 3, T, generator=torch.Generator().manual_seed(12 + i)) for i in range(2)]
        got = torch.autograd.grad(sum((p * wi.to(device)).sum() for p, wi in zip(pair, w)), (lg, ld))
        want = torch.autograd.grad(sum((p * wi).sum() for p, wi in zip(ref, w)), (lg64, ld64))
        for a, b in zip(pair, ref):
            assert a.dtype == torch.float32 and torch.isfinite(a).all()
            x = b.double().clamp_min(1e-300).log().abs()       # the exponent's size
            bound = 8 * tolerances.U_FP32 * (1 + x) * b.double() + 1e-30
            assert ((a.double().cpu() - b.double()).abs() <= bound).all()
        for a, b, p in zip(got, want, ref):
            assert a.dtype == dtype
            x = p.double().clamp_min(1e-300).log().abs()
            low = 0.0 if dtype == torch.float32 else tolerances.STORE_BF16 * b.double().abs()  # the gradient's store
            bound = 8 * tolerances.U_FP32 * (1 + x) * b.double().abs() + low + 1e-30
            assert ((a.double().cpu() - b.double()).abs() <= bound).all()


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("spreads", [(3.0, 1.0), (300.0, 3.0)], ids=["mixed", "wide"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_stable_pair_with_rate_bias_gives_the_pytorch_pair(device, spreads, dtype, nan_outputs):
    """``rate_bias``: the log-decays -|r + b| formed in the kernel, as v2's keys pass them (strided bf16 rates
    of both signs, a float32 bias per head). The kernel rounds r + b to float32 as the PyTorch expression
    does; the float64 reference takes those rounded log-decays as values (with the float64 expression's
    gradient), so the pair and the gradients of r have the bounds of the test above. The bias' gradient
    sums B T of those terms per head in float32 (Higham 4.2: B T u times their absolute sum, plus each
    term's own bound)."""
    B, H = 2, 3
    for T in (45, 2500) if device == "cuda" else (45,):
        lg, r = _logs(B, H, T, *spreads, seed=21, dtype=dtype)
        r = r + torch.randn(r.shape, generator=torch.Generator().manual_seed(22)).to(dtype) * spreads[1]  # both signs
        bias = torch.linspace(0.5, 5.0, H)
        lg, r, bias = (t.to(device).requires_grad_() for t in (lg, r, bias))
        lg64, r64, b64 = (t.detach().cpu().double().requires_grad_() for t in (lg, r, bias))
        pair = stable_gate_and_decay(lg, r, rate_bias=bias)
        exact = -(r64 + b64[:, None]).abs()
        rounded = -(r.detach().cpu().float() + bias.detach().cpu()[:, None]).abs().double()
        ref = stable_gate_and_decay(lg64, exact + (rounded - exact).detach())
        w = [torch.randn(B, H, T, generator=torch.Generator().manual_seed(23 + i)) for i in range(2)]
        got = torch.autograd.grad(sum((p * wi.to(device)).sum() for p, wi in zip(pair, w)), (lg, r, bias))
        want = torch.autograd.grad(sum((p * wi).sum() for p, wi in zip(ref, w)), (lg64, r64, b64))
        bounds = []
        for a, b in zip(pair, ref):
            x = b.double().clamp_min(1e-300).log().abs()
            bound = 8 * tolerances.U_FP32 * (1 + x) * b.double() + 1e-30
            assert ((a.double().cpu() - b.double()).abs() <= bound).all()
        for a, b, p in zip(got[:2], want[:2], ref):
            assert a.dtype == dtype
            x = p.double().clamp_min(1e-300).log().abs()
            low = 0.0 if dtype == torch.float32 else tolerances.STORE_BF16 * b.double().abs()  # the kernel's store
            bounds.append(8 * tolerances.U_FP32 * (1 + x) * b.double().abs() + 1e-30)
            assert ((a.double().cpu() - b.double()).abs() <= bounds[-1] + low).all()
        assert got[2].dtype == torch.float32 and got[2].shape == (H,)
        bias_bound = bounds[1].sum(dim=(0, 2)) + B * T * tolerances.U_FP32 * want[1].abs().sum(dim=(0, 2)) + 1e-30
        assert ((got[2].double().cpu() - want[2]).abs() <= bias_bound).all()


def test_rate_bias_is_checked():
    lg = torch.zeros(2, 3, 8)
    with pytest.raises(ValueError, match=r"rate_bias must have shape \(3,\)"):
        stable_gate_and_decay(lg, lg, rate_bias=torch.zeros(2))
    with pytest.raises(ValueError, match="rate_bias must be a floating"):
        stable_gate_and_decay(lg, lg, rate_bias=torch.zeros(3, dtype=torch.int64))


@pytest.mark.parametrize("device", kernel_devices())
def test_stable_pair_custom_op_opcheck_and_compile(device):
    """The pair's custom op: torch.library.opcheck (schema, registered autograd, fake), and through
    torch.compile(fullgraph=True) with the scan, the eager values and gradients (FP32)."""
    from mosaic_kernels.leaky_average.function import STABLE_GATES

    lg, ld = (t.to(device) for t in _logs(2, 3, 40, 2.0, 1.0, seed=13))
    bias = torch.linspace(0.5, 5.0, 3, device=device).requires_grad_()
    for args in ((lg.requires_grad_(), ld.requires_grad_(), None), (lg, ld, bias)):
        torch.library.opcheck(STABLE_GATES.fwd, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    x = torch.randn(2, 3, 40, 16, generator=torch.Generator().manual_seed(14)).to(device)

    def keys(lg, ld):
        gate, decay = stable_gate_and_decay(lg, ld)
        return leaky_average(x, decay, gate=gate, normalize=True).square().mul(torch.arange(16, device=device)).sum()

    torch._dynamo.reset()
    compiled = torch.compile(keys, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")
    results = []
    for fn in (keys, compiled):
        a, b = (t.detach().clone().requires_grad_() for t in (lg, ld))
        out = fn(a, b)
        results.append((out, *torch.autograd.grad(out, (a, b))))
    for eager, comp in zip(*results):
        assert rel_err(comp, eager) <= tolerances.FP32


def test_bad_time_varying_arguments_name_themselves():
    x = torch.zeros(2, 3, 8, 4)
    for kwargs, msg in ((dict(decay=torch.rand(2, 3, 7)), r"decay must have shape \(2, 3, 8\) or \(2, 3, 8, 4\)"),
                        (dict(decay=torch.ones(2, 3, 8, dtype=torch.int64)), "floating-point"),
                        (dict(decay=0.5, gate=torch.ones(2, 3)), r"gate must have shape \(2, 3, 8\)"),
                        (dict(decay=0.5, gate=torch.ones(2, 3, 8, dtype=torch.int32)), "gate must be a floating")):
        with pytest.raises(ValueError, match=msg):
            leaky_average(x, **kwargs)
    with pytest.raises(ValueError, match="log_gate and log_decay"):
        stable_gate_and_decay(torch.zeros(2, 3, 8), torch.zeros(2, 3, 7))


# --------------------------------------------------------------------------- on the GPU, every dtype

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [48, 96, 128, 256], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_every_dtype_and_head_dim(dtype, D, kind, nan_outputs):
    T = 1000
    x, d, g, s = _inputs(2, 3, T, D, kind, True, dtype=dtype)
    tol = tolerances.FP32 if dtype == torch.float32 else tolerances.LOW_PRECISION
    _check(leaky_average, x, d, g, s, True, tol, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_long_chunked_scan_and_determinism(kind):
    """T = 20,000 at B*H = 4 (time chunked over the SMs): float32 against float64, bitwise-equal twice."""
    x, d, g, s = _inputs(1, 4, 20000, 64, kind, True)
    d = d * 0.02 + 0.98  # long memories: the chunks' carries matter
    y = _check(leaky_average, x, d, g, s, True, tolerances.FP32, "cuda")
    xs, ds, gs = (t.cuda().requires_grad_() for t in (x, d, g))
    runs = [torch.autograd.grad(leaky_average(xs, ds, gate=gs, normalize=True), (xs, ds, gs), torch.ones_like(y))
            for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# (64, 4, 3) is not among them: three stages of 64-row tiles with a float32 per-channel decay ask for 296,448 bytes of
# shared memory, above an H100's 232,448 (Triton's OutOfResources, 2026-12-07), so no table entry may hold it.
@pytest.mark.gpu
@pytest.mark.parametrize("config", [(16, 2, 0), (16, 4, 2), (32, 4, 3), (64, 8, 0)], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_time_varying_tiles_and_stages(kind, config, monkeypatch, nan_outputs):
    """Any (BLOCK_T, warps, STAGES) that function.TIME_VARYING_TILES may hold (tiles of 16-64 rows, register
    prefetch or pipelined loads), in both directions, bf16, D = 96 (BLOCK_D 128), gated and normalised, time
    chunked with a partial last tile, against the float64 loop."""
    from mosaic_kernels.leaky_average import function as fn

    for direction in ("fwd", "bwd"):
        monkeypatch.setitem(fn.TIME_VARYING_TILES, (direction, 1 if kind == "per_step" else 2), {128: config})
    assert fn._launch_tile("fwd", 1 if kind == "per_step" else 2, 96, torch.bfloat16)[:3] == config
    x, d, g, s = _inputs(2, 3, 1000, 96, kind, True, dtype=torch.bfloat16)
    _check(lambda *a, **k: fn.leaky_average_triton(*a, **k, chunk_len=320), x, d, g, s, True,
           tolerances.LOW_PRECISION, "cuda")


def _16_bit_decay_cases() -> list:
    cases = [pytest.param(d, dt, id=f"{d}-{str(dt)[6:]}") for d in kernel_devices() if d in ("cpu", "cuda")
             for dt in (torch.float16, torch.bfloat16)]
    return cases or [pytest.param("none", torch.float16, marks=pytest.mark.skip(reason="no kernel device"))]


@pytest.mark.parametrize("device, decay_dtype", _16_bit_decay_cases())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "norm"])
def test_16_bit_decay_gives_the_float32_copys_results(device, decay_dtype, kind, normalize, nan_outputs):
    """A 16-bit time-varying decay reaches the kernels as it is (function._TV_DECAY_DTYPES): y and dx equal, bit
    for bit, those of the same decay passed as a float32 copy (the kernels' loads widen it exactly), and d(decay)
    comes back in the decay's dtype, equal to the copy's float32 gradient as autograd casts it. On the GPU the
    kernels' store rounds to nearest-even as that cast does (equal bits). Triton's interpreter converts a float16
    store with numpy, which rounds to nearest-even too (equal bits), and truncates a bfloat16 one: within one ulp
    (tolerances.STORE_BF16 relative)."""
    from mosaic_kernels.leaky_average.function import _kernel_inputs

    x, decay, gate, scale = _inputs(2, 3, 45, 16, kind, gated=True)
    decay16 = decay.to(decay_dtype)
    assert _kernel_inputs(x, decay16, None, False, None)[0] is decay16  # no float32 copy on the way in
    results = []
    for a in (decay16.to(device), decay16.float().to(device)):
        xs, ds = x.to(device).requires_grad_(), a.detach().requires_grad_()
        y = leaky_average(xs, ds, gate=gate.to(device), normalize=normalize, scale=2.0 if normalize else None)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(device)
        results.append((y.detach(), *torch.autograd.grad(y, (xs, ds), gy)))
    (y16, dx16, dd16), (y32, dx32, dd32) = results
    assert torch.equal(y16, y32) and torch.equal(dx16, dx32)
    assert dd16.dtype == decay_dtype and torch.isfinite(dd16.float()).all()
    want = dd32.to(decay_dtype)
    if device == "cuda" or decay_dtype == torch.float16:
        assert torch.equal(dd16, want)
    else:
        low = tolerances.STORE_BF16 * want.double().abs()
        assert ((dd16.double() - want.double()).abs() <= low).all()
