"""Triton kernels of the strictly causal Gaussian-kernel attention with queries = keys.

Layouts: k, v, dy are (B, H, T, D) with any strides; y has a last stride of 1 (the host allocates it
contiguous or heads-last, see _common.empty_heads); dk, dv are contiguous (B, H, T, D); the
log-sum-exp (base 2) and delta = rowsum(dy * y) are (B, H, T) float32.

Forward: program (b*h, m-block) keeps an online softmax over key blocks. Key blocks entirely before
the query block are unmasked; only the blocks overlapping it (the "diagonal") apply ``j < t``.
Rows with no key (t = 0) write zeros and a log-sum-exp of 0 (never -inf, so the backward stays finite).

Backward: positions P = [p0, p0 + BLOCK_P) play two roles. Position j in P is a key for every later
query t > j (key role: dv_j and the key part of dk_j, over query blocks t >= p0), and a query over
every earlier key (query role: the query part of dk_t and the d(scale) terms, over key blocks
j < p0 + BLOCK_P). Each gradient element is written by one program (no atomics), in one of two plans:
- one kernel (short sequences): program (p-block, b*h) runs both roles and sums both parts of dk in
  registers; every program does about T / BLOCK of work whatever its position;
- two kernels (long sequences): the key-role kernel writes dv and its part of dk in float32, then the
  query-role kernel adds its part and writes dk. Each kernel holds fewer live tiles (fewer registers,
  its own tile shape) and launches its heaviest blocks first.
BLOCK_P must be a multiple of BLOCK_Q and BLOCK_K (the diagonal loops cover P exactly).

Dropout (DROPOUT): the probability p_tj is kept when _triton_common._keep_tile's mask of (b, h, row t,
column j) says so, with GROUPS = ceil(T / 8) Philox calls per row, and the kept ones are scaled by
keep_scale = 1 / (1 - p). Every kernel regenerates the mask of the tiles it visits; with z_tj =
keep_tj * keep_scale: y_t = sum_j z_tj p_tj v_j, dv_j = sum_t z_tj p_tj dy_t, and the softmax backward
takes dp_tj = z_tj <dy_t, v_j> (delta_t = <dy_t, y_t> already holds the dropout).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton_common import _keep_tile

LOG2E = 1.4426950408889634


@triton.jit
def _head_and_block(H, REVERSED: tl.constexpr):
    """Program of a (B*H, n_blocks) grid: (pid_bh, b, h, block). REVERSED numbers the blocks from the
    last, so that the heaviest block of every head launches in the first wave."""
    pid_bh = tl.program_id(0)
    block = tl.program_id(1)
    if REVERSED:
        block = tl.num_programs(1) - 1 - block
    return pid_bh, pid_bh // H, pid_bh % H, block


@triton.jit
def _philox_key(SEED, pid_bh, DROPOUT: tl.constexpr):
    """The dropout generator's key of head pid_bh = b*H + h (0 without dropout, never read)."""
    if DROPOUT:
        seed = tl.load(SEED) + pid_bh
    else:
        seed = 0
    return seed


@triton.jit
def _attn_fwd_kernel(
    K, V, Y, LSE, SCALE, SEED,
    skb, skh, skt, skd, svb, svh, svt, svd, syb, syh, syt,
    H, T, D, GROUPS, keep_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr,
):
    # Heaviest query blocks first: block m visits m + 1 key-block groups.
    pid_bh, b, h, pid_m = _head_and_block(H, True)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)                       # (BM,)  query positions t
    offs_n = tl.arange(0, BLOCK_N)                                 # (BN,)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    qk_scale = tl.load(SCALE + h).to(tl.float32) * 1.4426950408889634  # natural exp -> exp2
    seed = _philox_key(SEED, pid_bh, DROPOUT)

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
        l_i = l_i * alpha + tl.sum(p, 1)                                   # the normaliser sees every key
        if DROPOUT:
            p = tl.where(_keep_tile(seed, offs_m, start_n, GROUPS, BLOCK_M, BLOCK_N, THRESHOLD), p, 0.0)
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
        if DROPOUT:
            p = tl.where(_keep_tile(seed, offs_m, start_n, GROUPS, BLOCK_M, BLOCK_N, THRESHOLD), p, 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision=PRECISION)
        m_i = m_new

    has_key = l_i > 0.0
    inv_l = tl.where(has_key, keep_scale / tl.where(has_key, l_i, 1.0), 0.0)   # keep_scale = 1 without dropout
    y = acc * inv_l[:, None]
    lse = tl.where(has_key, m_i + tl.log2(tl.where(has_key, l_i, 1.0)), 0.0)
    rmask = offs_m < T
    out = pid_bh * T + offs_m
    tl.store(LSE + out, lse, mask=rmask)
    tl.store(Y + b * syb + h * syh + offs_m[:, None] * syt + offs_d[None, :], y.to(Y.dtype.element_ty),
             mask=rmask[:, None] & dmask[None, :])


