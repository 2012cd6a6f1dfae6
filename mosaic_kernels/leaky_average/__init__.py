"""The leaky-average key scan: ``y[t] = g[t] x[t] + decay[t] * y[t-1]``, optionally L2-normalised and scaled."""
from __future__ import annotations

import torch

from .. import _common
from .._common import (
    as_heads_last,
    call_signature,
    check_heads,
    float_tensor_on,
    interpreter_enabled,
    per_head,
    remember_plan,
    use_triton,
)
from . import reference as _reference

__all__ = ["leaky_average", "stable_gate_and_decay"]


# The scan's cached call plans (mosaic_kernels._common.CALL_PLANS, on unless MOSAIC_PLANS=0): call signature ->
# function.ScanPlan, made on the Triton path outside torch.compile (which traces the registered op). The key holds
# what the checks and the launches read: the tensors' shapes, strides, dtypes and devices, the other arguments'
# types and values, the settings the tile and chunk choices read (function.tunables(): tests and tuning change them),
# and whether the interpreter runs the kernels.
_PLANS: dict = {}


def _signature(x: object, decay: object, normalize: object, scale: object, eps: object, gate: object,
               heads_last: object) -> tuple | None:
    """The key of a call in _PLANS (None: no plan for it)."""
    key = call_signature(x, decay, scale, eps, gate)
    if key is None or type(x) is not torch.Tensor:
        return None
    from . import function

    time_varying = isinstance(decay, torch.Tensor) and decay.dim() > 1
    return (*key, bool(normalize), bool(heads_last), function.tunables(time_varying),
            x.is_cuda or interpreter_enabled())


def _time_varying(name: str, t: torch.Tensor, shapes: tuple, x: torch.Tensor) -> torch.Tensor:
    if tuple(t.shape) not in shapes:
        raise ValueError(f"{name} must have shape {' or '.join(str(s) for s in shapes)}, got {tuple(t.shape)}")
    return float_tensor_on(name, t, x, "x")


def leaky_average(x: torch.Tensor, decay: float | torch.Tensor, *, normalize: bool = False,
                  scale: float | torch.Tensor | None = None, eps: float = 1e-12, gate: torch.Tensor | None = None,
                  heads_last: bool = False) -> torch.Tensor:
    """Exponential moving sum over time, per head or time-varying, gated, fused with L2 normalisation and a scale.

    ``y[b,h,t] = gate[b,h,t] * x[b,h,t] + decay[., t] * y[b,h,t-1]`` with ``y[b,h,-1] = 0`` (no gate: 1).
    With ``normalize=True`` the result is ``scale_h * y / max(||y||_2, eps)`` over the last dimension
    (F.normalize semantics).

    Args:
        x: ``(B, H, T, D)`` tensor, float32, float16, bfloat16 or float64, any strides.
        decay: the per-step multiplier in [0, 1]: a float (outside [0, 1] raises), a ``(H,)`` tensor
            (one per head), or a time-varying ``(B, H, T)`` (one per head and step) or ``(B, H, T, D)``
            tensor (one per channel and step), any strides; ``decay[..., t]`` multiplies ``y[t-1]``.
            A time-varying decay of float32, bfloat16 or float16 is read by the kernels in its own dtype
            (no float32 copy), its gradient written in that dtype; other dtypes are converted to float32.
            A tensor's gradient is returned when it requires grad. A tensor is clamped to [0, 1] on
            every path, so an entry outside gives the same finite result on the kernel and the
            reference, with the clamp's zero gradient; it is not checked, because checking would
            synchronise the device with the host on every call.
        normalize: apply the L2 normalisation and the scale.
        scale: None (1.0), a float, or a ``(H,)`` tensor; requires ``normalize=True``.
        eps: lower bound of the norm, > 0.
        gate: None, or a ``(B, H, T)`` tensor multiplying each step's input (its gradient is returned).
            For gates whose logarithms span more than float32's range, pass the pair that
            :func:`stable_gate_and_decay` derives from the logarithms (normalize=True).
        heads_last: return a ``(B, H, T, D)`` view of a contiguous ``(B, T, H, D)`` buffer instead of
            a contiguous tensor: the layout of a head-split ``(B, T, H*D)`` projection, so that
            merging or folding the heads afterwards costs no copy.

    Returns:
        A ``(B, H, T, D)`` tensor of ``x.dtype``, contiguous unless ``heads_last``. When x itself is
        heads-last, so is the gradient returned for it. Accumulation is float32 (float64 for
        float64 input). CUDA tensors run the Triton kernels; CPU tensors the PyTorch reference,
        or the Triton kernels through the interpreter when ``TRITON_INTERPRET=1``.

    Raises:
        ValueError: on a bad shape, dtype, device, decay, gate or scale.

    Example:
        >>> x = torch.randn(2, 4, 128, 64)
        >>> k = leaky_average(x, torch.full((4,), 0.9), normalize=True, scale=2.0)
        >>> decay, gate = torch.rand(2, 4, 128), torch.rand(2, 4, 128)        # per head and step
        >>> k2 = leaky_average(x, decay, gate=gate, normalize=True)
    """
    key = None  # the call's plan key, taken before the checks convert its arguments
    if _common.CALL_PLANS and not torch.compiler.is_compiling():
        key = _signature(x, decay, normalize, scale, eps, gate, heads_last)
        plan = _PLANS.get(key) if key is not None else None
        if plan is not None:  # a signature already checked, on the Triton path
            return plan(x, decay, scale, gate)
    B, H, T, D = check_heads("x", x)
    if isinstance(decay, torch.Tensor) and decay.dim() > 1:
        decay = _time_varying("decay", decay, ((B, H, T), (B, H, T, D)), x)
    else:
        decay = per_head("decay", decay, H, x, low=0.0, high=1.0)
        if decay is None:
            raise ValueError(f"decay must be a float in [0, 1] or a tensor of shape ({H},), ({B}, {H}, {T}) or "
                             f"({B}, {H}, {T}, {D}), got None")
    if gate is not None:
        gate = _time_varying("gate", gate, ((B, H, T),), x)
    scale = per_head("scale", scale, H, x)
    if scale is not None and not normalize:
        raise ValueError("scale is only applied with normalize=True; pass normalize=True or scale=None")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    if use_triton(x):
        from .function import ScanPlan, leaky_average_triton

        if key is not None:
            plan = remember_plan(_PLANS, key, ScanPlan(x, decay, scale, bool(normalize), float(eps), bool(heads_last),
                                                       gate))
            return plan(x, decay, scale, gate)
        # The kernels clamp a tensor decay themselves, with the gradient of the reference's clamp below.
        return leaky_average_triton(x, decay, normalize=normalize, scale=scale, eps=float(eps),
                                    heads_last=bool(heads_last), gate=gate)
    if isinstance(decay, torch.Tensor):
        # Entries in [0, 1] pass through (gradient 1, boundaries included); only the others are
        # clamped (gradient 0). clamp alone would do, but its gradient at exactly 0 and 1 differs
        # between torch releases (1 in 2.13, 0 in 2.15), and decays of 0 and 1 are legitimate.
        decay = torch.where((decay >= 0) & (decay <= 1), decay, decay.clamp(0.0, 1.0))
    y = _reference.leaky_average(x, decay, normalize=normalize, scale=scale, eps=float(eps), gate=gate)
    return as_heads_last(y, bool(heads_last))


