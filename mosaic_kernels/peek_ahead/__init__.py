"""The Memory Mosaic value: ``scale_h * normalize((1 - mix_h) x[t+1] + mix_h x[t])``, fused."""
from __future__ import annotations

import torch

from .. import _common
from .._common import call_signature, check_heads, interpreter_enabled, per_head, remember_plan, use_triton
from . import reference as _reference

__all__ = ["peek_ahead_value"]


# The value's cached call plans (mosaic_kernels._common.CALL_PLANS, on unless MOSAIC_PLANS=0): call signature ->
# function.ValuePlan, made on the Triton path outside torch.compile (which traces the registered op). The key: the
# tensors' shapes, strides, dtypes and devices, the other arguments' types and values, and whether the interpreter
# runs the kernels (its tiles differ).
_PLANS: dict = {}


def _signature(x: object, mix: object, scale: object, eps: object) -> tuple | None:
    """The key of a call in _PLANS (None: no plan for it)."""
    key = call_signature(x, mix, scale, eps)
    if key is None or type(x) is not torch.Tensor:
        return None
    return (*key, x.is_cuda or interpreter_enabled())


def peek_ahead_value(x: torch.Tensor, mix: float | torch.Tensor, *, scale: float | torch.Tensor | None = None,
                     eps: float = 1e-12) -> torch.Tensor:
    """Peek-ahead value extraction: a per-head mix of the next and current rows, L2-normalised, scaled.

    ``z[b,h,t] = (1 - mix_h) x[b,h,t+1] + mix_h x[b,h,t]`` with ``x[b,h,T] = 0``, then
    ``y = scale_h * z / max(||z||_2, eps)`` over the last dimension (docs/MODEL.md 1.3). Position t's value
    holds x[t+1]: it is only causal because the attention never lets t see itself.

    Args:
        x: ``(B, H, T, D)`` tensor (the value projection; a strided view of ``(B, T, H*D)`` is read
            without a copy), float32, float16, bfloat16 or float64.
        mix: ``c_h``, a float or a ``(H,)`` tensor (unconstrained; its gradient is returned).
        scale: None (1.0), a float, or a ``(H,)`` tensor (gradient returned).
        eps: lower bound of the norm, > 0.

    Returns:
        A contiguous ``(B, H, T, D)`` tensor of ``x.dtype``, computed in float32 (float64 for
        float64). CUDA tensors run one Triton kernel each way (one read of x, one write); CPU
        tensors the PyTorch reference, or the kernels through the interpreter with ``TRITON_INTERPRET=1``.

    Raises:
        ValueError: on a bad shape, dtype, device, mix or scale.

    Example:
        >>> x = torch.randn(2, 4, 128, 64)
        >>> v = peek_ahead_value(x, torch.rand(4), scale=torch.full((4,), 0.6))
    """
    key = None  # the call's plan key, taken before the checks convert its arguments
    if _common.CALL_PLANS and not torch.compiler.is_compiling():
        key = _signature(x, mix, scale, eps)
        plan = _PLANS.get(key) if key is not None else None
        if plan is not None:  # a signature already checked, on the Triton path
            return plan(x, mix, scale)
    B, H, T, D = check_heads("x", x)
    mix = per_head("mix", mix, H, x)
    if mix is None:
        raise ValueError(f"mix must be a float or a tensor of shape ({H},), got None")
    scale = per_head("scale", scale, H, x)
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    if use_triton(x):
        from .function import ValuePlan, peek_ahead_value_triton

        if key is not None:
            return remember_plan(_PLANS, key, ValuePlan(x, mix, scale, float(eps)))(x, mix, scale)
        return peek_ahead_value_triton(x, mix, scale=scale, eps=float(eps))
    return _reference.peek_ahead_value(x, mix, scale=scale, eps=float(eps))
