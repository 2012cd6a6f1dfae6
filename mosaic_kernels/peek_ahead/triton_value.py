"""Triton kernels of the peek-ahead value, forward and backward.

Layout: x and the upstream gradient g are (B, H, T, D) with any strides; y is contiguous
(B, H, T, D); dx has a last stride of 1 (the host gives it x's layout when x is heads-last).
One program owns BLOCK_T rows of one (b, h) and the whole head dim, so the L2 norm is
local. The shifted rows (t+1 forward; t-1 and t+1 backward) are a second load of the same lines,
which hits the cache: DRAM traffic is one read of x (and g) and one write. Nothing is saved for the
backward but x: the norm is recomputed.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _mixed_rows(x_base, rows, cols, cmask, c, sxt, sxd, T):
    # z_t = (1 - c) x_{t+1} + c x_t for the given rows (x_T = 0; rows outside [0, T) give 0),
    # and x_t - x_{t+1} (dz/dc) for the mix gradient. All float32, (BLOCK_T, BLOCK_D).
    m_cur = ((rows >= 0) & (rows < T))[:, None] & cmask[None, :]
    m_nxt = ((rows + 1 >= 0) & (rows + 1 < T))[:, None] & cmask[None, :]
    cur = tl.load(x_base + rows[:, None] * sxt + cols[None, :] * sxd, mask=m_cur, other=0.0).to(tl.float32)
    nxt = tl.load(x_base + (rows + 1)[:, None] * sxt + cols[None, :] * sxd, mask=m_nxt, other=0.0).to(tl.float32)
    return (1.0 - c) * nxt + c * cur, cur - nxt


@triton.jit
def _head_rows(MIX, SCALE, H, D, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (time block, b*h): (pid_bh, b, h, mix c_h, scale s_h, rows (BLOCK_T,), cols (BLOCK_D,),
    cmask = cols < D)."""
    pid_bh = tl.program_id(1)
    h = pid_bh % H
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_D)
    return pid_bh, pid_bh // H, h, tl.load(MIX + h), tl.load(SCALE + h), rows, cols, cols < D


@triton.jit
def _value_fwd_kernel(
    X, Y, MIX, SCALE,
    sxb, sxh, sxt, sxd,
    H, T, D, eps,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_bh, b, h, c, s, rows, cols, cmask = _head_rows(MIX, SCALE, H, D, BLOCK_T, BLOCK_D)
    z, _ = _mixed_rows(X + b * sxb + h * sxh, rows, cols, cmask, c, sxt, sxd, T)
    n = tl.maximum(tl.sqrt(tl.sum(z * z, axis=1)), eps)                 # (BLOCK_T,)
    y = z * (s / n)[:, None]
    m2 = (rows < T)[:, None] & cmask[None, :]
    tl.store(Y + (pid_bh * T + rows[:, None]) * D + cols[None, :], y.to(Y.dtype.element_ty), mask=m2)


@triton.jit
def _grad_mixed(x_base, g_base, rows, cols, cmask, c, s, sxt, sxd, sgt, sgd, T, eps):
    # dL/dz_t = (s / n_t) (g_t - <g_t, zhat_t> zhat_t), or (s / n_t) g_t where the norm is clamped;
    # also <g_t, zhat_t> (for d scale) and x_t - x_{t+1} (for d mix).
    z, dz_dc = _mixed_rows(x_base, rows, cols, cmask, c, sxt, sxd, T)
    n = tl.maximum(tl.sqrt(tl.sum(z * z, axis=1)), eps)
    zhat = z / n[:, None]
    m2 = ((rows >= 0) & (rows < T))[:, None] & cmask[None, :]
    g = tl.load(g_base + rows[:, None] * sgt + cols[None, :] * sgd, mask=m2, other=0.0).to(tl.float32)
    gdot = tl.sum(g * zhat, axis=1)
    proj = tl.where((n > eps)[:, None], gdot[:, None] * zhat, 0.0)
    return (g - proj) * (s / n)[:, None], gdot, dz_dc


@triton.jit
def _value_bwd_kernel(
    X, G, DX, PARTS, MIX, SCALE,
    sxb, sxh, sxt, sxd, sgb, sgh, sgt, sgd, sdb, sdh, sdt,
    H, T, D, eps,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_bh, b, h, c, s, rows, cols, cmask = _head_rows(MIX, SCALE, H, D, BLOCK_T, BLOCK_D)
    x_base = X + b * sxb + h * sxh
    g_base = G + b * sgb + h * sgh
    gz, gdot, dz_dc = _grad_mixed(x_base, g_base, rows, cols, cmask, c, s, sxt, sxd, sgt, sgd, T, eps)
    # x_t feeds z_t (weight c) and z_{t-1} (weight 1 - c): dx_t = c gz_t + (1 - c) gz_{t-1}.
    gz_prev, _, _ = _grad_mixed(x_base, g_base, rows - 1, cols, cmask, c, s, sxt, sxd, sgt, sgd, T, eps)
    dx = c * gz + (1.0 - c) * gz_prev
    m2 = (rows < T)[:, None] & cmask[None, :]
    tl.store(DX + b * sdb + h * sdh + rows[:, None] * sdt + cols[None, :], dx.to(DX.dtype.element_ty), mask=m2)
    # PARTS is (2, B*H*n_blocks): d(mix) partials, then d(scale) partials (rows past T contribute 0).
    idx = pid_bh * tl.num_programs(0) + tl.program_id(0)
    tl.store(PARTS + idx, tl.sum(tl.sum(gz * dz_dc, axis=1), axis=0))
    tl.store(PARTS + tl.num_programs(0) * tl.num_programs(1) + idx, tl.sum(gdot, axis=0))