@triton.jit
def _positions(pid_p, T, D, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """Position block pid_p: (p0, offs_p (BP,), offs_d (BD,), dmask (BD,), pmask (BP,), pm2 (BP, BD))."""
    p0 = pid_p * BLOCK_P
    offs_p = p0 + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    pmask = offs_p < T
    return p0, offs_p, offs_d, dmask, pmask, pmask[:, None] & dmask[None, :]


@triton.jit
def _key_role(k_base, dy_base, LSE, DELTA, row_base, k_p, v_p, p0, offs_p, offs_d, dmask, qk_scale, dk, dv,
              skt, skd, sdt, sdd, start, stop, T, seed, GROUPS, keep_scale,
              BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, MASK: tl.constexpr, PRECISION: tl.constexpr,
              DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr):
    """Positions offs_p = [p0, p0 + BP) as keys j, over the query blocks t in [start, stop): add keep_tj p_tj
    dy_t to dv (BP, D; the caller scales it by keep_scale) and ds_tj k_t to dk (BP, D). k_p, v_p: (BP, D).
    The mask j < t applies to every block (MASK="all"), to none ("none"), or to the blocks overlapping P
    ("check", a branch per block)."""
    offs_q = tl.arange(0, BLOCK_Q)
    for start_q in range(start, stop, BLOCK_Q):
        rows = start_q + offs_q                                                  # (BQ,) queries t
        rmask = rows < T
        q = tl.load(k_base + rows[:, None] * skt + offs_d[None, :] * skd,
                    mask=rmask[:, None] & dmask[None, :], other=0.0)             # (BQ, D)
        dy = tl.load(dy_base + rows[:, None] * sdt + offs_d[None, :] * sdd,
                     mask=rmask[:, None] & dmask[None, :], other=0.0)
        lse = tl.load(LSE + row_base + rows, mask=rmask, other=float("inf"))  # p = 0 past T
        delta = tl.load(DELTA + row_base + rows, mask=rmask, other=0.0)
        sT = tl.dot(k_p, tl.trans(q), input_precision=PRECISION) * qk_scale    # (BP, BQ) ~ <k_j, k_t>
        if MASK == "all":  # masked before exp2, so nothing overflows
            sT = tl.where(offs_p[:, None] < rows[None, :], sT, float("-inf"))
        elif MASK == "check":
            if start_q < p0 + BLOCK_P:
                sT = tl.where(offs_p[:, None] < rows[None, :], sT, float("-inf"))
        pT = tl.exp2(sT - lse[None, :])
        if DROPOUT:
            keepT = tl.trans(_keep_tile(seed, rows, p0, GROUPS, BLOCK_Q, BLOCK_P, THRESHOLD))   # (BP, BQ)
            dv += tl.dot(tl.where(keepT, pT, 0.0).to(dy.dtype), dy, input_precision=PRECISION)
        else:
            dv += tl.dot(pT.to(dy.dtype), dy, input_precision=PRECISION)
        dpT = tl.dot(v_p, tl.trans(dy), input_precision=PRECISION)              # (BP, BQ) = <v_j, dy_t>
        if DROPOUT:
            dpT = tl.where(keepT, dpT * keep_scale, 0.0)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _query_role(k_base, v_base, k_p, dy_p, lse_p, delta_p, p0, offs_p, offs_d, dmask, qk_scale, dk, dscale,
                skt, skd, svt, svd, start, stop, T, seed, GROUPS, keep_scale,
                BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, MASK: tl.constexpr, PRECISION: tl.constexpr,
                DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr):
    """Positions offs_p = [p0, p0 + BP) as queries t, over the key blocks j in [start, stop): add ds_tj k_j
    to dk (BP, D) and ds_tj <k_t, k_j> to dscale (BP,). k_p, dy_p: (BP, D). MASK as in _key_role."""
    offs_k = tl.arange(0, BLOCK_K)
    for start_k in range(start, stop, BLOCK_K):
        cols = start_k + offs_k                                                  # (BK,) keys j
        cmask = cols < T
        kb = tl.load(k_base + cols[:, None] * skt + offs_d[None, :] * skd,
                     mask=cmask[:, None] & dmask[None, :], other=0.0)
        vb = tl.load(v_base + cols[:, None] * svt + offs_d[None, :] * svd,
                     mask=cmask[:, None] & dmask[None, :], other=0.0)
        s = tl.dot(k_p, tl.trans(kb), input_precision=PRECISION)                # (BP, BK) = <k_t, k_j>
        s2 = s * qk_scale
        if MASK == "all":
            s2 = tl.where(cols[None, :] < offs_p[:, None], s2, float("-inf"))
        elif MASK == "check":
            if start_k + BLOCK_K > p0:
                s2 = tl.where(cols[None, :] < offs_p[:, None], s2, float("-inf"))
        p = tl.exp2(s2 - lse_p[:, None])
        dp = tl.dot(dy_p, tl.trans(vb), input_precision=PRECISION)              # (BP, BK) = <dy_t, v_j>
        if DROPOUT:
            keep = _keep_tile(seed, offs_p, start_k, GROUPS, BLOCK_P, BLOCK_K, THRESHOLD)
            dp = tl.where(keep, dp * keep_scale, 0.0)
        ds = p * (dp - delta_p[:, None])
        dscale += tl.sum(ds * s, 1)
        dk += tl.dot(ds.to(kb.dtype), kb, input_precision=PRECISION)
    return dk, dscale


@triton.jit
def _attn_bwd_kernel(
    K, V, DY, LSE, DELTA, SCALE, SEED, DK, DV, PART_SCALE,
    skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
    H, T, D, GROUPS, keep_scale,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr,
):
    # One program per (position block, b*h), both roles: about T / BLOCK of work each.
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    p0, offs_p, offs_d, dmask, pmask, pm2 = _positions(pid_p, T, D, BLOCK_P, BLOCK_D)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    dy_base = DY + b * sdb + h * sdh
    row_base = pid_bh * T
    scale = tl.load(SCALE + h).to(tl.float32)
    qk_scale = scale * 1.4426950408889634
    seed = _philox_key(SEED, pid_bh, DROPOUT)

    k_p = tl.load(k_base + offs_p[:, None] * skt + offs_d[None, :] * skd, mask=pm2, other=0.0)   # (BP, D)
    v_p = tl.load(v_base + offs_p[:, None] * svt + offs_d[None, :] * svd, mask=pm2, other=0.0)
    dy_p = tl.load(dy_base + offs_p[:, None] * sdt + offs_d[None, :] * sdd, mask=pm2, other=0.0)
    lse_p = tl.load(LSE + row_base + offs_p, mask=pmask, other=0.0)
    delta_p = tl.load(DELTA + row_base + offs_p, mask=pmask, other=0.0)
    dk = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    dscale = tl.zeros((BLOCK_P,), dtype=tl.float32)

    # One loop per role with a branch per block: fewer registers here than a loop per mask (measured).
    dk, dv = _key_role(k_base, dy_base, LSE, DELTA, row_base, k_p, v_p, p0, offs_p, offs_d, dmask, qk_scale, dk, dv,
                       skt, skd, sdt, sdd, p0, T, T, seed, GROUPS, keep_scale,
                       BLOCK_P, BLOCK_Q, "check", PRECISION, DROPOUT, THRESHOLD)
    dk, dscale = _query_role(k_base, v_base, k_p, dy_p, lse_p, delta_p, p0, offs_p, offs_d, dmask, qk_scale, dk,
                             dscale, skt, skd, svt, svd, 0, tl.minimum(p0 + BLOCK_P, T), T, seed, GROUPS, keep_scale,
                             BLOCK_P, BLOCK_K, "check", PRECISION, DROPOUT, THRESHOLD)

    out = (row_base + offs_p[:, None]) * D + offs_d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=pm2)
    tl.store(DV + out, (dv * keep_scale).to(DV.dtype.element_ty), mask=pm2)
    tl.store(PART_SCALE + pid_bh * tl.num_programs(0) + pid_p, tl.sum(tl.where(pmask, dscale, 0.0), 0))


