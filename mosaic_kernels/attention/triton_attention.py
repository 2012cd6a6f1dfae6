"""Triton kernels of the strictly causal Gaussian-kernel attention with queries = keys.

Layouts: k, v, dy are (B, H, T, D) with any strides; y, dk, dv are contiguous (B, H, T, D); the
log-sum-exp (base 2) and delta = rowsum(dy * y) are (B, H, T) float32.

Forward: program (m-block, b*h) keeps an online softmax over key blocks. Key blocks entirely before
the query block are unmasked; only the blocks overlapping it (the "diagonal") apply ``j < t``.
Rows with no key (t = 0) write zeros and a log-sum-exp of 0 (never -inf, so the backward stays finite).

Backward: program (p-block, b*h) owns positions P = [p0, p0 + BLOCK_P). Position j in P is a key for
every later query t > j (key role: dv_j and the key part of dk_j, looping over query blocks t >= p0),
and a query over every earlier key (query role: the query part of dk_t, looping over key blocks
j < p0 + BLOCK_P). Both parts of dk are summed in registers and written once: no atomics, and every
program does about T / BLOCK of work whatever its position. d(scale) partials come from the query
role, which visits each (t, j) pair exactly once.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _attn_fwd_kernel(
    K, V, Y, LSE, SCALE,
    skb, skh, skt, skd, svb, svh, svt, svd,
    H, T, D,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    # Heaviest query blocks first: block m visits m + 1 key-block groups.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)                       # (BM,)  query positions t
    offs_n = tl.arange(0, BLOCK_N)                                 # (BN,)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    qk_scale = tl.load(SCALE + h).to(tl.float32) * 1.4426950408889634  # natural exp -> exp2

    q = tl.load(k_base + offs_m[:, None] * skt + offs_d[None, :] * skd,
                mask=(offs_m[:, None] < T) & dmask[None, :], other=0.0)         # (BM, D)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)

    # Key blocks strictly before the query block: every key visible, no mask.
    for start_n in range(0, start_m, BLOCK_N):
        cols = start_n + offs_n
        kb = tl.load(k_base + cols[:, None] * skt + offs_d[None, :] * skd, mask=dmask[None, :], other=0.0)
        vb = tl.load(v_base + cols[:, None] * svt + offs_d[None, :] * svd, mask=dmask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(kb), input_precision=PRECISION) * qk_scale        # (BM, BN)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision=PRECISION)
        m_i = m_new

    # Diagonal key blocks: keep j < t (and j < T).
    for start_n in range(start_m, tl.minimum(start_m + BLOCK_M, T), BLOCK_N):
        cols = start_n + offs_n
        cmask = cols < T
        kb = tl.load(k_base + cols[:, None] * skt + offs_d[None, :] * skd,
                     mask=cmask[:, None] & dmask[None, :], other=0.0)
        vb = tl.load(v_base + cols[:, None] * svt + offs_d[None, :] * svd,
                     mask=cmask[:, None] & dmask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(kb), input_precision=PRECISION) * qk_scale
        s = tl.where(cols[None, :] < offs_m[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)               # rows with no key yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision=PRECISION)
        m_i = m_new

    has_key = l_i > 0.0
    inv_l = tl.where(has_key, 1.0 / tl.where(has_key, l_i, 1.0), 0.0)
    y = acc * inv_l[:, None]
    lse = tl.where(has_key, m_i + tl.log2(tl.where(has_key, l_i, 1.0)), 0.0)
    rmask = offs_m < T
    out = pid_bh * T + offs_m
    tl.store(LSE + out, lse, mask=rmask)
    tl.store(Y + out[:, None] * D + offs_d[None, :], y.to(Y.dtype.element_ty),
             mask=rmask[:, None] & dmask[None, :])


@triton.jit
def _attn_bwd_kernel(
    K, V, DY, LSE, DELTA, SCALE, DK, DV, PART_SCALE,
    skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
    H, T, D,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    p0 = pid_p * BLOCK_P
    offs_p = p0 + tl.arange(0, BLOCK_P)                             # (BP,) the positions owned here
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    pmask = offs_p < T
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    dy_base = DY + b * sdb + h * sdh
    row_base = pid_bh * T
    scale = tl.load(SCALE + h).to(tl.float32)
    qk_scale = scale * 1.4426950408889634

    pm2 = pmask[:, None] & dmask[None, :]
    k_p = tl.load(k_base + offs_p[:, None] * skt + offs_d[None, :] * skd, mask=pm2, other=0.0)   # (BP, D)
    v_p = tl.load(v_base + offs_p[:, None] * svt + offs_d[None, :] * svd, mask=pm2, other=0.0)
    dy_p = tl.load(dy_base + offs_p[:, None] * sdt + offs_d[None, :] * sdd, mask=pm2, other=0.0)
    lse_p = tl.load(LSE + row_base + offs_p, mask=pmask, other=0.0)
    delta_p = tl.load(DELTA + row_base + offs_p, mask=pmask, other=0.0)

    dk = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    dscale = tl.zeros((BLOCK_P,), dtype=tl.float32)

    # ---- key role: queries t > j for j in P, over query blocks starting at p0 ----
    offs_q = tl.arange(0, BLOCK_Q)
    for start_q in range(p0, T, BLOCK_Q):
        rows = start_q + offs_q                                                  # (BQ,) queries t
        rmask = rows < T
        q = tl.load(k_base + rows[:, None] * skt + offs_d[None, :] * skd,
                    mask=rmask[:, None] & dmask[None, :], other=0.0)             # (BQ, D)
        dy = tl.load(dy_base + rows[:, None] * sdt + offs_d[None, :] * sdd,
                     mask=rmask[:, None] & dmask[None, :], other=0.0)
        lse = tl.load(LSE + row_base + rows, mask=rmask, other=float("inf"))  # p = 0 past T
        delta = tl.load(DELTA + row_base + rows, mask=rmask, other=0.0)
        sT = tl.dot(k_p, tl.trans(q), input_precision=PRECISION) * qk_scale    # (BP, BQ) ~ <k_j, k_t>
        if start_q < p0 + BLOCK_P:  # diagonal: keep j < t (masked before exp2, so nothing overflows)
            sT = tl.where(offs_p[:, None] < rows[None, :], sT, float("-inf"))
        pT = tl.exp2(sT - lse[None, :])
        dv += tl.dot(pT.to(dy.dtype), dy, input_precision=PRECISION)
        dpT = tl.dot(v_p, tl.trans(dy), input_precision=PRECISION)              # (BP, BQ) = <v_j, dy_t>
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=PRECISION)

    # ---- query role: keys j < t for t in P, over key blocks up to the end of P ----
    offs_k = tl.arange(0, BLOCK_K)
    for start_k in range(0, tl.minimum(p0 + BLOCK_P, T), BLOCK_K):
        cols = start_k + offs_k                                                  # (BK,) keys j
        cmask = cols < T
        kb = tl.load(k_base + cols[:, None] * skt + offs_d[None, :] * skd,
                     mask=cmask[:, None] & dmask[None, :], other=0.0)
        vb = tl.load(v_base + cols[:, None] * svt + offs_d[None, :] * svd,
                     mask=cmask[:, None] & dmask[None, :], other=0.0)
        s = tl.dot(k_p, tl.trans(kb), input_precision=PRECISION)                # (BP, BK) = <k_t, k_j>
        s2 = s * qk_scale
        if start_k + BLOCK_K > p0:                                               # diagonal: keep j < t
            s2 = tl.where(cols[None, :] < offs_p[:, None], s2, float("-inf"))
        p = tl.exp2(s2 - lse_p[:, None])
        dp = tl.dot(dy_p, tl.trans(vb), input_precision=PRECISION)
        ds = p * (dp - delta_p[:, None])
        dscale += tl.sum(ds * s, 1)
        dk += tl.dot(ds.to(kb.dtype), kb, input_precision=PRECISION)

    out = (row_base + offs_p[:, None]) * D + offs_d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=pm2)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=pm2)
    tl.store(PART_SCALE + pid_bh * tl.num_programs(0) + pid_p, tl.sum(tl.where(pmask, dscale, 0.0), 0))
