"""The leaky-average key scan: ``y[t] = x[t] + decay_h * y[t-1]``, optionally L2-normalised and scaled."""
from __future__ import annotations

import torch

from .._common import as_heads_last, check_heads, per_head, use_triton
from . import reference as _reference

__all__ = ["leaky_average"]


def leaky_average(x: torch.Tensor, decay: float | torch.Tensor, *, normalize: bool = False,
                  scale: float | torch.Tensor | None = None, eps: float = 1e-12,
                  heads_last: bool = False) -> torch.Tensor:
    """Per-head exponential moving sum over time, fused with L2 normalisation and a scale.

    ``y[b,h,t] = x[b,h,t] + decay_h * y[b,h,t-1]`` with ``y[b,h,-1] = 0``. With ``normalize=True``
    the result is ``scale_h * y / max(||y||_2, eps)`` over the last dimension (F.normalize semantics).

    Args:
        x: ``(B, H, T, D)`` tensor, float32, float16, bfloat16 or float64, any strides.
        decay: the per-step multiplier ``a_h`` in [0, 1]: a float (outside [0, 1] raises) or a
            ``(H,)`` tensor (its gradient is returned when it requires grad). A tensor is clamped to
            [0, 1] on every path, so an entry outside gives the same finite result on the kernel and
            the reference, with the clamp's zero gradient; it is not checked, because checking would
            synchronise the device with the host on every call.
        normalize: apply the L2 normalisation and the scale.
        scale: None (1.0), a float, or a ``(H,)`` tensor; requires ``normalize=True``.
        eps: lower bound of the norm, > 0.
        heads_last: return a ``(B, H, T, D)`` view of a contiguous ``(B, T, H, D)`` buffer instead of
            a contiguous tensor: the layout of a head-split ``(B, T, H*D)`` projection, so that
            merging or folding the heads afterwards costs no copy.

    Returns:
        A ``(B, H, T, D)`` tensor of ``x.dtype``, contiguous unless ``heads_last``. When x itself is
        heads-last, so is the gradient returned for it. Accumulation is float32 (float64 for
        float64 input). CUDA tensors run the Triton kernels; CPU tensors the PyTorch reference,
        or the Triton kernels through the interpreter when ``TRITON_INTERPRET=1``.

    Raises:
        ValueError: on a bad shape, dtype, device, decay or scale.

    Example:
        >>> x = torch.randn(2, 4, 128, 64)
        >>> k = leaky_average(x, torch.full((4,), 0.9), normalize=True, scale=2.0)
    """
    B, H, T, D = check_heads("x", x)
    decay = per_head("decay", decay, H, x, low=0.0, high=1.0)
    if decay is None:
        raise ValueError(f"decay must be a float in [0, 1] or a tensor of shape ({H},), got None")
    scale = per_head("scale", scale, H, x)
    if scale is not None and not normalize:
        raise ValueError("scale is only applied with normalize=True; pass normalize=True or scale=None")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    if use_triton(x):
        from .function import leaky_average_triton

        # The kernels clamp a tensor decay themselves, with the gradient of the reference's clamp below.
        return leaky_average_triton(x, decay, normalize=normalize, scale=scale, eps=float(eps),
                                    heads_last=bool(heads_last))
    if isinstance(decay, torch.Tensor):
        # Entries in [0, 1] pass through (gradient 1, boundaries included); only the others are
        # clamped (gradient 0). clamp alone would do, but its gradient at exactly 0 and 1 differs
        # between torch releases (1 in 2.13, 0 in 2.15), and decays of 0 and 1 are legitimate.
        decay = torch.where((decay >= 0) & (decay <= 1), decay, decay.clamp(0.0, 1.0))
    y = _reference.leaky_average(x, decay, normalize=normalize, scale=scale, eps=float(eps))
    return as_heads_last(y, bool(heads_last))
