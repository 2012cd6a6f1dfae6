"""mosaic_attention over a band (window, delay, per-sequence delays) with a per-head or per-row scale:
the dense reference against a float64 loop, the Triton kernels against that loop (interpreter and GPU,
every dtype), rows without keys, dropout, the two backward plans, errors."""
from __future__ import annotations

import math

import pytest
import torch

from mosaic_kernels import mosaic_attention, reference
from mosaic_kernels._triton_common import dropout_keep_mask, dropout_threshold
from mosaic_kernels.attention.reference import band_mask
from tests import tolerances
from tests.conftest import kernel_devices, rel_err
from tests.oracles import band_attention_loop

# (T, window, delay): windows and delays that cut the interpreter's 16-row tiles (and the GPU's 64- and
# 128-row ones) in the middle, rows without any key, delay 0 (the diagonal seen), per-sequence delays.
BANDS = [(17, 4, 1), (40, None, 9), (53, 23, 7), (70, None, (3, 40)), (45, 10, 0), (33, 0, 1), (61, 12, (0, 70)),
         # one window per head (3 heads) and one delay per sequence and head: v2's short-term and long-term
         # memories in one call (a window of T or more is none), and a mix of every kind of band
         (53, (9, 9, 60), ((1, 1, 7), (1, 1, 30))), (45, (0, 20, 5), ((0, -3, 2), (4, 50, 1)))]
SCALES = ["head", "row", "batch_row"]


def _ids(band):
    T, window, delay = band
    flat = lambda x: "-".join(map(str, x)) if isinstance(x, tuple) else str(x)  # noqa: E731
    return f"T{T}-w{flat(window)}-d{'_'.join(map(flat, delay)) if isinstance(delay, tuple) else delay}"


def _inputs(B, H, T, D, scale_kind, *, strided=True, seed=0, dtype=torch.float32, norm=2.0):
    g = torch.Generator().manual_seed(seed)
    if strided:  # transposed views of (B, T, H*D) projections
        k = torch.randn(B, T, H * D, generator=g).view(B, T, H, D).transpose(1, 2)
    else:
        k = torch.randn(B, H, T, D, generator=g)
    k = torch.nn.functional.normalize(k, dim=-1) * norm
    v = torch.randn(B, T, 2 * H * D, generator=g)[..., : H * D].reshape(B, T, H, D).transpose(1, 2)
    shape = {"head": (H,), "row": (H, T), "batch_row": (B, H, T)}[scale_kind]
    scale = torch.rand(shape, generator=g) + 0.5
    return k.to(dtype), v.to(dtype), scale


def _delay(delay, device):
    """A tuple (of tuples) as the tensor the op takes: (B,) or (B, H) delays, or (H,) windows."""
    return torch.tensor(delay, device=device) if isinstance(delay, tuple) else delay


def _check(k, v, scale, window, delay, tol, device, fn=mosaic_attention):
    kd, vd, sd = (t.to(device).requires_grad_() for t in (k, v, scale))
    y = fn(kd, vd, sd, window=_delay(window, device), delay=_delay(delay, device))
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(device, y.dtype)
    grads = torch.autograd.grad(y, (kd, vd, sd), g)
    k64, v64, s64 = (t.detach().double().cpu().requires_grad_() for t in (k, v, scale))
    y64 = band_attention_loop(k64, v64, s64, window, delay)
    y64 = y64 + 0 * (k64.sum() + v64.sum() + s64.sum())  # a graph also where no row sees a key
    refs = torch.autograd.grad(y64, (k64, v64, s64), g.double().cpu())
    assert torch.isfinite(y).all() and y.dtype == v.dtype
    # A row that sees no key is exactly 0.
    empty = (y64.detach().abs().amax(dim=-1) == 0)
    assert torch.all(y.detach().cpu()[empty] == 0)
    assert rel_err(y, y64) <= tol, rel_err(y, y64)
    for name, got, want in zip(("k", "v", "scale"), grads, refs):
        assert torch.isfinite(got).all(), name
        if name == "scale" and scale.dim() == 1 and tol > tolerances.FP32:
            # A per-head d(scale) sums ds_tj <k_t, k_j> over every pair of the head (~60,000 here), terms of
            # both signs that cancel ~400-fold. Each term carries a 16-bit relative error <~ tol, of random
            # sign, so the sum's error grows as tol times the terms' root-sum-square (tests/tolerances.py),
            # not as tol times the result.
            bound = tol * _scale_terms(k, v, scale, window, delay, g).norm()
            assert (got.double().cpu() - want).norm() <= bound, (name, float((got.double().cpu() - want).norm()), float(bound))
            continue
        assert rel_err(got, want) <= tol, (name, rel_err(got, want))
    return y, grads


