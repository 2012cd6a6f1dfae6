"""leaky_average: reference and Triton kernel against a float64 time loop, gradients, errors."""
from __future__ import annotations

import pytest
import torch

from mosaic_kernels import leaky_average, reference
from tests import tolerances
from tests.conftest import head_split, in_bthd_memory, kernel_devices, rel_err
from tests.oracles import leaky_loop

DECAYS = [0.0, 1e-6, 0.5, 0.999, 1.0]


def _inputs(B, H, T, D, *, strided=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if strided:  # a transposed view of a (B, T, H*D) projection, as the model passes it
        x = torch.randn(B, T, H * D, generator=g).view(B, T, H, D).transpose(1, 2)
    else:
        x = torch.randn(B, H, T, D, generator=g)
    decay = torch.tensor(DECAYS * H)[:H] if H > 1 else torch.tensor([0.5])
    scale = torch.rand(H, generator=g) * 2 + 0.5
    return x, decay, scale


def _check_against_loop(fn, x, decay, scale, normalize, tol, device="cpu"):
    xd = x.to(device).requires_grad_()
    ad = decay.to(device).requires_grad_()
    sd = scale.to(device).requires_grad_()
    y = fn(xd, ad, normalize=normalize, scale=sd if normalize else None)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device)
    grads = torch.autograd.grad(y, (xd, ad, sd) if normalize else (xd, ad), g.to(y.dtype))
    x64, a64, s64 = (t.detach().double().requires_grad_() for t in (x, decay, scale))
    y64 = leaky_loop(x64, a64, normalize, s64 if normalize else None)
    ref_grads = torch.autograd.grad(y64, (x64, a64, s64) if normalize else (x64, a64), g.double().cpu())
    assert not torch.isnan(y).any()
    assert rel_err(y, y64) <= tol
    for name, got, want in zip(("x", "decay", "scale"), grads, ref_grads):
        assert not torch.isnan(got).any(), name
        assert rel_err(got, want) <= tol, (name, rel_err(got, want))


# --------------------------------------------------------------------------- reference (CPU path)

@pytest.mark.parametrize("T", [1, 17, 130], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "norm"])
def test_reference_matches_loop(T, normalize):
    x, decay, scale = _inputs(2, 5, T, 16, strided=True)
    _check_against_loop(reference.leaky_average, x, decay, scale, normalize, tolerances.FP32)


