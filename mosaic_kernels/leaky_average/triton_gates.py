"""Triton kernel of ``stable_gate_and_decay``: the stabilised (gate, decay) pair of a gated scan, in one launch.

Layout: log_gate and log_decay are (B, H, T) with any strides (the model passes transposed views of its
(B, T, H) projections); the pair is written as one contiguous (2, B, H, T) float32 tensor, gates first.
One program owns one (b, h) row and walks its time axis BLOCK_T steps at a time, in float64:

    L_t     = sum_{s <= t} log_decay_s                    (cumulative log-decay)
    M_t     = L_t + max_{s <= t} (log_gate_s - L_s)        (the running log-scale)
    gate_t  = exp(log_gate_t - M_t)
    decay_t = exp(min(log_decay_t + M_{t-1} - M_t, 0)),   decay_0 = 1

exactly the PyTorch path's formulas (leaky_average/__init__.py), so both give the same pair to float32
rounding. M_{t-1} needs the running maximum up to t-1: each tile scans the row shifted by one step as
well (lane t reads log_gate_{t-1} - L_{t-1}); the maximum is idempotent, so the shifted element that
the carry already holds does no harm. Carries between tiles: L at the tile's end and the maximum so far.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _stable_gate_decay_kernel(
    LG, LD,                       # (B, H, T) log-gates, log-decays (any float dtype, any strides)
    OUT,                          # (2, B, H, T) float32, contiguous: gates, then decays
    H, T, BHT,                    # BHT = B * H * T, the offset of the decays in OUT
    s_gb, s_gh, s_gt, s_db, s_dh, s_dt,
    BLOCK_T: tl.constexpr,
):
    row = tl.program_id(0)        # (b, h) = divmod(row, H)
    b = row // H
    h = row % H
    lg_row = LG + b * s_gb + h * s_gh
    ld_row = LD + b * s_db + h * s_dh
    out_row = OUT + row * T
    neg_inf = float("-inf")
    cum_carry = tl.zeros((), tl.float64)              # L at the end of the previous tile
    max_carry = tl.full((), neg_inf, tl.float64)      # max_{s < tile start} (log_gate_s - L_s)
    lanes = tl.arange(0, BLOCK_T)
    for start in range(0, T, BLOCK_T):
        t = start + lanes
        inside = t < T
        ld = tl.load(ld_row + t * s_dt, mask=inside, other=0.0).to(tl.float64)
        lg = tl.load(lg_row + t * s_gt, mask=inside, other=neg_inf).to(tl.float64)
        L = cum_carry + tl.cumsum(ld, 0)                                   # L_t
        w = tl.where(inside, lg - L, neg_inf)                              # log_gate_t - L_t
        peak = L + tl.maximum(max_carry, tl.associative_scan(w, 0, _maximum))      # M_t
        # The same for t - 1: lane t reads step t - 1 (L_{t-1} = L_t - log_decay_t).
        has_prev = inside & (t > 0)
        L_prev = L - ld
        lg_prev = tl.load(lg_row + (t - 1) * s_gt, mask=has_prev, other=neg_inf).to(tl.float64)
        w_prev = tl.where(has_prev, lg_prev - L_prev, neg_inf)
        before = L_prev + tl.maximum(max_carry, tl.associative_scan(w_prev, 0, _maximum))   # M_{t-1}
        arg = tl.where(t > 0, ld + before - peak, 0.0)    # <= 0 up to float64 rounding (the min removes it)
        gate = tl.exp((lg - peak).to(tl.float32))
        decay = tl.exp(tl.minimum(arg, 0.0).to(tl.float32))
        tl.store(out_row + t, gate, mask=inside)
        tl.store(out_row + BHT + t, decay, mask=inside)
        cum_carry += tl.sum(ld, 0)
        max_carry = tl.maximum(max_carry, tl.max(w, 0))
