"""Argument validation and device dispatch shared by every op of mosaic_kernels."""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from numbers import Real

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAX_HEAD_DIM = 256


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive integers, for grids and buffer sizes on the host. Triton's own
    ``triton.cdiv`` (and ``next_power_of_2``) became constexpr functions whose every call costs a few
    microseconds of host time in Triton 3.9: seven of them were a tenth of an attention call's wrapper."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n, for n >= 1 (tile sizes on the host; see :func:`cdiv`)."""
    return 1 << (n - 1).bit_length()


_SM_COUNT: dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (4 stands in for a CPU, so the interpreter runs the
    same multi-program plans on small shapes)."""
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def interpreter_enabled() -> bool:
    """True when Triton's CPU interpreter is requested (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def time_tile(T: int, cap: int) -> int:
    """Time steps per tile of a kernel whose program walks a whole row of T steps: the row rounded up to a
    power of two, at least 16 and at most ``cap``; 16 under the interpreter, so that the CPU tests cross
    several tiles."""
    return 16 if interpreter_enabled() else min(cap, max(16, next_power_of_2(T)))


def use_triton(t: torch.Tensor) -> bool:
    """Whether an op on ``t`` runs its Triton kernel (CUDA, or CPU under the interpreter).

    float64 has no Triton path: it always runs the PyTorch reference, on any device.
    """
    if t.dtype == torch.float64:
        return False
    if t.is_cuda:
        return True
    return t.device.type == "cpu" and interpreter_enabled()


def exact_under_autocast(reference: Callable) -> Callable:
    """Run a PyTorch reference in the precision it states, also inside ``torch.autocast``.

    Autocast would run a reference's float32 matmuls in 16 bits (it casts their inputs down whatever
    dtype the code asked for), so ``kernels="reference"`` training under bf16 autocast rounded the
    attention logits, of size up to the squared bandwidth, to 8 bits of mantissa."""
    @functools.wraps(reference)
    def wrapped(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device, enabled=False):
            return reference(*args, **kwargs)
    return wrapped


# Cached call plans (issue 38: the host time of an eager call). An op called again with a signature it has already
# checked (its tensors' shapes, strides, dtypes and devices and its other arguments' types and values: see
# call_signature) skips its checks and the planning of its launches, which a plan made once with the same functions
# every call uses, and runs through a leaner autograd node: the same launches, the same bits. The attention, the
# key scan and the peek-ahead value have them (their packages' _PLANS). On by default since 2026-12-07, when their
# GPU run passed (benchmarks/gpu_check.sh plans: their tests and the three ops', launch, compile and CUDA-graph
# training tests with them on; H100, torch 2.11, Triton 3.6); MOSAIC_PLANS=0, or CALL_PLANS = False, turns them off.
_plans_env = os.environ.get("MOSAIC_PLANS", "1")
if _plans_env not in ("0", "1"):
    raise ValueError(f"MOSAIC_PLANS must be 0 or 1, got {_plans_env!r}")
CALL_PLANS = _plans_env == "1"
CALL_PLANS_MAX = 1024  # plans kept per op (cached generation sees a new T at each token): cleared past it


def call_signature(*args: object) -> tuple | None:
    """The key of a call among an op's plans: each tensor by its shape, strides, dtype and device (a plain tensor
    or a Parameter), each None, bool, int or float by its type and value (so that True and 1 differ); None when an
    argument is anything else (a tensor subclass, a list...), which gets no plan."""
    key = []
    for a in args:
        kind = type(a)
        if kind is torch.Tensor or kind is torch.nn.Parameter:
            key.append((a.shape, a.stride(), a.dtype, a.device))
        elif a is None or kind in (bool, int, float):
            key.append((kind, a))
        else:
            return None
    return tuple(key)


def remember_plan(plans: dict, key: tuple, plan: object) -> object:
    """Keep ``plan`` under ``key`` in an op's plans (all forgotten once CALL_PLANS_MAX are kept); returns it."""
    if len(plans) >= CALL_PLANS_MAX:
        plans.clear()
    plans[key] = plan
    return plan


