"""tools.attention_rounding: its written-out backward is the op's (checked against autograd of the
float64 reference), and the emulated roundings change the results by about bf16's unit roundoff."""
from __future__ import annotations

import torch

from mosaic_kernels import reference
from tools import attention_rounding


def test_written_out_backward_matches_autograd_of_the_reference():
    g = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(2, 3, 64, 16, generator=g, dtype=torch.float64), dim=-1)
    k = (3.0 * keys).requires_grad_()
    v = torch.randn(2, 3, 64, 16, generator=g, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 3, 64, 16, generator=g, dtype=torch.float64)
    y_ref = reference.mosaic_attention(k, v)
    dk_ref, dv_ref = torch.autograd.grad(y_ref, (k, v), dy)
    exact = attention_rounding.attention_with_grads(k.detach(), v.detach(), dy)
    y, dk, dv = exact
    # float64 throughout; sums of at most 64 terms of well-scaled products: 1e-12 is ~1e4 ulps of room.
    for got, want in ((y, y_ref), (dk, dk_ref), (dv, dv_ref)):
        assert ((got - want).norm() / want.norm()).item() < 1e-12
    # Rounding P and dS to bf16 (8 mantissa bits, unit roundoff 2^-9 ~ 2e-3 per entry) moves every
    # result, by a relative amount of that order: above 1e-4 and below 2e-2 (10x the roundoff).
    rounded = attention_rounding.attention_with_grads(k.detach(), v.detach(), dy, round_probs=True)
    for got, want in zip(rounded, exact):
        err = ((got - want).norm() / want.norm()).item()
        assert 1e-4 < err < 2e-2