def _scale_terms(k, v, scale, window, delay, g):
    """Per head, the root-sum-square over (b, t, j) of ds_tj <k_t, k_j> in float64 (dense: the gradient of
    the loss with respect to the raw products <k_t, k_j> is scale_h * ds_tj)."""
    k64, v64, s64 = k.double().cpu(), v.double().cpu(), scale.double().cpu()
    raw = (k64 @ k64.transpose(-1, -2)).requires_grad_()
    keep = band_mask(k.shape[2], _delay(window, "cpu"), _delay(delay, "cpu"), "cpu")
    logits = (raw * s64.view(1, -1, 1, 1)).masked_fill(~keep, float("-inf"))
    row_max = logits.amax(dim=-1, keepdim=True).nan_to_num(0.0, neginf=0.0).detach()
    w = torch.exp(logits - row_max)
    y = (w / w.sum(dim=-1, keepdim=True).clamp_min(1e-300)) @ v64
    (d_raw,) = torch.autograd.grad(y, (raw,), g.double().cpu())
    return (d_raw / s64.view(1, -1, 1, 1) * raw.detach()).square().sum(dim=(0, 2, 3)).sqrt()


# --------------------------------------------------------------------------- reference (CPU path)

@pytest.mark.parametrize("band", BANDS, ids=_ids)
@pytest.mark.parametrize("scale_kind", SCALES)
def test_reference_matches_the_loop(band, scale_kind):
    """float64 both: the dense masked softmax is the loop's function, sums of <= 70 terms in two orders
    (~1e-15 relative)."""
    T, window, delay = band
    k, v, s = (t.double() for t in _inputs(2, 3, T, 8, scale_kind))
    _check(k, v, s, window, delay, 1e-12, "cpu", reference.mosaic_attention)