def test_reference_gradcheck_float64():
    x = torch.randn(1, 2, 70, 3, dtype=torch.float64, requires_grad=True)  # crosses a chunk boundary
    a = torch.tensor([0.3, 0.9], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([1.5, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, s: reference.leaky_average(x, a, normalize=True, scale=s), (x, a, s))
    assert torch.autograd.gradcheck(lambda x, a: reference.leaky_average(x, a), (x, a))


def test_reference_decay_gradient_finite_at_boundaries():
    x = torch.randn(1, 2, 9, 4, dtype=torch.float64)
    a = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    reference.leaky_average(x, a, normalize=True).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_public_float64_is_exact_on_cpu():
    x, decay, scale = _inputs(1, 3, 40, 8)
    y = leaky_average(x.double(), decay.double(), normalize=True, scale=scale.double())
    assert rel_err(y, leaky_loop(x.double(), decay.double(), True, scale.double())) < 1e-12


# --------------------------------------------------------------------------- Triton kernel

@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("T,D", [(1, 16), (17, 48), (257, 64), (33, 20)], ids=lambda v: str(v))
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
def test_kernel_matches_loop(device, T, D, normalize, strided, nan_outputs):
    x, decay, scale = _inputs(2, 5, T, D, strided=strided)
    _check_against_loop(leaky_average, x, decay, scale, normalize, tolerances.FP32, device)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)  # float64 runs the reference
def test_heads_last_layouts(device, dtype, nan_outputs):
    """heads_last=True gives the default's values and gradients bit for bit, with y in (B, T, H, D)
    memory; on the kernel path a head-split x gets its gradient in its own layout either way."""
    x, decay, scale = _inputs(2, 5, 37, 16, strided=True)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    runs = []
    for heads_last in (False, True):
        xv = head_split(x.to(device, dtype))
        a, s = decay.to(device).requires_grad_(), scale.to(device).requires_grad_()
        y = leaky_average(xv, a, normalize=True, scale=s, heads_last=heads_last)
        runs.append((y, *torch.autograd.grad(y, (xv, a, s), g)))
    assert in_bthd_memory(runs[1][0]) and not in_bthd_memory(runs[0][0])
    if dtype != torch.float64:
        assert in_bthd_memory(runs[0][1]) and in_bthd_memory(runs[1][1])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def _check_kernel_variant(device, monkeypatch, settings: dict, shape: tuple, chunk_len: int):
    """The Triton scan with ``function`` constants set to ``settings``, time-chunked, on strided input,
    against the float64 loop, plain and normalised."""
    from mosaic_kernels.leaky_average import function

    for name, value in settings.items():
        monkeypatch.setattr(function, name, value)
    x, decay, scale = _inputs(*shape, strided=True)

    def fn(x, a, normalize, scale):
        return function.leaky_average_triton(x, a, normalize=normalize, scale=scale, chunk_len=chunk_len)

    for normalize in (False, True):
        _check_against_loop(fn, x, decay, scale, normalize, tolerances.FP32, device)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("fwd", ["scan", "dot"], ids=lambda m: f"fwd_{m}")
@pytest.mark.parametrize("bwd", ["scan", "dot"], ids=lambda m: f"bwd_{m}")
def test_kernel_both_in_tile_scans(device, fwd, bwd, monkeypatch, nan_outputs):
    """Both in-tile scans of each direction (decay-matrix product, the default; associative scan), multi-chunk."""
    _check_kernel_variant(device, monkeypatch, {"FWD_IN_TILE": fwd, "BWD_IN_TILE": bwd}, (2, 5, 70, 20), 32)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("stages", [0, 3], ids=lambda s: f"stages{s}")
def test_kernel_both_latency_hidings(device, stages, monkeypatch, nan_outputs):
    """Register prefetch (0) and pipelined loads (3), multi-chunk, a partial last tile, strided input."""
    _check_kernel_variant(device, monkeypatch, {"FWD_STAGES": stages, "BWD_STAGES": stages}, (2, 3, 150, 64), 64)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("chunk_len", [16, 48], ids=lambda c: f"chunk{c}")
def test_kernel_multi_chunk_carries(device, chunk_len, nan_outputs):
    """Force the time-parallel path (several chunks per sequence) at small T."""
    from mosaic_kernels.leaky_average.function import leaky_average_triton

    x, decay, scale = _inputs(1, 5, 100, 16, strided=True)

    def fn(x, a, normalize, scale):
        return leaky_average_triton(x, a, normalize=normalize, scale=scale, chunk_len=chunk_len)

    for normalize in (False, True):
        _check_against_loop(fn, x, decay, scale, normalize, tolerances.FP32, device)


def test_chunking_policy(monkeypatch):
    """One time chunk per (b, h) once B*H fills the SMs; below that (the "occupancy" rule) about 2 programs per
    SM; chunks are whole blocks and cover T (the counts the H200 measurements behind the policy used: 132 SMs)."""
    from mosaic_kernels.leaky_average import function

    assert function.CHUNK_RULE == "length"                    # the default since 2026-12-06
    monkeypatch.setattr(function, "CHUNK_RULE", "occupancy")
    monkeypatch.setattr(function, "sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    chunks = {shape: function._chunking(*shape, cuda, 64, None, 2)
              for shape in ((16, 12, 512), (16, 16, 16384), (4, 12, 2048), (1, 12, 8192), (11, 12, 512))}
    assert chunks == {(16, 12, 512): (512, 1), (16, 16, 16384): (16384, 1), (4, 12, 2048): (384, 6),
                      (1, 12, 8192): (384, 22), (11, 12, 512): (512, 1)}
    assert function._chunking(1, 1, 100, cuda, 64, 32, 2) == (64, 2)  # an explicit length: whole blocks
    # The default rule: chunks of about 192 steps below the SM count, at most 22, never fewer than the
    # occupancy rule's; the counts that were fastest when forced at these shapes.
    monkeypatch.setattr(function, "CHUNK_RULE", "length")
    chunks = {shape: function._chunking(*shape, cuda, 64, None, 2)
              for shape in ((16, 12, 512), (4, 12, 2048), (1, 12, 8192), (8, 12, 2048), (2, 12, 8192), (1, 1, 300))}
    assert chunks == {(16, 12, 512): (512, 1), (4, 12, 2048): (192, 11), (1, 12, 8192): (384, 22),
                      (8, 12, 2048): (192, 11), (2, 12, 8192): (384, 22), (1, 1, 300): (64, 5)}


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_decay_gradient_finite_difference(device):
    """Analytic d/d(decay) against central differences of the float64 time loop (docs/MODEL.md 1.2)."""
    x, _, scale = _inputs(1, 3, 50, 16)
    decay = torch.tensor([0.2, 0.7, 0.95])
    g = torch.randn(1, 3, 50, 16)
    a = decay.to(device).requires_grad_()
    y = leaky_average(x.to(device), a, normalize=True, scale=scale.to(device))
    (got,) = torch.autograd.grad(y, a, g.to(device))
    h = 1e-6
    fd = torch.empty(3, dtype=torch.float64)
    for i in range(3):
        up, dn = decay.double().clone(), decay.double().clone()
        up[i] += h
        dn[i] -= h
        f = lambda d: (leaky_loop(x.double(), d, True, scale.double()) * g.double()).sum()
        fd[i] = (f(up) - f(dn)) / (2 * h)
    # float64 central differences: truncation ~h^2 |f'''| ~ 1e-12, rounding ~u64 |f| / h ~ 1e-9, both far
    # below the float32 analytic gradient's own error.
    assert rel_err(got, fd) < tolerances.FP32


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_long_sequence_stable(device):
    """decay 1 and 0.999 over a long T: no overflow, no NaN, still matching the loop."""
    x = torch.randn(1, 2, 3000, 16)
    decay = torch.tensor([1.0, 0.999])
    y = leaky_average(x.to(device), decay.to(device), normalize=True, scale=2.0)
    assert torch.isfinite(y).all()
    assert rel_err(y, leaky_loop(x.double(), decay.double(), True, 2.0)) < tolerances.FP32


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_float_decay_and_no_scale(device):
    x = torch.randn(2, 3, 20, 16)
    y = leaky_average(x.to(device), 0.8, normalize=True)
    assert rel_err(y, leaky_loop(x.double(), 0.8, True)) < tolerances.FP32


@pytest.mark.parametrize("device", kernel_devices())
def test_tensor_decay_outside_unit_interval_is_clamped_on_every_path(device):
    """A tensor decay is not range-checked (that would synchronise the device): entries outside
    [0, 1] are clamped, so the kernel and the reference agree and stay finite, and the clamped
    entries get a zero gradient."""
    x = torch.randn(1, 5, 40, 16)
    # Outside, then the two boundaries (which pass the gradient, as in-range values do) and one inside.
    decay = torch.tensor([-0.5, 0.0, 0.7, 1.0, 1.5])
    want = leaky_loop(x.double(), torch.tensor([0.0, 0.0, 0.7, 1.0, 1.0], dtype=torch.float64), True, 2.0)
    results = []
    for xs in (x.to(device), x.double()):  # float64 always runs the reference
        a = decay.to(xs.device, xs.dtype).requires_grad_()
        y = leaky_average(xs, a, normalize=True, scale=2.0)
        (ga,) = torch.autograd.grad(y.sum() + (y * y[:, :, :1]).sum(), a)
        assert torch.isfinite(y).all() and rel_err(y, want) < tolerances.FP32
        assert ga[0] == 0 and ga[4] == 0 and (ga[1:4] != 0).all()
        results.append(ga[1:4].double().cpu())
    # Each gradient is a float32 sum over T*D terms against its float64 value: the FP32 bound of the others.
    assert rel_err(results[0], results[1]) <= tolerances.FP32


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize("kwargs,match", [
    (dict(x=torch.randn(2, 3, 4)), "x must have 4 dimensions"),
    (dict(x=torch.ones(1, 2, 3, 4, dtype=torch.int32)), "x must have dtype"),
    (dict(decay=torch.ones(3)), r"decay must have shape \(2,\)"),
    (dict(decay=1.5), r"decay must lie in \[0.0, 1.0\]"),
    (dict(decay=None), "decay must be"),
    (dict(decay="a"), "decay must be None, a float or a tensor"),
    (dict(scale=2.0), "scale is only applied with normalize=True"),
    (dict(normalize=True, scale=torch.ones(2, 1)), r"scale must have shape \(2,\)"),
    (dict(normalize=True, scale=torch.ones(2, device="meta")), "scale must be on cpu"),
    (dict(normalize=True, eps=0.0), "eps must be a positive float"),
    (dict(x=torch.randn(1, 2, 0, 4)), "x must have non-zero sizes"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(x=torch.randn(1, 2, 3, 4), decay=0.5)
    args.update(kwargs)
    x, decay = args.pop("x"), args.pop("decay")
    with pytest.raises(ValueError, match=match):
        leaky_average(x, decay, **args)


# --------------------------------------------------------------------------- GPU (H200)

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 1, 16), (4, 12, 1000, 64), (2, 16, 4097, 128), (1, 12, 8192, 64),
                                   (3, 5, 777, 48), (1, 2, 300, 256)], ids=str)
@pytest.mark.parametrize("decay", [0.0, 1e-6, 0.5, 0.999, 1.0], ids=lambda d: f"a{d}")
def test_gpu_dtypes_and_shapes(dtype, shape, decay, nan_outputs, request):
    if (dtype, shape, decay) == (torch.bfloat16, (1, 2, 300, 256), 0.5):
        # Known limit (H200, 2026-11-22): the backward rebuilds u_{t-1} from the bf16 output, and
        # under normalisation sum_t lambda_t . u_{t-1} cancels heavily: 1.8e-2 here. See README.md.
        request.applymarker(pytest.mark.xfail(strict=True, reason="bf16 decay gradient: 1.8e-2 > 1e-2"))
    B, H, T, D = shape
    tol = tolerances.FP32 if dtype == torch.float32 else tolerances.LOW_PRECISION
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, H, D, generator=g).transpose(1, 2)
    scale = torch.rand(H, generator=g) + 0.5
    for normalize in (False, True):
        xd = x.to("cuda", dtype).requires_grad_()
        ad = torch.full((H,), decay, device="cuda", requires_grad=True)
        sd = scale.cuda().requires_grad_()
        y = leaky_average(xd, ad, normalize=normalize, scale=sd if normalize else None)
        gy = torch.randn(y.shape, generator=g).cuda()
        wrt = (xd, ad, sd) if normalize else (xd, ad)
        grads = torch.autograd.grad(y, wrt, gy.to(dtype))
        # Reference: the chunked PyTorch scan in float64 on the GPU (checked against the loop above).
        x64, a64, s64 = (t.detach().double().requires_grad_() for t in (x.to(dtype).float().cuda(), ad, sd))
        y64 = reference.leaky_average(x64, a64, normalize=normalize, scale=s64 if normalize else None)
        refs = torch.autograd.grad(y64, (x64, a64, s64) if normalize else (x64, a64), gy.double())
        assert torch.isfinite(y).all()
        assert rel_err(y, y64) <= tol
        for name, got, want in zip(("x", "decay", "scale"), grads, refs):
            assert torch.isfinite(got).all(), name
            if want.abs().max() > 1e-6 * max(1.0, float(y64.detach().abs().max())):
                assert rel_err(got, want) <= tol, (name, rel_err(got, want))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_one_million_steps(dtype):
    x = torch.randn(1, 2, 1 << 20, 64, device="cuda", dtype=dtype)
    a = torch.tensor([1.0, 0.999], device="cuda", requires_grad=True)
    s = torch.tensor([1.0, 3.0], device="cuda", requires_grad=True)
    xr = x.requires_grad_()
    y = leaky_average(xr, a, normalize=True, scale=s)
    y.float().square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(xr.grad).all()
    assert torch.isfinite(a.grad).all() and torch.isfinite(s.grad).all()
    y_plain = leaky_average(x.detach(), a.detach())
    assert torch.isfinite(y_plain).all()


