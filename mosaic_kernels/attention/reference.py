"""Dense PyTorch reference of the strictly causal Gaussian-kernel attention.

This is the CPU path of :func:`mosaic_kernels.mosaic_attention` and the ground truth the Triton
kernels are compared with on the GPU (in float64). It materialises the T x T logits of every head,
so it is meant for CPU training at model sizes and for tests, not for long sequences.
"""
from __future__ import annotations

import torch

from .._common import exact_under_autocast


@exact_under_autocast
def mosaic_attention(k: torch.Tensor, v: torch.Tensor, scale: float | torch.Tensor | None = None, *,
                     dropout_p: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Strictly causal attention whose queries are its keys, computed densely.

    ``y[b,h,t] = sum_{j<t} softmax_j(scale_h * <k[b,h,t], k[b,h,j]>) v[b,h,j]`` and ``y[:,:,0] = 0``.

    Args:
        k: keys, also the queries, shape ``(B, H, T, D)``.
        v: values, shape ``(B, H, T, D)``.
        scale: None (1.0), a float, or a tensor of shape ``(H,)``.
        dropout_p: dropout on the attention probabilities, after the softmax (kept ones divided by
            ``1 - p``); the mask is drawn here with ``torch.rand``, so it is not the kernels' mask.
        generator: the torch.Generator of that draw (default: the global one).

    Returns:
        ``(B, H, T, D)`` tensor of ``v.dtype``. Softmax and products run in float32 for 16-bit
        inputs and in float64 for float64 inputs.
    """
    B, H, T, D = k.shape
    compute = torch.float64 if k.dtype == torch.float64 else torch.float32
    kc, vc = k.to(compute), v.to(compute)
    logits = kc @ kc.transpose(-1, -2)  # (B, H, T, T)
    if scale is not None:
        s = scale.to(compute).view(1, H, 1, 1) if isinstance(scale, torch.Tensor) else scale
        logits = logits * s
    keep = torch.ones(T, T, dtype=torch.bool, device=k.device).tril(diagonal=-1)  # j < t
    masked = logits.masked_fill(~keep, float("-inf"))
    # Softmax written out so that row 0 (no key) is an exact 0 with a 0 gradient, never NaN.
    row_max = masked.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    weights = torch.exp(masked - row_max)
    probs = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(compute).tiny)
    if dropout_p > 0.0:
        keep = torch.rand(probs.shape, generator=generator, device=probs.device) >= dropout_p
        probs = probs * keep / (1.0 - dropout_p)
    return (probs @ vc).to(v.dtype)
