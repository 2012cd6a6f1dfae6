"""torch.library registration: opcheck of the four ops' custom ops, and torch.compile(fullgraph=True)
through the leaky average, the attention and the persistent memory."""
from __future__ import annotations

import pytest
import torch

from mosaic_kernels import leaky_average, mosaic_attention, persistent_memory
from mosaic_kernels.attention.function import attention_fwd
from mosaic_kernels.leaky_average.function import leaky_average_fwd
from mosaic_kernels.peek_ahead.function import peek_ahead_fwd
from tests import tolerances
from tests.conftest import kernel_devices, rel_err


def _pair(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 16, generator=g).transpose(1, 2).to(device)  # strided (B, H, T, D)
    decay = torch.tensor([0.0, 0.5, 0.9], device=device)
    scale = torch.tensor([1.0, 2.0, 0.5], device=device)
    return x, decay, scale


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("heads_last", [False, True], ids=["contig_out", "heads_last_out"])
def test_opcheck_leaky_average(device, normalize, heads_last):
    x, decay, scale = _pair(device)
    torch.library.opcheck(leaky_average_fwd, (x.requires_grad_(), decay, scale, normalize, 1e-12, 0, heads_last),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("heads_last", [False, True], ids=["contig_out", "heads_last_out"])
@pytest.mark.parametrize("threshold", [0, 6554], ids=["nodrop", "drop"])  # 6554 = round(0.1 * 2^16)
def test_opcheck_attention(device, heads_last, threshold):
    x, _, scale = _pair(device)
    v = torch.randn_like(x)
    seed = torch.tensor([17], dtype=torch.int64, device=device)
    torch.library.opcheck(attention_fwd, (x.requires_grad_(), v.requires_grad_(), scale, heads_last, seed, threshold),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("device", kernel_devices())
def test_opcheck_peek_ahead(device):
    x, mix, scale = _pair(device)
    torch.library.opcheck(peek_ahead_fwd, (x.requires_grad_(), mix, scale, 1e-12),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def _block(x, w_decay, w_scale, v, heads_last=False):
    k = leaky_average(x, torch.sigmoid(w_decay), normalize=True, scale=w_scale.exp(), heads_last=heads_last)
    y = mosaic_attention(k, v, heads_last=heads_last)
    B, H, T, D = y.shape
    return y.transpose(1, 2).reshape(B, T, H * D).square().sum()  # the model's head merge


def _assert_block_matches_eager(compiled, x, v, params, heads_last):
    """_block and its compiled version: the same value and gradients (x and params) to tolerances.FP32."""
    results = []
    for fn in (_block, compiled):
        xs = x.detach().clone().requires_grad_()
        ps = [p.detach().clone().requires_grad_() for p in params]
        out = fn(xs, *ps, v, heads_last)
        results.append((out, *torch.autograd.grad(out, (xs, *ps))))
    for eager, comp in zip(*results):
        assert rel_err(comp, eager) < tolerances.FP32, tuple(x.shape)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("heads_last", [False, True], ids=["contig_out", "heads_last_out"])
def test_compile_fullgraph_matches_eager(device, heads_last):
    """Both ops inside one compiled function: no graph break (fullgraph=True), same values and gradients."""
    torch._dynamo.reset()
    x, _, _ = _pair(device)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
    params = [torch.tensor([0.1, -0.3, 2.0], device=device), torch.tensor([0.0, 0.5, -0.5], device=device)]
    backend = "inductor" if device == "cuda" else "aot_eager"  # inductor on CPU needs a C++ toolchain
    compiled = torch.compile(_block, fullgraph=True, backend=backend)
    _assert_block_matches_eager(compiled, x, v, params, heads_last)


@pytest.mark.parametrize("device", kernel_devices())
def test_compile_dynamic_sequence_length(device):
    """Compiled with symbolic shapes (the ops' fake implementations see a symbolic T): three
    sequence lengths through one compiled function, each equal to eager."""
    torch._dynamo.reset()
    params = [torch.tensor([0.1, -0.3, 2.0], device=device), torch.tensor([0.0, 0.5, -0.5], device=device)]
    backend = "inductor" if device == "cuda" else "aot_eager"
    compiled = torch.compile(_block, fullgraph=True, backend=backend, dynamic=True)
    g = torch.Generator().manual_seed(3)
    for T in (16, 40, 72):
        x = torch.randn(2, T, 3, 16, generator=g).transpose(1, 2).to(device)
        v = torch.randn(2, 3, T, 16, generator=g).to(device)
        _assert_block_matches_eager(compiled, x, v, params, True)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("threshold", [0, 3277], ids=["nodrop", "drop"])
def test_opcheck_persistent_memory(device, threshold):
    from mosaic_kernels.persistent_memory.function import slots_fwd

    x, _, scale = _pair(device)
    mk, mv = (torch.randn(3, 24, 16, device=device).requires_grad_() for _ in range(2))
    seed = torch.tensor([7], dtype=torch.int64, device=device)
    torch.library.opcheck(slots_fwd, (x.requires_grad_(), mk, mv, scale.requires_grad_(), seed, threshold),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def _pmem(q, mk, mv, w_scale, p):
    return persistent_memory(q, mk, mv, out_scale=w_scale.exp(), dropout_p=p).square().sum()


@pytest.mark.parametrize("device", kernel_devices())
def test_compile_fullgraph_persistent_memory(device):
    """No graph break; without dropout the same values and gradients as eager; with dropout it runs."""
    torch._dynamo.reset()
    q, _, _ = _pair(device)
    g = torch.Generator().manual_seed(2)
    mk, mv = (torch.randn(3, 24, 16, generator=g).to(device) for _ in range(2))
    w = torch.tensor([0.1, -0.3, 0.2], device=device)
    backend = "inductor" if device == "cuda" else "aot_eager"
    compiled = torch.compile(_pmem, fullgraph=True, backend=backend)
    results = []
    for fn in (_pmem, compiled):
        ins = [t.detach().clone().requires_grad_() for t in (q, mk, mv, w)]
        out = fn(*ins, 0.0)
        results.append((out, *torch.autograd.grad(out, ins)))
    for eager, comp in zip(*results):
        assert rel_err(comp, eager) < tolerances.FP32
    ins = [t.detach().clone().requires_grad_() for t in (q, mk, mv, w)]
    out = compiled(*ins, 0.3)
    assert all(torch.isfinite(t).all() for t in (out, *torch.autograd.grad(out, ins)))

