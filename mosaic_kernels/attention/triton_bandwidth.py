"""Triton kernels of ``row_bandwidth``: the per-row scale ``beta(n_t) = beta1 n_t^alpha + beta0`` of a band.

n_t is how many keys row t of the band attention sees: keys lo_t <= j <= hi_t with hi_t = t - delay and
lo_t = max(t - window, 0), so n_t = max(hi_t - lo_t + 1, 0), computed from t here (no count tensor is
read). beta0, beta1, alpha are (H,) float32; the scale is (R, H, T) float32, contiguous, with R = B when
each sequence has its own delay (DELAYS, int32 (B,)) or band (BAND_TABLE: DELAYS is the (B, H, 2) int32
table of (window, delay) per sequence and head) and R = 1 otherwise. n^alpha is exp2(alpha log2 n),
and 0 where n = 0 (such rows read no key; their scale is beta0).

Backward: one program per head sums, over every row it owns, in a fixed order (deterministic):
    d beta0 = sum g,   d beta1 = sum g n^alpha,   d alpha = sum g beta1 n^alpha ln n      (n > 0)
with g the scale's gradient (any strides), into a (3, H) float32 tensor.

UNCONSTRAINED: the three (H,) inputs are unconstrained parameters p0, p1, pa and the kernels use
beta0 = softplus(p0), beta1 = softplus(p1), alpha = sigmoid(pa) (a model's usual parametrisation: three
elementwise launches each way fewer); the backward then returns the gradients of p0, p1, pa, the sums above
times softplus' = sigmoid(p0), sigmoid(p1) and sigmoid' = sigmoid(pa) sigmoid(-pa).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_attention import _row_band

LN2 = tl.constexpr(0.6931471805599453)  # a plain float global fails to compile on GPU (Triton >= 3.x); the interpreter allows it


@triton.jit
def _row_counts(t, window, delay):
    # Keys max(t - window, 0) .. t - delay: how many (0 when the band is empty). A delay below 0 counts as 0,
    # as in the attention's kernels.
    return tl.maximum(t - tl.maximum(delay, 0) - tl.maximum(t - window, 0) + 1, 0)


@triton.jit
def _count_power(n, alpha):
    # (n^alpha, log2 n) of integer counts, n^alpha = exp2(alpha log2 n) and 0 where n = 0 (log2 n is then 0).
    log2n = tl.log2(tl.maximum(n, 1).to(tl.float32))
    return tl.where(n > 0, tl.exp2(alpha * log2n), 0.0), log2n


@triton.jit
def _sigmoid(x):
    # 1 / (1 + e^-x): e^-x overflows to inf for x < -88 and the quotient is then the exact limit 0.
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _softplus(x):
    # max(x, 0) + log1p(e^-|x|). Triton has no portable log1p: log1p(u) = u log(w) / (w - 1) with w = 1 + u
    # (Goldberg's identity, accurate to a few ulps; w = 1 exactly, u below half an ulp of 1, gives u), so
    # softplus stays relatively accurate where it is tiny (x << 0), as torch's does.
    u = tl.exp(-tl.abs(x))
    w = 1.0 + u
    exact = w == 1.0
    log1p_u = tl.where(exact, u, u * tl.log(w) / tl.where(exact, 1.0, w - 1.0))  # no 0/0 in the branch not taken
    return tl.maximum(x, 0.0) + log1p_u


@triton.jit
def _coefficients(B0, B1, ALPHA, h, UNCONSTRAINED: tl.constexpr):
    # (beta0, beta1, alpha) of head h, and the derivatives of each with respect to its input (1 when the
    # inputs are the coefficients themselves).
    b0 = tl.load(B0 + h)
    b1 = tl.load(B1 + h)
    alpha = tl.load(ALPHA + h)
    if UNCONSTRAINED:
        d0 = _sigmoid(b0)
        d1 = _sigmoid(b1)
        b0 = _softplus(b0)
        b1 = _softplus(b1)
        da = _sigmoid(alpha) * _sigmoid(-alpha)  # sigmoid' = s (1 - s), without 1 - s cancelling near s = 1
        alpha = _sigmoid(alpha)
    else:
        d0 = 1.0
        d1 = 1.0
        da = 1.0
    return b0, b1, alpha, d0, d1, da


@triton.jit
def _bandwidth_fwd_kernel(
    B0, B1, ALPHA,               # (H,) float32
    DELAYS,                      # (B,) int32 when PER_BATCH_DELAY (else never read)
    OUT,                         # (R, H, T) float32, contiguous
    H, T, window, delay,
    PER_BATCH_DELAY: tl.constexpr, BAND_TABLE: tl.constexpr, UNCONSTRAINED: tl.constexpr, BLOCK_T: tl.constexpr,
):
    row = tl.program_id(0)       # r * H + h
    h = row % H
    window, delay = _row_band(DELAYS, row // H, h, H, window, delay, PER_BATCH_DELAY, BAND_TABLE)
    b0, b1, alpha, _, _, _ = _coefficients(B0, B1, ALPHA, h, UNCONSTRAINED)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    n = _row_counts(t, window, delay)
    power, _ = _count_power(n, alpha)
    tl.store(OUT + row * T + t, b1 * power + b0, mask=t < T)


@triton.jit
def _bandwidth_bwd_kernel(
    G,                           # (R, H, T) gradient of the scale, any strides
    B0, B1, ALPHA,               # (H,) float32
    DELAYS,                      # (B,) int32 when PER_BATCH_DELAY
    OUT,                         # (3, H) float32: the gradients of the three inputs
    R, H, T, window, delay,
    s_gr, s_gh, s_gt,
    PER_BATCH_DELAY: tl.constexpr, BAND_TABLE: tl.constexpr, UNCONSTRAINED: tl.constexpr, BLOCK_T: tl.constexpr,
):
    h = tl.program_id(0)
    _, b1, alpha, d0, d1, da = _coefficients(B0, B1, ALPHA, h, UNCONSTRAINED)
    acc0 = tl.zeros([BLOCK_T], tl.float32)
    acc1 = tl.zeros([BLOCK_T], tl.float32)
    acc_a = tl.zeros([BLOCK_T], tl.float32)
    for r in range(0, R):
        w, d = _row_band(DELAYS, r, h, H, window, delay, PER_BATCH_DELAY, BAND_TABLE)
        for start in range(0, T, BLOCK_T):
            t = start + tl.arange(0, BLOCK_T)
            g = tl.load(G + r * s_gr + h * s_gh + t * s_gt, mask=t < T, other=0.0).to(tl.float32)
            n = _row_counts(t, w, d)
            power, log2n = _count_power(n, alpha)
            acc0 += g
            acc1 += g * power
            acc_a += g * power * log2n       # ln n = log2 n * ln 2, applied once below
    tl.store(OUT + h, tl.sum(acc0, 0) * d0)
    tl.store(OUT + H + h, tl.sum(acc1, 0) * d1)
    tl.store(OUT + 2 * H + h, tl.sum(acc_a, 0) * b1 * LN2 * da)
