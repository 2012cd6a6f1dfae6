"""Triton kernels of the leaky-average scan, forward and backward.

Layout: x and dy are (B, H, T, D) with any strides; y and dx are (B, H, T, D) with a last stride of
1 (the host allocates them contiguous or heads-last, see _common.empty_heads); the per-row norm
statistic is (B, H, T) float32. One program owns one (b, h) and one chunk of time, walks its chunk
tile by tile (BLOCK_T rows x BLOCK_D columns, the whole head dim so the L2 norm is local), and scans
each tile, in float32, one of two ways: by default (USE_DOT, function.FWD_IN_TILE / BWD_IN_TILE =
"dot") as a product with the decay matrix W[i, j] = a^(i-j), j <= i, on the tensor cores; otherwise
with ``tl.associative_scan`` on (decay, value) pairs. A carry links tiles.

When B*H alone cannot fill the GPU, time is split into NCHUNK chunks. A first launch writes each
chunk's end state computed from a zero carry (the "summary"); the main launch folds the summaries of
the chunks before it into its carry-in (state = summary + a^CHUNK_LEN * state), then scans. This
reads x twice, which is the price of parallelism over T; with NCHUNK = 1 x is read once.
The backward is the same in reverse time, on lambda_t = dL/du_t = gu_t + a * lambda_{t+1}.

Time-varying decays (DECAY_KIND): 0 is one decay a_h per head (the code above); 1 is one per (b, h, t),
read through the strides sab, sah, sat; 2 is one per (b, h, t, d). Kind 1 keeps the decay-matrix
product: a tile's matrix is W[i, j] = a_{j+1} ... a_i = 2^(L_i - L_j) from the inclusive cumulative sum
L of log2(a) over the tile, and 0 where a decay exactly 0 lies in (j, i] (its count, zc, differs: the
zero is an exact reset, not a tiny factor). Kind 2 has one matrix per column, so it scans with
``tl.associative_scan`` on (a_t, x_t) pairs. The chunk summaries of kinds 1 and 2 hold the chunk's end
state and the product of its decays (a^CHUNK_LEN for kind 0). In the backward of kinds 1 and 2 the
carry between tiles (and chunks) is a_{t0} lambda_{t0}, the first row's decay already applied.

Gate (GATE): x_t is multiplied by gate[b, h, t] as it is loaded; the backward returns dx_t = g_t
lambda_t and d gate_t = <lambda_t, x_t> (x read again).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _decayed_sum(a1, x1, a2, x2):
    # Combine of the linear recurrence y = a * y_prev + x: (a1, x1) then (a2, x2).
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _row(tile, rows_local, which: tl.constexpr):
    # Extract one row of a (BLOCK_T, BLOCK_D) tile as a (BLOCK_D,) vector.
    return tl.sum(tl.where(rows_local[:, None] == which, tile, 0.0), axis=0)


@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _tv_forward_weights(a_rows, rows_local, BLOCK_T: tl.constexpr):
    """Kind 1, forward: for a tile's decays a_rows (BT,), the matrix W[i, j] = a_{j+1} ... a_i (j <= i,
    BT x BT), the carry's weights a_0 ... a_i (BT,), the last row's weights on the inputs W[BT-1, j]
    (BT,) and the tile's product a_0 ... a_{BT-1} (scalar)."""
    zero = a_rows == 0.0
    lg = tl.where(zero, 0.0, tl.log2(tl.where(zero, 1.0, a_rows)))
    cum = tl.cumsum(lg, 0)                                                   # L_i, non-increasing
    zc = tl.cumsum(zero.to(tl.int32), 0)                                     # zeros in [0, i]
    keep = (rows_local[:, None] >= rows_local[None, :]) & (zc[:, None] == zc[None, :])
    w = tl.where(keep, tl.exp2(tl.minimum(cum[:, None] - cum[None, :], 0.0)), 0.0)
    last_cum, last_zc = tl.min(cum, 0), tl.max(zc, 0)
    carry_w = tl.where(zc == 0, tl.exp2(cum), 0.0)
    sum_w = tl.where(zc == last_zc, tl.exp2(last_cum - cum), 0.0)
    a_tile = tl.where(last_zc == 0, tl.exp2(last_cum), 0.0)
    return w, carry_w, sum_w, a_tile


