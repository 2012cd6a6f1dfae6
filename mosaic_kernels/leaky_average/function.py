"""Host wrappers of the Triton leaky-average scan: tiles, launches, and the op's registration (_registration);
and of the kernel of its helper ``stable_gate_and_decay``."""
from __future__ import annotations

import math
import os

import torch

from .._common import empty_heads, interpreter_enabled, is_heads_last, next_power_of_2, per_head_tensor, sm_count, time_tile
from .._registration import fused_op
from .._triton_common import launch
from .triton_gates import _stable_gate_decay_bwd_kernel, _stable_gate_decay_kernel
from .triton_scan import _leaky_bwd_kernel, _leaky_fwd_kernel

# Every buffer a kernel writes is allocated here; tests swap in a NaN-filled allocator to catch
# elements a kernel forgets to write.
_empty = torch.empty

# The forward's in-tile scan: "dot" (a decay-matrix product on the tensor cores, the faster one:
# BENCHMARKS.md "leaky_average") or "scan" (tl.associative_scan).
FWD_IN_TILE = "dot"
# The backward's: "dot" (the transposed decay matrix times the float32 gradient, as 3xTF32 products
# on the GPU: float32 accuracy) or "scan".
BWD_IN_TILE = "dot"

# (BLOCK_T, num_warps) by BLOCK_D, forward and backward; measured with benchmarks/tools/tune_kernels.py on
# an H200 in bf16 (D = 64 and 128; the other rows are extrapolated to ~8K elements a tile).
FWD_TILES = {16: (256, 4), 32: (256, 4), 64: (128, 4), 128: (32, 4), 256: (16, 4)}
BWD_TILES = {16: (128, 8), 32: (128, 8), 64: (64, 8), 128: (32, 4), 256: (16, 4)}


# Forward tiles of the decay-matrix product (FWD_IN_TILE = "dot"), measured with
# `python -m benchmarks.tools.tune_kernels in_tile` on an H200 in bf16 (D = 64 and 128); the product's
# (BLOCK_T x BLOCK_T) matrix lives in registers, so tiles stay at 64 rows or fewer.
FWD_DOT_TILES = {16: (64, 4), 32: (64, 4), 64: (64, 4), 128: (32, 2), 256: (16, 2)}
# Backward tiles of the product, measured with `python -m benchmarks.tools.tune_kernels leaky` (bf16, D = 64
# and 128): the smallest tiles win, as the reverse scan's float32 gradient tile holds registers.
BWD_DOT_TILES = {16: (32, 4), 32: (32, 4), 64: (32, 4), 128: (16, 2), 256: (16, 4)}
# The same product on float32 inputs runs in exact float32 (`input_precision="ieee"`: FMA units, the
# (BLOCK_T x BLOCK_T) matrix and both operands in registers), and the 16-bit tiles above do not fit there
# under Triton 3.6, the GPU machines' version: `ptxas -v` for sm_90a (2026-12-06) spills 360, 720, 9,188,
# 13,200 and 8,188 bytes a thread in the per-head forward at D = 16, 32, 64, 128, 256 and 2-17 KB in the gated
# time-varying one, 16-564 bytes in the backward from D = 64 (Triton 3.9 spills none of the per-head ones). These
# tiles spill nothing under 3.6 and 3.9 for both kinds of decay, BLOCK_T as large as that allows: the RegBench
# preset (float32, D = 16) had its forward at ten times its backward's time. Timed on an H100 (2026-12-07,
# `tune_kernels float32-ab`, BENCHMARKS.md "Float32 tiles"): the forward 0.025 against 0.27 ms at (32, 8, 563, 16),
# 0.043 against 0.49 at (16, 4, 512, 64), 0.089 against 1.05 at (2, 12, 4096, 64); the backward the same at the
# first two shapes and slower at the third (0.107 against 0.083 ms at D = 64), so the backward keeps the 16-bit
# tile at D = 64 (its 16 bytes of spill cost less than the narrower program).
FWD_DOT_TILES_FLOAT32 = {16: (32, 4), 32: (32, 8), 64: (16, 8), 128: (16, 8), 256: (16, 8)}
BWD_DOT_TILES_FLOAT32 = {16: (32, 4), 32: (32, 4), 64: BWD_DOT_TILES[64], 128: (16, 8), 256: (16, 8)}


def _tiling(D: int, dtype: torch.dtype) -> tuple[int, int, int, int, int]:
    """(BLOCK_T fwd, warps fwd, BLOCK_T bwd, warps bwd, BLOCK_D) for inputs of ``dtype``; a tile is BLOCK_T
    rows x all of D."""
    block_d = max(16, next_power_of_2(D))
    if interpreter_enabled():
        return 16, 1, 16, 1, block_d
    return (*active_tiles("fwd", dtype)[block_d], *active_tiles("bwd", dtype)[block_d], block_d)