def stable_gate_and_decay(log_gate: torch.Tensor, log_decay: torch.Tensor, *,
                          rate_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (gate, decay) pair, both in [0, 1], that gives ``leaky_average(..., normalize=True)`` the
    keys of gates ``exp(log_gate)`` and decays ``exp(log_decay)`` (each ``(B, H, T)``, natural logs,
    ``log_decay <= 0``) whatever the gates' range: exp(log_gate) itself overflows float32 past 88.

    The scan's state at step t is rescaled by exp(-M_t), with M_t = max(M_{t-1} + log_decay_t,
    log_gate_t) the log of the largest coefficient any input has in it: gate_t = exp(log_gate_t - M_t)
    and decay_t = exp(log_decay_t + M_{t-1} - M_t), both <= 1, and the largest input of every state
    has coefficient 1. The normalised output is unchanged (each state is scaled by a positive number),
    and so are its gradients, which are taken with M held constant: the output does not depend on M.
    M is computed in float64 (its running sums of log-decays grow with T) as cumulative sums and
    maxima: M_t = L_t + max_{s <= t} (log_gate_s - L_s) with L the cumulative log-decay. Returns
    float32 tensors (views of one (2, B, H, T) tensor on the kernel path), differentiable with respect
    to both logs. CUDA tensors (and CPU ones under ``TRITON_INTERPRET=1``) run one Triton launch for the
    pair (leaky_average/triton_gates.py); float64 and other CPU tensors its PyTorch reference
    (leaky_average/reference.py), with the same formulas and gradients.

    ``rate_bias``: an ``(H,)`` float tensor; ``log_decay`` then holds rates r and the log-decays are
    ``-|r + rate_bias_h|`` (Memory Mosaics v2's decays exp(-|W_l x + b_l|)), formed inside the kernel in
    float32 (float64 for float64 rates) with the gradients of r and of the bias (the PyTorch path: the
    same expression). Three elementwise launches forward and about five backward fewer than forming
    them outside.
    """
    if log_gate.shape != log_decay.shape or log_gate.dim() != 3:
        raise ValueError(f"log_gate and log_decay must both have shape (B, H, T), got {tuple(log_gate.shape)} and "
                         f"{tuple(log_decay.shape)}")
    float_tensor_on("log_gate", log_gate, log_gate)
    float_tensor_on("log_decay", log_decay, log_gate, "log_gate")
    if rate_bias is not None:
        if rate_bias.shape != (log_gate.shape[1],):
            raise ValueError(f"rate_bias must have shape ({log_gate.shape[1]},) (one per head), got "
                             f"{tuple(rate_bias.shape)}")
        float_tensor_on("rate_bias", rate_bias, log_gate, "log_gate")
    if use_triton(log_gate) and log_decay.dtype != torch.float64:
        from .function import STABLE_GATES

        pair = STABLE_GATES.apply(log_gate, log_decay, None if rate_bias is None else rate_bias.float())
        # unbind, not pair[0] and pair[1]: its backward stacks both gradients in one launch, where two
        # selects' backward fills two zero tensors, copies each gradient in and adds them (five launches)
        gate, decay = pair.unbind(0)
        return gate, decay
    return _reference.stable_gate_and_decay(log_gate, log_decay, rate_bias=rate_bias)
