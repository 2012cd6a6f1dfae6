"""torch.library registration: opcheck of every registered op's forward custom op, and
torch.compile(fullgraph=True) through the leaky average, the attention and the persistent memory."""
from __future__ import annotations

import pytest
import torch

from mosaic_kernels import leaky_average, mosaic_attention, persistent_memory, registry
from mosaic_kernels.registry import OPS
from tests import tolerances
from tests.conftest import kernel_devices, rel_err


def _pair(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 16, generator=g).transpose(1, 2).to(device)  # strided (B, H, T, D)
    decay = torch.tensor([0.0, 0.5, 0.9], device=device)
    scale = torch.tensor([1.0, 2.0, 0.5], device=device)
    return x, decay, scale


def _opcheck_cases():
    """(op name, case id) of every forward custom op of the registry (mosaic_kernels.registry)."""
    return [(op.name, case_id) for op in OPS for case_id, _ in op.opcheck_cases("cpu")]


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("name, case_id", _opcheck_cases(), ids=[f"{n}-{c}" for n, c in _opcheck_cases()])
def test_opcheck(device, name, case_id):
    """torch.library.opcheck of each op's forward custom op: its schema, its registered autograd and its
    fake implementation, on the registry's sample arguments."""
    op = registry.op(name)
    args = dict(op.opcheck_cases(device))[case_id]
    torch.library.opcheck(op.forward_op(), args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


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
def test_compile_with_the_call_plans_on(device, monkeypatch):
    """With the cached call plans on (the default), a compiled function still traces the registered ops (no
    graph break: the plans are eager only) and equals the eager calls, which run through them."""
    import importlib

    import mosaic_kernels.attention as attention
    from mosaic_kernels import _common

    monkeypatch.setattr(_common, "CALL_PLANS", True)
    torch._dynamo.reset()
    x, _, _ = _pair(device)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
    params = [torch.tensor([0.1, -0.3, 2.0], device=device), torch.tensor([0.0, 0.5, -0.5], device=device)]
    compiled = torch.compile(_block, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")
    _assert_block_matches_eager(compiled, x, v, params, True)
    assert attention._PLANS and importlib.import_module("mosaic_kernels.leaky_average")._PLANS  # made by eager calls


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



def _band(k, v, row_scale, delays):
    return mosaic_attention(k, v, row_scale, window=5, delay=delays).square().sum()


@pytest.mark.parametrize("device", kernel_devices())
def test_compile_fullgraph_band_and_row_scale(device):
    """The band (a window, per-sequence delays) and a per-row scale through torch.compile(fullgraph=True):
    no graph break, the values and gradients of eager."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(4)
    k, v = (torch.randn(2, 3, 21, 16, generator=g).to(device) for _ in range(2))
    s = (torch.rand(2, 3, 21, generator=g) + 0.5).to(device)
    delays = torch.tensor([1, 4], device=device)
    backend = "inductor" if device == "cuda" else "aot_eager"
    compiled = torch.compile(_band, fullgraph=True, backend=backend)
    results = []
    for fn in (_band, compiled):
        ins = [t.detach().clone().requires_grad_() for t in (k, v, s)]
        out = fn(*ins, delays)
        results.append((out, *torch.autograd.grad(out, ins)))
    for eager, comp in zip(*results):
        assert rel_err(comp, eager) < tolerances.FP32