def active_tiles(direction: str, dtype: torch.dtype) -> dict:
    """The tile table the given direction ("fwd" or "bwd") reads for inputs of ``dtype`` under its current
    in-tile scan (float32 has its own tables for the decay-matrix product)."""
    fp32 = dtype == torch.float32
    if direction == "fwd":
        if FWD_IN_TILE == "dot":
            return FWD_DOT_TILES_FLOAT32 if fp32 else FWD_DOT_TILES
        return FWD_TILES
    if BWD_IN_TILE == "dot":
        return BWD_DOT_TILES_FLOAT32 if fp32 else BWD_DOT_TILES
    return BWD_TILES


# Programs per SM the time-chunking aims for, forward and backward, when B*H alone cannot fill the
# SMs. More chunks keep more bytes in flight but cost a second read of the input (the chunk summaries)
# and two more launches. Once B*H fills every SM, one chunk per (b, h) wins; below that, 2 per SM in
# both directions: 4 per SM in the backward won at some shapes and lost more at others, where its chunks
# need more programs than fit at once (BENCHMARKS.md "leaky_average", the chunking measurements).
FWD_PROGRAMS_PER_SM = 2
BWD_PROGRAMS_PER_SM = 2

# Below one (b, h) per SM, which rule sets the number of time chunks: "length" (the default: at least as many
# chunks as the occupancy rule, and up to ceil(T / CHUNK_TARGET_LEN) chunks, at most CHUNK_TARGET_MAX) or
# "occupancy" (about FWD_/BWD_PROGRAMS_PER_SM programs per SM, the rule until 2026-12-06). The forced-count
# measurements behind it (H200; BENCHMARKS.md "leaky_average", the chunk counts; "v2", the gated scan's
# chunking): the fastest count was 11 at (4,12,2048,64) and 22 at (1,12,8192,64) and (8,16,4096,128) for the
# per-head scan, 11 at (8,12,2048,64) and 11-22 at (2,12,8192,64) for the gated one, chunks of about 192 steps
# where T allowed, never more than 22. The two rules A/B on an H100 (`tune_kernels chunk-rule`, 2026-12-06):
# "length" 19% faster forward and 29% backward on the gated scan at (8,12,2048,64), 26% backward on the per-head
# scan at (4,12,2048,64), within 2% elsewhere but (8,16,4096,128)'s forward (5% slower, its backward 1% faster).
# (The v2 step's one call of 2H = 24 heads fills the SMs at B=8, T=2048; at B=2, T=8192 it takes 22 chunks.)
CHUNK_RULE = "length"
CHUNK_TARGET_LEN = 192
CHUNK_TARGET_MAX = 22

# How each kernel hides memory latency: 0 loads the next tile into registers while the current one is
# scanned; S >= 2 lets Triton pipeline the loads S - 1 tiles ahead through shared memory. 3 stages made
# the backward faster at every benchmark shape but slowed the forward at D = 128, so only the backward
# pipelines (BENCHMARKS.md "leaky_average", the latency-hiding measurements).
FWD_STAGES = 0
BWD_STAGES = 3


# The time-varying scans' own launch settings on 16-bit inputs, by (direction, decay kind): BLOCK_D -> (BLOCK_T,
# warps, STAGES). A kind or head dim not listed takes the tables above with FWD_/BWD_STAGES. The per-channel decay
# (kind 2) has no decay-matrix product (its tile scans with tl.associative_scan, so the product's register limits do
# not bind it) and loads a decay tile as large as the input tile beside each input tile (the forward's register
# prefetch, STAGES 0, loads both). An entry must fit every decay dtype: three stages of 64-row tiles with a float32
# per-channel decay need 296,448 bytes of shared memory, above an H100's 232,448. Empty since the sweep of 2026-12-07
# on an H100 (`python -m benchmarks.tools.tune_kernels time-varying`, per-channel bf16 at (8,16,4096,128) and
# (16,16,16384,128), BENCHMARKS.md "The per-channel decay's forward"): the per-head tables' tiles were within 1% of
# the fastest in each direction, summed over both shapes.
TIME_VARYING_TILES: dict[tuple[str, int], dict[int, tuple[int, int, int]]] = {
    ("fwd", 1): {}, ("fwd", 2): {}, ("bwd", 1): {}, ("bwd", 2): {}}


