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

With RATES, LD holds rates r and the log-decays are ``log_decay_t = -|r_t + bias_h|`` (Memory Mosaics
v2's parametrisation, bias (H,) float32), formed here as each tile is loaded. The backward kernel (one
program per (b, h)) gives each log's gradient (with RATES, the rates' and this row's share of the bias').
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _stable_gate_decay_kernel(
    LG, LD,                       # (B, H, T) log-gates, log-decays or rates (any float dtype, any strides)
    BIAS,                         # (H,) float32 rate bias when RATES (else never read)
    OUT,                          # (2, B, H, T) float32, contiguous: gates, then decays
    H, T, BHT,                    # BHT = B * H * T, the offset of the decays in OUT
    s_gb, s_gh, s_gt, s_db, s_dh, s_dt,
    RATES: tl.constexpr, BLOCK_T: tl.constexpr,
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
    if RATES:
        bias = tl.load(BIAS + h).to(tl.float64)
    for start in range(0, T, BLOCK_T):
        t = start + lanes
        inside = t < T
        ld = tl.load(ld_row + t * s_dt, mask=inside, other=0.0).to(tl.float64)
        if RATES:
            # -|r + b| rounded as the float32 PyTorch expression would be, then widened: both paths then
            # scan the same log-decays. Outside the row the 0 of the load must stay 0 (L's padding).
            ld = tl.where(inside, -tl.abs(ld.to(tl.float32) + bias.to(tl.float32)).to(tl.float64), 0.0)
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


@triton.jit
def _stable_gate_decay_bwd_kernel(
    GRAD,                         # (2, B, H, T) float32 gradient of the pair, any strides
    PAIR,                         # (2, B, H, T) float32, contiguous: the forward's gates and decays
    LD,                           # (B, H, T) rates when RATES (else never read), any strides
    BIAS,                         # (H,) float32 when RATES
    DLG, DLD,                     # (B, H, T) each, contiguous, in the dtypes of the log-gates and log-decays (rates)
    DBIAS_PARTS,                  # (B, H) float32 when RATES: this row's share of d bias
    H, T, BHT,
    s_qp, s_qb, s_qh, s_qt, s_db, s_dh, s_dt,
    RATES: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # With M held fixed (the keys do not depend on it): d log_gate = gate * d gate and d log_decay = decay *
    # d decay; with RATES, d r = -sign(r + b) d log_decay (0 where r + b = 0, as torch's abs) and this
    # program's partial of d b the sum of d r over its row, in a fixed order.
    row = tl.program_id(0)
    b = row // H
    h = row % H
    lanes = tl.arange(0, BLOCK_T)
    acc = tl.zeros([BLOCK_T], tl.float32)
    if RATES:
        bias = tl.load(BIAS + h)
    for start in range(0, T, BLOCK_T):
        t = start + lanes
        inside = t < T
        q = GRAD + b * s_qb + h * s_qh + t * s_qt
        gate = tl.load(PAIR + row * T + t, mask=inside, other=0.0)
        decay = tl.load(PAIR + BHT + row * T + t, mask=inside, other=0.0)
        d_lg = gate * tl.load(q, mask=inside, other=0.0)
        d_ld = decay * tl.load(q + s_qp, mask=inside, other=0.0)
        if RATES:
            z = tl.load(LD + b * s_db + h * s_dh + t * s_dt, mask=inside, other=0.0).to(tl.float32) + bias
            d_ld = tl.where(z > 0, -d_ld, tl.where(z < 0, d_ld, 0.0))
            acc += d_ld
        tl.store(DLG + row * T + t, d_lg.to(DLG.dtype.element_ty), mask=inside)
        tl.store(DLD + row * T + t, d_ld.to(DLD.dtype.element_ty), mask=inside)
    if RATES:
        tl.store(DBIAS_PARTS + row, tl.sum(acc, 0))
