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
j < p0 + BLOCK_P). Each gradient element is written by one program, or by several in a fixed order (no
atomic adds: the results are bitwise reproducible), in one of two plans:
- one kernel (short sequences): program (p-block, b*h) runs both roles and sums both parts of dk in
  registers; every program does about T / BLOCK of work whatever its position;
- two kernels (long sequences): the key-role kernel writes dv and its part of dk in float32, then the
  query-role kernel adds its part and writes dk. Each kernel holds fewer live tiles (fewer registers,
  its own tile shape) and launches its heaviest blocks first.
BLOCK_P must be a multiple of BLOCK_Q and BLOCK_K (the diagonal loops cover P exactly).

Band (BAND): row t sees the keys lo_t <= j <= hi_t with lo_t = t - WINDOW and hi_t = t - delay (delay
DELAY, or DELAYS[b] per batch row with PER_BATCH_DELAY; with BAND_TABLE, DELAYS is a (B, H, 2) int32 table
and (window, delay) = DELAYS[b, h], so heads of different bands share a launch); without BAND the mask is
j < t (delay 1, no window). Every loop visits only the key (or query) blocks that meet the band (_band_blocks,
_band_queries), and masks only the blocks that cross one of its edges; the blocks inside the band of
every row of the program are not masked. The forward and the one-kernel backward walk the band in one
loop with a branch per block (a band a few blocks wide makes short loops, and each loop pays its own
pipeline prologue); the split backward, which serves long rows, walks three ranges (across the lower
edge, inside, across the upper edge). Rows with no key write zeros.

Per-row scale (ROW_SCALE > 0): the logits of row t are scale[b, h, t] <k_t, k_j>; the softmax gradient ds_tj
is multiplied by the scale of its row before it meets the keys, and the scale gradient is written per row
(d scale_t = sum_j ds_tj <k_t, k_j>) into a (B, H, T) buffer. ROW_SCALE = 1: scale is read from SCALE
through the strides sscb, ssch, ssct (zero where the scale is broadcast). ROW_SCALE = 2 or 3 (the adaptive
bandwidth of Memory Mosaics v2, forward only): scale_t = beta1 n_t^alpha + beta0 is computed from the (3, H)
float32 rows (beta0, beta1, alpha) at SCALE (3: unconstrained parameters, softplus, softplus, sigmoid applied) and
n_t, the keys row t sees in its band (_row_counts), as row_bandwidth computes it, and written to ROWS (B, H, T);
the backward reads those scales as ROW_SCALE = 1 (a key-role program visits every query block after it, and
computing each block's scales there cost the backward 14-22% on the H100, against 7% for reading them).
Without ROW_SCALE (0) the scale is SCALE[h] and its gradient is one partial sum per program.

Dropout (DROPOUT): the probability p_tj is kept when _triton_common._keep_tile's mask of (b, h, row t,
column j) says so, with GROUPS = ceil(T / 8) Philox calls per row, and the kept ones are scaled by
keep_scale = 1 / (1 - p). Every kernel regenerates the mask of the tiles it visits; with z_tj =
keep_tj * keep_scale: y_t = sum_j z_tj p_tj v_j, dv_j = sum_t z_tj p_tj dy_t, and the softmax backward
takes dp_tj = z_tj <dy_t, v_j> (delta_t = <dy_t, y_t> already holds the dropout).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton_common import _keep_tile, row_dot

LOG2E = 1.4426950408889634


@triton.jit
def _head_and_block(H, HEAD_GROUP, REVERSED: tl.constexpr):
    """Program of a (B*H, n_blocks) grid: (pid_bh, b, h, block). Programs start in launch order (axis 0
    fastest), taken here as groups of HEAD_GROUP heads (the last group smaller): every block of a group's
    heads before the next group's, the group's heads side by side at each block, so that the programs
    running at once read the keys and values of HEAD_GROUP heads, not of all B*H (L2 reuse at large B*H*T).
    HEAD_GROUP = B*H is the plain grid order (pid_bh = axis 0, block = axis 1). REVERSED numbers the blocks
    from the last, so that the heaviest block of every head of a group starts first."""
    n_bh = tl.num_programs(0)
    n_blocks = tl.num_programs(1)
    pid = tl.program_id(1) * n_bh + tl.program_id(0)
    first = pid // (HEAD_GROUP * n_blocks) * HEAD_GROUP      # the group's first head
    size = tl.minimum(HEAD_GROUP, n_bh - first)
    rest = pid - first * n_blocks                            # position inside the group: block-major
    pid_bh = first + rest % size
    block = rest // size
    if REVERSED:
        block = n_blocks - 1 - block
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
def _row_band(DELAYS, b, h, H, window, delay, PER_BATCH_DELAY: tl.constexpr, BAND_TABLE: tl.constexpr):
    """(window, delay) of head (b, h): its entry of the (B, H, 2) table, its sequence's delay, or the
    arguments. Negative delays count as 0 (the host does not check a tensor: a device sync)."""
    if BAND_TABLE:
        entry = DELAYS + (b * H + h) * 2
        window = tl.load(entry)
        delay = tl.maximum(tl.load(entry + 1), 0)
    elif PER_BATCH_DELAY:
        delay = tl.maximum(tl.load(DELAYS + b), 0)
    return window, delay


