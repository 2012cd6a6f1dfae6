"""The test suite's tolerances, each derived from the numerics it checks.

Every check compares a result with a float64 oracle by the relative RMS error ||out - ref|| / ||ref||
(``tests.conftest.rel_err``). ``u`` is a format's unit roundoff: 2^-24 for float32, 2^-11 for float16,
2^-8 for bfloat16.

Rounding errors of a sum of n terms are at most n * u * sum|terms| whatever the order, and behave
like independent draws on random data, growing as sqrt(n) * u (Higham, "Accuracy and Stability of
Numerical Algorithms", 2nd ed., sections 3.1 and 4.2). CPUs, BLAS builds and Triton versions sum in
different orders (blocked, pairwise, fused multiply-add): a bound below is valid for every order
only when it is derived this way, never when it is read off one machine.
"""
from __future__ import annotations

import math

import torch

U_FP32 = 2.0**-24
U_FP16 = 2.0**-11
U_BF16 = 2.0**-8
# A float32 value a kernel stores into a bf16 tensor: rounded to nearest on the GPU (<= U_BF16 relative),
# truncated by Triton's interpreter (measured 2026-12-05, Triton 3.8: 2,033 of 4,096 normal values differ
# from torch's rounding, by up to one ulp, 2 U_BF16 relative).
STORE_BF16 = 2 * U_BF16

# Float32 kernels and references against float64 on the suite's well-conditioned inputs: unit-normal
# data, T <= 300, D <= 64, logits of magnitude <~ 10, decays in [0, 1], vectors normalised far from 0.
# An output is a chain of rounded sums of at most n ~ T + D <~ 400 terms, so sqrt(n) * u ~ 1.2e-6,
# times a condition number of a few (softmax of O(1) logits, a contracting scan). 1e-5 covers it.
# Measured 2026-11-30 on x86 (torch 2.13, Triton 3.9 interpreter): the largest float32 error of
# the whole suite was 2.1e-6, so the bound has 5x to spare.
FP32 = 1e-5

# The same comparison where float32 gradients of several ops are chained through a model (the fused
# and reference paths of a whole Memory Mosaic, or eager against compiled): the loss gradient
# passes through ~10 ops per layer, each of relative error <~ FP32 above, and a parameter's
# gradient is a sum over B * T positions whose terms partly cancel (condition ~10), hence 10x FP32.
FP32_CHAINED = 1e-4

# bfloat16 and float16 kernels on the GPU, with the oracle fed the same rounded inputs: the output
# is rounded once to 16 bits (<= u/2 = 2e-3 relative for bf16) and a gradient passes through about
# three such roundings (the incoming gradient, the saved output it is recomputed from, its own
# store), so ~3 * 2e-3 = 6e-3 for bf16; float16 (u = 4.9e-4) is 8x tighter. 1e-2 covers both.
LOW_PRECISION = 1e-2


# One elementwise float32 map (an exp, then a few multiplications) applied to a stack of rows and to each row alone:
# ATen's CPU loops take exp from a vector library on whole vectors and from libm on the tail, each within one ulp
# (2 u) of the exact value, so the two exps are at most 2 ulp (4 u) apart; each of the at most three correctly
# rounded multiplications or divisions after it (forward, or backward through the chain rule) may round the
# differing inputs one more ulp apart: 4 u + 3 * 2 u = 10 u. 16 u leaves room. (On a GPU one kernel computes
# every element the same way: equal bits.)
ELEMENTWISE_MAP = 16 * U_FP32


def saturated_softmax(head_dim: int, bandwidth: float, u: float = U_FP32) -> float:
    """Bound on y and dv of a softmax attention whose logits are as large as ``bandwidth``.

    The backward recomputes p = exp(s - lse) from logits s = <k_t, k_j> of magnitude up to
    ``bandwidth`` (= scale * |k|^2). A float32 dot product of ``head_dim`` terms summing to about
    ``bandwidth`` carries an absolute error of ~sqrt(head_dim) * u * bandwidth, and the forward
    and backward may round it differently (other tile shapes, other summation orders), so p, and
    y and dv, which are linear in p, are off by that much relatively. At the Library's clamp,
    bandwidth = e^10 ~ 2.2e4: 5.3e-3 at D = 16 and 1.05e-2 at D = 64. (Measured: 6.2e-4 on an AMD
    EPYC, ~1e-3 on the H200, 0 on a CPU whose two products happened to round alike.)
    """
    return math.sqrt(head_dim) * u * bandwidth


def scale_gradient_magnitudes(k, v, y, dy, scale, mask):
    """Per row (B, H, T), the sum of the absolute values of the terms a softmax attention's scale gradient
    adds up, to bound its low-precision error as any rounded sum's (Higham, section 4.2: the error of a
    sum is at most a few roundings times sum |terms|, whatever their cancellation).

    d(scale)_t = sum_j p_tj (dp_tj - delta_t) s_tj with s_tj = <k_t, k_j>, dp_tj = <dy_t, v_j> and
    delta_t = <dy_t, y_t>, itself a sum (of |dy_t| . |y_t| in absolute terms, y being rounded to 16 bits
    before the backward reads it). The sum over j of p_tj (dp_tj - delta_t) is 0, and the per-head (or
    per-parameter) gradient sums d(scale)_t over B T rows of both signs, so the result can be hundreds of
    times smaller than these magnitudes (8 to 560 times for v2's bandwidth rows, measured on the H100,
    2026-12-06): a relative bound on the result itself cannot be derived. All arguments float64:
    k, v, y, dy (B, H, T, D), scale broadcastable to (B, H, T), mask (T, T) or (B, H, T, T) of visible keys."""
    s = k @ k.transpose(-1, -2)
    logits = (scale[..., None] * s).masked_fill(~mask, float("-inf"))
    p = torch.softmax(logits, -1).nan_to_num(0.0)                                # a row with no key: 0
    dp = dy @ v.transpose(-1, -2)
    delta_abs = (dy.abs() * y.abs()).sum(-1, keepdim=True)
    return (p * (dp.abs() + delta_abs) * s.abs()).sum(-1)
