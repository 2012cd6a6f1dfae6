"""Persistent-memory retrieval: softmax attention of every query over learned slots shared by the batch."""
from __future__ import annotations

import torch

from .._common import MAX_HEAD_DIM, check_dropout, check_hash_counters, check_heads, check_like, per_head, use_triton
from . import reference as _reference

__all__ = ["persistent_memory"]


def persistent_memory(q: torch.Tensor, slot_keys: torch.Tensor, slot_values: torch.Tensor, *,
                      out_scale: float | torch.Tensor | None = None, dropout_p: float = 0.0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """The Memory Mosaic P-mem: ``y[b,h,t] = c_h * sum_j dropout(softmax_j(<q[b,h,t], K[h,j]>)) V[h,j]``.

    Scores have no scale factor (the P-mem keys carry their bandwidth, docs/MODEL.md 2). The slots
    are shared by the batch: the kernels read one copy per head and sum the slot gradients over the
    batch in registers, without expanding them to ``(B, H, P, D)``.

    Args:
        q: ``(B, H, T, D)`` queries, any strides, float32, float16, bfloat16 or float64.
        slot_keys, slot_values: ``(H, P, D)`` slot tensors of ``q``'s dtype and device.
        out_scale: ``c_h`` multiplying the output: None (1.0), a float, or a ``(H,)`` tensor (its
            gradient is returned).
        dropout_p: probability of dropping each slot probability (after the softmax; the kept ones
            are divided by ``1 - p``), in [0, 1). The kernels draw with 16-bit resolution: p is
            rounded to a multiple of 2^-16.
        generator: the torch.Generator the dropout seed is drawn from (default: the global one).

    Returns:
        A ``(B, H, T, D)`` tensor of ``q.dtype``. On the Triton path it is a view of a contiguous
        ``(B, T, H, D)`` buffer, so ``y.transpose(1, 2).reshape(B, T, H * D)`` costs no copy.
        CUDA tensors run the Triton kernels (flash-style online softmax over slot blocks; the
        dropout mask is regenerated in the backward from a seed by a hash, never stored); CPU tensors
        the PyTorch reference, or the kernels through the interpreter with ``TRITON_INTERPRET=1``.

    Raises:
        ValueError: on a bad shape, dtype, device, out_scale or dropout_p, or with dropout on the
            kernels when T * P > 2^32 (the mask's 32-bit counters).

    Example:
        >>> q = torch.randn(2, 4, 128, 64)
        >>> keys, values = torch.randn(4, 300, 64), torch.randn(4, 300, 64)
        >>> y = persistent_memory(q, keys, values, out_scale=0.6, dropout_p=0.05)
    """
    B, H, T, D = check_heads("q", q, max_head_dim=MAX_HEAD_DIM)
    for name, t in (("slot_keys", slot_keys), ("slot_values", slot_values)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3 or t.shape[0] != H or t.shape[2] != D or t.shape[1] < 1:
            raise ValueError(f"{name} must have shape ({H}, P, {D}) (H, slots, D of q), got {tuple(t.shape)}")
        check_like(name, t, "q", q)
    if slot_values.shape != slot_keys.shape:
        raise ValueError(f"slot_values must have slot_keys' shape {tuple(slot_keys.shape)}, got {tuple(slot_values.shape)}")
    out_scale = per_head("out_scale", out_scale, H, q)
    dropout_p = check_dropout(dropout_p, generator)
    if use_triton(q):
        from .function import persistent_memory_triton

        check_hash_counters(T, slot_keys.shape[1], dropout_p)
        return persistent_memory_triton(q, slot_keys, slot_values, out_scale=out_scale,
                                        dropout_p=dropout_p, generator=generator)
    return _reference.persistent_memory(q, slot_keys, slot_values, out_scale=out_scale,
                                        dropout_p=dropout_p, generator=generator)