@triton.jit
def _split_bwd_block(K, SCALE, skb, skh, skt, skd, H, T, D, REVERSED: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """Prologue of the two split-backward kernels, program (b*h, position block): (b, h, p0, offs_p,
    offs_d, dmask, pmask, pm2 as in _positions, k_base, pid_bh, the head's scale, k_p = the block's
    keys (BP, D))."""
    pid_bh, b, h, pid_p = _head_and_block(H, REVERSED)
    p0, offs_p, offs_d, dmask, pmask, pm2 = _positions(pid_p, T, D, BLOCK_P, BLOCK_D)
    k_base = K + b * skb + h * skh
    scale = tl.load(SCALE + h).to(tl.float32)
    k_p = tl.load(k_base + offs_p[:, None] * skt + offs_d[None, :] * skd, mask=pm2, other=0.0)   # (BP, D)
    return b, h, p0, offs_p, offs_d, dmask, pmask, pm2, k_base, pid_bh, scale, k_p


@triton.jit
def _attn_bwd_key_kernel(
    K, V, DY, LSE, DELTA, SCALE, SEED, DV, DK_KEY,
    skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
    H, T, D, GROUPS, keep_scale,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr,
):
    # Split backward, first kernel: program (b*h, position block) as keys. Block 0 has the most
    # queries after it; with b*h on grid axis 0 every head's heaviest block is launched first.
    b, h, p0, offs_p, offs_d, dmask, pmask, pm2, k_base, pid_bh, scale, k_p = _split_bwd_block(
        K, SCALE, skb, skh, skt, skd, H, T, D, False, BLOCK_P, BLOCK_D)
    row_base = pid_bh * T
    dy_base = DY + b * sdb + h * sdh
    qk_scale = scale * 1.4426950408889634
    v_p = tl.load(V + b * svb + h * svh + offs_p[:, None] * svt + offs_d[None, :] * svd, mask=pm2, other=0.0)
    dk = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    seed = _philox_key(SEED, pid_bh, DROPOUT)
    dk, dv = _key_role(k_base, dy_base, LSE, DELTA, row_base, k_p, v_p, p0, offs_p, offs_d, dmask, qk_scale, dk, dv,
                       skt, skd, sdt, sdd, p0, tl.minimum(p0 + BLOCK_P, T), T, seed, GROUPS, keep_scale,
                       BLOCK_P, BLOCK_Q, "all", PRECISION, DROPOUT, THRESHOLD)
    dk, dv = _key_role(k_base, dy_base, LSE, DELTA, row_base, k_p, v_p, p0, offs_p, offs_d, dmask, qk_scale, dk, dv,
                       skt, skd, sdt, sdd, p0 + BLOCK_P, T, T, seed, GROUPS, keep_scale,
                       BLOCK_P, BLOCK_Q, "none", PRECISION, DROPOUT, THRESHOLD)
    out = (row_base + offs_p[:, None]) * D + offs_d[None, :]
    tl.store(DV + out, (dv * keep_scale).to(DV.dtype.element_ty), mask=pm2)
    tl.store(DK_KEY + out, dk, mask=pm2)                  # float32, before the scale


@triton.jit
def _attn_bwd_query_kernel(
    K, V, DY, LSE, DELTA, SCALE, SEED, DK_KEY, DK, PART_SCALE,
    skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd,
    H, T, D, GROUPS, keep_scale,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr,
):
    # Split backward, second kernel: program (b*h, position block) as queries; the last block has
    # the most keys before it and is launched first. dk = scale * (query part + DK_KEY), written once.
    b, h, p0, offs_p, offs_d, dmask, pmask, pm2, k_base, pid_bh, scale, k_p = _split_bwd_block(
        K, SCALE, skb, skh, skt, skd, H, T, D, True, BLOCK_P, BLOCK_D)
    row_base = pid_bh * T
    qk_scale = scale * 1.4426950408889634
    dy_p = tl.load(DY + b * sdb + h * sdh + offs_p[:, None] * sdt + offs_d[None, :] * sdd, mask=pm2, other=0.0)
    lse_p = tl.load(LSE + row_base + offs_p, mask=pmask, other=0.0)
    delta_p = tl.load(DELTA + row_base + offs_p, mask=pmask, other=0.0)
    dk = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    dscale = tl.zeros((BLOCK_P,), dtype=tl.float32)
    v_base = V + b * svb + h * svh
    seed = _philox_key(SEED, pid_bh, DROPOUT)
    dk, dscale = _query_role(k_base, v_base, k_p, dy_p, lse_p, delta_p, p0, offs_p, offs_d, dmask, qk_scale, dk,
                             dscale, skt, skd, svt, svd, 0, p0, T, seed, GROUPS, keep_scale,
                             BLOCK_P, BLOCK_K, "none", PRECISION, DROPOUT, THRESHOLD)
    dk, dscale = _query_role(k_base, v_base, k_p, dy_p, lse_p, delta_p, p0, offs_p, offs_d, dmask, qk_scale, dk,
                             dscale, skt, skd, svt, svd, p0, tl.minimum(p0 + BLOCK_P, T), T, seed, GROUPS, keep_scale,
                             BLOCK_P, BLOCK_K, "all", PRECISION, DROPOUT, THRESHOLD)
    out = (row_base + offs_p[:, None]) * D + offs_d[None, :]
    dk += tl.load(DK_KEY + out, mask=pm2, other=0.0)
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=pm2)
    # PART_SCALE is (B*H, n_blocks), one partial per position block.
    tl.store(PART_SCALE + pid_bh * tl.num_programs(1) + p0 // BLOCK_P, tl.sum(tl.where(pmask, dscale, 0.0), 0))
