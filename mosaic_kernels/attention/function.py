"""Host wrappers and autograd of the Triton attention kernels."""
from __future__ import annotations

import torch
import triton

from .._common import interpreter_enabled, per_head_tensor
from .._triton_common import row_delta
from .triton_attention import _attn_bwd_kernel, _attn_fwd_kernel

# Every buffer a kernel writes is allocated here; tests swap in a NaN-filled allocator to catch
# elements a kernel forgets to write.
_empty = torch.empty


def _block_d(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs keep fp32 products (3xTF32-free "ieee"); 16-bit inputs use the tensor cores.
    return "ieee" if dtype == torch.float32 else "tf32"


# Tile tables by BLOCK_D (and T for D = 128), measured with benchmarks/tune_kernels.py on an H200
# in bf16 for D = 64 and 128; the other head dims use the nearest measured choice.
FWD_TILES = {16: (64, 64, 4, 3), 32: (64, 64, 4, 3), 64: (64, 64, 4, 3), 128: (64, 64, 4, 3),
             "128_long": (128, 128, 8, 3), 256: (64, 32, 4, 2)}
BWD_TILES = {16: (64, 64, 64, 4, 3), 32: (64, 64, 64, 4, 3), 64: (64, 64, 64, 4, 3), 128: (64, 64, 64, 4, 2),
             "128_long": (128, 64, 64, 8, 2), 256: (32, 32, 32, 4, 1)}
LONG_T = 8192


def _tile_key(T: int, D: int):
    bd = _block_d(D)
    return "128_long" if bd == 128 and T >= LONG_T else bd


def _fwd_config(T: int, D: int) -> dict:
    """BLOCK_M, BLOCK_N (BLOCK_M a multiple of BLOCK_N), num_warps, num_stages for the forward."""
    if interpreter_enabled():
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)
    bm, bn, warps, stages = FWD_TILES[_tile_key(T, D)]
    return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)


def _bwd_config(T: int, D: int) -> dict:
    """BLOCK_P (positions owned), BLOCK_Q / BLOCK_K (the two loops), num_warps, num_stages."""
    if interpreter_enabled():
        return dict(BLOCK_P=16, BLOCK_Q=16, BLOCK_K=16, num_warps=1, num_stages=1)
    bp, bq, bk, warps, stages = BWD_TILES[_tile_key(T, D)]
    return dict(BLOCK_P=bp, BLOCK_Q=bq, BLOCK_K=bk, num_warps=warps, num_stages=stages)


def attention_forward(k, v, scale_t, fwd_config=None):
    """Launch the forward; returns (y, lse). ``fwd_config`` overrides the tile choice (tuning)."""
    B, H, T, D = k.shape
    cfg = dict(fwd_config or _fwd_config(T, D))
    y = _empty((B, H, T, D), device=k.device, dtype=v.dtype)
    lse = _empty((B, H, T), device=k.device, dtype=torch.float32)
    grid = (triton.cdiv(T, cfg["BLOCK_M"]), B * H)
    _attn_fwd_kernel[grid](
        k, v, y, lse, scale_t, *k.stride(), *v.stride(), H, T, D,
        BLOCK_D=_block_d(D), PRECISION=_precision(k.dtype), **cfg)
    return y, lse


def attention_backward(k, v, y, lse, scale_t, dy, bwd_config=None):
    """Launch the backward; returns (dk, dv, per-program d(scale) partials of shape (B, H, n_blocks))."""
    B, H, T, D = k.shape
    cfg = dict(bwd_config or _bwd_config(T, D))
    bd = _block_d(D)
    delta = row_delta(y, dy, 16 if interpreter_enabled() else 64, bd, _empty)
    dk = _empty((B, H, T, D), device=k.device, dtype=k.dtype)
    dv = _empty((B, H, T, D), device=k.device, dtype=v.dtype)
    n_blocks = triton.cdiv(T, cfg["BLOCK_P"])
    part = _empty((B, H, n_blocks), device=k.device, dtype=torch.float32)
    _attn_bwd_kernel[(n_blocks, B * H)](
        k, v, dy, lse, delta, scale_t, dk, dv, part,
        *k.stride(), *v.stride(), *dy.stride(), H, T, D,
        BLOCK_D=bd, PRECISION=_precision(k.dtype), **cfg)
    return dk, dv, part


# The kernels are registered as torch.library custom ops so that torch.compile traces through the
# model without a graph break; their fake (meta) implementations give the output shapes.
@torch.library.custom_op("mosaic::attention_fwd", mutates_args=())
def attention_fwd(k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward op: (y, per-row log-sum-exp in float32); scale is (H,) float32."""
    return attention_forward(k, v, scale)


@attention_fwd.register_fake
def _(k, v, scale):
    B, H, T, D = k.shape
    return v.new_empty((B, H, T, D)), k.new_empty((B, H, T), dtype=torch.float32)


def _backward_summed(k, v, y, lse, scale, dy):
    dk, dv, part = attention_backward(k, v, y, lse, scale, dy)
    return dk, dv, part.sum(dim=(0, 2))  # fixed order: deterministic


@torch.library.custom_op("mosaic::attention_bwd", mutates_args=())
def attention_bwd(k: torch.Tensor, v: torch.Tensor, y: torch.Tensor, lse: torch.Tensor, scale: torch.Tensor,
                  dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward op: (dk, dv, d(scale) per head in float32)."""
    return _backward_summed(k, v, y, lse, scale, dy)


@attention_bwd.register_fake
def _(k, v, y, lse, scale, dy):
    return k.new_empty(k.shape), v.new_empty(v.shape), k.new_empty((k.shape[1],), dtype=torch.float32)


def _grads(ctx, dy, backward_fn):
    k, v, y, lse, scale = ctx.saved_tensors
    return backward_fn(k, v, y, lse, scale, dy)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:2], *output, inputs[2])


attention_fwd.register_autograd(lambda ctx, dy, _dlse: _grads(ctx, dy, attention_bwd), setup_context=_setup_context)


class _MosaicAttention(torch.autograd.Function):
    """The eager path: the same kernels as the custom ops, without their dispatch cost (~50 us a call)."""

    @staticmethod
    def forward(ctx, k, v, scale):
        y, lse = attention_forward(k, v, scale)
        ctx.save_for_backward(k, v, y, lse, scale)
        return y

    @staticmethod
    def backward(ctx, dy):
        return _grads(ctx, dy, _backward_summed)


def mosaic_attention_triton(k, v, scale=None):
    """Run the Triton attention (no validation: call :func:`mosaic_kernels.mosaic_attention`)."""
    scale_f = per_head_tensor(scale, k.shape[1], k, 1.0)
    if torch.compiler.is_compiling():  # torch.compile traces the registered op
        return attention_fwd(k, v, scale_f)[0]
    return _MosaicAttention.apply(k, v, scale_f)