@triton.jit
def _tv_backward_weights(a_rows, rows_local, BLOCK_T: tl.constexpr):
    """Kind 1, backward: the transposed matrix Wt[i, j] = a_{i+1} ... a_j (j >= i), the weights of the
    carry (a_{t0+BT} lambda_{t0+BT}) a_{i+1} ... a_{BT-1} (BT,), the weights a_0 ... a_j of the carry
    out a_0 lambda_0 on the tile's gradients (BT,), and the tile's product (scalar)."""
    zero = a_rows == 0.0
    lg = tl.where(zero, 0.0, tl.log2(tl.where(zero, 1.0, a_rows)))
    cum = tl.cumsum(lg, 0)
    zc = tl.cumsum(zero.to(tl.int32), 0)
    keep = (rows_local[None, :] >= rows_local[:, None]) & (zc[:, None] == zc[None, :])
    w_t = tl.where(keep, tl.exp2(tl.minimum(cum[None, :] - cum[:, None], 0.0)), 0.0)
    last_cum, last_zc = tl.min(cum, 0), tl.max(zc, 0)
    carry_w = tl.where(zc == last_zc, tl.exp2(last_cum - cum), 0.0)
    sum_w = tl.where(zc == 0, tl.exp2(cum), 0.0)
    a_tile = tl.where(last_zc == 0, tl.exp2(last_cum), 0.0)
    return w_t, carry_w, sum_w, a_tile


@triton.jit
def _split_parts(w, dtype: tl.constexpr):
    """A float32 matrix as a high and a low part of a 16-bit ``dtype``: w = hi + lo to about 2^-16 relative."""
    w_hi = w.to(dtype)
    return w_hi, (w - w_hi.to(tl.float32)).to(dtype)


@triton.jit
def _split_dot(w, x_raw):
    """w @ x_raw for a float32 (BT, BT) matrix w and a 16-bit (BT, BD) tile x_raw, in float32: w in two parts
    of x_raw's dtype (:func:`_split_parts`), two 16-bit products with float32 sums. x_raw enters exactly; only
    w's second rounding is an error."""
    w_hi, w_lo = _split_parts(w, x_raw.dtype)
    return tl.dot(w_hi, x_raw) + tl.dot(w_lo, x_raw)


@triton.jit
def _split_dot_gated(w, g_rows, x_raw):
    """sum_j w[i, j] g_j x_raw[j] by :func:`_split_dot`, the gates folded into w's columns as g_j / max|g|
    (at most 1 in magnitude, so float16's range holds whatever the gates: a gate of 1e5 would overflow it) and
    max|g| multiplied back in float32. All gates 0 give 0."""
    g_max = tl.maximum(tl.max(tl.abs(g_rows), 0), 1e-30)
    return _split_dot(w * (g_rows / g_max)[None, :], x_raw) * g_max


@triton.jit
def _clamped_decay(raw):
    # The decay tensor is not range-checked on the host (that would synchronise the device); the kernels
    # clamp it to [0, 1] themselves, which saves the host five tensor operations a call and their
    # backward. NaN stays NaN, as under torch.clamp.
    return tl.where(raw < 0.0, 0.0, tl.where(raw > 1.0, 1.0, raw))


@triton.jit
def _store_summary(SUMMARY, chunk, cols, carry, chunk_prod, BLOCK_D: tl.constexpr, DECAY_KIND: tl.constexpr):
    """A chunk's summary for the carry pass: its state (BLOCK_D,), and with a time-varying decay also the
    product of its decays (BLOCK_D,), stored as (state, product) pairs of rows."""
    if DECAY_KIND == 0:
        tl.store(SUMMARY + chunk * BLOCK_D + cols, carry)
    else:
        tl.store(SUMMARY + chunk * 2 * BLOCK_D + cols, carry)
        tl.store(SUMMARY + chunk * 2 * BLOCK_D + BLOCK_D + cols, chunk_prod)


