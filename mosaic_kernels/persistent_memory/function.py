"""Host wrappers of the Triton persistent-memory retrieval: tiles, launches, and the op's registration (_registration)."""
from __future__ import annotations

import torch

from .._common import cdiv, interpreter_enabled, next_power_of_2, per_head_tensor
from .._registration import fused_op
from .._triton_common import draw_seed, dropout_threshold, launch, row_delta
from .._triton_common import keep_scale as _keep_scale
from .triton_slots import _slots_bwd_dkdv_kernel, _slots_bwd_dq_kernel, _slots_fwd_kernel

# Every buffer a kernel writes is allocated here; tests swap in a NaN-filled allocator.
_empty = torch.empty

# Tiles by (BLOCK_D, dropout): forward and dq (rows, slots, warps, stages); dk/dv (slots, rows, warps,
# stages). Measured with `python -m benchmarks.tools.tune_kernels pmem` on an H200 in bf16 at D = 64 and
# 128 (P = 2688); the other head dims take the nearest measured choice that fits in shared memory.
# The D = 64 dropout tiles were measured again with the hash generator; the D = 128 ones are from the
# Philox generator's sweep (BENCHMARKS.md "Persistent memory").
_D64 = {"fwd": (128, 64, 8, 3), "dq": (64, 128, 4, 3), "dkdv": (128, 32, 4, 3)}
_D64_DROP = {"fwd": (64, 64, 4, 3), "dq": (64, 64, 4, 3), "dkdv": (128, 32, 4, 3)}
_D128 = {"fwd": (128, 64, 8, 3), "dq": (128, 64, 8, 3), "dkdv": (128, 64, 8, 3)}
_D128_DROP = {"fwd": (64, 32, 4, 3), "dq": (128, 64, 8, 3), "dkdv": (64, 32, 4, 3)}
_D256 = {"fwd": (64, 32, 4, 2), "dq": (32, 32, 4, 1), "dkdv": (32, 32, 4, 1)}
TILES = {(16, False): _D64, (32, False): _D64, (64, False): _D64, (128, False): _D128, (256, False): _D256,
         (16, True): _D64_DROP, (32, True): _D64_DROP, (64, True): _D64_DROP, (128, True): _D128_DROP,
         (256, True): _D256}


def _block_d(D: int) -> int:
    return max(16, next_power_of_2(D))


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _config(kernel: str, D: int, threshold: int) -> tuple[int, int, int, int]:
    if interpreter_enabled():
        return 16, 16, 1, 1
    return TILES[(_block_d(D), threshold > 0)][kernel]


