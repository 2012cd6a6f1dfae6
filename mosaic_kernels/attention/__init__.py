"""Strictly causal Gaussian-kernel attention whose keys are also its queries."""
from __future__ import annotations

import torch

from .._common import (
    MAX_HEAD_DIM,
    as_heads_last,
    check_dropout,
    check_heads,
    check_like,
    check_philox_counters,
    check_tensor,
    per_head,
    use_triton,
)
from . import reference as _reference

__all__ = ["mosaic_attention"]


def mosaic_attention(k: torch.Tensor, v: torch.Tensor, scale: float | torch.Tensor | None = None, *,
                     dropout_p: float = 0.0, generator: torch.Generator | None = None,
                     heads_last: bool = False) -> torch.Tensor:
    """Strictly causal softmax attention with queries = keys and a per-head bandwidth.

    ``y[b,h,t] = sum_{j<t} softmax_j(scale_h * <k[b,h,t], k[b,h,j]>) v[b,h,j]`` and ``y[:,:,0] = 0``
    (position t never sees itself). Drop-in where you would call attention with ``q = k``.

    Args:
        k: ``(B, H, T, D)`` keys, also the queries; float32, float16, bfloat16 or float64; any strides.
        v: ``(B, H, T, D)`` values, same shape, dtype and device as ``k``.
        scale: None (1.0), a float, or a ``(H,)`` tensor (its gradient is returned when it
            requires grad). The Memory Mosaic pre-scales its keys and passes None.
        dropout_p: probability of dropping each attention weight (after the softmax; the kept ones
            are divided by ``1 - p``), in [0, 1). The kernels draw with 16-bit resolution (p is
            rounded to a multiple of 2^-16) and regenerate the mask in the backward from a Philox
            seed, never storing it.
        generator: the torch.Generator the dropout seed is drawn from (default: the global one).
        heads_last: return a ``(B, H, T, D)`` view of a contiguous ``(B, T, H, D)`` buffer instead of
            a contiguous tensor, so that merging the heads before an output projection,
            ``y.transpose(1, 2).reshape(B, T, H * D)``, costs no copy (SDPA's flash and cuDNN
            kernels give this layout for head-split inputs).

    Returns:
        A ``(B, H, T, D)`` tensor of ``v.dtype``, contiguous unless ``heads_last``. Softmax and accumulation run in
        float32 (float64 for float64 input); extra memory is one log-sum-exp per row. CUDA tensors
        run the Triton kernels; CPU tensors the dense PyTorch reference, or the Triton kernels
        through the interpreter when ``TRITON_INTERPRET=1``.

    Raises:
        ValueError: on a bad shape, dtype, device, scale, dropout_p or generator.

    Example:
        >>> k, v = torch.randn(2, 4, 128, 64), torch.randn(2, 4, 128, 64)
        >>> y = mosaic_attention(k, v, scale=0.125)
    """
    B, H, T, D = check_heads("k", k, max_head_dim=MAX_HEAD_DIM)
    check_tensor("v", v, ndim=4)
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    check_like("v", v, "k", k)
    scale = per_head("scale", scale, H, k)
    dropout_p = check_dropout(dropout_p, generator)
    if use_triton(k):
        from .function import mosaic_attention_triton

        check_philox_counters(T, T, dropout_p)
        return mosaic_attention_triton(k, v, scale, heads_last=bool(heads_last), dropout_p=dropout_p,
                                       generator=generator)
    y = _reference.mosaic_attention(k, v, scale, dropout_p=dropout_p, generator=generator)
    return as_heads_last(y, bool(heads_last))