@triton.jit
def _forward_tile_loads(x_base, a_base, g_base, rows, cols, t_stop, D, sxt, sxd, sat, sad, sgt,
                        DECAY_KIND: tl.constexpr, GATED: tl.constexpr):
    """What the forward reads for the tile of ``rows`` (BLOCK_T,), as stored: the input tile (BLOCK_T, BLOCK_D),
    the per-channel decay tile (kind 2), the rows' decays (kind 1) and gates (GATED); 0.0 for what the call does
    not read. Rows at or past ``t_stop`` read x 0, decay 1 and gate 0, which the carry passes unchanged."""
    rmask = rows < t_stop
    m2 = rmask[:, None] & (cols < D)[None, :]
    x = tl.load(x_base + rows[:, None] * sxt + cols[None, :] * sxd, mask=m2, other=0.0)
    a_tile = 0.0
    a_rows = 0.0
    g = 0.0
    if DECAY_KIND == 2:
        a_tile = tl.load(a_base + rows[:, None] * sat + cols[None, :] * sad, mask=m2, other=1.0)
    if DECAY_KIND == 1:
        a_rows = tl.load(a_base + rows * sat, mask=rmask, other=1.0)
    if GATED:
        g = tl.load(g_base + rows * sgt, mask=rmask, other=0.0)
    return x, a_tile, a_rows, g