@pytest.mark.gpu
def test_gpu_backward_is_deterministic():
    x = torch.randn(2, 4, 3000, 64, device="cuda", dtype=torch.bfloat16).requires_grad_()
    a = torch.rand(4, device="cuda").requires_grad_()
    s = torch.rand(4, device="cuda").add(0.5).requires_grad_()
    g = torch.randn(2, 4, 3000, 64, device="cuda", dtype=torch.bfloat16)
    runs = [torch.autograd.grad(leaky_average(x, a, normalize=True, scale=s), (x, a, s), g) for _ in range(2)]
    for first, second in zip(*runs):
        assert torch.equal(first, second)


def test_float32_inputs_take_their_own_tiles_on_the_gpu(monkeypatch):
    """On the GPU (the interpreter's 16-row tiles left aside) float32 inputs read the float32 tables, whose tiles
    fit the exact-float32 product in registers, and 16-bit inputs the 16-bit ones, in both directions; the
    in-tile scan's tables ("scan") are shared."""
    from mosaic_kernels.leaky_average import function as fn
    monkeypatch.setattr(fn, "interpreter_enabled", lambda: False)
    for D in (16, 48, 64, 256):
        block_d = max(16, 1 << (D - 1).bit_length())
        fwd32, bwd32 = fn.FWD_DOT_TILES_FLOAT32[block_d], fn.BWD_DOT_TILES_FLOAT32[block_d]
        assert fn._tiling(D, torch.float32) == (*fwd32, *bwd32, block_d)
        for half in (torch.bfloat16, torch.float16):
            assert fn._tiling(D, half) == (*fn.FWD_DOT_TILES[block_d], *fn.BWD_DOT_TILES[block_d], block_d)
    monkeypatch.setattr(fn, "FWD_IN_TILE", "scan")
    assert fn.active_tiles("fwd", torch.float32) is fn.FWD_TILES is fn.active_tiles("fwd", torch.bfloat16)


