"""Triton kernels of the persistent-memory retrieval: softmax attention of every query row over
P learned (key, value) slots that the whole batch shares, with optional dropout on the slot
probabilities and a per-head output multiplier.

Layouts: q and dy are (B, H, T, D) with any strides; the slots MK, MV and their gradients are
contiguous (H, P, D); y is written into a contiguous (B, T, H, D) buffer (the layout the output
projection reads, so merging the heads is free); dq is contiguous (B, H, T, D); the log-sum-exp
(base 2) and delta = rowsum(dy * y) are (B, H, T) float32.

Dropout: the keep mask of (b, h, t, slot j) is one hash of counter t * P + j keyed by (seed, b, h)
(_triton_common._keep_tile_hash), computed in each tile's own layout; the forward and both backward
kernels regenerate it whatever their tiles.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton_common import _hash_key, _keep_tile_hash, _keep_tile_hash_transposed

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _row_block_indices(H, T, D, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (row block, b*h) of the forward and dq kernels: (pid_bh, b, h, rows (BM,) positions t,
    offs_n (BN,), offs_d (BD,), dmask = offs_d < D, rmask = rows < T)."""
    pid_bh = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    return pid_bh, pid_bh // H, pid_bh % H, rows, tl.arange(0, BLOCK_N), offs_d, offs_d < D, rows < T


