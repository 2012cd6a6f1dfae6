"""The references keep their stated precision inside torch.autocast.

Their docstrings promise float32 products for 16-bit inputs; autocast would otherwise run those
matmuls in bf16 (it casts the inputs of a matmul down whatever dtype the code asked for). Before the
fix, the model's ``kernels="reference"`` path under bf16 autocast rounded attention logits of size up
to the squared bandwidth to 8 mantissa bits, and a depth-4 language model trained on it fell far
behind its fused twin (REPRODUCTION.md). The outputs must be the same bits with and without autocast:
inside the reference nothing may depend on it.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mosaic_kernels import reference as R


def _inputs():
    g = torch.Generator().manual_seed(0)
    B, H, T, D = 2, 3, 48, 16
    k = F.normalize(torch.randn(B, H, T, D, generator=g), dim=-1) * 8.0  # bandwidth 8: logits up to 64
    v = torch.randn(B, H, T, D, generator=g)
    slots = torch.randn(H, 20, D, generator=g), torch.randn(H, 20, D, generator=g)
    return k.bfloat16(), v.bfloat16(), tuple(s.bfloat16() for s in slots)


CASES = {
    "mosaic_attention": lambda k, v, s: R.mosaic_attention(k, v, torch.tensor([1.0, 0.5, 2.0])),
    "leaky_average": lambda k, v, s: R.leaky_average(v, torch.tensor([0.5, 0.9, 0.99]), normalize=True,
                                                     scale=torch.tensor([1.0, 2.0, 3.0])),
    "peek_ahead_value": lambda k, v, s: R.peek_ahead_value(v, torch.tensor([0.2, 0.5, 0.8]),
                                                           scale=torch.tensor([1.0, 2.0, 0.5])),
    "persistent_memory": lambda k, v, s: R.persistent_memory(k, *s, out_scale=torch.tensor([1.0, 0.5, 2.0])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_is_the_same_inside_autocast(name):
    k, v, slots = _inputs()
    plain = CASES[name](k, v, slots)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = CASES[name](k, v, slots)
    assert inside.dtype == plain.dtype
    assert torch.equal(inside, plain), f"{name}: max difference {(inside.float() - plain.float()).abs().max():.3g}"


def test_reference_gradients_are_the_same_inside_autocast():
    k, v, _ = _inputs()
    grads = []
    for enabled in (False, True):
        kk, vv = k.clone().requires_grad_(), v.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            y = R.mosaic_attention(kk, vv, 2.0)
        y.float().square().sum().backward()
        grads.append((kk.grad, vv.grad))
    assert all(torch.equal(a, b) for a, b in zip(*grads))
