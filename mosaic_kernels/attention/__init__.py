"""Strictly causal Gaussian-kernel attention whose keys are also its queries."""
from __future__ import annotations

import torch

from .. import _common
from .._common import (
    MAX_HEAD_DIM,
    as_heads_last,
    check_dropout,
    check_heads,
    check_like,
    check_philox_counters,
    check_tensor,
    float_tensor_on,
    interpreter_enabled,
    per_head,
    remember_plan,
    use_triton,
)
from . import reference as _reference

__all__ = ["band_table", "mosaic_attention", "row_bandwidth"]


# The attention's cached call plans (mosaic_kernels._common.CALL_PLANS, on unless MOSAIC_PLANS=0): eager calls of a
# signature already checked skip the checks and the host work of planning their launches:
# signature (see _signature) -> function.AttentionPlan. Only the plain call has one (scale None or a number, an
# int window and delay, no band table, no adaptive bandwidth), on the Triton path, outside torch.compile (which
# traces the registered op instead). What a plan's launches depend on beyond the signature is in its key too:
# function.DELTA_IN_KERNEL and HEAD_GROUP, and whether the interpreter runs the kernels. Tests that patch the
# tile choices clear it (tests/conftest.py). Cached generation sees a new T at each token: bounded.
_PLANS: dict = {}


def _signature(k: object, v: object, scale: object, window: object, delay: object, dropout_p: object,
               generator: object, heads_last: object) -> tuple | None:
    """The key of a call in _PLANS: everything the checks and the launches read (each Python argument with its
    type, so that True and 1 differ; the inputs' shapes, strides, dtypes and devices), or None for a call that
    has no plan (a tensor scale, window or delay, inputs that are not tensors)."""
    if not (type(k) is torch.Tensor and type(v) is torch.Tensor and type(delay) is int
            and (window is None or type(window) is int) and (scale is None or type(scale) in (float, int))):
        return None
    from . import function

    return (k.shape, k.stride(), k.dtype, k.device, v.shape, v.stride(), v.dtype, v.device, type(scale), scale,
            window, delay, type(dropout_p), dropout_p, type(generator), bool(heads_last), function.DELTA_IN_KERNEL,
            function.HEAD_GROUP, k.is_cuda or interpreter_enabled())


def _row_scale(scale: torch.Tensor, B: int, H: int, T: int, ref: torch.Tensor) -> torch.Tensor:
    """Check a per-row scale: (H, T) or (B, H, T), floating, on the inputs' device."""
    if scale.shape not in ((H, T), (B, H, T)):
        raise ValueError(f"scale must be a float or a tensor of shape ({H},) (per head), ({H}, {T}) or ({B}, {H}, {T}) "
                         f"(per row), got {tuple(scale.shape)}")
    return float_tensor_on("scale", scale, ref)


def _check_bandwidth(bandwidth: object, scale: object, H: int, ref: torch.Tensor) -> None:
    """A ``bandwidth`` argument: a floating (3, H) tensor on the inputs' device, with no ``scale`` beside it."""
    if scale is not None:
        raise ValueError("give either scale or bandwidth (the adaptive bandwidth's rows), not both")
    if not isinstance(bandwidth, torch.Tensor) or bandwidth.shape != (3, H):
        got = f"shape {tuple(bandwidth.shape)}" if isinstance(bandwidth, torch.Tensor) else repr(bandwidth)
        raise ValueError(f"bandwidth must be a tensor of shape (3, {H}) (rows beta0, beta1, alpha), got {got}")
    float_tensor_on("bandwidth", bandwidth, ref)


def _integer_tensor(value: torch.Tensor) -> bool:
    return not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)


def _check_band(window: object, delay: object, B: int, ref: torch.Tensor, H: int | None = None) -> None:
    """Check a band's window (None, an int >= 0, or an integer (H,) tensor) and delay (an int >= 0, or an
    integer (B,) or (B, H) tensor) against B sequences and H heads (None: no per-head band, as
    ``row_bandwidth`` does not know H until its coefficients are read)."""
    per_head = "" if H is None else f", or an integer tensor of shape ({H},) (one per head)"
    if isinstance(window, torch.Tensor):
        if H is None or window.shape != (H,) or not _integer_tensor(window):
            raise ValueError(f"window must be None, an int >= 0{per_head}, got {window.dtype} of shape "
                             f"{tuple(window.shape)}")
        if window.device != ref.device:
            raise ValueError(f"window must be on {ref.device} like the inputs, got {window.device}")
    elif window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 0):
        raise ValueError(f"window must be None or an int >= 0 (how many keys back a row sees){per_head}, got {window!r}")
    shapes = [(B,)] + ([(B, H)] if H is not None else [])
    if isinstance(delay, torch.Tensor):
        if delay.shape not in shapes or not _integer_tensor(delay):
            raise ValueError(f"delay must be an int or an integer tensor of shape ({B},) (one per sequence)"
                             + (f" or ({B}, {H}) (one per sequence and head)" if H is not None else "")
                             + f", got {delay.dtype} of shape {tuple(delay.shape)}")
        if delay.device != ref.device:
            raise ValueError(f"delay must be on {ref.device} like the inputs, got {delay.device}")
    elif isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        raise ValueError(f"delay must be an int >= 0 (the most recent key is t - delay) or a ({B},) tensor, got {delay!r}")