def _launch_tile(direction: str, kind: int, D: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_T, warps, STAGES, BLOCK_D) of one direction's kernel ("fwd" or "bwd") for a decay of ``kind`` and
    inputs of ``dtype``: TIME_VARYING_TILES where it has an entry, else :func:`_tiling` with FWD_/BWD_STAGES."""
    fwd_t, fwd_w, bwd_t, bwd_w, block_d = _tiling(D, dtype)
    block_t, warps, stages = (fwd_t, fwd_w, FWD_STAGES) if direction == "fwd" else (bwd_t, bwd_w, BWD_STAGES)
    if kind and dtype != torch.float32 and not interpreter_enabled():
        block_t, warps, stages = TIME_VARYING_TILES[(direction, kind)].get(block_d, (block_t, warps, stages))
    return block_t, warps, stages, block_d


def tunables(time_varying: bool = True) -> tuple:
    """The module settings the launch plans read besides the call's arguments (tests and tuning change them): part
    of the key of a cached call plan (mosaic_kernels.leaky_average._PLANS). TIME_VARYING_TILES only with a
    ``time_varying`` decay, the only launches that read it (flattening the table is most of this function's host
    time: about 9 us of a per-head call's 175 on an H100 host)."""
    tv_tiles = (tuple((key, tuple(sorted(table.items()))) for key, table in sorted(TIME_VARYING_TILES.items()))
                if time_varying else None)
    return (FWD_IN_TILE, BWD_IN_TILE, FWD_PROGRAMS_PER_SM, BWD_PROGRAMS_PER_SM, CHUNK_RULE, CHUNK_TARGET_LEN,
            CHUNK_TARGET_MAX, FWD_STAGES, BWD_STAGES, TIME_VARYING_FWD_PRECISION, tv_tiles)


def _chunking(B: int, H: int, T: int, device: torch.device, block_t: int, chunk_len: int | None, per_sm: int):
    """Split time into chunks (a multiple of BLOCK_T long): one per (b, h) when B*H fills the SMs, else
    enough for about ``per_sm`` programs per SM (and under CHUNK_RULE "length", up to chunks of about
    CHUNK_TARGET_LEN steps, at most CHUNK_TARGET_MAX of them)."""
    if chunk_len is None:
        n_sm = sm_count(device)
        want = 1 if B * H >= n_sm else math.ceil(per_sm * n_sm / (B * H))
        if CHUNK_RULE == "length" and B * H < n_sm:
            want = max(want, min(math.ceil(T / CHUNK_TARGET_LEN), CHUNK_TARGET_MAX))
        chunk_len = math.ceil(T / want)
    chunk_len = max(block_t, math.ceil(chunk_len / block_t) * block_t)
    return chunk_len, math.ceil(T / chunk_len)


# The forward of a time-varying (per (b, h, t)) or gated scan on 16-bit inputs: "split" (the default) folds the
# gate into the matrix's columns and multiplies the matrix, split into two 16-bit parts, by the 16-bit input
# itself (two 16-bit products, the matrix to about 2^-16 relative, as the per-head scan's "split" does);
# "tf32x3" multiplies the tile's float32 matrix by the gated float32 tile in three TF32 products (float32-level
# accuracy, about six 16-bit products' time). "split" became the default on 2026-12-06 after the H100 measured its
# forward faster at every shape of the scan benchmark (0.39x-0.91x of "tf32x3"'s time; fwd+bwd 1.29x the
# per-head scan at (16,16,16384,128) against 1.77x: BENCHMARKS.md). MOSAIC_TV_FWD_PRECISION=tf32x3 sets the
# other for a whole process.
TIME_VARYING_FWD_PRECISION = os.environ.get("MOSAIC_TV_FWD_PRECISION", "split")
if TIME_VARYING_FWD_PRECISION not in ("tf32x3", "split"):
    raise ValueError(f"MOSAIC_TV_FWD_PRECISION must be tf32x3 or split, got {TIME_VARYING_FWD_PRECISION!r}")


def _fwd_precision(dtype: torch.dtype, kind: int = 0, gated: bool = False) -> str:
    # 16-bit inputs: the decay matrix split into two 16-bit parts; fp32: exact fp32 products. A time-varying
    # or gated scan multiplies float32 tiles (the gated input, the tile's own matrix): exact products for
    # fp32 inputs and the interpreter, TIME_VARYING_FWD_PRECISION for 16-bit inputs (per (b, h, t, d) decays
    # scan without a product: kind 2 never reads it).
    if kind or gated:
        if dtype != torch.float32 and TIME_VARYING_FWD_PRECISION == "split":
            return "split"
        return _bwd_precision(dtype)
    return "ieee" if dtype == torch.float32 else "split"


def _bwd_precision(dtype: torch.dtype) -> str:
    # The reverse scan multiplies float32 gradients: exact products for fp32 inputs (and the
    # interpreter), three TF32 products (float32-level accuracy) for 16-bit inputs.
    return "ieee" if dtype == torch.float32 or interpreter_enabled() else "tf32x3"


def _decay_kind(decay: torch.Tensor) -> int:
    """0: one decay per head (H,); 1: per (b, h, t); 2: per (b, h, t, d)."""
    return {1: 0, 3: 1, 4: 2}[decay.dim()]


def _summary_buffer(size: int, nchunk: int, placeholder: torch.Tensor) -> torch.Tensor:
    """The float32 chunk summaries; with one chunk the kernels neither read nor write them, so any float32
    tensor on the device stands in (the decay), which saves an allocation a launch."""
    return _empty(size, device=placeholder.device, dtype=torch.float32) if nchunk > 1 else placeholder


def _tv_strides(decay: torch.Tensor) -> tuple[int, int, int, int]:
    """(b, h, t, d) strides of a time-varying decay (zeros for a per-head one, whose kernels index by h)."""
    kind = _decay_kind(decay)
    if kind == 0:
        return 0, 0, 0, 0
    return (*decay.stride()[:3], decay.stride(3) if kind == 2 else 0)


def _gate_strides(gate: torch.Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if gate is None else gate.stride()


def _forward_launch(x: torch.Tensor, y: torch.Tensor, decay: torch.Tensor, normalize: bool, eps: float,
                    chunk_len: int, gate: torch.Tensor | None) -> dict:
    """The forward's launch for these tensors' shapes, strides and dtype (only those are read): its chunks, the
    summary buffer's size, the arguments after its seven tensors and the keyword arguments. A pure function of
    what it reads, so that an eager call of a known signature reuses it (:class:`ScanPlan`)."""
    B, H, T, D = x.shape
    kind = _decay_kind(decay)
    block_t, warps, stages, block_d = _launch_tile("fwd", kind, D, x.dtype)
    # The backward chunks time on its own: no forward state is reused.
    chunk_len, nchunk = _chunking(B, H, T, x.device, block_t, chunk_len or None, FWD_PROGRAMS_PER_SM)
    return dict(nchunk=nchunk, summary=B * H * nchunk * block_d * (2 if kind else 1),
                args=(*x.stride(), *y.stride()[:3], *_tv_strides(decay), *_gate_strides(gate), H, T, D, chunk_len,
                      nchunk, eps),
                meta=dict(NORMALIZE=normalize, BLOCK_T=block_t, BLOCK_D=block_d, num_warps=warps,
                          USE_DOT=FWD_IN_TILE == "dot", PRECISION=_fwd_precision(x.dtype, kind, gate is not None),
                          STAGES=stages, DECAY_KIND=kind, GATED=gate is not None))


def _launch_forward(x, decay, scale, normalize: bool, eps: float, chunk_len: int, heads_last: bool,
                    gate: torch.Tensor | None = None, launch_plan: dict | None = None):
    """Run the forward kernels; returns (y, norm), y heads-last or contiguous (_common.empty_heads).
    ``chunk_len`` 0 picks the chunking by SM count. ``decay``: (H,) float32, (B, H, T) or (B, H, T, D) float32
    or 16-bit (the latter two any strides); ``gate``: None or (B, H, T), multiplying x. ``launch_plan``: what
    :func:`_forward_launch` returned for the same arguments (a cached plan)."""
    B, H, T, D = x.shape
    y = empty_heads(_empty, x.shape, heads_last=heads_last, device=x.device, dtype=x.dtype)
    norm = _empty((B, H, T) if normalize else (1,), device=x.device, dtype=torch.float32)
    p = launch_plan or _forward_launch(x, y, decay, normalize, eps, chunk_len, gate)
    nchunk = p["nchunk"]
    summary = _summary_buffer(p["summary"], nchunk, scale)
    gate_t = gate if gate is not None else scale  # never read without a gate
    args = (x, y, norm, decay, scale, summary, gate_t, *p["args"])
    if nchunk > 1:
        launch(_leaky_fwd_kernel, (nchunk - 1, B * H), *args, SUMMARY_ONLY=True, **p["meta"])
    launch(_leaky_fwd_kernel, (nchunk, B * H), *args, SUMMARY_ONLY=False, **p["meta"])
    return y, norm


def _backward_launch(y: torch.Tensor, gx: torch.Tensor, decay: torch.Tensor, normalize: bool, eps: float,
                     chunk_len: int, x: torch.Tensor | None, gate: torch.Tensor | None) -> dict:
    """The backward's launch for these tensors' shapes, strides and dtype (only those are read; ``x`` is read with
    a gate only): its chunks, buffer sizes, the arguments but the incoming gradient's strides, and the keyword
    arguments. A pure function of what it reads, as :func:`_forward_launch`."""
    B, H, T, D = y.shape
    kind = _decay_kind(decay)
    bwd_block_t, warps, stages, block_d = _launch_tile("bwd", kind, D, y.dtype)
    chunk_len, nchunk = _chunking(B, H, T, y.device, bwd_block_t, chunk_len or None, BWD_PROGRAMS_PER_SM)
    return dict(nchunk=nchunk, summary=B * H * nchunk * block_d * (2 if kind else 1), kind=kind,
                middle=(*y.stride()[:3], *gx.stride()[:3], *_tv_strides(decay)),
                x_strides=x.stride() if gate is not None else None,  # None: x_t is the gradient, its strides
                tail=(*_gate_strides(gate), H, T, D, chunk_len, nchunk, eps),
                meta=dict(NORMALIZE=normalize, BLOCK_T=bwd_block_t, BLOCK_D=block_d, num_warps=warps,
                          USE_DOT=BWD_IN_TILE == "dot", PRECISION=_bwd_precision(y.dtype), STAGES=stages,
                          DECAY_KIND=kind, GATED=gate is not None))


def _launch_backward(gy, y, norm, decay, scale, normalize: bool, eps: float, chunk_len: int, dx_heads_last: bool,
                     x: torch.Tensor | None = None, gate: torch.Tensor | None = None,
                     head_sums: tuple[bool, bool] = (True, True), launch_plan: dict | None = None,
                     shared_sums: bool = False):
    """Run the backward kernels; returns (dx, (d(decay), d(scale)) per head, (H,) float32 each (d(decay)
    zero for a time-varying decay), d(decay) of a time-varying decay (its shape and dtype; None for a
    per-head one), d(gate) (B, H, T) float32 (None without a gate)). dx is heads-last when
    ``dx_heads_last`` (the forward's x was), so the head split's backward is a view. ``x``: the ungated
    input, read with a gate. ``head_sums``: whether to sum the programs' partials of d(decay) per head and of
    d(scale); one left out (a time-varying decay's, a constant scale's) is returned unwritten, one launch
    fewer each. ``launch_plan``: what :func:`_backward_launch` returned for the same arguments (a cached plan).
    Both sums are one launch over the (2, B, H, nchunk) partials; ``shared_sums``: return its two rows as views of
    one tensor (an autograd.Function may), else the second row copied (a registered op's outputs may not alias each
    other): the same bits either way, one launch fewer with views."""
    B, H, T, D = y.shape
    gx = empty_heads(_empty, y.shape, heads_last=dx_heads_last, device=y.device, dtype=y.dtype)
    p = launch_plan or _backward_launch(y, gx, decay, normalize, eps, chunk_len, x, gate)
    nchunk = p["nchunk"]
    parts = _empty((2, B * H * nchunk), device=y.device, dtype=torch.float32)
    summary = _summary_buffer(p["summary"], nchunk, scale)
    ddecay = _empty(decay.shape, device=y.device, dtype=decay.dtype) if p["kind"] else None
    dgate = _empty((B, H, T), device=y.device, dtype=torch.float32) if gate is not None else None
    x_t = x if gate is not None else gy  # never read without a gate
    gy_strides = gy.stride()
    args = (gy, y, norm, decay, scale, summary, gx, parts, x_t, gate if gate is not None else scale,
            ddecay if ddecay is not None else scale, dgate if dgate is not None else scale,
            *gy_strides, *p["middle"], *(gy_strides if p["x_strides"] is None else p["x_strides"]), *p["tail"])
    if nchunk > 1:
        # Chunk 0's summary is never read; launching it anyway keeps the indexing plain.
        launch(_leaky_bwd_kernel, (nchunk, B * H), *args, SUMMARY_ONLY=True, **p["meta"])
    launch(_leaky_bwd_kernel, (nchunk, B * H), *args, SUMMARY_ONLY=False, **p["meta"])
    # Fixed orders of summation: deterministic.
    if all(head_sums):
        both = parts.view(2, B, H, nchunk).sum(dim=(1, 3))
        per_head = (both[0], both[1] if shared_sums else both[1].clone())
    else:
        per_head = tuple(parts[i].view(B, H, nchunk).sum(dim=(0, 2)) if head_sums[i] else parts.new_empty(H)
                         for i in range(2))
    return gx, per_head, ddecay, dgate


def _forward(x: torch.Tensor, decay: torch.Tensor, scale: torch.Tensor, normalize: bool, eps: float, chunk_len: int,
             heads_last: bool, gate: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, per-row norm statistic); decay (H,), (B, H, T) or (B, H, T, D) and scale (H,), float32 (a
    time-varying decay 16-bit too)."""
    return _launch_forward(x, decay, scale, normalize, eps, chunk_len, heads_last, gate)


def _fake_forward(x, decay, scale, normalize, eps, chunk_len, heads_last, gate):
    B, H, T, D = x.shape
    return (empty_heads(x.new_empty, x.shape, heads_last=heads_last, device=x.device, dtype=x.dtype),
            x.new_empty((B, H, T) if normalize else (1,), dtype=torch.float32))


def _backward(gy: torch.Tensor, y: torch.Tensor, norm: torch.Tensor, decay: torch.Tensor, scale: torch.Tensor,
              normalize: bool, eps: float, chunk_len: int, dx_heads_last: bool, x: torch.Tensor | None,
              gate: torch.Tensor | None, decay_grad: bool,
              scale_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, d(decay) of the decay's shape, d(scale) (H,), d(gate) (B, H, T) or an empty tensor), float32
    but for dx and a time-varying d(decay) (the decay's dtype); a per-head d(decay) unwritten when not
    ``decay_grad``, d(scale) when not ``scale_grad``."""
    head_sums = (decay_grad and decay.dim() == 1, scale_grad)  # a time-varying d(decay) is the kernel's own
    gx, per_head, ddecay, dgate = _launch_backward(gy, y, norm, decay, scale, normalize, eps, chunk_len,
                                                   dx_heads_last, x, gate, head_sums)
    return gx, per_head[0] if ddecay is None else ddecay, per_head[1], dgate if dgate is not None else y.new_empty(
        (0,), dtype=torch.float32)


def _fake_backward(gy, y, norm, decay, scale, normalize, eps, chunk_len, dx_heads_last, x, gate, decay_grad, scale_grad):
    B, H, T, D = y.shape
    return (empty_heads(y.new_empty, y.shape, heads_last=dx_heads_last, device=y.device, dtype=y.dtype),
            y.new_empty(decay.shape, dtype=decay.dtype), y.new_empty((H,), dtype=torch.float32),
            y.new_empty((B, H, T) if gate is not None else (0,), dtype=torch.float32))


def _save(ctx, inputs, outputs):
    x, decay, scale, normalize, eps, chunk_len, _heads_last, gate = inputs
    ctx.save_for_backward(*outputs, decay, scale, x if gate is not None else None, gate)
    ctx.meta = (normalize, eps, chunk_len, is_heads_last(x))  # dx takes x's layout


def _backward_args(ctx, gy):
    y, norm, decay, scale, x, gate = ctx.saved_tensors
    return gy, y, norm, decay, scale, *ctx.meta, x, gate, ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.meta[0]


def _input_grads(ctx, result):
    gx, ddecay, dscale, dgate = result
    gated = ctx.saved_tensors[5] is not None
    return gx, ddecay, (dscale if ctx.meta[0] else None), None, None, None, None, (dgate if gated else None)


LEAKY_AVERAGE = fused_op("leaky_average", forward=_forward, fake_forward=_fake_forward, backward=_backward,
                         fake_backward=_fake_backward, save=_save, backward_args=_backward_args,
                         input_grads=_input_grads)
leaky_average_fwd, leaky_average_bwd = LEAKY_AVERAGE.fwd, LEAKY_AVERAGE.bwd


def leaky_average_triton(x: torch.Tensor, decay: float | torch.Tensor, *, normalize: bool = False,
                         scale: float | torch.Tensor | None = None, eps: float = 1e-12, chunk_len: int | None = None,
                         heads_last: bool = False, gate: torch.Tensor | None = None) -> torch.Tensor:
    """Run the Triton scan (no validation: call :func:`mosaic_kernels.leaky_average`).

    ``chunk_len`` forces the time-chunk length (rounded up to the tile height); tests use it to
    exercise the multi-chunk path at small T. ``decay``: a float, (H,), (B, H, T) or (B, H, T, D);
    ``gate``: None or (B, H, T).
    """
    decay_t, scale_t, gate_t = _kernel_inputs(x, decay, scale, normalize, gate)
    return LEAKY_AVERAGE.apply(x, decay_t, scale_t, bool(normalize), float(eps), int(chunk_len or 0), bool(heads_last),
                               gate_t)


# A time-varying decay of these dtypes reaches the kernels as it is: their loads widen it to float32, the values
# .float() would give, and its gradient is stored in its dtype, rounded to nearest-even as autograd's cast of a
# float32 gradient rounds it, so the results are those of a float32 copy, bit for bit on the GPU (Triton's
# interpreter rounds bf16 stores its own way: within one ulp). A 16-bit (B, H, T, D)
# decay then moves 2 bytes an element each way instead of 4 and needs no float32 copy (the per-channel scan is
# bound by these bytes: BENCHMARKS.md, issue 36's targets).
_TV_DECAY_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _kernel_inputs(x: torch.Tensor, decay: float | torch.Tensor, scale: float | torch.Tensor | None, normalize: bool,
                   gate: torch.Tensor | None) -> tuple:
    """(decay, scale, gate) as the kernels read them: float32; a number or an (H,) decay as an (H,) tensor, a
    time-varying one as it is (any strides: the kernels read it through them; float32, bfloat16 or float16 in its
    own dtype, see _TV_DECAY_DTYPES); the scale 1 without normalisation."""
    H = x.shape[1]
    if isinstance(decay, torch.Tensor) and decay.dim() > 1:
        decay_t = decay if decay.dtype in _TV_DECAY_DTYPES else decay.float()
    else:
        decay_t = per_head_tensor(decay, H, x, 0.0)
    return (decay_t, per_head_tensor(scale if normalize else None, H, x, 1.0),
            gate.float() if gate is not None else None)


class ScanPlan:
    """An eager call's host work done once per call signature (mosaic_kernels._common.CALL_PLANS): the scan of
    inputs of one shape, strides, dtype and device, with a decay and a scale of one kind (a number, or a tensor
    of one shape, strides and dtype), a gate or none, one normalisation, eps and output layout. It holds the
    forward's launch plan (:func:`_forward_launch`) and, from the first backward on, the backward's
    (:func:`_backward_launch`), built by the same functions as every call's, so that its launches are those of
    :func:`leaky_average_triton`; :meth:`__call__` converts the per-call tensors as that function does and runs
    the plans through :class:`_PlannedScan`, an autograd node of five inputs against the registered op's eight.
    mosaic_kernels.leaky_average keeps one per signature it has checked."""

    def __init__(self, x: torch.Tensor, decay: float | torch.Tensor, scale: float | torch.Tensor | None,
                 normalize: bool, eps: float, heads_last: bool, gate: torch.Tensor | None):
        # Numbers are part of the signature: kept as the checks converted them (a tensor is converted at each call).
        self.decay = None if isinstance(decay, torch.Tensor) else decay
        self.scale = None if isinstance(scale, torch.Tensor) else scale
        self.normalize, self.eps, self.heads_last = normalize, eps, heads_last
        self.dx_heads_last = is_heads_last(x)  # dx takes x's layout
        decay_t, _, gate_t = self.tensors(x, decay, scale, gate)
        y = empty_heads(torch.empty, x.shape, heads_last=heads_last, device="meta", dtype=x.dtype)
        self.fwd = _forward_launch(x, y, decay_t, normalize, eps, 0, gate_t)
        self.bwd: dict | None = None

    def tensors(self, x: torch.Tensor, decay: float | torch.Tensor, scale: float | torch.Tensor | None,
                gate: torch.Tensor | None) -> tuple:
        """(decay, scale, gate) as :func:`leaky_average_triton` hands them to the kernels (:func:`_kernel_inputs`),
        numbers taken as the plan keeps them."""
        return _kernel_inputs(x, decay if self.decay is None else self.decay,
                              scale if self.scale is None else self.scale, self.normalize, gate)

    def backward_plan(self, y: torch.Tensor, decay_t: torch.Tensor, x: torch.Tensor | None,
                      gate_t: torch.Tensor | None) -> dict:
        """The backward's launch plan, made at the first backward from the saved tensors."""
        if self.bwd is None:
            gx = empty_heads(torch.empty, y.shape, heads_last=self.dx_heads_last, device="meta", dtype=y.dtype)
            self.bwd = _backward_launch(y, gx, decay_t, self.normalize, self.eps, 0, x, gate_t)
        return self.bwd

    def __call__(self, x: torch.Tensor, decay: float | torch.Tensor, scale: float | torch.Tensor | None,
                 gate: torch.Tensor | None) -> torch.Tensor:
        """The scan of x through :class:`_PlannedScan`."""
        return _PlannedScan.apply(x, *self.tensors(x, decay, scale, gate), self)


class _PlannedScan(torch.autograd.Function):
    """The autograd node of :class:`ScanPlan`'s calls: the launches of its plans, the gradients of
    :data:`LEAKY_AVERAGE`'s node."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, decay_t: torch.Tensor, scale_t: torch.Tensor, gate_t: torch.Tensor | None,
                plan: ScanPlan) -> torch.Tensor:
        y, norm = _launch_forward(x, decay_t, scale_t, plan.normalize, plan.eps, 0, plan.heads_last, gate_t,
                                  launch_plan=plan.fwd)
        ctx.save_for_backward(y, norm, decay_t, scale_t, x if gate_t is not None else None, gate_t)
        ctx.plan = plan
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor) -> tuple:
        y, norm, decay_t, scale_t, x, gate_t = ctx.saved_tensors
        plan = ctx.plan
        tv = decay_t.dim() > 1  # a time-varying d(decay) is the kernel's own, no sum
        head_sums = (ctx.needs_input_grad[1] and not tv, ctx.needs_input_grad[2] and plan.normalize)
        gx, per_head, ddecay, dgate = _launch_backward(
            gy, y, norm, decay_t, scale_t, plan.normalize, plan.eps, 0, plan.dx_heads_last, x, gate_t, head_sums,
            launch_plan=plan.backward_plan(y, decay_t, x, gate_t), shared_sums=True)
        return (gx, ddecay if tv else per_head[0] if head_sums[0] else None,
                per_head[1] if head_sums[1] else None, dgate, None)


# --------------------------------------------------------------------------- stable_gate_and_decay

# Time steps a program of the gate kernel scans at once (the whole row up to this length).
GATES_BLOCK_T = 1024


def _gates_forward(log_gate: torch.Tensor, log_decay: torch.Tensor, rate_bias: torch.Tensor | None) -> torch.Tensor:
    """The stabilised pair of (B, H, T) logs (any float dtype and strides) as one contiguous (2, B, H, T)
    float32 tensor, gates first: one launch, one program per (b, h) (triton_gates.py). With ``rate_bias``
    (H,) float32, ``log_decay`` holds rates r and the log-decays are -|r + rate_bias|."""
    B, H, T = log_gate.shape
    pair = _empty((2, B, H, T), device=log_gate.device, dtype=torch.float32)
    launch(_stable_gate_decay_kernel, (B * H,), log_gate, log_decay, rate_bias if rate_bias is not None else pair,
           pair, H, T, B * H * T, *log_gate.stride(), *log_decay.stride(), RATES=rate_bias is not None,
           BLOCK_T=time_tile(T, GATES_BLOCK_T), num_warps=4)
    return pair


def _gates_fake_forward(log_gate, log_decay, rate_bias):
    return log_gate.new_empty((2, *log_gate.shape), dtype=torch.float32)


def _gates_backward(grad: torch.Tensor, pair: torch.Tensor, rates: torch.Tensor | None, rate_bias: torch.Tensor | None,
                    gate_dtype: torch.dtype, decay_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of both logs with the running log-scale M held fixed (the normalised keys do not depend
    on it): d gate_t / d log_gate_t = gate_t, d decay_t / d log_decay_t = decay_t, so each is its element's
    value times its gradient; with ``rate_bias`` (``rates`` the forward's r), d r = -sign(r + b) d log_decay
    and d b its sum over (B, T) (per-(b, h) partials in the kernel, summed over b here: a fixed order). One
    launch (two with the bias), each gradient written in its input's dtype. Returns (d log_gate, d log_decay
    or d r, d b ((H,) float32; an empty tensor without a bias))."""
    _, B, H, T = pair.shape
    d_gate = _empty((B, H, T), device=pair.device, dtype=gate_dtype)
    d_decay = _empty((B, H, T), device=pair.device, dtype=decay_dtype)
    with_bias = rate_bias is not None
    parts = _empty((B, H) if with_bias else (0,), device=pair.device, dtype=torch.float32)
    # Without a bias the rates, the bias and the partials are never read: the pair stands in for them.
    launch(_stable_gate_decay_bwd_kernel, (B * H,), grad, pair, rates if with_bias else pair,
           rate_bias if with_bias else pair, d_gate, d_decay, parts if with_bias else pair, H, T, B * H * T,
           *grad.stride(), *(rates.stride() if with_bias else (0, 0, 0)), RATES=with_bias,
           BLOCK_T=time_tile(T, GATES_BLOCK_T), num_warps=4)
    return d_gate, d_decay, parts.sum(0) if with_bias else parts


def _gates_fake_backward(grad, pair, rates, rate_bias, gate_dtype, decay_dtype):
    _, B, H, T = pair.shape
    return (pair.new_empty((B, H, T), dtype=gate_dtype), pair.new_empty((B, H, T), dtype=decay_dtype),
            pair.new_empty((H,) if rate_bias is not None else (0,)))


def _gates_save(ctx, inputs, pair):
    log_gate, log_decay, rate_bias = inputs
    # The rates are read again backward only with a bias (the sign of r + b); otherwise nothing is kept of them.
    ctx.save_for_backward(pair, log_decay if rate_bias is not None else None, rate_bias)
    ctx.dtypes = (log_gate.dtype, log_decay.dtype)


def _gates_backward_args(ctx, grad):
    pair, rates, rate_bias = ctx.saved_tensors
    return grad, pair, rates, rate_bias, *ctx.dtypes


def _gates_input_grads(ctx, result):
    d_gate, d_decay, d_bias = result
    return d_gate, d_decay, d_bias if ctx.saved_tensors[2] is not None else None


STABLE_GATES = fused_op("stable_gate_and_decay", forward=_gates_forward, fake_forward=_gates_fake_forward,
                        backward=_gates_backward, fake_backward=_gates_fake_backward, save=_gates_save,
                        backward_args=_gates_backward_args, input_grads=_gates_input_grads)
