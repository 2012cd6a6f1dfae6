"""Host wrappers of the Triton peek-ahead value: tiles, launches, and the op's registration (_registration)."""
from __future__ import annotations

import torch

from .._common import cdiv, empty_heads, interpreter_enabled, is_heads_last, next_power_of_2, per_head_tensor
from .._registration import fused_op
from .._triton_common import launch
from .triton_value import _value_bwd_kernel, _value_fwd_kernel

# Every buffer a kernel writes is allocated here; tests swap in a NaN-filled allocator.
_empty = torch.empty


def _tiling(D: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_D, num_warps): about 4K elements a program, the whole head dim in one tile."""
    block_d = max(16, next_power_of_2(D))
    if interpreter_enabled():
        return 16, block_d, 1
    return max(1, 4096 // block_d), block_d, 4


def _launch_forward(x, mix, scale, eps: float):
    B, H, T, D = x.shape
    block_t, block_d, warps = _tiling(D)
    y = _empty((B, H, T, D), device=x.device, dtype=x.dtype)
    launch(_value_fwd_kernel, (cdiv(T, block_t), B * H),
        x, y, mix, scale, *x.stride(), H, T, D, eps, BLOCK_T=block_t, BLOCK_D=block_d, num_warps=warps)
    return y


def _launch_backward(gy, x, mix, scale, eps: float):
    B, H, T, D = x.shape
    block_t, block_d, warps = _tiling(D)
    n_blocks = cdiv(T, block_t)
    # dx in x's layout when x is a head-split view, so the split's backward costs no copy.
    dx = empty_heads(_empty, x.shape, heads_last=is_heads_last(x), device=x.device, dtype=x.dtype)
    parts = _empty((2, B * H * n_blocks), device=x.device, dtype=torch.float32)
    launch(_value_bwd_kernel, (n_blocks, B * H),
        x, gy, dx, parts, mix, scale, *x.stride(), *gy.stride(), *dx.stride()[:3], H, T, D, eps,
        BLOCK_T=block_t, BLOCK_D=block_d, num_warps=warps)
    return dx, parts.view(2, B, H, n_blocks).sum(dim=(1, 3))  # fixed order: deterministic


def _forward(x: torch.Tensor, mix: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """The value; mix and scale are (H,) float32."""
    return _launch_forward(x, mix, scale, eps)


def _backward(gy: torch.Tensor, x: torch.Tensor, mix: torch.Tensor, scale: torch.Tensor,
              eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, (2, H) float32 per-head gradients: d(mix), then d(scale))."""
    return _launch_backward(gy, x, mix, scale, eps)


def _fake_backward(gy, x, mix, scale, eps):
    dx = empty_heads(x.new_empty, x.shape, heads_last=is_heads_last(x), device=x.device, dtype=x.dtype)
    return dx, x.new_empty((2, x.shape[1]), dtype=torch.float32)


def _save(ctx, inputs, _outputs):
    x, mix, scale, eps = inputs
    ctx.save_for_backward(x, mix, scale)
    ctx.eps = eps


def _backward_args(ctx, gy):
    x, mix, scale = ctx.saved_tensors
    return gy, x, mix, scale, ctx.eps


PEEK_AHEAD = fused_op("peek_ahead", forward=_forward, fake_forward=lambda x, mix, scale, eps: x.new_empty(x.shape),
                      backward=_backward, fake_backward=_fake_backward, save=_save, backward_args=_backward_args,
                      input_grads=lambda ctx, result: (result[0], result[1][0], result[1][1], None))
peek_ahead_fwd, peek_ahead_bwd = PEEK_AHEAD.fwd, PEEK_AHEAD.bwd


def peek_ahead_value_triton(x: torch.Tensor, mix: float | torch.Tensor, *, scale: float | torch.Tensor | None = None,
                            eps: float = 1e-12) -> torch.Tensor:
    """Run the Triton kernels (no validation: call :func:`mosaic_kernels.peek_ahead_value`)."""
    H = x.shape[1]
    args = (x, per_head_tensor(mix, H, x, 0.0), per_head_tensor(scale, H, x, 1.0), float(eps))
    return PEEK_AHEAD.apply(*args)