def check_tensor(name: str, t: object, *, ndim: int | None = None) -> None:
    """Raise ValueError unless ``t`` is a floating tensor of a supported dtype and rank."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{name} must have dtype float32, float16, bfloat16 or float64, got {t.dtype}"
        )
    if ndim is not None and t.dim() != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions (B, H, T, D), got shape {tuple(t.shape)}"
        )


def check_like(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """Raise ValueError unless ``t`` has the dtype and device of ``ref`` (an op's second input)."""
    if t.dtype != ref.dtype:
        raise ValueError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def check_heads(name: str, t: torch.Tensor, *, max_head_dim: int | None = None) -> tuple[int, int, int, int]:
    """check_tensor with rank 4, then non-zero sizes and an optional head-dim bound; returns (B, H, T, D)."""
    check_tensor(name, t, ndim=4)
    B, H, T, D = t.shape
    if min(B, H, T, D) < 1:
        raise ValueError(f"{name} must have non-zero sizes (B, H, T, D), got {tuple(t.shape)}")
    if max_head_dim is not None and D > max_head_dim:
        raise ValueError(f"{name} must have a head dim D <= {max_head_dim}, got {D}")
    return B, H, T, D


def empty_heads(alloc: Callable, shape: tuple, *, heads_last: bool, device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
    """A ``(B, H, T, D)`` buffer from ``alloc`` (torch.empty, or a test's NaN-filling stand-in).

    Contiguous, or with ``heads_last`` a ``(B, H, T, D)`` view of a contiguous ``(B, T, H, D)``
    buffer: the layout of a head-split ``(B, T, H*D)`` projection, where merging the heads back,
    ``t.transpose(1, 2).reshape(B, T, H*D)``, is a view and costs no copy.
    """
    B, H, T, D = shape
    if heads_last:
        return alloc((B, T, H, D), device=device, dtype=dtype).transpose(1, 2)
    return alloc((B, H, T, D), device=device, dtype=dtype)


def is_heads_last(t: torch.Tensor) -> bool:
    """Whether the ``(B, H, T, D)`` tensor ``t`` lies in memory in ``(B, T, H, D)`` order: a view of a
    contiguous ``(B, T, H, D)`` buffer, or of a slice of a wider ``(B, T, N)`` projection (the heads of a
    row side by side, rows further apart: v2's keys and values read their columns of one product of all
    a block's projections). Not when ``t`` is also contiguous as it stands (H or T of 1).

    The ops give a gradient this layout when their input has it (``empty_heads``), so that the backward
    of the head split and of the column slice are views, not copies. Only speed depends on it: the
    kernels read and write through strides."""
    if t.is_contiguous():
        return False
    u = t.transpose(1, 2)  # (B, T, H, D)
    B, T, H, D = u.shape
    heads_side_by_side = (D == 1 or u.stride(3) == 1) and (H == 1 or u.stride(2) == D)
    rows_apart = T == 1 or u.stride(1) >= H * D
    return heads_side_by_side and rows_apart and (B == 1 or u.stride(0) >= T * u.stride(1))


def as_heads_last(t: torch.Tensor, heads_last: bool) -> torch.Tensor:
    """``t`` in the layout :func:`empty_heads` gives (a copy when it is not already): for the
    PyTorch reference paths, whose results are contiguous."""
    if heads_last and not t.transpose(1, 2).is_contiguous():
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    return t


def per_head(name: str, value: float | torch.Tensor | None, n_head: int, ref: torch.Tensor, *,
             low: float | None = None, high: float | None = None) -> torch.Tensor | None:
    """Validate a per-head argument: None, a Python real, or a tensor of shape ``(H,)``.

    Returns it unchanged (None, float or tensor). Range checks apply to Python numbers only;
    a tensor is not synchronised to the host just to check its range.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a float or a tensor of shape ({n_head},), got a bool")
    if isinstance(value, Real):
        value = float(value)
        if value != value:
            raise ValueError(f"{name} must not be NaN")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
        return value
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"{name} must be None, a float or a tensor of shape ({n_head},), "
            f"got {type(value).__name__}"
        )
    if value.shape != (n_head,):
        raise ValueError(f"{name} must have shape ({n_head},) (one per head), got {tuple(value.shape)}")
    return float_tensor_on(name, value, ref)


def float_tensor_on(name: str, value: torch.Tensor, ref: torch.Tensor, ref_name: str = "the inputs") -> torch.Tensor:
    """Check that a tensor argument is floating-point and on ``ref``'s device; return it unchanged."""
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.device != ref.device:
        raise ValueError(f"{name} must be on {ref.device} like {ref_name}, got {value.device}")
    return value


def per_head_tensor(value: float | torch.Tensor | None, n_head: int, like: torch.Tensor, default: float) -> torch.Tensor:
    """A per-head argument (None, float or ``(H,)`` tensor) as the contiguous float32 ``(H,)`` tensor
    the kernels read, on ``like``'s device. A tensor is cast inside the autograd graph, so its
    gradient comes back in the caller's dtype."""
    if value is None:
        value = default
    if isinstance(value, float):
        if like.device.type != "cuda" or torch.compiler.is_compiling():
            return torch.full((n_head,), value, dtype=torch.float32, device=like.device)
        # A constant the kernels only read: built once per (value, H, GPU), not filled on the device at every
        # call (a fill launch each, in an eager step: issue 38). Never built during a CUDA graph capture, whose
        # fill would run only at replay.
        key = (value, n_head, like.device)
        if key not in _CONSTANT_HEADS:
            if torch.cuda.is_current_stream_capturing():
                return torch.full((n_head,), value, dtype=torch.float32, device=like.device)
            if len(_CONSTANT_HEADS) >= 256:
                _CONSTANT_HEADS.clear()
            _CONSTANT_HEADS[key] = torch.full((n_head,), value, dtype=torch.float32, device=like.device)
        return _CONSTANT_HEADS[key]
    return value.float().contiguous()


_CONSTANT_HEADS: dict = {}  # (value, H, device) -> the (H,) float32 tensor per_head_tensor hands the kernels


def check_dropout(dropout_p: object, generator: object) -> float:
    """Validate a dropout probability in [0, 1) and an optional torch.Generator; returns p as a float."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, Real) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return float(dropout_p)


def check_philox_counters(T: int, columns: int, dropout_p: float) -> None:
    """Dropout's Philox counter of row t, column j is t * ceil(columns / 8) + j // 8 in 32 bits."""
    if dropout_p > 0 and T * -(-columns // 8) >= 2 ** 31:
        raise ValueError(f"dropout needs T * ceil(columns / 8) < 2^31 (32-bit Philox counters), "
                         f"got T={T} and {columns} columns")


def check_hash_counters(T: int, columns: int, dropout_p: float) -> None:
    """The hash generator's counter of row t, column j is t * columns + j in 32 bits (unique per stream)."""
    if dropout_p > 0 and T * columns > 2 ** 32:
        raise ValueError(f"dropout needs T * slots <= 2^32 (32-bit hash counters), got T={T} and {columns} slots")
