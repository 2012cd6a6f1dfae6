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

from .triton_attention import _adaptive_scales, _coefficients, _count_power, _row_band, _row_counts

LN2 = tl.constexpr(0.6931471805599453)  # a plain float global fails to compile on GPU (Triton >= 3.x); the interpreter allows it


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
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    tl.store(OUT + row * T + t, _adaptive_scales(B0, B1, ALPHA, h, t, window, delay, UNCONSTRAINED), mask=t < T)


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