@triton.jit
def _slots_fwd_kernel(
    Q, MK, MV, Y, LSE, C, SEED,
    sqb, sqh, sqt, sqd,
    H, T, P, D, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_P: tl.constexpr,
    PRECISION: tl.constexpr, DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr,
):
    pid_bh, b, h, rows, offs_n, offs_d, dmask, rmask = _row_block_indices(H, T, D, BLOCK_M, BLOCK_N, BLOCK_D)
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqt + offs_d[None, :] * sqd,
                mask=rmask[:, None] & dmask[None, :], other=0.0)            # (BM, D)
    mk_base = MK + h * P * D
    mv_base = MV + h * P * D
    if DROPOUT:
        key = _hash_key(tl.load(SEED) + pid_bh)             # the (b, h) stream

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(0, P, BLOCK_N):
        cols = start_n + offs_n                                          # (BN,) slots j
        cmask = cols < P
        kb = tl.load(mk_base + cols[:, None] * D + offs_d[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
        vb = tl.load(mv_base + cols[:, None] * D + offs_d[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(kb), input_precision=PRECISION) * LOG2E    # (BM, BN), base 2
        if not EVEN_P:
            s = tl.where(cmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)                                 # the normaliser sees every slot
        if DROPOUT:
            p = tl.where(_keep_tile_hash(key, rows, cols, P, THRESHOLD), p, 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision=PRECISION)
        m_i = m_new

    mult = tl.load(C + h) * keep_scale
    y = acc * (mult / l_i)[:, None]
    tl.store(LSE + pid_bh * T + rows, m_i + tl.log2(l_i), mask=rmask)
    # Y is (B, T, H, D) contiguous.
    tl.store(Y + ((b * T + rows[:, None]) * H + h) * D + offs_d[None, :], y.to(Y.dtype.element_ty),
             mask=rmask[:, None] & dmask[None, :])


@triton.jit
def _slots_bwd_dkdv_kernel(
    Q, MK, MV, DY, LSE, DELTA, C, SEED, DMK, DMV,
    sqb, sqh, sqt, sqd, sdb, sdh, sdt, sdd,
    B, H, T, P, D, keep_scale,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr,
):
    # Program (slot block, head) owns BLOCK_P slots and loops over every query row of every batch
    # element, so each slot gradient is summed in registers and written once (no atomics).
    pid_p = tl.program_id(0)
    h = tl.program_id(1)
    p0 = pid_p * BLOCK_P
    slots = p0 + tl.arange(0, BLOCK_P)                                   # (BP,) slots j
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    sm2 = (slots[:, None] < P) & dmask[None, :]
    k_s = tl.load(MK + (h * P + slots[:, None]) * D + offs_d[None, :], mask=sm2, other=0.0)   # (BP, D)
    v_s = tl.load(MV + (h * P + slots[:, None]) * D + offs_d[None, :], mask=sm2, other=0.0)
    g = tl.load(C + h) * keep_scale                                       # d(out)/d(p z v) per element
    dk = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    offs_q = tl.arange(0, BLOCK_Q)
    for b in range(0, B):
        bh = b * H + h
        q_base = Q + b * sqb + h * sqh
        dy_base = DY + b * sdb + h * sdh
        if DROPOUT:
            key = _hash_key(tl.load(SEED) + bh)
        for start_q in range(0, T, BLOCK_Q):
            rows = start_q + offs_q                                      # (BQ,) positions t
            rmask = rows < T
            m2 = rmask[:, None] & dmask[None, :]
            q = tl.load(q_base + rows[:, None] * sqt + offs_d[None, :] * sqd, mask=m2, other=0.0)     # (BQ, D)
            dy = tl.load(dy_base + rows[:, None] * sdt + offs_d[None, :] * sdd, mask=m2, other=0.0)
            lse = tl.load(LSE + bh * T + rows, mask=rmask, other=float("inf"))   # p = 0 past T
            delta = tl.load(DELTA + bh * T + rows, mask=rmask, other=0.0)
            sT = tl.dot(k_s, tl.trans(q), input_precision=PRECISION) * LOG2E      # (BP, BQ)
            pT = tl.exp2(sT - lse[None, :])
            dpT = tl.dot(v_s, tl.trans(dy), input_precision=PRECISION)            # (BP, BQ) = <v_j, dy_t>
            if DROPOUT:
                keepT = _keep_tile_hash_transposed(key, rows, slots, P, THRESHOLD)
                dpT = tl.where(keepT, dpT, 0.0)
                dv += tl.dot(tl.where(keepT, pT, 0.0).to(dy.dtype), dy, input_precision=PRECISION)
            else:
                dv += tl.dot(pT.to(dy.dtype), dy, input_precision=PRECISION)
            dsT = pT * (dpT * g - delta[None, :])
            dk += tl.dot(dsT.to(q.dtype), q, input_precision=PRECISION)
    out = (h * P + slots[:, None]) * D + offs_d[None, :]
    tl.store(DMK + out, dk.to(DMK.dtype.element_ty), mask=sm2)
    tl.store(DMV + out, (dv * g).to(DMV.dtype.element_ty), mask=sm2)


@triton.jit
def _slots_bwd_dq_kernel(
    Q, MK, MV, DY, LSE, DELTA, C, SEED, DQ, PART_C,
    sqb, sqh, sqt, sqd, sdb, sdh, sdt, sdd,
    H, T, P, D, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_P: tl.constexpr,
    PRECISION: tl.constexpr, DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr,
):
    # Program (row block, b*h): dq over every slot, and this block's share of d(out multiplier),
    # sum_t <dy_t, y_t / c_h>, accumulated from the same products (exact even when c_h = 0).
    pid_bh, b, h, rows, offs_n, offs_d, dmask, rmask = _row_block_indices(H, T, D, BLOCK_M, BLOCK_N, BLOCK_D)
    m2 = rmask[:, None] & dmask[None, :]
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqt + offs_d[None, :] * sqd, mask=m2, other=0.0)
    dy = tl.load(DY + b * sdb + h * sdh + rows[:, None] * sdt + offs_d[None, :] * sdd, mask=m2, other=0.0)
    lse = tl.load(LSE + pid_bh * T + rows, mask=rmask, other=0.0)
    delta = tl.load(DELTA + pid_bh * T + rows, mask=rmask, other=0.0)
    mk_base = MK + h * P * D
    mv_base = MV + h * P * D
    g = tl.load(C + h) * keep_scale
    if DROPOUT:
        key = _hash_key(tl.load(SEED) + pid_bh)             # the (b, h) stream
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    u = tl.zeros((BLOCK_M,), dtype=tl.float32)                           # sum_j p z <dy, v_j>
    for start_n in range(0, P, BLOCK_N):
        cols = start_n + offs_n
        cmask = cols < P
        kb = tl.load(mk_base + cols[:, None] * D + offs_d[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
        vb = tl.load(mv_base + cols[:, None] * D + offs_d[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(kb), input_precision=PRECISION) * LOG2E
        if not EVEN_P:
            s = tl.where(cmask[None, :], s, float("-inf"))
        p = tl.exp2(s - lse[:, None])                                     # (BM, BN)
        dp = tl.dot(dy, tl.trans(vb), input_precision=PRECISION)          # (BM, BN) = <dy_t, v_j>
        if DROPOUT:
            dp = tl.where(_keep_tile_hash(key, rows, cols, P, THRESHOLD), dp, 0.0)
        u += tl.sum(p * dp, 1)
        ds = p * (dp * g - delta[:, None])
        dq += tl.dot(ds.to(kb.dtype), kb, input_precision=PRECISION)
    tl.store(DQ + (pid_bh * T + rows[:, None]) * D + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=m2)
    tl.store(PART_C + pid_bh * tl.num_programs(0) + tl.program_id(0), tl.sum(tl.where(rmask, u, 0.0), 0) * keep_scale)