def test_reference_gradcheck_float64_with_band_and_row_scale():
    g = torch.Generator().manual_seed(1)
    k = torch.randn(2, 2, 9, 3, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(2, 2, 9, 3, dtype=torch.float64, generator=g, requires_grad=True)
    s = (torch.rand(2, 2, 9, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    fn = lambda k, v, s: reference.mosaic_attention(k, v, s, window=4, delay=torch.tensor([1, 3]))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (k, v, s))


def test_default_band_is_the_strictly_causal_op():
    k, v, s = _inputs(2, 3, 31, 8, "head")
    a = reference.mosaic_attention(k, v, s)
    b = reference.mosaic_attention(k, v, s, window=None, delay=1)
    c = reference.mosaic_attention(k, v, s, window=30, delay=torch.tensor([1, 1]))  # a window past 0 is none
    assert torch.equal(a, b) and torch.equal(a, c)


# --------------------------------------------------------------------------- Triton kernel

@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("band", BANDS, ids=_ids)
@pytest.mark.parametrize("scale_kind", SCALES)
def test_kernel_matches_the_loop(device, band, scale_kind, nan_outputs):
    T, window, delay = band
    k, v, s = _inputs(2, 3, T, 16, scale_kind)
    _check(k, v, s, window, delay, tolerances.FP32, device)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("band", [(37, 9, 1), (64, None, 21), (100, 30, (5, 60)), (70, (8, 80), ((1, 9), (1, 40)))],
                         ids=_ids)
@pytest.mark.parametrize("scale_kind", ["head", "batch_row"])
def test_long_row_backward_plan_matches_the_loop(device, band, scale_kind, nan_outputs):
    """The long-sequence (split) backward plan, key role then query role, on small tiles that leave partial
    blocks, against the float64 loop; bitwise equal over two runs. The last band is one per head, as the
    kernels read it: a (B, H, 2) table of (window, delay)."""
    from mosaic_kernels.attention import band_table
    from mosaic_kernels.attention.function import attention_backward, attention_forward, split_config

    T, window, delay = band
    k, v, s = (t.to(device) for t in _inputs(2, 2, T, 24, scale_kind))
    delays = torch.tensor(delay, dtype=torch.int32, device=device) if isinstance(delay, tuple) else None
    d = 0 if delays is not None else delay
    if isinstance(window, tuple):
        delays, window = band_table(_delay(window, device), delays, 2, 2, T, device), None
    g = torch.randn(k.shape, generator=torch.Generator().manual_seed(3)).to(device)
    y, lse = attention_forward(k, v, s, dict(BLOCK_M=32, BLOCK_N=16, num_warps=1, num_stages=1),
                               window=window, delay=d, delays=delays)
    cfg = split_config((32, 16, 1, 1), (16, 16, 1, 1))
    runs = [attention_backward(k, v, y, lse, s, g, cfg, window=window, delay=d, delays=delays) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    dk, dv, part = runs[0]
    dscale = part.sum(dim=(0, 2)) if s.dim() == 1 else part
    k64, v64, s64 = (t.detach().double().cpu().requires_grad_() for t in (k, v, s))
    y64 = band_attention_loop(k64, v64, s64, band[1], delay)
    refs = torch.autograd.grad(y64, (k64, v64, s64), g.double().cpu())
    assert rel_err(y, y64) <= tolerances.FP32
    for name, got, want in zip(("k", "v", "scale"), (dk, dv, dscale), refs):
        assert rel_err(got, want) <= tolerances.FP32, (name, rel_err(got, want))


@pytest.mark.parametrize("device", kernel_devices())
def test_rows_without_keys_are_zero_with_zero_gradients(device, nan_outputs):
    """delay 10 and window 11 in a sequence of 12: rows 0-9 see nothing, rows 10 and 11 see keys 0 and
    0-1; the empty rows' outputs and scale gradients, and the gradients of the values nobody sees, are
    exactly 0."""
    k, v, s = (t.to(device).requires_grad_() for t in _inputs(1, 2, 12, 16, "row"))
    y = mosaic_attention(k, v, s, window=11, delay=10)
    dk, dv, ds = torch.autograd.grad(y, (k, v, s), torch.ones_like(y))
    assert torch.all(y[:, :, :10] == 0) and torch.all(ds[:, :10] == 0)
    assert torch.all(dv[:, :, 2:] == 0)
    assert torch.all(dv[:, :, :2] != 0)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("band", [(37, 9, 2), (50, None, (4, 30))], ids=_ids)
def test_kernel_dropout_over_a_band_matches_the_loop_with_its_mask(device, band, nan_outputs):
    T, window, delay = band
    k, v, s = _inputs(2, 2, T, 16, "batch_row")
    p, gen_seed = 0.3, 5
    kd, vd, sd = (t.to(device).requires_grad_() for t in (k, v, s))
    y = mosaic_attention(kd, vd, sd, window=window, delay=_delay(delay, device), dropout_p=p,
                         generator=torch.Generator(device=device).manual_seed(gen_seed))
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(device)
    grads = torch.autograd.grad(y, (kd, vd, sd), g)
    from mosaic_kernels._triton_common import draw_seed

    seed = draw_seed(torch.Generator(device=device).manual_seed(gen_seed), torch.device(device))
    keep = dropout_keep_mask(seed, 2, 2, T, T, p).cpu()
    k64, v64, s64 = (t.double().requires_grad_() for t in (k, v, s))
    y64 = band_attention_loop(k64, v64, s64, window, delay, keep=keep, dropout_p=dropout_threshold(p) / 2 ** 16)
    refs = torch.autograd.grad(y64, (k64, v64, s64), g.double().cpu())
    assert rel_err(y, y64) <= tolerances.FP32
    for got, want in zip(grads, refs):
        assert rel_err(got, want) <= tolerances.FP32


@pytest.mark.parametrize("device", kernel_devices())
def test_large_bandwidth_over_a_band_is_finite(device):
    """Unit keys with per-row scale e^10 (the Library's clamp): y and dv as exact as float32 resolves
    such logits (tolerances.saturated_softmax), dk finite (its true value is ~0: README.md)."""
    k, v, _ = _inputs(1, 2, 40, 16, "head", norm=1.0)
    s = torch.full((2, 40), math.exp(10.0))
    kd, vd = k.to(device).requires_grad_(), v.to(device).requires_grad_()
    y = mosaic_attention(kd, vd, s.to(device), window=12, delay=3)
    dk, dv = torch.autograd.grad(y, (kd, vd), torch.ones_like(y))
    k64, v64 = k.double().requires_grad_(), v.double().requires_grad_()
    y64 = band_attention_loop(k64, v64, s.double(), 12, 3)
    (dv64,) = torch.autograd.grad(y64, (v64,), torch.ones_like(y64))
    bound = tolerances.saturated_softmax(16, math.exp(10.0))
    assert torch.isfinite(dk).all() and rel_err(y, y64) <= bound and rel_err(dv, dv64) <= bound


def test_bad_band_arguments_name_themselves():
    k = torch.zeros(2, 3, 8, 4)
    for kwargs, msg in ((dict(window=-1), "window must be None or an int >= 0"), (dict(window=True), "window"),
                        (dict(window=2.5), "window"), (dict(delay=-1), "delay must be an int >= 0"),
                        (dict(delay=1.5), "delay"), (dict(delay=torch.tensor([1, 2, 3])), r"shape \(2,\)"),
                        (dict(delay=torch.tensor([1.0, 2.0])), "integer tensor"),
                        (dict(scale=torch.ones(3, 7)), r"\(3, 8\)"), (dict(scale=torch.ones(2, 3, 8, 1)), "scale"),
                        (dict(scale=torch.ones(3, 8, dtype=torch.int64)), "floating-point"),
                        (dict(window=torch.tensor([1, 2])), r"window must be .* shape \(3,\) \(one per head\)"),
                        (dict(window=torch.tensor([1.0, 2.0, 3.0])), "window"),
                        (dict(delay=torch.ones(2, 2, dtype=torch.int64)), r"\(2,\) \(one per sequence\) or \(2, 3\)"),
                        (dict(band=torch.ones(2, 3)), r"band must be an integer tensor of shape \(2, 3, 2\)"),
                        (dict(band=torch.ones(2, 3, 2)), "band must be an integer"),
                        (dict(band=torch.ones(2, 3, 2, dtype=torch.int32), window=4), "either band or window")):
        with pytest.raises(ValueError, match=msg):
            mosaic_attention(k, k, **kwargs)


def test_band_table_is_the_bands_of_every_sequence_and_head():
    """band_table: None is T, an int or a per-head window broadcast over sequences, an int, per-sequence or
    per-(sequence, head) delay; mosaic_attention(band=) gives what window= and delay= give."""
    from mosaic_kernels.attention import band_table

    table = band_table(torch.tensor([4, 4, 9]), torch.tensor([[1, 1, 5], [1, 1, 7]]), 2, 3, 20)
    assert table.dtype == torch.int32 and table.tolist() == [[[4, 1], [4, 1], [9, 5]], [[4, 1], [4, 1], [9, 7]]]
    assert band_table(None, torch.tensor([3, 6]), 2, 3, 20).tolist() == [[[20, 3]] * 3, [[20, 6]] * 3]
    assert band_table(5, 2, 1, 2, 20).tolist() == [[[5, 2], [5, 2]]]
    k, v, s = _inputs(2, 3, 20, 8, "head")
    windows, delays = torch.tensor([4, 4, 30]), torch.tensor([[1, 1, 5], [1, 1, 7]])
    table = band_table(windows, delays, 2, 3, 20)
    assert torch.equal(mosaic_attention(k, v, s, window=windows, delay=delays), mosaic_attention(k, v, s, band=table))
    assert torch.equal(reference.mosaic_attention(k, v, s, window=windows, delay=delays),
                       reference.mosaic_attention(k, v, s, window=table[..., 0], delay=table[..., 1]))


@pytest.mark.parametrize("device", kernel_devices())
def test_a_band_table_takes_its_own_long_backward_tiles(device, monkeypatch):
    """The GPU's plan (the interpreter's tiles are fixed): long rows take the two-kernel backward, from
    BWD_BAND_TABLE_TILES when DELAYS is a (B, H, 2) table and BWD_LONG_TILES otherwise (per-sequence delays
    included); attention_backward passes which one it has."""
    from mosaic_kernels.attention import band_table
    from mosaic_kernels.attention import function as fn

    monkeypatch.setattr(fn, "interpreter_enabled", lambda: False)
    assert fn._bwd_config(8192, 64, dtype=torch.bfloat16) == fn.split_config(*fn.BWD_LONG_TILES[64])
    assert fn._bwd_config(8192, 64, band_table=True, dtype=torch.bfloat16) == fn.split_config(*fn.BWD_BAND_TABLE_TILES[64])
    assert "key" not in fn._bwd_config(512, 64, band_table=True, dtype=torch.bfloat16)  # short rows: the one-kernel plan
    monkeypatch.undo()
    seen = []
    monkeypatch.setattr(fn, "_bwd_config", lambda *a, **kw: seen.append(kw) or dict(BLOCK_P=16, BLOCK_Q=16, BLOCK_K=16,
                                                                                   num_warps=1, num_stages=1))
    k, v, s = (t.to(device) for t in _inputs(2, 3, 20, 8, "row", strided=False))
    for delays in (band_table(torch.tensor([4, 4, 30], device=device), 1, 2, 3, 20, device),
                   torch.tensor([1, 5], dtype=torch.int32, device=device)):
        y, lse = fn.attention_forward(k, v, s, dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1), delays=delays)
        fn.attention_backward(k, v, y, lse, s, torch.ones_like(y), delays=delays)
    assert seen == [{"band_table": True, "dtype": k.dtype}, {"band_table": False, "dtype": k.dtype}]


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("head_group", [1, 4, 5, 6])
def test_head_groups_change_the_launch_order_not_the_results(device, head_group):
    """Programs taken in groups of heads (``HEAD_GROUP``, the last group smaller where 6 heads do not divide):
    the forward and both split-backward kernels write every output once, bitwise as in the plain grid order
    (6 heads: one group), on a band table with a per-row scale and on the strictly causal op."""
    from mosaic_kernels.attention import band_table
    from mosaic_kernels.attention.function import attention_backward, attention_forward, split_config

    k, v, s = (t.to(device) for t in _inputs(2, 3, 40, 16, "batch_row"))
    g = torch.randn(k.shape, generator=torch.Generator().manual_seed(5)).to(device)
    table = band_table(torch.tensor([6, 6, 40], device=device), torch.tensor([[1, 1, 3], [1, 1, 9]], device=device),
                       2, 3, 40, device)
    for delays, scale in ((table, s), (None, s[0, :, 0].contiguous())):
        runs = []
        for group in (6, head_group):
            fwd = dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1, HEAD_GROUP=group)
            y, lse = attention_forward(k, v, scale, fwd, delays=delays)
            bwd = split_config((16, 16, 1, 1), (16, 16, 1, 1))
            bwd["key"]["HEAD_GROUP"] = bwd["query"]["HEAD_GROUP"] = group
            runs.append((y, lse, *attention_backward(k, v, y, lse, scale, g, bwd, delays=delays)))
        for a, b in zip(*runs):
            assert torch.equal(a, b)


# --------------------------------------------------------------------------- on the GPU, every dtype

GPU_BANDS = [((301, 100, 1), "head"), ((301, None, 37), "batch_row"), ((517, 70, (1, 200)), "batch_row"),
             ((255, 80, 64), "row"), ((301, (100, 301), ((1, 37), (1, 5))), "batch_row")]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [48, 96, 128, 256], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("band, scale_kind", GPU_BANDS, ids=[f"{_ids(b)}-{s}" for b, s in GPU_BANDS])
def test_gpu_every_dtype_and_head_dim(dtype, D, band, scale_kind, nan_outputs):
    T, window, delay = band
    k, v, s = _inputs(2, 2, T, D, scale_kind, dtype=dtype)
    tol = tolerances.FP32 if dtype == torch.float32 else tolerances.LOW_PRECISION
    _check(k, v, s, window, delay, tol, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("band", [(4097, 256, 1), (4097, None, 100), (8192, 256, (1, 64)),
                                  (4097, (256, 4097), ((1, 64), (1, 200)))], ids=_ids)
def test_gpu_long_sequences_use_the_two_kernel_plan(band, nan_outputs):
    """From T = 2048 at D = 64 the backward runs as two kernels: bf16 against a float64 dense oracle. The
    last band is v2's two memories in one call (a short-term head, a long-term head with its own delays)."""
    T, window, delay = band
    k, v, s = _inputs(2, 2, T, 64, "batch_row", dtype=torch.bfloat16)
    kd, vd, sd = (t.cuda().requires_grad_() for t in (k, v, s))
    window = _delay(window, "cuda")
    y = mosaic_attention(kd, vd, sd, window=window, delay=_delay(delay, "cuda"))
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).cuda().to(y.dtype)
    grads = torch.autograd.grad(y, (kd, vd, sd), g)
    k64, v64, s64 = (t.detach().double().cuda().requires_grad_() for t in (k, v, s))
    y64 = reference.mosaic_attention(k64, v64, s64, window=window, delay=_delay(delay, "cuda"))
    refs = torch.autograd.grad(y64, (k64, v64, s64), g.double())
    assert rel_err(y, y64) <= tolerances.LOW_PRECISION
    for got, want in zip(grads, refs):
        assert rel_err(got, want) <= tolerances.LOW_PRECISION


@pytest.mark.gpu
def test_gpu_band_backward_is_deterministic():
    k, v, s = (t.cuda().requires_grad_() for t in _inputs(2, 4, 3000, 64, "batch_row", dtype=torch.bfloat16))
    g = torch.randn(k.shape, device="cuda", dtype=torch.bfloat16)
    runs = [torch.autograd.grad(mosaic_attention(k, v, s, window=256, delay=torch.tensor([1, 70], device="cuda")),
                                (k, v, s), g) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