@triton.jit
def _band_blocks(r0, R_LAST, window, delay, T, BLOCK: tl.constexpr):
    """Blocks of keys met by the band of the rows [r0, r0 + R_LAST]: (first block start, first start of
    the blocks inside the band of every row, end of those starts, end of the keys). The blocks from
    the first start to the inside ones, and from the inside ones' end to the end of the keys, cross an
    edge of the band and are masked; the ones between are not."""
    lo_min = tl.maximum(r0 - window, 0)
    lo_max = tl.maximum(r0 + R_LAST - window, 0)
    hi_min = r0 - delay
    hi_max = tl.minimum(r0 + R_LAST - delay, T - 1)
    first = (lo_min // BLOCK) * BLOCK
    inside_lo = tl.cdiv(lo_max, BLOCK) * BLOCK
    inside_hi = (tl.maximum(hi_min + 1, 0) // BLOCK) * BLOCK
    return first, inside_lo, inside_hi, hi_max + 1


@triton.jit
def _band_queries(p0, P_LAST, window, delay, T, BLOCK: tl.constexpr):
    """Blocks of queries whose band meets the keys [p0, p0 + P_LAST] (query t sees key j when
    t - window <= j <= t - delay): as _band_blocks, for the key role."""
    first = (tl.minimum(p0 + delay, T) // BLOCK) * BLOCK
    inside_lo = tl.cdiv(p0 + P_LAST + delay, BLOCK) * BLOCK
    inside_hi = (tl.maximum(p0 + window + 1, 0) // BLOCK) * BLOCK
    last = tl.minimum(p0 + P_LAST + window, T - 1)
    return first, inside_lo, inside_hi, last + 1


@triton.jit
def _visible(rows, cols, window, delay, T, BAND: tl.constexpr):
    """(len(rows), len(cols)) mask of the keys cols that the queries rows see (and cols < T)."""
    if BAND:
        lag = rows[:, None] - cols[None, :]
        return (lag >= delay) & (lag <= window) & (cols < T)[None, :]
    else:
        return (cols[None, :] < rows[:, None]) & (cols < T)[None, :]


@triton.jit
def _visible_keys(keys, queries, window, delay, BAND: tl.constexpr):
    """(len(keys), len(queries)) mask of the pairs where query t sees key j: _visible transposed."""
    if BAND:
        lag = queries[None, :] - keys[:, None]
        return (lag >= delay) & (lag <= window)
    else:
        return keys[:, None] < queries[None, :]


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
def _adaptive_scales(B0, B1, ALPHA, h, rows, window, delay, UNCONSTRAINED: tl.constexpr):
    """The adaptive bandwidth beta1 n^alpha + beta0 of rows (len(rows),) float32, n their key counts in the band
    (window, delay), from head h's entries of the (H,) B0, B1, ALPHA: the attention's forward and row_bandwidth's
    both call it, so they compute the same float32 operations."""
    b0, b1, alpha, _, _, _ = _coefficients(B0, B1, ALPHA, h, UNCONSTRAINED)
    power, _ = _count_power(_row_counts(rows, window, delay), alpha)
    return b1 * power + b0


@triton.jit
def _row_scales(SCALE, b, h, rows, sscb, ssch, ssct, T):
    """The per-row scales of rows (len(rows),) float32 read through the strides (1 past T)."""
    return tl.load(SCALE + b * sscb + h * ssch + rows * ssct, mask=rows < T, other=1.0).to(tl.float32)


@triton.jit
def _masked_block(start, inside_lo, inside_hi, MASK: tl.constexpr):
    """Whether the block at ``start`` is masked: always ("all"), never ("none"), or ("check") when it is
    not among the blocks inside the band of every position of the program, [inside_lo, inside_hi)."""
    if MASK == "all":
        return True
    elif MASK == "none":
        return False
    else:
        return (start < inside_lo) | (start >= inside_hi)


@triton.jit
def _fwd_block(acc, m_i, l_i, q, k_base, v_base, start_n, offs_n, offs_m, offs_d, dmask, qk_scale,
               skt, skd, svt, svd, T, window, delay, seed, GROUPS,
               inside_lo, inside_hi, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
               BAND: tl.constexpr, ROW_SCALE: tl.constexpr, PRECISION: tl.constexpr, DROPOUT: tl.constexpr,
               THRESHOLD: tl.constexpr):
    """One key block [start_n, start_n + BLOCK_N) of the online softmax of the query rows offs_m: returns
    the updated (acc, m_i, l_i). The band (or j < t) applies as MASK says (_masked_block); the loads
    stop at T unless MASK is "none"."""
    cols = start_n + offs_n
    if MASK == "none":
        cm2 = dmask[None, :]
    else:
        cm2 = (cols < T)[:, None] & dmask[None, :]
    kb = tl.load(k_base + cols[:, None] * skt + offs_d[None, :] * skd, mask=cm2, other=0.0)
    vb = tl.load(v_base + cols[:, None] * svt + offs_d[None, :] * svd, mask=cm2, other=0.0)
    s = tl.dot(q, tl.trans(kb), input_precision=PRECISION)                   # (BM, BN)
    if ROW_SCALE:
        s = s * qk_scale[:, None]
    else:
        s = s * qk_scale
    if _masked_block(start_n, inside_lo, inside_hi, MASK):
        s = tl.where(_visible(offs_m, cols, window, delay, T, BAND), s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)                   # rows with no key yet
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)                                         # the normaliser sees every key
    if DROPOUT:
        p = tl.where(_keep_tile(seed, offs_m, start_n, GROUPS, BLOCK_M, BLOCK_N, THRESHOLD), p, 0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _attn_fwd_kernel(
    K, V, Y, LSE, ROWS, SCALE, SEED, DELAYS,
    skb, skh, skt, skd, svb, svh, svt, svd, syb, syh, syt, sscb, ssch, ssct,
    H, T, D, GROUPS, keep_scale, window, delay, HEAD_GROUP,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr, BAND: tl.constexpr, PER_BATCH_DELAY: tl.constexpr,
    ROW_SCALE: tl.constexpr, BAND_TABLE: tl.constexpr,
):
    # Heaviest query blocks first: block m visits m + 1 key-block groups.
    pid_bh, b, h, pid_m = _head_and_block(H, HEAD_GROUP, True)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)                       # (BM,)  query positions t
    offs_n = tl.arange(0, BLOCK_N)                                 # (BN,)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    window, delay = _row_band(DELAYS, b, h, H, window, delay, PER_BATCH_DELAY, BAND_TABLE)
    if ROW_SCALE == 1:
        qk_scale = _row_scales(SCALE, b, h, offs_m, sscb, ssch, ssct, T) * 1.4426950408889634       # (BM,)
    elif ROW_SCALE >= 2:  # computed here, written for the backward
        sc = _adaptive_scales(SCALE, SCALE + H, SCALE + 2 * H, h, offs_m, window, delay, ROW_SCALE == 3)  # (BM,)
        tl.store(ROWS + pid_bh * T + offs_m, sc, mask=offs_m < T)
        qk_scale = sc * 1.4426950408889634
    else:
        qk_scale = tl.load(SCALE + h).to(tl.float32) * 1.4426950408889634  # natural exp -> exp2
    seed = _philox_key(SEED, pid_bh, DROPOUT)

    q = tl.load(k_base + offs_m[:, None] * skt + offs_d[None, :] * skd,
                mask=(offs_m[:, None] < T) & dmask[None, :], other=0.0)         # (BM, D)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    if BAND:
        # One loop over the key blocks that meet the band, masking only those that cross its edges: with a
        # band a few blocks wide, one pipelined loop costs less than a loop per kind of block.
        first, inside_lo, inside_hi, end = _band_blocks(start_m, BLOCK_M - 1, window, delay, T, BLOCK_N)
        for start_n in range(first, end, BLOCK_N):
            acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, k_base, v_base, start_n, offs_n, offs_m, offs_d, dmask, qk_scale,
                                       skt, skd, svt, svd, T, window, delay, seed, GROUPS, inside_lo, inside_hi,
                                       BLOCK_M, BLOCK_N, "check", BAND, ROW_SCALE, PRECISION, DROPOUT, THRESHOLD)
    else:
        # Key blocks strictly before the query block: every key visible, no mask.
        for start_n in range(0, start_m, BLOCK_N):
            acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, k_base, v_base, start_n, offs_n, offs_m, offs_d, dmask, qk_scale,
                                       skt, skd, svt, svd, T, window, delay, seed, GROUPS, 0, 0,
                                       BLOCK_M, BLOCK_N, "none", BAND, ROW_SCALE, PRECISION, DROPOUT, THRESHOLD)
        # Diagonal key blocks: keep j < t (and j < T).
        for start_n in range(start_m, tl.minimum(start_m + BLOCK_M, T), BLOCK_N):
            acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, k_base, v_base, start_n, offs_n, offs_m, offs_d, dmask, qk_scale,
                                       skt, skd, svt, svd, T, window, delay, seed, GROUPS, 0, 0,
                                       BLOCK_M, BLOCK_N, "all", BAND, ROW_SCALE, PRECISION, DROPOUT, THRESHOLD)

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
def _row_terms(DELTA, row_base, y_base, dy, rows, offs_d, syt, syd, rmask, m2, DELTA_FROM_Y: tl.constexpr):
    """delta_t = <y_t, dy_t> (rows,) float32 for the rows of a loaded dy tile: read from DELTA (row_delta's
    launch before the backward), or with DELTA_FROM_Y computed here from y (y_base, strides syt, syd) as that
    launch computes it. rmask: the rows inside T; m2: the tile's mask."""
    if DELTA_FROM_Y:
        delta = row_dot(y_base, dy, rows, offs_d, syt, syd, m2)
    else:
        delta = tl.load(DELTA + row_base + rows, mask=rmask, other=0.0)
    return delta


