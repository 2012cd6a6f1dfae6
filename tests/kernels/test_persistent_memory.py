"""persistent_memory: reference and Triton kernels against a dense float64 softmax, dropout, errors."""
from __future__ import annotations

import pytest
import torch

from mosaic_kernels import persistent_memory, reference
from mosaic_kernels._triton_common import dropout_keep_mask, dropout_threshold
from tests import tolerances
from tests.conftest import kernel_devices, rel_err
from tests.oracles import slots_dense


def _inputs(B, H, T, D, P, *, strided=True, seed=0, key_norm=7.39):
    g = torch.Generator().manual_seed(seed)
    if strided:  # a transposed view of a (B, T, H*D) tensor
        q = torch.randn(B, T, H, D, generator=g).transpose(1, 2)
    else:
        q = torch.randn(B, H, T, D, generator=g)
    q = torch.nn.functional.normalize(q, dim=-1) * key_norm  # the model's P-mem key norm at init
    mk = torch.randn(H, P, D, generator=g) / D ** 0.5
    mv = torch.randn(H, P, D, generator=g) / D ** 0.5
    c = torch.rand(H, generator=g) + 0.3
    return q, mk, mv, c


def _seed_of(device, generator_seed):
    """The dropout seed the op draws from a generator seeded with ``generator_seed``."""
    g = torch.Generator(device=device).manual_seed(generator_seed)
    return torch.randint(0, 1 << 62, (1,), device=device, dtype=torch.int64, generator=g)


def _check(q, mk, mv, c, *, device, dtype, tol, dropout_p=0.0, fn=persistent_memory):
    qd = q.to(device, dtype).requires_grad_()
    kd, vd = (t.to(device, dtype).requires_grad_() for t in (mk, mv))
    cd = c.to(device).requires_grad_() if isinstance(c, torch.Tensor) else c
    gen = torch.Generator(device=device).manual_seed(5)
    y = fn(qd, kd, vd, out_scale=cd, dropout_p=dropout_p, generator=gen)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    inputs = [qd, kd, vd] + ([cd] if isinstance(c, torch.Tensor) else [])
    grads = torch.autograd.grad(y, inputs, dy)
    keep = None
    if dropout_p > 0:
        B, H, T, _ = q.shape
        keep = dropout_keep_mask(_seed_of(device, 5), B, H, T, mk.shape[1], dropout_p, "hash").cpu()
        dropout_p = dropout_threshold(dropout_p) / 2 ** 16  # the p the kernels really use
    ref_in = [t.detach().cpu().double().requires_grad_() for t in inputs]
    c64 = ref_in[3] if isinstance(c, torch.Tensor) else c
    y64 = slots_dense(*ref_in[:3], c64, keep=keep, dropout_p=dropout_p)
    refs = torch.autograd.grad(y64, ref_in, dy.cpu().double())
    assert y.shape == q.shape and y.dtype == dtype
    assert torch.isfinite(y).all()
    assert rel_err(y, y64) <= tol, rel_err(y, y64)
    for name, got, want in zip(("q", "slot_keys", "slot_values", "out_scale"), grads, refs):
        assert torch.isfinite(got).all(), name
        assert rel_err(got, want) <= tol, (name, rel_err(got, want))
    return y, grads


