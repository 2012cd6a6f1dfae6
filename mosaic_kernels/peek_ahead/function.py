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


def _forward_launch(x: torch.Tensor, eps: float) -> tuple[tuple, tuple, dict]:
    """The forward's (grid, arguments after its four tensors, keyword arguments) for x's shape and strides: a pure
    function of them, so that an eager call of a known signature reuses it (:class:`ValuePlan`)."""
    B, H, T, D = x.shape
    block_t, block_d, warps = _tiling(D)
    return (cdiv(T, block_t), B * H), (*x.stride(), H, T, D, eps), dict(BLOCK_T=block_t, BLOCK_D=block_d,
                                                                       num_warps=warps)


def _launch_forward(x, mix, scale, eps: float, launch_plan: tuple | None = None):
    B, H, T, D = x.shape
    grid, args, meta = launch_plan or _forward_launch(x, eps)
    y = _empty((B, H, T, D), device=x.device, dtype=x.dtype)
    launch(_value_fwd_kernel, grid, x, y, mix, scale, *args, **meta)
    return y


def _backward_launch(x: torch.Tensor, eps: float) -> dict:
    """The backward's plan for x's shape and strides (dx takes x's layout): everything but the incoming gradient's
    strides, as :func:`_forward_launch`."""
    B, H, T, D = x.shape
    block_t, block_d, warps = _tiling(D)
    n_blocks = cdiv(T, block_t)
    heads_last = is_heads_last(x)
    dx = empty_heads(torch.empty, x.shape, heads_last=heads_last, device="meta", dtype=x.dtype)
    return dict(n_blocks=n_blocks, grid=(n_blocks, B * H), heads_last=heads_last, x_strides=x.stride(),
                tail=(*dx.stride()[:3], H, T, D, eps), meta=dict(BLOCK_T=block_t, BLOCK_D=block_d, num_warps=warps))


def _launch_backward(gy, x, mix, scale, eps: float, launch_plan: dict | None = None):
    B, H, T, D = x.shape
    p = launch_plan or _backward_launch(x, eps)
    # dx in x's layout when x is a head-split view, so the split's backward costs no copy.
    dx = empty_heads(_empty, x.shape, heads_last=p["heads_last"], device=x.device, dtype=x.dtype)
    parts = _empty((2, B * H * p["n_blocks"]), device=x.device, dtype=torch.float32)
    launch(_value_bwd_kernel, p["grid"],
        x, gy, dx, parts, mix, scale, *p["x_strides"], *gy.stride(), *p["tail"], **p["meta"])
    return dx, parts.view(2, B, H, p["n_blocks"]).sum(dim=(1, 3))  # fixed order: deterministic


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
    return PEEK_AHEAD.apply(x, *_kernel_inputs(x, mix, scale), float(eps))


def _kernel_inputs(x: torch.Tensor, mix: float | torch.Tensor, scale: float | torch.Tensor | None) -> tuple:
    """(mix, scale) as the kernels read them: (H,) float32 tensors, the scale 1 when None."""
    H = x.shape[1]
    return per_head_tensor(mix, H, x, 0.0), per_head_tensor(scale, H, x, 1.0)


class ValuePlan:
    """An eager call's host work done once per call signature (mosaic_kernels._common.CALL_PLANS): x of one
    shape, strides, dtype and device, mix and scale of one kind (a number, or a tensor of one shape, strides and
    dtype), one eps. The forward's launch plan (:func:`_forward_launch`) and, from the first backward on, the
    backward's (:func:`_backward_launch`), built by the functions every call uses; :meth:`__call__` runs them
    through :class:`_PlannedValue`. mosaic_kernels.peek_ahead_value keeps one per signature it has checked."""

    def __init__(self, x: torch.Tensor, mix: float | torch.Tensor, scale: float | torch.Tensor | None, eps: float):
        # Numbers are part of the signature: kept as checked (a tensor is converted at each call).
        self.mix = None if isinstance(mix, torch.Tensor) else mix
        self.scale = None if isinstance(scale, torch.Tensor) else scale
        self.eps = eps
        self.fwd = _forward_launch(x, eps)
        self.bwd: dict | None = None

    def backward_plan(self, x: torch.Tensor) -> dict:
        """The backward's launch plan, made at the first backward."""
        if self.bwd is None:
            self.bwd = _backward_launch(x, self.eps)
        return self.bwd

    def __call__(self, x: torch.Tensor, mix: float | torch.Tensor, scale: float | torch.Tensor | None) -> torch.Tensor:
        """The value of x through :class:`_PlannedValue`, mix and scale converted as
        :func:`peek_ahead_value_triton` converts them."""
        inputs = _kernel_inputs(x, mix if self.mix is None else self.mix, scale if self.scale is None else self.scale)
        return _PlannedValue.apply(x, *inputs, self)


class _PlannedValue(torch.autograd.Function):
    """The autograd node of :class:`ValuePlan`'s calls: the launches of its plans, :data:`PEEK_AHEAD`'s gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mix_t: torch.Tensor, scale_t: torch.Tensor, plan: ValuePlan) -> torch.Tensor:
        ctx.save_for_backward(x, mix_t, scale_t)
        ctx.plan = plan
        return _launch_forward(x, mix_t, scale_t, plan.eps, launch_plan=plan.fwd)

    @staticmethod
    def backward(ctx, gy: torch.Tensor) -> tuple:
        x, mix_t, scale_t = ctx.saved_tensors
        plan = ctx.plan
        dx, per_head = _launch_backward(gy, x, mix_t, scale_t, plan.eps, launch_plan=plan.backward_plan(x))
        return dx, per_head[0], per_head[1], None
