"""Host wrappers and autograd of the Triton attention kernels."""
from __future__ import annotations

import torch
import triton

from .._common import interpreter_enabled, per_head_tensor
from .triton_attention import _attn_bwd_delta_kernel, _attn_bwd_kernel, _attn_fwd_kernel

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
    delta = _empty((B, H, T), device=k.device, dtype=torch.float32)
    dm = 16 if interpreter_enabled() else 64
    _attn_bwd_delta_kernel[(triton.cdiv(T, dm), B * H)](
        y, dy, delta, *dy.stride(), H, T, D, BLOCK_M=dm, BLOCK_D=bd)
    dk = _empty((B, H, T, D), device=k.device, dtype=k.dtype)
    dv = _empty((B, H, T, D), device=k.device, dtype=v.dtype)
    n_blocks = triton.cdiv(T, cfg["BLOCK_P"])
    part = _empty((B, H, n_blocks), device=k.device, dtype=torch.float32)
    _attn_bwd_kernel[(n_blocks, B * H)](
        k, v, dy, lse, delta, scale_t, dk, dv, part,
        *k.stride(), *v.stride(), *dy.stride(), H, T, D,
        BLOCK_D=bd, PRECISION=_precision(k.dtype), **cfg)
    return dk, dv, part


class _MosaicAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k, v, scale):
        scale_f = scale.detach().float().contiguous()
        y, lse = attention_forward(k, v, scale_f)
        ctx.save_for_backward(k, v, y, lse, scale_f)
        ctx.scale_dtype = scale.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        k, v, y, lse, scale_f = ctx.saved_tensors
        dk, dv, part = attention_backward(k, v, y, lse, scale_f, dy)
        dscale = part.sum(dim=(0, 2)).to(ctx.scale_dtype) if ctx.needs_input_grad[2] else None
        return dk, dv, dscale


def mosaic_attention_triton(k, v, scale=None):
    """Run the Triton attention (no validation: call :func:`mosaic_kernels.mosaic_attention`)."""
    return _MosaicAttention.apply(k, v, per_head_tensor(scale, k.shape[1], k, 1.0))