def _check_band_table(band: object, window: object, delay: object, B: int, H: int, ref: torch.Tensor) -> None:
    """A ``band`` argument: an integer (B, H, 2) tensor on the inputs' device, with window and delay left
    at their defaults."""
    if not isinstance(band, torch.Tensor) or band.shape != (B, H, 2) or not _integer_tensor(band):
        got = f"{band.dtype} of shape {tuple(band.shape)}" if isinstance(band, torch.Tensor) else repr(band)
        raise ValueError(f"band must be an integer tensor of shape ({B}, {H}, 2) (window, delay per sequence and "
                         f"head; see band_table), got {got}")
    if band.device != ref.device:
        raise ValueError(f"band must be on {ref.device} like the inputs, got {band.device}")
    if window is not None or not (isinstance(delay, int) and delay == 1):
        raise ValueError("give either band or window and delay, not both")


def band_table(window: int | torch.Tensor | None, delay: int | torch.Tensor, B: int, H: int, T: int,
               device: torch.device | str | None = None) -> torch.Tensor:
    """The band of every sequence and head as one ``(B, H, 2)`` int32 tensor of (window, delay) pairs, the
    form ``mosaic_attention(..., band=)`` and ``row_bandwidth(..., band=)`` take directly: a model whose
    band is the same in every layer builds it once per forward instead of once per call.

    Args:
        window: None (no window: T), an int >= 0, or an integer ``(H,)`` tensor (one per head).
        delay: an int >= 0, an integer ``(B,)`` tensor (one per sequence) or ``(B, H)`` tensor.
        B, H, T: the batch, heads and sequence length of the calls it is for.
        device: where the table goes (default: that of a tensor argument, else the CPU).

    Raises:
        ValueError: on a bad window or delay, as ``mosaic_attention``.

    Example:
        >>> delay = torch.tensor([[1, 1, 64, 64], [1, 1, 100, 100]])        # per sequence and head
        >>> table = band_table(torch.tensor([32, 32, 127, 127]), delay, B=2, H=4, T=128)
        >>> table.shape
        torch.Size([2, 4, 2])
    """
    from .function import band_table as _table

    if device is None:
        device = next((t.device for t in (window, delay) if isinstance(t, torch.Tensor)), torch.device("cpu"))
    device = torch.device(device)
    _check_band(window, delay, B, torch.empty(0, device=device), H)
    return _table(window, delay, B, H, T, device)


