"""Dense PyTorch reference of the strictly causal Gaussian-kernel attention.

This is the CPU path of :func:`mosaic_kernels.mosaic_attention` and the ground truth the Triton
kernels are compared with on the GPU (in float64). It materialises the T x T logits of every head,
so it is meant for CPU training at model sizes and for tests, not for long sequences.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._common import exact_under_autocast


def _band_views(window: int | torch.Tensor | None, delay: int | torch.Tensor, device: torch.device | str,
                ndim: int) -> tuple:
    """(window, delay) ready to broadcast against a t-indexed tensor of ``ndim`` trailing dims: ints as they
    are, a (H,) window as (1, H, 1...), a (B, H) one (a band table's) as (B, H, 1...), a (B,) delay as
    (B, 1, 1...), a (B, H) one as (B, H, 1...); negative delays count as 0."""
    tail = (1,) * ndim
    if isinstance(window, torch.Tensor):
        window = window.to(device)
        window = window.view(1, -1, *tail) if window.dim() == 1 else window.view(*window.shape, *tail)
    if isinstance(delay, torch.Tensor):
        delay = delay.to(device).clamp(min=0)
        delay = delay.view(-1, 1, *tail) if delay.dim() == 1 else delay.view(*delay.shape, *tail)
    return window, delay


def band_mask(T: int, window: int | torch.Tensor | None, delay: int | torch.Tensor,
              device: torch.device | str) -> torch.Tensor:
    """The keys each query sees: ``mask[..., t, j]`` is True when ``t - window <= j <= t - delay``, a
    (T, T) mask for an int window and delay, else (B or 1, H or 1, T, T): a (H,) tensor of windows (one per
    head) or a (B, H) one, a (B,) tensor of delays (one per sequence) or a (B, H) one (negative delays count
    as 0).
    Without a window and with delay 1 it is the strict causal mask ``j < t``."""
    lag = torch.arange(T, device=device)[:, None] - torch.arange(T, device=device)[None, :]  # t - j
    window, delay = _band_views(window, delay, device, 2)
    if isinstance(window, torch.Tensor) or isinstance(delay, torch.Tensor):
        lag = lag.view(1, 1, T, T)
    keep = lag >= delay
    return keep & (lag <= window) if window is not None else keep


@exact_under_autocast
def mosaic_attention(k: torch.Tensor, v: torch.Tensor, scale: float | torch.Tensor | None = None, *,
                     window: int | torch.Tensor | None = None, delay: int | torch.Tensor = 1, dropout_p: float = 0.0,
                     generator: torch.Generator | None = None, band: torch.Tensor | None = None,
                     bandwidth: torch.Tensor | None = None, unconstrained: bool = False) -> torch.Tensor:
    """Band-masked attention whose queries are its keys, computed densely.

    ``y[b,h,t] = sum_{t-window <= j <= t-delay} softmax_j(scale * <k[b,h,t], k[b,h,j]>) v[b,h,j]``, and 0
    for a row that sees no key (row 0 under the default, strictly causal, mask: delay 1, no window).

    Args:
        k: keys, also the queries, shape ``(B, H, T, D)``.
        v: values, shape ``(B, H, T, D)``.
        scale: None (1.0), a float, a tensor of shape ``(H,)``, or per row ``(H, T)`` or ``(B, H, T)``.
        window: how far back a row sees (None: to position 0), or one per head (``(H,)``) or per sequence
            and head (``(B, H)``).
        delay: the most recent key a row sees is ``t - delay``: an int, or a ``(B,)`` tensor, one per
            sequence, or ``(B, H)``.
        band: instead of window and delay, their ``(B, H, 2)`` table (``band_table``).
        bandwidth, unconstrained: instead of ``scale``, the ``(3, H)`` rows (beta0, beta1, alpha) of the adaptive
            bandwidth: the scale is :func:`row_bandwidth` of them over this band.
        dropout_p: dropout on the attention probabilities, after the softmax (kept ones divided by
            ``1 - p``), drawn as ``torch.nn.functional.dropout`` draws it (the official code's stream on
            the CPU); the kernels draw another mask.
        generator: the torch.Generator of that draw (default: the global one).

    Returns:
        ``(B, H, T, D)`` tensor of ``v.dtype``. Softmax and products run in float32 for 16-bit
        inputs and in float64 for float64 inputs.
    """
    B, H, T, D = k.shape
    if bandwidth is not None:
        scale = row_bandwidth(*bandwidth.unbind(0), T, window=window, delay=delay, unconstrained=unconstrained,
                              band=band)
    if band is not None:
        window, delay = band[..., 0], band[..., 1]
    compute = torch.float64 if k.dtype == torch.float64 else torch.float32
    kc, vc = k.to(compute), v.to(compute)
    logits = kc @ kc.transpose(-1, -2)  # (B, H, T, T)
    if scale is not None:
        if isinstance(scale, torch.Tensor):
            s = scale.to(compute)
            s = s.view(1, H, 1, 1) if s.dim() == 1 else s.reshape(-1, H, T, 1)  # per head, or per row t
        else:
            s = scale
        logits = logits * s
    keep = band_mask(T, window, delay, k.device)
    masked = logits.masked_fill(~keep, float("-inf"))
    # Softmax written out so that row 0 (no key) is an exact 0 with a 0 gradient, never NaN.
    row_max = masked.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    weights = torch.exp(masked - row_max)
    probs = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(compute).tiny)
    if dropout_p > 0.0:
        # The random stream of torch.nn.functional.dropout (what the official code applies to these
        # weights): one Bernoulli draw of keep-probability 1 - p per weight, the kept ones divided by 1 - p.
        kept = torch.empty_like(probs).bernoulli_(1.0 - dropout_p, generator=generator)
        probs = probs * kept / (1.0 - dropout_p)
    return (probs @ vc).to(v.dtype)


def row_counts(T: int, window: int | torch.Tensor | None, delay: int | torch.Tensor,
               device: torch.device | str) -> torch.Tensor:
    """How many keys each row of the band sees, ``max(t - delay - max(t - window, 0) + 1, 0)``: (T,) for an
    int window and delay, else (B or 1, H or 1, T) for the tensors of :func:`band_mask` (negative delays
    count as 0). The row sums of :func:`band_mask`, without the (T, T) mask."""
    t = torch.arange(T, device=device)
    window, delay = _band_views(window, delay, device, 1)
    if isinstance(window, torch.Tensor) or isinstance(delay, torch.Tensor):
        t = t.view(1, 1, T)
    lo = (t - window).clamp(min=0) if window is not None else torch.zeros_like(t)
    return (t - delay - lo + 1).clamp(min=0)


def row_bandwidth(beta0: torch.Tensor, beta1: torch.Tensor, alpha: torch.Tensor, T: int, *,
                  window: int | torch.Tensor | None = None, delay: int | torch.Tensor = 1,
                  unconstrained: bool = False, band: torch.Tensor | None = None) -> torch.Tensor:
    """``beta1 * n_t**alpha + beta0`` per head and row (``n_t**alpha`` = 0 where n_t = 0): float32 (H, T), or
    (B, H, T) for a tensor delay ((B,) or (B, H)) or a ``band`` table; a (H,) tensor window is one window per
    head; float64 for float64 parameters. ``unconstrained``: softplus(beta0), softplus(beta1) and
    sigmoid(alpha) stand for the three."""
    if band is not None:
        window, delay = band[..., 0], band[..., 1]
    dtype = torch.promote_types(beta0.dtype, torch.float32)
    n = row_counts(T, window, delay, beta0.device).to(dtype)       # (T,), or (B or 1, H or 1, T)
    b0, b1, a = (p.to(dtype)[:, None] for p in (beta0, beta1, alpha))
    if unconstrained:
        b0, b1, a = F.softplus(b0), F.softplus(b1), torch.sigmoid(a)
    # clamp_min keeps pow's gradient finite at n = 0, where the mask zeroes the term.
    out = b1 * n.clamp_min(1.0).pow(a) * (n > 0) + b0
    return out if isinstance(delay, torch.Tensor) else out.view(-1, T)