@triton.jit
def _key_role(k_base, dy_base, LSE, DELTA, SCALE, row_base, k_p, v_p, p0, offs_p, offs_d, dmask, qk_scale, dk, dv,
              skt, skd, sdt, sdd, sscb, ssch, ssct, b, h, start, stop, inside_lo, inside_hi, T, window, delay,
              seed, GROUPS, keep_scale, y_base, syt, syd,
              BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, MASK: tl.constexpr, BAND: tl.constexpr,
              ROW_SCALE: tl.constexpr, PRECISION: tl.constexpr, DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr,
              DELTA_FROM_Y: tl.constexpr):
    """Positions offs_p = [p0, p0 + BP) as keys j, over the query blocks t in [start, stop): add keep_tj p_tj
    dy_t to dv (BP, D; the caller scales it by keep_scale) and ds_tj k_t to dk (BP, D; with ROW_SCALE
    ds_tj scale_t k_t). k_p, v_p: (BP, D). The mask (band, or j < t) applies to every block (MASK="all"),
    to none ("none"), or to the blocks outside [inside_lo, inside_hi) ("check", a branch per block).
    DELTA_FROM_Y: the rows' delta_t = <y_t, dy_t> from y (y_base, strides syt, syd) instead of DELTA."""
    offs_q = tl.arange(0, BLOCK_Q)
    for start_q in range(start, stop, BLOCK_Q):
        rows = start_q + offs_q                                                  # (BQ,) queries t
        rmask = rows < T
        q = tl.load(k_base + rows[:, None] * skt + offs_d[None, :] * skd,
                    mask=rmask[:, None] & dmask[None, :], other=0.0)             # (BQ, D)
        dy = tl.load(dy_base + rows[:, None] * sdt + offs_d[None, :] * sdd,
                     mask=rmask[:, None] & dmask[None, :], other=0.0)
        lse = tl.load(LSE + row_base + rows, mask=rmask, other=float("inf"))  # p = 0 past T
        delta = _row_terms(DELTA, row_base, y_base, dy, rows, offs_d, syt, syd, rmask, rmask[:, None] & dmask[None, :],
                           DELTA_FROM_Y)
        sT = tl.dot(k_p, tl.trans(q), input_precision=PRECISION)                # (BP, BQ) ~ <k_j, k_t>
        if ROW_SCALE:
            sc_q = _row_scales(SCALE, b, h, rows, sscb, ssch, ssct, T)               # (BQ,) scale_t
            sT = sT * (sc_q * 1.4426950408889634)[None, :]
        else:
            sT = sT * qk_scale
        if _masked_block(start_q, inside_lo, inside_hi, MASK):  # masked before exp2, so nothing overflows
            sT = tl.where(_visible_keys(offs_p, rows, window, delay, BAND), sT, float("-inf"))
        pT = tl.exp2(sT - lse[None, :])
        if DROPOUT:
            keepT = tl.trans(_keep_tile(seed, rows, p0, GROUPS, BLOCK_Q, BLOCK_P, THRESHOLD))   # (BP, BQ)
            dv += tl.dot(tl.where(keepT, pT, 0.0).to(dy.dtype), dy, input_precision=PRECISION)
        else:
            dv += tl.dot(pT.to(dy.dtype), dy, input_precision=PRECISION)
        dpT = tl.dot(v_p, tl.trans(dy), input_precision=PRECISION)              # (BP, BQ) = <v_j, dy_t>
        if DROPOUT:
            dpT = tl.where(keepT, dpT * keep_scale, 0.0)
        if ROW_SCALE:  # ds_tj scale_t = p_tj (dp_tj scale_t - delta_t scale_t): a multiply-add, no extra product
            dsT = pT * (dpT * sc_q[None, :] - (delta * sc_q)[None, :])
        else:
            dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _query_role(k_base, v_base, k_p, dy_p, lse_p, delta_p, p0, offs_p, offs_d, dmask, qk_scale, dk, dscale,
                skt, skd, svt, svd, start, stop, inside_lo, inside_hi, T, window, delay, seed, GROUPS, keep_scale,
                BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, MASK: tl.constexpr, BAND: tl.constexpr,
                ROW_SCALE: tl.constexpr, PRECISION: tl.constexpr, DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr):
    """Positions offs_p = [p0, p0 + BP) as queries t, over the key blocks j in [start, stop): add ds_tj k_j
    to dk (BP, D) and ds_tj <k_t, k_j> to dscale (BP,). The row's scale, constant over the loop, is left to
    the caller (scale_t or the head's scale times the sum, once). k_p, dy_p: (BP, D); qk_scale: (BP,)
    sc_p * log2(e) with ROW_SCALE. MASK as in _key_role."""
    offs_k = tl.arange(0, BLOCK_K)
    for start_k in range(start, stop, BLOCK_K):
        cols = start_k + offs_k                                                  # (BK,) keys j
        cmask = cols < T
        kb = tl.load(k_base + cols[:, None] * skt + offs_d[None, :] * skd,
                     mask=cmask[:, None] & dmask[None, :], other=0.0)
        vb = tl.load(v_base + cols[:, None] * svt + offs_d[None, :] * svd,
                     mask=cmask[:, None] & dmask[None, :], other=0.0)
        s = tl.dot(k_p, tl.trans(kb), input_precision=PRECISION)                # (BP, BK) = <k_t, k_j>
        if ROW_SCALE:
            s2 = s * qk_scale[:, None]
        else:
            s2 = s * qk_scale
        if _masked_block(start_k, inside_lo, inside_hi, MASK):
            s2 = tl.where(_visible(offs_p, cols, window, delay, T, BAND), s2, float("-inf"))
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
    K, V, DY, LSE, DELTA, SCALE, SEED, DELAYS, DK, DV, PART_SCALE,
    skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd, sscb, ssch, ssct,
    H, T, D, GROUPS, keep_scale, window, delay, Y, syb, syh, syt, syd,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr, BAND: tl.constexpr,
    PER_BATCH_DELAY: tl.constexpr, ROW_SCALE: tl.constexpr, BAND_TABLE: tl.constexpr, DELTA_FROM_Y: tl.constexpr,
):
    # One program per (position block, b*h), both roles: about T / BLOCK of work each. DELTA_FROM_Y: the rows'
    # <y_t, dy_t> computed here from Y (B, H, T, D, any strides) instead of read from DELTA (one launch fewer).
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    p0, offs_p, offs_d, dmask, pmask, pm2 = _positions(pid_p, T, D, BLOCK_P, BLOCK_D)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    dy_base = DY + b * sdb + h * sdh
    row_base = pid_bh * T
    window, delay = _row_band(DELAYS, b, h, H, window, delay, PER_BATCH_DELAY, BAND_TABLE)
    if ROW_SCALE:
        sc_p = _row_scales(SCALE, b, h, offs_p, sscb, ssch, ssct, T)                              # (BP,)
        scale = 1.0
        qk_scale = sc_p * 1.4426950408889634
    else:
        sc_p = tl.zeros((BLOCK_P,), dtype=tl.float32)                         # not read
        scale = tl.load(SCALE + h).to(tl.float32)
        qk_scale = scale * 1.4426950408889634
    seed = _philox_key(SEED, pid_bh, DROPOUT)

    k_p = tl.load(k_base + offs_p[:, None] * skt + offs_d[None, :] * skd, mask=pm2, other=0.0)   # (BP, D)
    v_p = tl.load(v_base + offs_p[:, None] * svt + offs_d[None, :] * svd, mask=pm2, other=0.0)
    dy_p = tl.load(dy_base + offs_p[:, None] * sdt + offs_d[None, :] * sdd, mask=pm2, other=0.0)
    lse_p = tl.load(LSE + row_base + offs_p, mask=pmask, other=0.0)
    y_base = Y + b * syb + h * syh
    delta_p = _row_terms(DELTA, row_base, y_base, dy_p, offs_p, offs_d, syt, syd, pmask, pm2, DELTA_FROM_Y)
    dk = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    dscale = tl.zeros((BLOCK_P,), dtype=tl.float32)

    # One loop per role with a branch per block: fewer registers here than a loop per mask (measured).
    if BAND:
        q_first, q_in_lo, q_in_hi, q_end = _band_queries(p0, BLOCK_P - 1, window, delay, T, BLOCK_Q)
        k_first, k_in_lo, k_in_hi, k_end = _band_blocks(p0, BLOCK_P - 1, window, delay, T, BLOCK_K)
    else:
        q_first, q_in_lo, q_in_hi, q_end = p0, p0 + BLOCK_P, T + BLOCK_Q, T
        k_first, k_in_lo, k_in_hi, k_end = 0, 0, p0, tl.minimum(p0 + BLOCK_P, T)
    # The query role first, so that its part of dk takes the rows' scales once, before the key role adds its part
    # (whose scale_t varies along the loop and is applied inside it).
    dk, dscale = _query_role(k_base, v_base, k_p, dy_p, lse_p, delta_p, p0, offs_p, offs_d, dmask, qk_scale, dk,
                             dscale, skt, skd, svt, svd, k_first, k_end, k_in_lo, k_in_hi, T, window, delay, seed,
                             GROUPS, keep_scale, BLOCK_P, BLOCK_K, "check", BAND, ROW_SCALE, PRECISION, DROPOUT,
                             THRESHOLD)
    if ROW_SCALE:
        dk = dk * sc_p[:, None]
    dk, dv = _key_role(k_base, dy_base, LSE, DELTA, SCALE, row_base, k_p, v_p, p0, offs_p, offs_d, dmask, qk_scale,
                       dk, dv, skt, skd, sdt, sdd, sscb, ssch, ssct, b, h, q_first, q_end, q_in_lo, q_in_hi, T, window,
                       delay, seed, GROUPS, keep_scale, y_base, syt, syd, BLOCK_P, BLOCK_Q, "check", BAND, ROW_SCALE,
                       PRECISION, DROPOUT, THRESHOLD, DELTA_FROM_Y)

    out = (row_base + offs_p[:, None]) * D + offs_d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=pm2)
    tl.store(DV + out, (dv * keep_scale).to(DV.dtype.element_ty), mask=pm2)
    if ROW_SCALE:
        tl.store(PART_SCALE + row_base + offs_p, dscale, mask=pmask)          # (B, H, T): one per row
    else:
        tl.store(PART_SCALE + pid_bh * tl.num_programs(0) + pid_p, tl.sum(tl.where(pmask, dscale, 0.0), 0))