def mosaic_attention(k: torch.Tensor, v: torch.Tensor, scale: float | torch.Tensor | None = None, *,
                     window: int | torch.Tensor | None = None, delay: int | torch.Tensor = 1, dropout_p: float = 0.0,
                     generator: torch.Generator | None = None, heads_last: bool = False,
                     band: torch.Tensor | None = None, bandwidth: torch.Tensor | None = None,
                     unconstrained: bool = False) -> torch.Tensor:
    """Softmax attention with queries = keys over a band of the past, with a per-head or per-row bandwidth.

    ``y[b,h,t] = sum_{lo_t <= j <= hi_t} softmax_j(scale * <k[b,h,t], k[b,h,j]>) v[b,h,j]`` with
    ``lo_t = t - window`` and ``hi_t = t - delay``; a row that sees no key is exactly 0. The default
    (no window, delay 1) is strictly causal: position t never sees itself, and ``y[:,:,0] = 0``.
    Drop-in where you would call attention with ``q = k``. Key blocks outside every row's band are
    skipped, so the cost grows with the band, not with T^2.

    Args:
        k: ``(B, H, T, D)`` keys, also the queries; float32, float16, bfloat16 or float64; any strides.
        v: ``(B, H, T, D)`` values, same shape, dtype and device as ``k``.
        scale: None (1.0), a float, a ``(H,)`` tensor (per head), or a ``(H, T)`` or ``(B, H, T)``
            tensor (per row: the bandwidth of row t); a tensor's gradient is returned when it
            requires grad. The Memory Mosaic pre-scales its keys and passes None.
        window: None (every earlier key down to 0) or an int >= 0: row t sees keys from ``t - window``.
            A short-term memory of h keys is ``window=h`` with ``delay=1``. Or an integer ``(H,)``
            tensor, one window per head (an entry of T - 1 or more is no window; entries are not checked
            on the host, which would need a device sync).
        delay: an int >= 0, or an integer ``(B,)`` tensor (one per sequence: training draws it per
            sequence, entries below 0 count as 0), or ``(B, H)`` (one per sequence and head): row t sees
            keys up to ``t - delay``. A long-term memory that skips the last m keys is ``delay=m + 1``...
            or m, as its model defines it. With per-head windows and delays, heads of different bands
            (Memory Mosaics v2's short-term and long-term memories) run in one call.
        dropout_p: probability of dropping each attention weight (after the softmax; the kept ones
            are divided by ``1 - p``), in [0, 1). The kernels draw with 16-bit resolution (p is
            rounded to a multiple of 2^-16) and regenerate the mask in the backward from a Philox
            seed, never storing it.
        generator: the torch.Generator the dropout seed is drawn from (default: the global one).
        heads_last: return a ``(B, H, T, D)`` view of a contiguous ``(B, T, H, D)`` buffer instead of
            a contiguous tensor, so that merging the heads before an output projection,
            ``y.transpose(1, 2).reshape(B, T, H * D)``, costs no copy (SDPA's flash and cuDNN
            kernels give this layout for head-split inputs).
        band: instead of ``window`` and ``delay``, the ``(B, H, 2)`` integer table of (window, delay) of
            every sequence and head that :func:`band_table` builds (built once, read by every call).
        bandwidth: instead of ``scale``, a floating ``(3, H)`` tensor of rows (beta0, beta1, alpha): the adaptive
            bandwidth of Memory Mosaics v2, ``scale[b, h, t] = beta1 * n_t**alpha + beta0`` with n_t the keys
            row t sees, exactly :func:`row_bandwidth`'s, computed by the forward's kernel (no separate launch; it
            keeps the (B, H, T) float32 scales for the backward, as it keeps the log-sum-exp); its gradient is
            returned when it requires grad.
        unconstrained: with ``bandwidth``, its rows are unconstrained parameters and the op uses
            ``softplus(beta0)``, ``softplus(beta1)`` and ``sigmoid(alpha)``, as ``row_bandwidth`` does.

    Returns:
        A ``(B, H, T, D)`` tensor of ``v.dtype``, contiguous unless ``heads_last``. Softmax and accumulation run in
        float32 (float64 for float64 input); extra memory is one log-sum-exp per row. CUDA tensors
        run the Triton kernels; CPU tensors the dense PyTorch reference, or the Triton kernels
        through the interpreter when ``TRITON_INTERPRET=1``.

    Raises:
        ValueError: on a bad shape, dtype, device, scale, window, delay, dropout_p, generator, bandwidth or
            unconstrained.

    Example:
        >>> k, v = torch.randn(2, 4, 128, 64), torch.randn(2, 4, 128, 64)
        >>> y = mosaic_attention(k, v, scale=0.125)
        >>> short = mosaic_attention(k, v, scale=0.125, window=32)             # the last 32 keys
        >>> long = mosaic_attention(k, v, delay=torch.tensor([64, 100]))       # skips the recent past
        >>> both = mosaic_attention(k, v, window=torch.tensor([32, 32, 127, 127]),  # 2 short heads, 2 long
        ...                         delay=torch.tensor([[1, 1, 64, 64], [1, 1, 100, 100]]))
        >>> adaptive = mosaic_attention(k, v, bandwidth=torch.tensor([[1.0] * 4, [0.4] * 4, [0.5] * 4]))
    """
    key = None  # the call's plan key, taken before the checks convert its arguments
    if (_common.CALL_PLANS and band is None and bandwidth is None and unconstrained is False
            and not torch.compiler.is_compiling()):
        key = _signature(k, v, scale, window, delay, dropout_p, generator, heads_last)
        plan = _PLANS.get(key) if key is not None else None
        if plan is not None:  # a signature already checked, on the Triton path
            return plan(k, v, generator)
    B, H, T, D = check_heads("k", k, max_head_dim=MAX_HEAD_DIM)
    check_tensor("v", v, ndim=4)
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    check_like("v", v, "k", k)
    if not isinstance(unconstrained, bool):
        raise ValueError(f"unconstrained must be a bool, got {unconstrained!r}")
    if bandwidth is not None:
        _check_bandwidth(bandwidth, scale, H, k)
    elif unconstrained:
        raise ValueError("unconstrained applies to bandwidth= (the adaptive bandwidth's rows), which was not given")
    elif isinstance(scale, torch.Tensor) and scale.dim() > 1:
        scale = _row_scale(scale, B, H, T, k)
    else:
        scale = per_head("scale", scale, H, k)
    if band is not None:
        _check_band_table(band, window, delay, B, H, k)
    else:
        _check_band(window, delay, B, k, H)
    dropout_p = check_dropout(dropout_p, generator)
    if use_triton(k):
        from .function import AttentionPlan, mosaic_attention_triton

        check_philox_counters(T, T, dropout_p)
        if key is not None:
            plan = remember_plan(_PLANS, key, AttentionPlan(k, v, scale, bool(heads_last), dropout_p, window, delay))
            return plan(k, v, generator)
        return mosaic_attention_triton(k, v, scale, heads_last=bool(heads_last), dropout_p=dropout_p,
                                       generator=generator, window=window, delay=delay, band=band,
                                       bandwidth=bandwidth, unconstrained=unconstrained)
    y = _reference.mosaic_attention(k, v, scale, window=window, delay=delay, dropout_p=dropout_p, generator=generator,
                                    band=band, bandwidth=bandwidth, unconstrained=unconstrained)
    return as_heads_last(y, bool(heads_last))


