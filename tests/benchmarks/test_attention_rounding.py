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
    # float64 throughout, sums of at most 64 well-scaled terms, so the two should agree to ~1e-15; but
    # torch's CPU float64 exp is not always that accurate: on 2026-12-01 (torch 2.13, a 2-core Xeon)
    # one process in 12 to 30 returned exp values up to 3.3e-9 off numpy's on this test's inputs, and
    # two calls of the reference then differed by 4e-10. 1e-7 is 30x that, and 10,000x below the bf16
    # effects the tool measures (1e-3), so a wrong backward (errors of order 1) still fails.
    for got, want in ((y, y_ref), (dk, dk_ref), (dv, dv_ref)):
        assert ((got - want).norm() / want.norm()).item() < 1e-7
    # Rounding P and dS to bf16 (8 mantissa bits, unit roundoff 2^-9 ~ 2e-3 per entry) moves every
    # result, by a relative amount of that order: above 1e-4 and below 2e-2 (10x the roundoff).
    rounded = attention_rounding.attention_with_grads(k.detach(), v.detach(), dy, round_probs=True)
    for got, want in zip(rounded, exact):
        err = ((got - want).norm() / want.norm()).item()
        assert 1e-4 < err < 2e-2
