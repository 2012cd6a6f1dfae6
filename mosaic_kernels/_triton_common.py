"""Triton kernels shared by the ops."""
from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl


@triton.jit
def _row_delta_kernel(Y, DY, DELTA, syb, syh, syt, sdb, sdh, sdt, sdd, H, T, D,
                      BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # delta[b, h, t] = <dy_t, y_t>, the softmax backward's row term. y and dy are (B, H, T, D) with
    # any strides (y's last stride 1); delta is contiguous (B, H, T) float32.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m2 = (rows[:, None] < T) & (offs_d[None, :] < D)
    y = tl.load(Y + b * syb + h * syh + rows[:, None] * syt + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
    dy = tl.load(DY + b * sdb + h * sdh + rows[:, None] * sdt + offs_d[None, :] * sdd,
                 mask=m2, other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh * T + rows, tl.sum(y * dy, 1), mask=rows < T)


def row_delta(y: torch.Tensor, dy: torch.Tensor, block_m: int, block_d: int, empty: Callable) -> torch.Tensor:
    """delta = rowsum(y * dy) as (B, H, T) float32, for (B, H, T, D) views y (last stride 1) and dy."""
    B, H, T, D = y.shape
    delta = empty((B, H, T), device=y.device, dtype=torch.float32)
    _row_delta_kernel[(triton.cdiv(T, block_m), B * H)](
        y, dy, delta, *y.stride()[:3], *dy.stride(), H, T, D, BLOCK_M=block_m, BLOCK_D=block_d)
    return delta