@triton.jit
def _leaky_fwd_kernel(
    X, Y, NORM, DECAY, SCALE, SUMMARY, GATE,
    sxb, sxh, sxt, sxd, syb, syh, syt, sab, sah, sat, sad, sgb, sgh, sgt,
    H, T, D, CHUNK_LEN, NCHUNK, eps,
    NORMALIZE: tl.constexpr, SUMMARY_ONLY: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
    STAGES: tl.constexpr, DECAY_KIND: tl.constexpr, GATED: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    rows_local = tl.arange(0, BLOCK_T)
    if DECAY_KIND == 0:
        a = _clamped_decay(tl.load(DECAY + h).to(tl.float32))
        if USE_DOT:
            # In-tile scan as a product with the decay matrix W[i, j] = a^(i-j) (j <= i), the carry
            # entering after it as a^(i+1) * carry: the carry chain is one FMA per tile, off the
            # product's path. Exponent 0 is the constant 1 (no 0 * log2(0)); exp2(-inf) = 0 for a = 0.
            log2a = tl.log2(a)
            lag = rows_local[:, None] - rows_local[None, :]                     # (BLOCK_T, BLOCK_T)
            w = tl.where(lag > 0, tl.exp2(tl.maximum(lag, 1).to(tl.float32) * log2a), tl.where(lag == 0, 1.0, 0.0))
            carry_w = tl.exp2((rows_local + 1).to(tl.float32) * log2a)          # a^(i+1)
            last = BLOCK_T - 1 - rows_local
            sum_w = tl.where(last == 0, 1.0, tl.exp2(tl.maximum(last, 1).to(tl.float32) * log2a))  # a^(BT-1-j)
            a_tile = tl.exp2(BLOCK_T * log2a)
            if PRECISION == "split" and not GATED:  # (gated, each tile splits W g itself: _split_dot_gated)
                # 16-bit inputs: W as a high and a low 16-bit part, two products, float32 sums.
                w_hi, w_lo = _split_parts(w, X.dtype.element_ty)
    a_base = DECAY + b * sab + h * sah                                      # kinds 1 and 2
    g_base = GATE + b * sgb + h * sgh

    # Carry-in: the true state at the end of the previous chunk, from the chunk summaries.
    carry = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if not SUMMARY_ONLY:
        if pid_c > 0:
            if DECAY_KIND == 0:
                a_chunk = tl.exp2(CHUNK_LEN * tl.log2(a))  # a^CHUNK_LEN; log2(0) = -inf gives 0, no NaN
                for c in range(0, pid_c):
                    s = tl.load(SUMMARY + (pid_bh * NCHUNK + c) * BLOCK_D + cols)
                    carry = s + a_chunk * carry
            else:
                for c in range(0, pid_c):  # (state, product of the chunk's decays) per chunk
                    base = SUMMARY + (pid_bh * NCHUNK + c) * 2 * BLOCK_D
                    carry = tl.load(base + cols) + tl.load(base + BLOCK_D + cols) * carry
    chunk_prod = tl.full((BLOCK_D,), 1.0, tl.float32)
    if NORMALIZE:
        s_h = tl.load(SCALE + h).to(tl.float32)

    t_start = pid_c * CHUNK_LEN
    t_stop = tl.minimum(t_start + CHUNK_LEN, T)
    x_base = X + b * sxb + h * sxh
    y_base = Y + b * syb + h * syh
    out_base = pid_bh * T                                                   # NORM row base
    # Memory latency is hidden one of two ways (STAGES): 0 loads the next tile into registers before this one is
    # scanned, with what else the tile reads (its per-channel decay tile, or its rows' decays and gates); >= 2
    # loads each inside the loop and lets Triton's pipeliner keep STAGES - 1 tiles in flight through shared memory.
    if STAGES == 0:
        x_next, a_next, a_rows_next, g_next = _forward_tile_loads(
            x_base, a_base, g_base, t_start + rows_local, cols, t_stop, D, sxt, sxd, sat, sad, sgt, DECAY_KIND, GATED)
    for t0 in tl.range(t_start, t_stop, BLOCK_T, num_stages=STAGES if STAGES > 0 else None):
        rows = t0 + rows_local                                              # (BLOCK_T,)
        rmask = rows < t_stop
        m2 = rmask[:, None] & cmask[None, :]
        if STAGES == 0:
            x_raw, a_raw, a_rows_raw, g_raw = x_next, a_next, a_rows_next, g_next
            x_next, a_next, a_rows_next, g_next = _forward_tile_loads(
                x_base, a_base, g_base, rows + BLOCK_T, cols, t_stop, D, sxt, sxd, sat, sad, sgt, DECAY_KIND, GATED)
        else:
            x_raw, a_raw, a_rows_raw, g_raw = _forward_tile_loads(
                x_base, a_base, g_base, rows, cols, t_stop, D, sxt, sxd, sat, sad, sgt, DECAY_KIND, GATED)
        x = x_raw.to(tl.float32)                                            # (BLOCK_T, BLOCK_D)
        if GATED:
            g_rows = g_raw.to(tl.float32)                                   # (BLOCK_T,)
            x = x * g_rows[:, None]
        if DECAY_KIND == 0:
            if USE_DOT:
                if PRECISION == "split" and GATED:
                    # The gate folded into the matrix's columns, W[i, j] g_j, split into two 16-bit parts, so
                    # that the product reads the 16-bit input as it is (exact) instead of the gated float32 tile.
                    u = _split_dot_gated(w, g_rows, x_raw)
                elif PRECISION == "split":
                    u = tl.dot(w_hi, x_raw) + tl.dot(w_lo, x_raw)
                else:
                    u = tl.dot(w, x, input_precision=PRECISION)
                u = u + carry_w[:, None] * carry[None, :]
                # Only read on to the next tile when this one is full.
                carry = tl.sum(sum_w[:, None] * x, axis=0) + a_tile * carry
            else:
                x = x + tl.where(rows_local[:, None] == 0, a * carry[None, :], 0.0)
                _, u = tl.associative_scan((tl.full((BLOCK_T, BLOCK_D), a, tl.float32), x), 0, _decayed_sum)
                carry = _row(u, rows_local, BLOCK_T - 1)  # only read on to the next tile when this one is full
        elif DECAY_KIND == 1:
            # Rows past the end decay by 1 and add 0: the carry passes them unchanged.
            a_rows = _clamped_decay(a_rows_raw.to(tl.float32))
            w_tv, carry_w_tv, sum_w_tv, a_tile_tv = _tv_forward_weights(a_rows, rows_local, BLOCK_T)
            if PRECISION == "split" and GATED:  # as for the gated per-head decay above: W g in two parts
                u = _split_dot_gated(w_tv, g_rows, x_raw)
            elif PRECISION == "split":
                u = _split_dot(w_tv, x_raw)
            else:
                u = tl.dot(w_tv, x, input_precision=PRECISION)
            u = u + carry_w_tv[:, None] * carry[None, :]
            carry = tl.sum(sum_w_tv[:, None] * x, axis=0) + a_tile_tv * carry
            chunk_prod = chunk_prod * a_tile_tv
        else:
            a_t = _clamped_decay(a_raw.to(tl.float32))       # rows past the end: decay 1, input 0
            x = x + tl.where(rows_local[:, None] == 0, a_t * carry[None, :], 0.0)
            _, u = tl.associative_scan((a_t, x), 0, _decayed_sum)
            carry = _row(u, rows_local, BLOCK_T - 1)
            chunk_prod = chunk_prod * tl.reduce(a_t, 0, _mul)
        if not SUMMARY_ONLY:
            if NORMALIZE:
                n = tl.maximum(tl.sqrt(tl.sum(u * u, axis=1)), eps)          # (BLOCK_T,)
                tl.store(NORM + out_base + rows, n, mask=rmask)
                u = u * (s_h / n)[:, None]
            tl.store(y_base + rows[:, None] * syt + cols[None, :], u.to(Y.dtype.element_ty), mask=m2)
    if SUMMARY_ONLY:
        _store_summary(SUMMARY, pid_bh * NCHUNK + pid_c, cols, carry, chunk_prod, BLOCK_D, DECAY_KIND)


@triton.jit
def _leaky_bwd_kernel(
    GY, Y, NORM, DECAY, SCALE, SUMMARY, GX, PARTS, X, GATE, DDECAY, DGATE,
    sgb, sgh, sgt, sgd, syb, syh, syt, sxb, sxh, sxt, sab, sah, sat, sad, sib, sih, sit, sid, sqb, sqh, sqt,
    H, T, D, CHUNK_LEN, NCHUNK, eps,
    NORMALIZE: tl.constexpr, SUMMARY_ONLY: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
    STAGES: tl.constexpr, DECAY_KIND: tl.constexpr, GATED: tl.constexpr,
):
    # GX is written with the strides sx*; X (the ungated input, read with GATED) has the strides si*,
    # GATE sq*; DDECAY is (B, H, T) for kind 1, (B, H, T, D) for kind 2, DGATE (B, H, T), contiguous.
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    rows_local = tl.arange(0, BLOCK_T)
    if DECAY_KIND == 0:
        raw_decay = tl.load(DECAY + h).to(tl.float32)
        a = _clamped_decay(raw_decay)
        if USE_DOT:
            # Reverse in-tile scan as a product with the transposed decay matrix, Wt[i, j] = a^(j-i)
            # (j >= i), the carry from the right entering after it as a^(BLOCK_T-i) * carry.
            log2a = tl.log2(a)
            lag = rows_local[None, :] - rows_local[:, None]                     # (BLOCK_T, BLOCK_T)
            w_t = tl.where(lag > 0, tl.exp2(tl.maximum(lag, 1).to(tl.float32) * log2a), tl.where(lag == 0, 1.0, 0.0))
            carry_w = tl.exp2((BLOCK_T - rows_local).to(tl.float32) * log2a)    # a^(BLOCK_T-i)
            sum_w = tl.where(rows_local == 0, 1.0, tl.exp2(tl.maximum(rows_local, 1).to(tl.float32) * log2a))  # a^j
            a_tile = tl.exp2(BLOCK_T * log2a)
    a_base = DECAY + b * sab + h * sah

    # Carry-in from the right: lambda at the first row of the next chunk (kind 0), or that times the
    # first row's decay (kinds 1 and 2).
    carry = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if not SUMMARY_ONLY:
        if DECAY_KIND == 0:
            a_chunk = tl.exp2(CHUNK_LEN * tl.log2(a))
            for i in range(0, NCHUNK - 1 - pid_c):
                c = NCHUNK - 1 - i
                s = tl.load(SUMMARY + (pid_bh * NCHUNK + c) * BLOCK_D + cols)
                carry = s + a_chunk * carry
        else:
            for i in range(0, NCHUNK - 1 - pid_c):
                base = SUMMARY + (pid_bh * NCHUNK + NCHUNK - 1 - i) * 2 * BLOCK_D
                carry = tl.load(base + cols) + tl.load(base + BLOCK_D + cols) * carry
    chunk_prod = tl.full((BLOCK_D,), 1.0, tl.float32)
    if NORMALIZE:
        s_h = tl.load(SCALE + h).to(tl.float32)
        inv_s = tl.where(s_h != 0.0, 1.0 / s_h, 0.0)

    t_start = pid_c * CHUNK_LEN
    t_stop = tl.minimum(t_start + CHUNK_LEN, T)
    n_tiles = tl.cdiv(t_stop - t_start, BLOCK_T)
    g_base = GY + b * sgb + h * sgh
    y_base = Y + b * syb + h * syh
    gx_base = GX + b * sxb + h * sxh                                        # dx: strides sx*
    out_base = pid_bh * T                                                   # NORM row base
    acc_decay = tl.zeros((BLOCK_T,), dtype=tl.float32)
    acc_scale = tl.zeros((BLOCK_T,), dtype=tl.float32)
    # Tiles are visited last to first; latency hidden as in the forward (STAGES).
    if STAGES == 0:
        nxt = t_start + (n_tiles - 1) * BLOCK_T + rows_local
        nm2 = (nxt < t_stop)[:, None] & cmask[None, :]
        g_next = tl.load(g_base + nxt[:, None] * sgt + cols[None, :] * sgd, mask=nm2, other=0.0)
        y_next = tl.load(y_base + nxt[:, None] * syt + cols[None, :], mask=nm2, other=0.0)
    for i in tl.range(0, n_tiles, num_stages=STAGES if STAGES > 0 else None):
        t0 = t_start + (n_tiles - 1 - i) * BLOCK_T
        rows = t0 + rows_local
        rmask = rows < t_stop
        m2 = rmask[:, None] & cmask[None, :]
        if STAGES == 0:
            g = g_next.to(tl.float32)
            y = y_next.to(tl.float32)
            nxt = rows - BLOCK_T
            nm2 = ((nxt >= t_start) & (nxt < t_stop))[:, None] & cmask[None, :]
            g_next = tl.load(g_base + nxt[:, None] * sgt + cols[None, :] * sgd, mask=nm2, other=0.0)
            y_next = tl.load(y_base + nxt[:, None] * syt + cols[None, :], mask=nm2, other=0.0)
        else:
            g = tl.load(g_base + rows[:, None] * sgt + cols[None, :] * sgd, mask=m2, other=0.0).to(tl.float32)
            y = tl.load(y_base + rows[:, None] * syt + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        if NORMALIZE:
            # y = s * u / n with n = max(|u|, eps): gu = (s/n) (g - (g.yhat) yhat), or (s/n) g when clamped.
            n = tl.load(NORM + out_base + rows, mask=rmask, other=1.0)
            yhat = y * inv_s
            gdot = tl.sum(g * yhat, axis=1)                                   # (BLOCK_T,)
            acc_scale += gdot
            proj = tl.where((n > eps)[:, None], gdot[:, None] * yhat, 0.0)
            gu = (g - proj) * (s_h / n)[:, None]
        else:
            gu = g
        if DECAY_KIND == 0:
            # The only partial tile is the last tile of the sequence, where the carry is zero.
            if USE_DOT:
                if SUMMARY_ONLY:
                    lam = gu  # not stored: only the carry below is needed
                else:
                    lam = tl.dot(w_t, gu, input_precision=PRECISION) + carry_w[:, None] * carry[None, :]
                carry = tl.sum(sum_w[:, None] * gu, axis=0) + a_tile * carry
            else:
                gu = gu + tl.where(rows_local[:, None] == BLOCK_T - 1, a * carry[None, :], 0.0)
                _, lam = tl.associative_scan((tl.full((BLOCK_T, BLOCK_D), a, tl.float32), gu), 0, _decayed_sum,
                                             reverse=True)
                carry = _row(lam, rows_local, 0)
        elif DECAY_KIND == 1:
            raw_rows = tl.load(a_base + rows * sat, mask=rmask, other=1.0).to(tl.float32)
            w_tv, carry_w_tv, sum_w_tv, a_tile_tv = _tv_backward_weights(_clamped_decay(raw_rows), rows_local, BLOCK_T)
            if SUMMARY_ONLY:
                lam = gu  # not stored
            else:
                lam = tl.dot(w_tv, gu, input_precision=PRECISION) + carry_w_tv[:, None] * carry[None, :]
            carry = tl.sum(sum_w_tv[:, None] * gu, axis=0) + a_tile_tv * carry
            chunk_prod = chunk_prod * a_tile_tv
        else:
            # lambda_i = gu_i + a_{i+1} lambda_{i+1}: the decays one row down; the carry already holds
            # a_{t0+BT} lambda_{t0+BT}, so the last row's multiplier is never used.
            down = rows + 1
            a_down = _clamped_decay(tl.load(a_base + down[:, None] * sat + cols[None, :] * sad,
                                            mask=(down < T)[:, None] & cmask[None, :], other=1.0).to(tl.float32))
            raw_t = tl.load(a_base + rows[:, None] * sat + cols[None, :] * sad, mask=m2, other=1.0).to(tl.float32)
            a_here = _clamped_decay(raw_t)
            gu = gu + tl.where(rows_local[:, None] == BLOCK_T - 1, carry[None, :], 0.0)
            _, lam = tl.associative_scan((a_down, gu), 0, _decayed_sum, reverse=True)
            carry = _row(a_here * lam, rows_local, 0)
            chunk_prod = chunk_prod * tl.reduce(a_here, 0, _mul)
        if not SUMMARY_ONLY:
            if GATED:
                gate = tl.load(GATE + b * sqb + h * sqh + rows * sqt, mask=rmask, other=0.0).to(tl.float32)
                x_in = tl.load(X + b * sib + h * sih + rows[:, None] * sit + cols[None, :] * sid, mask=m2,
                               other=0.0).to(tl.float32)
                tl.store(DGATE + out_base + rows, tl.sum(lam * x_in, axis=1), mask=rmask)
                dx = lam * gate[:, None]
            else:
                dx = lam
            tl.store(gx_base + rows[:, None] * sxt + cols[None, :], dx.to(GX.dtype.element_ty), mask=m2)
            # dL/da_t = lambda_t . u_{t-1}: the previous row of the raw scan, rebuilt from y.
            prev = rows - 1
            pmask = rmask & (prev >= 0)
            pm2 = pmask[:, None] & cmask[None, :]
            u_prev = tl.load(y_base + prev[:, None] * syt + cols[None, :], mask=pm2, other=0.0).to(tl.float32)
            if NORMALIZE:
                n_prev = tl.load(NORM + out_base + prev, mask=pmask, other=0.0)
                u_prev = u_prev * (inv_s * n_prev)[:, None]
            if DECAY_KIND == 0:
                acc_decay += tl.sum(lam * u_prev, axis=1)
            elif DECAY_KIND == 1:  # a decay outside [0, 1] was clamped: its gradient is the clamp's, 0
                in_range = (raw_rows >= 0.0) & (raw_rows <= 1.0)
                tl.store(DDECAY + out_base + rows, tl.where(in_range, tl.sum(lam * u_prev, axis=1), 0.0), mask=rmask)
            else:
                in_range = (raw_t >= 0.0) & (raw_t <= 1.0)
                tl.store(DDECAY + (out_base + rows[:, None]) * D + cols[None, :], tl.where(in_range, lam * u_prev, 0.0),
                         mask=m2)
    if SUMMARY_ONLY:
        _store_summary(SUMMARY, pid_bh * NCHUNK + pid_c, cols, carry, chunk_prod, BLOCK_D, DECAY_KIND)
    else:
        # PARTS is (2, B*H*NCHUNK): decay partials (kind 0), then scale partials. A decay outside [0, 1]
        # was clamped: its gradient is the clamp's, 0 (the boundaries themselves pass the gradient).
        if DECAY_KIND == 0:
            in_range0 = (raw_decay >= 0.0) & (raw_decay <= 1.0)
            tl.store(PARTS + pid_bh * NCHUNK + pid_c, tl.where(in_range0, tl.sum(acc_decay, axis=0), 0.0))
        else:
            tl.store(PARTS + pid_bh * NCHUNK + pid_c, 0.0)
        tl.store(PARTS + tl.num_programs(1) * NCHUNK + pid_bh * NCHUNK + pid_c, tl.sum(acc_scale, axis=0))