@triton.jit
def _split_bwd_block(K, SCALE, DELAYS, skb, skh, skt, skd, sscb, ssch, ssct, H, T, D, window, delay, HEAD_GROUP,
                     REVERSED: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                     PER_BATCH_DELAY: tl.constexpr, ROW_SCALE: tl.constexpr, BAND_TABLE: tl.constexpr):
    """Prologue of the two split-backward kernels, program (b*h, position block): (b, h, p0, offs_p,
    offs_d, dmask, pmask, pm2 as in _positions, k_base, pid_bh, the head's scale (1 with ROW_SCALE),
    the rows' scales sc_p (BP,) (with ROW_SCALE, read: the backward has no adaptive mode), qk_scale, the window
    and delay, k_p = the block's keys (BP, D))."""
    pid_bh, b, h, pid_p = _head_and_block(H, HEAD_GROUP, REVERSED)
    p0, offs_p, offs_d, dmask, pmask, pm2 = _positions(pid_p, T, D, BLOCK_P, BLOCK_D)
    k_base = K + b * skb + h * skh
    window, delay = _row_band(DELAYS, b, h, H, window, delay, PER_BATCH_DELAY, BAND_TABLE)
    if ROW_SCALE:
        sc_p = _row_scales(SCALE, b, h, offs_p, sscb, ssch, ssct, T)
        scale = 1.0
        qk_scale = sc_p * 1.4426950408889634
    else:
        sc_p = tl.zeros((BLOCK_P,), dtype=tl.float32)
        scale = tl.load(SCALE + h).to(tl.float32)
        qk_scale = scale * 1.4426950408889634
    k_p = tl.load(k_base + offs_p[:, None] * skt + offs_d[None, :] * skd, mask=pm2, other=0.0)   # (BP, D)
    return b, h, p0, offs_p, offs_d, dmask, pmask, pm2, k_base, pid_bh, scale, sc_p, qk_scale, window, delay, k_p