def test_reference_matches_dense_float64():
    q, mk, mv, c = _inputs(2, 3, 9, 8, 11)
    _check(q, mk, mv, c, device="cpu", dtype=torch.float32, tol=tolerances.FP32, fn=reference.persistent_memory)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("B,H,T,D,P", [(1, 1, 1, 16, 1), (2, 3, 17, 48, 37), (2, 2, 33, 20, 64), (1, 2, 40, 64, 100)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
def test_kernel_matches_dense(device, B, H, T, D, P, strided, nan_outputs):
    q, mk, mv, c = _inputs(B, H, T, D, P, strided=strided)
    _check(q, mk, mv, c, device=device, dtype=torch.float32, tol=tolerances.FP32)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("out_scale", [None, 0.7, "zero"], ids=["none", "float", "zero_tensor"])
def test_kernel_out_scale_forms(device, out_scale):
    """A float or no multiplier; a zero multiplier still gets its exact gradient (not 0/0)."""
    q, mk, mv, _ = _inputs(2, 3, 20, 16, 24)
    c = torch.zeros(3) if out_scale == "zero" else out_scale
    _check(q, mk, mv, c, device=device, dtype=torch.float32, tol=tolerances.FP32)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("P", [40, 64], ids=lambda p: f"P{p}")
def test_kernel_dropout_matches_dense_with_its_mask(device, P, nan_outputs):
    """Output and gradients equal the dense softmax with the kernels' keep mask (regenerated, not stored)."""
    q, mk, mv, c = _inputs(2, 3, 21, 16, P)
    _check(q, mk, mv, c, device=device, dtype=torch.float32, tol=tolerances.FP32, dropout_p=0.3)


@pytest.mark.parametrize("device", kernel_devices())
def test_dropout_mask_statistics(device):
    """Keep rate 1 - p, independent streams per (batch, head) and per seed, same mask for the same seed."""
    B, H, T, P, p = 2, 3, 64, 200, 0.3
    seed = torch.tensor([12345], dtype=torch.int64, device=device)
    keep = dropout_keep_mask(seed, B, H, T, P, p, "hash").cpu()
    n = keep.numel()
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    # Two streams agree on a fraction p^2 + (1-p)^2 = 0.58 of positions if independent.
    agree = (keep[0, 0] == keep[0, 1]).float().mean().item()
    assert abs(agree - 0.58) < 0.03, agree
    assert abs((keep[0, 0] == keep[1, 0]).float().mean().item() - 0.58) < 0.03
    # Neighbouring slots and rows are not correlated.
    assert abs((keep[..., :-1] == keep[..., 1:]).float().mean().item() - 0.58) < 0.02
    assert abs((keep[:, :, :-1] == keep[:, :, 1:]).float().mean().item() - 0.58) < 0.02
    other = dropout_keep_mask(seed + 1, B, H, T, P, p, "hash").cpu()
    assert abs((keep == other).float().mean().item() - 0.58) < 0.02
    assert torch.equal(keep, dropout_keep_mask(seed, B, H, T, P, p, "hash").cpu())


@pytest.mark.parametrize("device", kernel_devices())
def test_dropout_same_generator_state_same_result(device):
    q, mk, mv, c = _inputs(1, 2, 16, 16, 32)
    outs = []
    for _ in range(2):
        gen = torch.Generator(device=device).manual_seed(3)
        outs.append(persistent_memory(q.to(device), mk.to(device), mv.to(device), dropout_p=0.5, generator=gen))
    assert torch.equal(outs[0], outs[1])
    gen = torch.Generator(device=device).manual_seed(4)
    assert not torch.equal(outs[0], persistent_memory(q.to(device), mk.to(device), mv.to(device),
                                                      dropout_p=0.5, generator=gen))


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_output_layout_merges_heads_for_free(device):
    q, mk, mv, _ = _inputs(2, 3, 5, 16, 8)
    y = persistent_memory(q.to(device), mk.to(device), mv.to(device))
    merged = y.transpose(1, 2).reshape(2, 5, 48)
    assert merged.data_ptr() == y.data_ptr() and merged.is_contiguous()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("B,H,T,D,P", [(2, 4, 300, 64, 2688), (1, 2, 257, 96, 500), (1, 2, 130, 128, 1000),
                                       (1, 2, 64, 256, 300), (2, 3, 100, 16, 77)], ids=lambda v: str(v))
@pytest.mark.parametrize("dropout_p", [0.0, 0.05], ids=["nodrop", "drop"])
def test_gpu_low_precision(dtype, B, H, T, D, P, dropout_p, nan_outputs):
    q, mk, mv, c = _inputs(B, H, T, D, P)
    _check(q, mk, mv, c, device="cuda", dtype=dtype, tol=tolerances.LOW_PRECISION, dropout_p=dropout_p)


@pytest.mark.gpu
def test_gpu_float32_model_shape():
    q, mk, mv, c = _inputs(2, 12, 512, 64, 2688)
    _check(q, mk, mv, c, device="cuda", dtype=torch.float32, tol=tolerances.FP32, dropout_p=0.05)


@pytest.mark.gpu
def test_gpu_backward_bitwise_deterministic():
    q, mk, mv, c = (t.cuda() for t in _inputs(4, 12, 512, 64, 2688))
    results = []
    for _ in range(2):
        ins = [t.bfloat16().requires_grad_() for t in (q, mk, mv)] + [c.clone().requires_grad_()]
        y = persistent_memory(*ins[:3], out_scale=ins[3], dropout_p=0.05,
                              generator=torch.Generator(device="cuda").manual_seed(0))
        results.append(torch.autograd.grad(y, ins, torch.ones_like(y)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def _bad(**over):
    q, mk, mv, _ = _inputs(1, 2, 4, 8, 5)
    args = dict(q=q, slot_keys=mk, slot_values=mv)
    args.update(over)
    kw = {k: args.pop(k) for k in ("out_scale", "dropout_p", "generator") if k in args}
    return lambda: persistent_memory(args["q"], args["slot_keys"], args["slot_values"], **kw)


@pytest.mark.parametrize("over,match", [
    (dict(q=torch.randn(2, 4, 8)), "q must have 4 dimensions"),
    (dict(q=torch.ones(1, 2, 4, 8, dtype=torch.int32)), "q must have dtype"),
    (dict(slot_keys=torch.randn(3, 5, 8)), r"slot_keys must have shape \(2, P, 8\)"),
    (dict(slot_values=torch.randn(2, 6, 8)), "slot_values must have slot_keys' shape"),
    (dict(slot_keys=torch.randn(2, 5, 8, dtype=torch.float64)), "slot_keys must have the dtype of q"),
    (dict(slot_values=[1.0]), "slot_values must be a torch.Tensor"),
    (dict(out_scale=torch.ones(3)), r"out_scale must have shape \(2,\)"),
    (dict(dropout_p=1.0), r"dropout_p must be a float in \[0, 1\)"),
    (dict(dropout_p=-0.1), r"dropout_p must be a float in \[0, 1\)"),
    (dict(generator=3), "generator must be a torch.Generator"),
], ids=["q-rank", "q-dtype", "keys-shape", "values-shape", "keys-dtype", "values-type", "scale-shape",
        "p-one", "p-negative", "generator"])
def test_bad_arguments_raise(over, match):
    with pytest.raises(ValueError, match=match):
        _bad(**over)()
