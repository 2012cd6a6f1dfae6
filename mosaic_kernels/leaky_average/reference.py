"""Chunked PyTorch reference of the leaky-average key scan.

``y[t] = x[t] + a_h * y[t-1]`` is evaluated chunk by chunk: inside a chunk of ``CHUNK`` steps a
lower-triangular matrix of powers ``a^(t-s)``, ``0 <= t-s < CHUNK``, does the sum as one matmul;
between chunks a carry is propagated with ``a^(i+1)``. Only non-negative powers are formed, so the
scan is stable for any ``a`` in [0, 1] and any T, and memory is O(B*H*T*D + H*CHUNK^2), never
O(T^2). Autograd differentiates it, including with respect to the decay and the scale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._common import exact_under_autocast

CHUNK = 64


def _decay_powers(a: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``W[h,t,s] = a_h^(t-s)`` for ``s <= t < n`` (0 above the diagonal), and ``a_h^(t+1)``.

    Exponent 0 is written as the constant 1 so that no ``0 * a^-1`` appears in the gradient at a=0.
    """
    idx = torch.arange(n, device=a.device)
    expo = idx[:, None] - idx[None, :]  # (n, n)
    a3 = a.view(-1, 1, 1)
    powers = torch.pow(a3, expo.clamp(min=1).to(a.dtype))
    w = torch.where(expo == 0, torch.ones_like(powers), powers)
    w = w * (expo >= 0).to(a.dtype)
    carry = torch.pow(a.view(-1, 1), (idx + 1).to(a.dtype))  # (H, n)
    return w, carry


@exact_under_autocast
def leaky_average(x: torch.Tensor, decay: float | torch.Tensor, *, normalize: bool = False,
                  scale: float | torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    """Per-head exponential moving sum over time, optionally L2-normalised and scaled.

    Args:
        x: ``(B, H, T, D)`` input.
        decay: per-step multiplier ``a_h`` in [0, 1]: a float or a tensor of shape ``(H,)``.
        normalize: divide each ``y[b,h,t]`` by ``max(||y[b,h,t]||_2, eps)``, then multiply by scale.
        scale: None (1.0), a float, or a ``(H,)`` tensor; only used with ``normalize=True``.
        eps: lower bound of the norm (F.normalize semantics).

    Returns:
        ``(B, H, T, D)`` tensor of ``x.dtype`` (computed in float32, or float64 for float64 input).
    """
    B, H, T, D = x.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute)
    a = decay.to(compute) if isinstance(decay, torch.Tensor) else torch.full((H,), float(decay), dtype=compute, device=x.device)
    chunks = []
    carry = xc.new_zeros(B, H, 1, D)
    for start in range(0, T, CHUNK):
        xs = xc[:, :, start:start + CHUNK]
        n = xs.shape[2]
        w, pw = _decay_powers(a, n)
        ys = w.unsqueeze(0) @ xs + pw.view(1, H, n, 1) * carry
        chunks.append(ys)
        carry = ys[:, :, -1:]
    y = torch.cat(chunks, dim=2)
    if normalize:
        y = F.normalize(y, dim=-1, eps=eps)
        if scale is not None:
            s = scale.to(compute).view(1, H, 1, 1) if isinstance(scale, torch.Tensor) else scale
            y = y * s
    return y.to(x.dtype)