def test_a_time_varying_table_entry_sets_its_kinds_16_bit_launch_on_the_gpu(monkeypatch):
    """TIME_VARYING_TILES: an entry for (direction, kind) at a BLOCK_D sets that kernel's tile, warps and stages for
    16-bit inputs of that kind on the GPU; the other kind, the other direction, float32 inputs and the per-head
    decay keep the tables and FWD_/BWD_STAGES, and the interpreter its fixed tiles."""
    from mosaic_kernels.leaky_average import function as fn
    monkeypatch.setattr(fn, "interpreter_enabled", lambda: False)
    monkeypatch.setitem(fn.TIME_VARYING_TILES, ("fwd", 2), {128: (64, 8, 3)})
    bf16 = torch.bfloat16
    assert fn._launch_tile("fwd", 2, 96, bf16) == (64, 8, 3, 128)
    assert fn._launch_tile("fwd", 2, 96, torch.float16) == (64, 8, 3, 128)
    assert fn._launch_tile("fwd", 2, 64, bf16) == (*fn.FWD_DOT_TILES[64], fn.FWD_STAGES, 64)
    assert fn._launch_tile("fwd", 1, 128, bf16) == (*fn.FWD_DOT_TILES[128], fn.FWD_STAGES, 128)
    assert fn._launch_tile("fwd", 0, 128, bf16) == (*fn.FWD_DOT_TILES[128], fn.FWD_STAGES, 128)
    assert fn._launch_tile("bwd", 2, 128, bf16) == (*fn.BWD_DOT_TILES[128], fn.BWD_STAGES, 128)
    assert fn._launch_tile("fwd", 2, 128, torch.float32) == (*fn.FWD_DOT_TILES_FLOAT32[128], fn.FWD_STAGES, 128)
    monkeypatch.setattr(fn, "interpreter_enabled", lambda: True)
    assert fn._launch_tile("fwd", 2, 128, bf16) == (16, 1, fn.FWD_STAGES, 128)
