"""PyTorch reference of the persistent-memory retrieval: dense scores over the slots, softmax, dropout."""
from __future__ import annotations

import torch

from .._common import exact_under_autocast


@exact_under_autocast
def persistent_memory(q: torch.Tensor, slot_keys: torch.Tensor, slot_values: torch.Tensor, *,
                      out_scale: float | torch.Tensor | None = None,
                      dropout_p: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``c_h * dropout(softmax_j(<q[b,h,t], K[h,j]>)) @ V[h]``, computed in float32 (float64 stays).

    Materialises the (B, H, T, P) scores: the plain version of :func:`mosaic_kernels.persistent_memory`.
    """
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = torch.einsum("bhtd,hpd->bhtp", q.to(dtype), slot_keys.to(dtype))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        keep = torch.rand(probs.shape, generator=generator, device=probs.device) >= dropout_p
        probs = probs * keep / (1.0 - dropout_p)
    y = torch.einsum("bhtp,hpd->bhtd", probs, slot_values.to(dtype))
    if out_scale is not None:
        if isinstance(out_scale, torch.Tensor):
            out_scale = out_scale.to(dtype).view(1, -1, 1, 1)
        y = y * out_scale
    return y.to(q.dtype)
