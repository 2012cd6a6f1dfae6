"""PyTorch reference of the leaky-average key scan.

A per-head decay: ``y[t] = x[t] + a_h * y[t-1]`` is evaluated chunk by chunk: inside a chunk of
``CHUNK`` steps a lower-triangular matrix of powers ``a^(t-s)``, ``0 <= t-s < CHUNK``, does the sum as
one matmul; between chunks a carry is propagated with ``a^(i+1)``. Only non-negative powers are
formed, so the scan is stable for any ``a`` in [0, 1] and any T, and memory is O(B*H*T*D + H*CHUNK^2),
never O(T^2).

A time-varying decay ``a[b, h, t]`` (or ``a[b, h, t, d]``) and an optional gate: ``y[t] = g[t] x[t] +
a[t] y[t-1]``, by recursive doubling: after the pass of shift s, y[t] holds the sum over the last 2s
steps and A[t] the product of their decays, so log2(T) vectorised passes finish the scan. Products of
decays only (no logarithms), so decays of exactly 0 and 1 are exact. Autograd differentiates both,
including with respect to the decay, the gate and the scale.
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


def _time_varying_scan(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``y[t] = x[t] + a[t] y[t-1]`` over dim 2 by recursive doubling; a is (B, H, T, 1) or (B, H, T, D)."""
    y, prod = x, a
    shift = 1
    while shift < x.shape[2]:
        y = torch.cat([y[:, :, :shift], y[:, :, shift:] + prod[:, :, shift:] * y[:, :, :-shift]], dim=2)
        prod = torch.cat([prod[:, :, :shift], prod[:, :, shift:] * prod[:, :, :-shift]], dim=2)
        shift *= 2
    return y


@exact_under_autocast
def leaky_average(x: torch.Tensor, decay: float | torch.Tensor, *, normalize: bool = False,
                  scale: float | torch.Tensor | None = None, eps: float = 1e-12,
                  gate: torch.Tensor | None = None) -> torch.Tensor:
    """Exponential moving sum over time, per head or time-varying, optionally gated, L2-normalised and scaled.

    Args:
        x: ``(B, H, T, D)`` input.
        decay: the per-step multiplier in [0, 1]: a float or a tensor of shape ``(H,)`` (per head),
            ``(B, H, T)`` or ``(B, H, T, D)`` (time-varying: ``decay[..., t]`` multiplies ``y[t-1]``).
        normalize: divide each ``y[b,h,t]`` by ``max(||y[b,h,t]||_2, eps)``, then multiply by scale.
        scale: None (1.0), a float, or a ``(H,)`` tensor; only used with ``normalize=True``.
        eps: lower bound of the norm (F.normalize semantics).
        gate: None, or a ``(B, H, T)`` tensor multiplying ``x[t]`` before it enters the sum.

    Returns:
        ``(B, H, T, D)`` tensor of ``x.dtype`` (computed in float32, or float64 for float64 input).
    """
    B, H, T, D = x.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute)
    if gate is not None:
        xc = xc * gate.to(compute).unsqueeze(-1)
    if isinstance(decay, torch.Tensor) and decay.dim() > 1:
        a = decay.to(compute)
        y = _time_varying_scan(xc, a.unsqueeze(-1) if a.dim() == 3 else a)
        return _normalized(y, normalize, scale, eps, H, compute).to(x.dtype)
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
    return _normalized(y, normalize, scale, eps, H, compute).to(x.dtype)


def _normalized(y: torch.Tensor, normalize: bool, scale: float | torch.Tensor | None, eps: float, H: int,
                compute: torch.dtype) -> torch.Tensor:
    if normalize:
        y = F.normalize(y, dim=-1, eps=eps)
        if scale is not None:
            s = scale.to(compute).view(1, H, 1, 1) if isinstance(scale, torch.Tensor) else scale
            y = y * s
    return y


def stable_gate_and_decay(log_gate: torch.Tensor, log_decay: torch.Tensor, *,
                          rate_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch reference of :func:`mosaic_kernels.leaky_average.stable_gate_and_decay` (no validation): the
    (gate, decay) pair of (B, H, T) float32 tensors, M_t = L_t + max_{s <= t} (log_gate_s - L_s) in float64 with
    L the cumulative log-decay; ``rate_bias`` (H,) makes ``log_decay`` rates r, the log-decays -|r + b_h|."""
    if rate_bias is not None:   # the kernel's expression: float32 (float64 for float64 rates), then widened
        acc = torch.promote_types(log_decay.dtype, torch.float32)
        log_decay = -(log_decay.to(acc) + rate_bias.to(acc)[:, None]).abs()
    # One cast each (a kernel launch), into contiguous memory: the cumulative sum and maximum run along T,
    # which a caller's transposed (B, T, H) projection would leave strided (a slow scan kernel on the GPU).
    log_gate, log_decay = (t.to(torch.float64, memory_format=torch.contiguous_format) for t in (log_gate, log_decay))
    with torch.no_grad():
        cum = torch.cumsum(log_decay, dim=-1)
        peak = cum + torch.cummax(log_gate - cum, dim=-1).values                             # M_t
        before = torch.cat([peak[..., :1] - log_decay[..., :1], peak[..., :-1]], dim=-1)     # M_{t-1}
    # The exponents are differences of numbers as large as |M|: taken in float64, they are exact to
    # float32's precision whatever T; only their (small) results are rounded to float32.
    gate = torch.exp((log_gate - peak).float())
    # arg <= 0 up to float64 rounding, which the min removes; it is exactly 0 wherever the state outweighs
    # the new input, so the gradient must pass there: clamp's gradient at its bound is 1 in some torch
    # releases and 0 in others, and would drop d/d log_decay at every such step. Subtracting the
    # (detached) excess keeps the value min(arg, 0) and the gradient 1, as the kernel's backward has it.
    arg = log_decay + before - peak
    decay = torch.exp((arg - arg.detach().clamp(min=0.0)).float())
    return gate, decay