def row_bandwidth(beta0: torch.Tensor, beta1: torch.Tensor, alpha: torch.Tensor, T: int, *,
                  window: int | torch.Tensor | None = None, delay: int | torch.Tensor = 1, unconstrained: bool = False,
                  band: torch.Tensor | None = None) -> torch.Tensor:
    """The per-row scale ``beta(n_t) = beta1 * n_t**alpha + beta0`` of a band, for ``mosaic_attention``'s ``scale``.

    ``n_t`` is how many keys row t of ``mosaic_attention(..., window=window, delay=delay)`` sees:
    ``max(t - delay - max(t - window, 0) + 1, 0)`` (``n_t**alpha`` is 0 where ``n_t = 0``; such rows read no
    key). Memory Mosaics v2's adaptive bandwidth: the softmax sharpens as a row sees more keys.

    Args:
        beta0, beta1, alpha: ``(H,)`` floating tensors on one device (gradients returned for each).
        T: the sequence length, >= 1.
        window, delay: the band, as in ``mosaic_attention`` (window None, an int or an integer ``(H,)``
            tensor; delay an int or an integer ``(B,)`` or ``(B, H)`` tensor).
        unconstrained: the three tensors are unconstrained parameters and the op uses ``softplus(beta0)``,
            ``softplus(beta1)`` and ``sigmoid(alpha)`` (so beta0 >= 0, beta1 > 0, 0 < alpha < 1), applied inside
            its kernels (no launches of their own); the gradients are those of the parameters.
        band: instead of window and delay, the ``(B, H, 2)`` table of :func:`band_table`.

    Returns:
        float32 ``(H, T)`` for an int delay, ``(B, H, T)`` for a tensor one or a band table. CUDA tensors (and CPU ones
        under ``TRITON_INTERPRET=1``) run one Triton launch forward and one backward (every head's three
        gradients, summed in a fixed order); the others the same formula in PyTorch.

    Raises:
        ValueError: on a bad shape, dtype, device, T, window or delay.

    Example:
        >>> H = 4
        >>> scale = row_bandwidth(torch.ones(H), torch.full((H,), 0.4), torch.full((H,), 0.5), 128, window=32)
    """
    check_tensor("beta0", beta0, ndim=1)
    H = beta0.shape[0]
    for name, t in (("beta0", beta0), ("beta1", beta1), ("alpha", alpha)):
        if t.shape != (H,):
            raise ValueError(f"{name} must have shape ({H},) like beta0, got {tuple(t.shape)}")
        float_tensor_on(name, t, beta0, "beta0")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an int >= 1, got {T!r}")
    if not isinstance(unconstrained, bool):
        raise ValueError(f"unconstrained must be a bool, got {unconstrained!r}")
    if band is not None:
        B = band.shape[0] if isinstance(band, torch.Tensor) and band.dim() == 3 else 1
        _check_band_table(band, window, delay, B, H, beta0)
    else:
        B = delay.shape[0] if isinstance(delay, torch.Tensor) else 1
        _check_band(window, delay, B, beta0, H)
    if use_triton(beta0):
        from .function import ROW_BANDWIDTH, kernel_band

        scale = ROW_BANDWIDTH.apply(beta0.float(), beta1.float(), alpha.float(), T,
                                    *kernel_band(window, delay, band, B, H, T, beta0.device), unconstrained)
        # A per-head window with an int delay reaches the kernels as a one-row band table; the result keeps the
        # (H, T) shape of an int delay, as the reference's does.
        return scale[0] if band is None and not isinstance(delay, torch.Tensor) and scale.dim() == 3 else scale
    return _reference.row_bandwidth(beta0, beta1, alpha, T, window=window, delay=delay, unconstrained=unconstrained,
                                    band=band)
