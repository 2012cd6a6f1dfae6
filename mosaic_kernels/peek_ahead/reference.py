"""PyTorch reference of the peek-ahead value: shift mix, L2 norm and scale, differentiated by autograd."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._common import exact_under_autocast


@exact_under_autocast
def peek_ahead_value(x: torch.Tensor, mix: float | torch.Tensor, *, scale: float | torch.Tensor | None = None,
                     eps: float = 1e-12) -> torch.Tensor:
    """``scale_h * normalize((1 - mix_h) x[t+1] + mix_h x[t])`` over the last dim, ``x[T] := 0``.

    Args:
        x: ``(B, H, T, D)`` input (the value projection, any strides).
        mix: the per-head weight ``c_h`` of the current step: a float or a ``(H,)`` tensor.
        scale: None (1.0), a float, or a ``(H,)`` tensor.
        eps: lower bound of the norm (F.normalize semantics).
    """
    H = x.shape[1]
    c = mix.view(1, H, 1, 1) if isinstance(mix, torch.Tensor) else mix
    nxt = F.pad(x[:, :, 1:], (0, 0, 0, 1))  # row t holds x[t+1]; zero past the end
    y = F.normalize((1 - c) * nxt + c * x, dim=-1, eps=eps)
    if scale is not None:
        y = y * (scale.view(1, H, 1, 1) if isinstance(scale, torch.Tensor) else scale)
    return y