@triton.jit
def _attn_bwd_key_kernel(
    K, V, DY, LSE, DELTA, SCALE, SEED, DELAYS, DV, DK_KEY,
    skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd, sscb, ssch, ssct,
    H, T, D, GROUPS, keep_scale, window, delay, HEAD_GROUP, Y, syb, syh, syt, syd,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr, BAND: tl.constexpr, PER_BATCH_DELAY: tl.constexpr,
    ROW_SCALE: tl.constexpr, BAND_TABLE: tl.constexpr, DELTA_FROM_Y: tl.constexpr,
):
    # Split backward, first kernel: program (b*h, position block) as keys. Block 0 has the most
    # queries after it; with b*h on grid axis 0 every head's heaviest block (of its group) is launched first.
    (b, h, p0, offs_p, offs_d, dmask, pmask, pm2, k_base, pid_bh, scale, sc_p, qk_scale, window, delay, k_p) = \
        _split_bwd_block(K, SCALE, DELAYS, skb, skh, skt, skd, sscb, ssch, ssct, H, T, D, window, delay, HEAD_GROUP,
                         False, BLOCK_P, BLOCK_D, PER_BATCH_DELAY, ROW_SCALE, BAND_TABLE)
    row_base = pid_bh * T
    dy_base = DY + b * sdb + h * sdh
    y_base = Y + b * syb + h * syh
    v_p = tl.load(V + b * svb + h * svh + offs_p[:, None] * svt + offs_d[None, :] * svd, mask=pm2, other=0.0)
    dk = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    seed = _philox_key(SEED, pid_bh, DROPOUT)
    if BAND:
        first, in_lo, in_hi, end = _band_queries(p0, BLOCK_P - 1, window, delay, T, BLOCK_Q)
    else:
        first, in_lo, in_hi, end = p0, tl.minimum(p0 + BLOCK_P, T), T, T
    # The query blocks across the band's lower edge, those inside it, those across its upper edge.
    dk, dv = _key_role(k_base, dy_base, LSE, DELTA, SCALE, row_base, k_p, v_p, p0, offs_p, offs_d, dmask, qk_scale,
                       dk, dv, skt, skd, sdt, sdd, sscb, ssch, ssct, b, h, first, tl.minimum(in_lo, end), in_lo, in_hi,
                       T, window, delay, seed, GROUPS, keep_scale, y_base, syt, syd, BLOCK_P, BLOCK_Q, "all", BAND,
                       ROW_SCALE, PRECISION, DROPOUT, THRESHOLD, DELTA_FROM_Y)
    dk, dv = _key_role(k_base, dy_base, LSE, DELTA, SCALE, row_base, k_p, v_p, p0, offs_p, offs_d, dmask, qk_scale,
                       dk, dv, skt, skd, sdt, sdd, sscb, ssch, ssct, b, h, in_lo, tl.minimum(in_hi, end), in_lo, in_hi,
                       T, window, delay, seed, GROUPS, keep_scale, y_base, syt, syd, BLOCK_P, BLOCK_Q, "none", BAND,
                       ROW_SCALE, PRECISION, DROPOUT, THRESHOLD, DELTA_FROM_Y)
    dk, dv = _key_role(k_base, dy_base, LSE, DELTA, SCALE, row_base, k_p, v_p, p0, offs_p, offs_d, dmask, qk_scale,
                       dk, dv, skt, skd, sdt, sdd, sscb, ssch, ssct, b, h, tl.maximum(tl.maximum(in_hi, in_lo), first),
                       end, in_lo, in_hi, T, window, delay, seed, GROUPS, keep_scale, y_base, syt, syd, BLOCK_P,
                       BLOCK_Q, "all", BAND, ROW_SCALE, PRECISION, DROPOUT, THRESHOLD, DELTA_FROM_Y)
    out = (row_base + offs_p[:, None]) * D + offs_d[None, :]
    tl.store(DV + out, (dv * keep_scale).to(DV.dtype.element_ty), mask=pm2)
    tl.store(DK_KEY + out, dk, mask=pm2)                  # float32, before the (per-head) scale