def slots_forward(q: torch.Tensor, mk: torch.Tensor, mv: torch.Tensor, c: torch.Tensor, seed: int, threshold: int,
                  config: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward; returns (y as contiguous (B, T, H, D), lse (B, H, T) float32)."""
    B, H, T, D = q.shape
    P = mk.shape[1]
    bm, bn, warps, stages = config or _config("fwd", D, threshold)
    y = _empty((B, T, H, D), device=q.device, dtype=q.dtype)
    lse = _empty((B, H, T), device=q.device, dtype=torch.float32)
    launch(_slots_fwd_kernel, (cdiv(T, bm), B * H),
        q, mk, mv, y, lse, c, seed, *q.stride(), H, T, P, D, _keep_scale(threshold),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=_block_d(D), EVEN_P=P % bn == 0, PRECISION=_precision(q.dtype),
        DROPOUT=threshold > 0, THRESHOLD=threshold, num_warps=warps, num_stages=stages)
    return y, lse


def slots_backward(q: torch.Tensor, mk: torch.Tensor, mv: torch.Tensor, c: torch.Tensor, seed: int,
                   threshold: int, y: torch.Tensor, lse: torch.Tensor,
                   dy: torch.Tensor, dq_config: tuple | None = None, dkdv_config: tuple | None = None) -> tuple:
    """Launch the backward; ``dy`` is the (B, H, T, D) output gradient (any strides).
    Returns (dq, d slot keys, d slot values, per-program partials of d(c) of shape (B, H, n_blocks))."""
    B, H, T, D = q.shape
    P = mk.shape[1]
    bd = _block_d(D)
    common = dict(PRECISION=_precision(q.dtype), DROPOUT=threshold > 0, THRESHOLD=threshold)
    # y is the (B, T, H, D) buffer: read it through its (B, H, T, D) view.
    delta = row_delta(y.permute(0, 2, 1, 3), dy, 16 if interpreter_enabled() else 64, bd, _empty)

    bp, bq, warps, stages = dkdv_config or _config("dkdv", D, threshold)
    dmk = _empty((H, P, D), device=q.device, dtype=mk.dtype)
    dmv = _empty((H, P, D), device=q.device, dtype=mv.dtype)
    launch(_slots_bwd_dkdv_kernel, (cdiv(P, bp), H),
        q, mk, mv, dy, lse, delta, c, seed, dmk, dmv, *q.stride(), *dy.stride(),
        B, H, T, P, D, _keep_scale(threshold),
        BLOCK_P=bp, BLOCK_Q=bq, BLOCK_D=bd, num_warps=warps, num_stages=stages, **common)

    bm, bn, warps, stages = dq_config or _config("dq", D, threshold)
    n_blocks = cdiv(T, bm)
    dq = _empty((B, H, T, D), device=q.device, dtype=q.dtype)
    part = _empty((B, H, n_blocks), device=q.device, dtype=torch.float32)
    launch(_slots_bwd_dq_kernel, (n_blocks, B * H),
        q, mk, mv, dy, lse, delta, c, seed, dq, part, *q.stride(), *dy.stride(),
        H, T, P, D, _keep_scale(threshold),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, EVEN_P=P % bn == 0, num_warps=warps, num_stages=stages, **common)
    return dq, dmk, dmv, part


def _forward(q: torch.Tensor, mk: torch.Tensor, mv: torch.Tensor, c: torch.Tensor, seed: torch.Tensor,
             threshold: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y as (B, T, H, D), per-row log-sum-exp in float32); c is (H,) float32."""
    return slots_forward(q, mk, mv, c, seed, threshold)


def _fake_forward(q, mk, mv, c, seed, threshold):
    B, H, T, D = q.shape
    return q.new_empty((B, T, H, D)), q.new_empty((B, H, T), dtype=torch.float32)


def _backward(q: torch.Tensor, mk: torch.Tensor, mv: torch.Tensor, c: torch.Tensor, seed: torch.Tensor,
              threshold: int, y: torch.Tensor, lse: torch.Tensor,
              dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, d slot keys, d slot values, d(c) per head in float32); dy is (B, H, T, D)."""
    dq, dmk, dmv, part = slots_backward(q, mk, mv, c, seed, threshold, y, lse, dy)
    return dq, dmk, dmv, part.sum(dim=(0, 2))  # fixed order: deterministic


def _fake_backward(q, mk, mv, c, seed, threshold, y, lse, dy):
    return q.new_empty(q.shape), mk.new_empty(mk.shape), mv.new_empty(mv.shape), c.new_empty(c.shape)


def _save(ctx, inputs, outputs):
    q, mk, mv, c, seed, threshold = inputs
    ctx.save_for_backward(q, mk, mv, c, seed, *outputs)
    ctx.threshold = threshold


def _backward_args(ctx, dy_bthd):
    q, mk, mv, c, seed, y, lse = ctx.saved_tensors
    return q, mk, mv, c, seed, ctx.threshold, y, lse, dy_bthd.permute(0, 2, 1, 3)


SLOTS = fused_op("slots", forward=_forward, fake_forward=_fake_forward, backward=_backward,
                 fake_backward=_fake_backward, save=_save, backward_args=_backward_args,
                 input_grads=lambda ctx, grads: (*grads, None, None))
slots_fwd, slots_bwd = SLOTS.fwd, SLOTS.bwd


def persistent_memory_triton(q: torch.Tensor, slot_keys: torch.Tensor, slot_values: torch.Tensor, *,
                             out_scale: float | torch.Tensor | None = None,
                             dropout_p: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Run the Triton kernels (no validation: call :func:`mosaic_kernels.persistent_memory`).
    Returns a (B, H, T, D) view of a contiguous (B, T, H, D) buffer."""
    H = q.shape[1]
    c = per_head_tensor(out_scale, H, q, 1.0)
    threshold = dropout_threshold(dropout_p)
    if threshold > 0:
        seed = draw_seed(generator, q.device)
    else:
        seed = c  # never read without dropout
    y = SLOTS.apply(q, slot_keys.contiguous(), slot_values.contiguous(), c, seed, threshold)
    return y.permute(0, 2, 1, 3)