@triton.jit
def _attn_bwd_query_kernel(
    K, V, DY, LSE, DELTA, SCALE, SEED, DELAYS, DK_KEY, DK, PART_SCALE,
    skb, skh, skt, skd, svb, svh, svt, svd, sdb, sdh, sdt, sdd, sscb, ssch, ssct,
    H, T, D, GROUPS, keep_scale, window, delay, HEAD_GROUP, Y, syb, syh, syt, syd,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr, THRESHOLD: tl.constexpr, BAND: tl.constexpr, PER_BATCH_DELAY: tl.constexpr,
    ROW_SCALE: tl.constexpr, BAND_TABLE: tl.constexpr, DELTA_FROM_Y: tl.constexpr,
):
    # Split backward, second kernel: program (b*h, position block) as queries; the last block has
    # the most keys before it and is launched first. dk = scale * (query part + DK_KEY), written once.
    (b, h, p0, offs_p, offs_d, dmask, pmask, pm2, k_base, pid_bh, scale, sc_p, qk_scale, window, delay, k_p) = \
        _split_bwd_block(K, SCALE, DELAYS, skb, skh, skt, skd, sscb, ssch, ssct, H, T, D, window, delay, HEAD_GROUP,
                         True, BLOCK_P, BLOCK_D, PER_BATCH_DELAY, ROW_SCALE, BAND_TABLE)
    row_base = pid_bh * T
    dy_p = tl.load(DY + b * sdb + h * sdh + offs_p[:, None] * sdt + offs_d[None, :] * sdd, mask=pm2, other=0.0)
    lse_p = tl.load(LSE + row_base + offs_p, mask=pmask, other=0.0)
    delta_p = _row_terms(DELTA, row_base, Y + b * syb + h * syh, dy_p, offs_p, offs_d, syt, syd, pmask, pm2,
                         DELTA_FROM_Y)
    dk = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    dscale = tl.zeros((BLOCK_P,), dtype=tl.float32)
    v_base = V + b * svb + h * svh
    seed = _philox_key(SEED, pid_bh, DROPOUT)
    if BAND:
        first, in_lo, in_hi, end = _band_blocks(p0, BLOCK_P - 1, window, delay, T, BLOCK_K)
    else:
        first, in_lo, in_hi, end = 0, 0, p0, tl.minimum(p0 + BLOCK_P, T)
    dk, dscale = _query_role(k_base, v_base, k_p, dy_p, lse_p, delta_p, p0, offs_p, offs_d, dmask, qk_scale, dk,
                             dscale, skt, skd, svt, svd, first, tl.minimum(in_lo, end), in_lo, in_hi, T, window, delay,
                             seed, GROUPS, keep_scale, BLOCK_P, BLOCK_K, "all", BAND, ROW_SCALE, PRECISION, DROPOUT,
                             THRESHOLD)
    dk, dscale = _query_role(k_base, v_base, k_p, dy_p, lse_p, delta_p, p0, offs_p, offs_d, dmask, qk_scale, dk,
                             dscale, skt, skd, svt, svd, in_lo, tl.minimum(in_hi, end), in_lo, in_hi, T, window, delay,
                             seed, GROUPS, keep_scale, BLOCK_P, BLOCK_K, "none", BAND, ROW_SCALE, PRECISION, DROPOUT,
                             THRESHOLD)
    dk, dscale = _query_role(k_base, v_base, k_p, dy_p, lse_p, delta_p, p0, offs_p, offs_d, dmask, qk_scale, dk,
                             dscale, skt, skd, svt, svd, tl.maximum(tl.maximum(in_hi, in_lo), first), end, in_lo, in_hi,
                             T, window, delay, seed, GROUPS, keep_scale, BLOCK_P, BLOCK_K, "all", BAND, ROW_SCALE,
                             PRECISION, DROPOUT, THRESHOLD)
    out = (row_base + offs_p[:, None]) * D + offs_d[None, :]
    if ROW_SCALE:
        dk = dk * sc_p[:, None]                            # the query part's scale_t (DK_KEY holds its own)
    dk += tl.load(DK_KEY + out, mask=pm2, other=0.0)
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=pm2)
    if ROW_SCALE:
        tl.store(PART_SCALE + row_base + offs_p, dscale, mask=pmask)          # (B, H, T): one per row
    else:
        # PART_SCALE is (B*H, n_blocks), one partial per position block.
        tl.store(PART_SCALE + pid_bh * tl.num_programs(1) + p0 // BLOCK_P, tl.sum(tl.where(pmask, dscale, 0.0), 0))
