"""Host wrappers of the Triton attention kernels: tiles, launches, and the op's registration (_registration)."""
from __future__ import annotations

import os

import torch

from .._common import cdiv, empty_heads, interpreter_enabled, next_power_of_2, per_head_tensor, time_tile
from .._registration import fused_op
from .._triton_common import draw_seed, dropout_threshold, keep_scale, launch, philox_groups, row_delta
from .triton_attention import _attn_bwd_kernel, _attn_bwd_key_kernel, _attn_bwd_query_kernel, _attn_fwd_kernel
from .triton_bandwidth import _bandwidth_bwd_kernel, _bandwidth_fwd_kernel

# Every buffer a kernel writes is allocated here; tests swap in a NaN-filled allocator to catch
# elements a kernel forgets to write.
_empty = torch.empty

# The softmax backward's row term delta_t = <y_t, dy_t>: in a launch of its own before the backward (row_delta), or
# inside the backward's kernels, from y, where each program needs it (one launch and one (B, H, T) buffer fewer per
# call, y reread once per query block a program visits). Inside takes host time off a call that waits on the host
# and costs GPU time where the GPU is busy. Measured on an H100 (2026-12-07, BENCHMARKS.md "The backward's row term
# inside its kernels"; bf16, the two in one process): eager fwd+bwd 1.13x and 1.06x faster inside at (16,12,512,64)
# and (8,12,1024,64), 0.98x at (4,12,2048,64); as CUDA graphs equal at (16,12,512,64) and for a 256-key window at
# (2,12,8192,64), 6% slower for that window at (1,16,8192,128) and 6-10% slower for the full op at T = 8192.
# DELTA_IN_KERNEL: None picks per call by that line (delta_in_kernel); True or False forces one path.
# MOSAIC_ATTN_DELTA_IN_KERNEL=1 / 0 / auto (the default) sets it for a process.
_DELTA_SETTINGS = {"1": True, "0": False, "auto": None}
_delta_env = os.environ.get("MOSAIC_ATTN_DELTA_IN_KERNEL", "auto")
if _delta_env not in _DELTA_SETTINGS:
    raise ValueError(f"MOSAIC_ATTN_DELTA_IN_KERNEL must be 0, 1 or auto, got {_delta_env!r}")
DELTA_IN_KERNEL: bool | None = _DELTA_SETTINGS[_delta_env]
# The work below which the row term goes inside: B * H * T * (keys a row sees on average) * D. The measured calls
# inside it: 1.6e9 (16,12,512,64) and 3.2e9 ((8,12,1024,64); the window at (2,12,8192,64)); outside: 4.3e9 (the window
# at (1,16,8192,128), 6% slower inside), 6.4e9 ((4,12,2048,64), 0.98x) and the full op at T = 8192 (5e10 and more).
DELTA_IN_KERNEL_MAX_WORK = 4e9


def delta_in_kernel(B: int, H: int, T: int, D: int, dtype: torch.dtype, window: int | None) -> bool:
    """Whether a backward computes its row term inside its kernels (see DELTA_IN_KERNEL): forced when set, else
    inside for 16-bit inputs whose work, B * H * T * D times the keys a row sees on average (T / 2 causal, at most
    ``window`` with one; a band table counts as causal), is at most DELTA_IN_KERNEL_MAX_WORK. float32 keeps its own
    launch: the line was measured in bf16 only."""
    if DELTA_IN_KERNEL is not None:
        return DELTA_IN_KERNEL
    if dtype not in (torch.bfloat16, torch.float16):
        return False
    keys = T / 2 if window is None else min(window, T / 2)
    return B * H * T * keys * D <= DELTA_IN_KERNEL_MAX_WORK


def _block_d(D: int) -> int:
    return max(16, next_power_of_2(D))


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs keep fp32 products (3xTF32-free "ieee"); 16-bit inputs use the tensor cores.
    return "ieee" if dtype == torch.float32 else "tf32"


# Tile tables, measured with benchmarks/tools/tune_kernels.py on an H200 in bf16 at D = 64 and 128 (the other
# head dims take the nearest measured choice). Rows of LONG_T[BLOCK_D] keys or more are "long" (T keys,
# or window + 1 with a band): the forward takes its long tiles and the backward runs as two kernels (see
# triton_attention.py), which measured faster from there on and slower below (BENCHMARKS.md
# "mosaic_attention"; the band's choice: "Memory Mosaics v2 ops").
LONG_T = {16: 2048, 32: 2048, 64: 2048, 128: 8192, 256: None}
# Forward: (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_M a multiple of BLOCK_N.
FWD_TILES = {16: (64, 64, 4, 3), 32: (64, 64, 4, 3), 64: (64, 64, 4, 3), 128: (64, 64, 4, 3), 256: (64, 32, 4, 2)}
FWD_LONG_TILES = {16: (128, 64, 8, 3), 32: (128, 64, 8, 3), 64: (128, 64, 8, 3), 128: (128, 128, 8, 3)}
# Backward as one kernel: (BLOCK_P, BLOCK_Q, BLOCK_K, num_warps, num_stages).
BWD_TILES = {16: (64, 64, 64, 4, 3), 32: (64, 64, 64, 4, 3), 64: (64, 64, 64, 4, 3), 128: (64, 64, 64, 4, 2),
             256: (32, 32, 32, 4, 1)}
# Backward as two kernels: key role (BLOCK_P, BLOCK_Q, warps, stages), query role (BLOCK_P, BLOCK_K, warps, stages).
BWD_LONG_TILES = {16: ((128, 32, 4, 3), (64, 64, 4, 3)), 32: ((128, 32, 4, 3), (64, 64, 4, 3)),
                  64: ((128, 32, 4, 3), (64, 64, 4, 3)), 128: ((128, 64, 8, 3), (128, 64, 8, 4))}
# The two-kernel backward on a band table (the v2 block's one call of 2H heads with a per-row scale): its masked
# "check" loop and per-row scale favour other tiles than the strictly causal loops above. Measured on an H100
# (2026-12-06, `tune_kernels v2-attention`, bf16, D = 64): at (8, 24, 2048, 64) 0.79 ms against > 0.89 ms for the
# causal table's tiles, at (2, 24, 8192, 64) 2.09 against 2.16 ms. Head dim 128 is not measured: the causal tiles.
BWD_BAND_TABLE_TILES = {16: ((64, 64, 4, 3), (64, 32, 4, 3)), 32: ((64, 64, 4, 3), (64, 32, 4, 3)),
                        64: ((64, 64, 4, 3), (64, 32, 4, 3)), 128: BWD_LONG_TILES[128]}


# Programs start in groups of HEAD_GROUP heads (triton_attention._head_and_block): every block of a group's heads
# before the next group's, so the programs running at once share the keys and values of fewer heads in L2. None:
# one group of all B*H heads, the plain grid order. `tune_kernels head-group` on the H100 (2026-12-06, bf16, the
# default tiles, plain order against 24): the causal op at (8, 12, 8192, 64) forward 2.23 -> 2.02 ms, backward
# 7.48 -> 6.29; v2's call at (8, 24, 2048, 64) backward 1.017 -> 0.947; equal (+-1%) at (2, 12, 8192, 64) and
# (2, 24, 8192, 64), where B*H <= 48; groups of 8 to 48 all within 3% of 24. A config dict's "HEAD_GROUP"
# overrides it (tuning, tests).
HEAD_GROUP: int | None = 24


def _head_group(cfg: dict, n_heads: int) -> int:
    """Heads per launch group for a (B*H = n_heads, blocks) grid: the config's "HEAD_GROUP" (popped), else
    HEAD_GROUP, else every head; at least 1, at most n_heads."""
    group = cfg.pop("HEAD_GROUP", None) or HEAD_GROUP or n_heads
    return max(1, min(int(group), n_heads))


# Float32 inputs take exact float32 products (`input_precision="ieee"`, the FMA units, both operands of every
# product in registers), and the 16-bit tiles above do not fit there: under Triton 3.6, the GPU machines' version,
# `ptxas -v` for sm_90a (2026-12-06, float32, dropout on) spills 124 bytes a thread in the forward and the one-kernel
# backward at D = 16 and 31,016 / 62,116 bytes at D = 64 (Triton 3.9: 29,652 in the forward at D = 64). These
# tiles spill nothing under 3.6, the largest blocks that allows (then the fewest registers), the plan (one or
# two backward kernels) chosen as for 16-bit inputs; but at D = 16 the short rows keep the 16-bit tiles, whose
# 124 bytes cost less than the smaller blocks: timed on an H100 (2026-12-07, `tune_kernels float32-ab`, dropout
# 0.05, RegBench's (32, 8, 563, 16)) the 16-bit tiles took 0.26 / 0.87 ms (fwd / bwd) against 0.40 / 1.37 for the
# spill-free ones, while at D = 64 the spill-free ones took 0.30 / 1.38 against 0.30 / 1.57 at (16, 4, 512, 64)
# and 4.5 / 24 against 67 / 212 at (2, 12, 4096, 64) (BENCHMARKS.md "Float32 tiles").
FWD_TILES_FLOAT32 = {16: FWD_TILES[16], 32: (64, 32, 8, 2), 64: (64, 32, 8, 3), 128: (32, 16, 8, 3),
                     256: (32, 16, 8, 1)}
FWD_LONG_TILES_FLOAT32 = {16: (128, 64, 8, 3), 32: (64, 32, 8, 2), 64: (64, 32, 8, 3), 128: (32, 16, 8, 3)}
BWD_TILES_FLOAT32 = {16: BWD_TILES[16], 32: (32, 32, 32, 8, 2), 64: (32, 32, 32, 8, 2), 128: (32, 16, 16, 8, 2),
                     256: (16, 16, 16, 8, 2)}
BWD_LONG_TILES_FLOAT32 = {16: ((64, 32, 8, 3), (64, 64, 8, 3)), 32: ((32, 32, 8, 3), (64, 32, 8, 3)),
                          64: ((32, 32, 8, 3), (64, 32, 8, 3)), 128: ((16, 16, 8, 3), (32, 16, 8, 3))}


def _tables(dtype: torch.dtype) -> tuple[dict, dict, dict, dict, dict]:
    """(forward, long-row forward, one-kernel backward, two-kernel backward, band-table backward) tile tables for
    inputs of ``dtype``: float32 has its own (the band table then takes its two-kernel tiles)."""
    if dtype == torch.float32:
        return (FWD_TILES_FLOAT32, FWD_LONG_TILES_FLOAT32, BWD_TILES_FLOAT32, BWD_LONG_TILES_FLOAT32,
                BWD_LONG_TILES_FLOAT32)
    return FWD_TILES, FWD_LONG_TILES, BWD_TILES, BWD_LONG_TILES, BWD_BAND_TABLE_TILES


def _is_long(T: int, D: int, window: int | None = None) -> bool:
    """Whether rows are long: a row sees at most T keys, or window + 1 of them with a window. A narrow band
    at a long T is a short-row problem (few key blocks a program) and takes the short plan. (A band table's
    windows are on the device: the host plans for the widest possible, T keys.)"""
    long_t = LONG_T[_block_d(D)]
    span = T if window is None else min(T, window + 1)
    return long_t is not None and span >= long_t


def _fwd_config(T: int, D: int, window: int | None = None, *, dtype: torch.dtype) -> dict:
    """BLOCK_M, BLOCK_N (BLOCK_M a multiple of BLOCK_N), num_warps, num_stages for the forward on ``dtype``
    inputs."""
    if interpreter_enabled():
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)
    short, long, *_ = _tables(dtype)
    table = long if _is_long(T, D, window) else short
    bm, bn, warps, stages = table[_block_d(D)]
    return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)


def split_config(key_tiles: tuple, query_tiles: tuple) -> dict:
    """The two-kernel backward's config from (BLOCK_P, BLOCK_Q, warps, stages) of the key-role kernel
    and (BLOCK_P, BLOCK_K, warps, stages) of the query-role kernel."""
    (kp, kq, kw, ks), (qp, qk, qw, qs) = key_tiles, query_tiles
    return dict(key=dict(BLOCK_P=kp, BLOCK_Q=kq, num_warps=kw, num_stages=ks),
                query=dict(BLOCK_P=qp, BLOCK_K=qk, num_warps=qw, num_stages=qs))


def _bwd_config(T: int, D: int, window: int | None = None, band_table: bool = False, *, dtype: torch.dtype) -> dict:
    """One kernel: BLOCK_P (positions owned), BLOCK_Q / BLOCK_K (the two loops), num_warps, num_stages.
    Two kernels (long rows, see :func:`_is_long`): {"key": ..., "query": ...}, see :func:`split_config`;
    with ``band_table`` (a (B, H, 2) DELAYS table) from BWD_BAND_TABLE_TILES."""
    if interpreter_enabled():
        return dict(BLOCK_P=16, BLOCK_Q=16, BLOCK_K=16, num_warps=1, num_stages=1)
    *_, one, two, band = _tables(dtype)
    if _is_long(T, D, window):
        return split_config(*(band if band_table else two)[_block_d(D)])
    bp, bq, bk, warps, stages = one[_block_d(D)]
    return dict(BLOCK_P=bp, BLOCK_Q=bq, BLOCK_K=bk, num_warps=warps, num_stages=stages)


def _check_blocks(block_p: int, *loop_blocks: int):
    for block in loop_blocks:
        if block_p % block:
            raise ValueError(f"BLOCK_P ({block_p}) must be a multiple of the loop blocks {loop_blocks}")


def _band_args(k: torch.Tensor, scale_t: torch.Tensor, window: int | None, delay: int,
               delays: torch.Tensor | None, adaptive: int = 0) -> tuple[torch.Tensor, tuple, tuple, dict]:
    """The kernels' band and scale arguments: (DELAYS pointer, the scale's (b, h, t) strides,
    (window, delay), the compile-time {BAND, PER_BATCH_DELAY, ROW_SCALE, BAND_TABLE}). A window of None is T
    (no key is further than T - 1 back); delay 1 without a window is the strict causal mask, no band.
    ``delays``: int32, (B,) one per sequence, or the (B, H, 2) table of (window, delay) per sequence and head
    (:func:`band_table`; then ``window`` and ``delay`` are not read). ``adaptive``: 0, or 2 / 3 when ``scale_t`` is
    the (3, H) rows (beta0, beta1, alpha) of the adaptive bandwidth (3: unconstrained, see :func:`row_bandwidth`),
    computed per row in the forward's kernel (ROW_SCALE = adaptive; 1 for a per-row scale tensor, 0 for a per-head
    one)."""
    B, H, T, _ = k.shape
    band = window is not None or delay != 1 or delays is not None
    row_scale = adaptive or int(scale_t.dim() > 1)
    strides = scale_t.expand(B, H, T).stride() if row_scale == 1 else (0, 0, 0)
    meta = dict(BAND=band, ROW_SCALE=row_scale, **_band_flags(delays))
    return (delays if delays is not None else scale_t), strides, (T if window is None else window, delay), meta


def _band_flags(delays: torch.Tensor | None) -> dict:
    """The compile-time band flags of the attention's and the bandwidth's kernels for their DELAYS argument:
    PER_BATCH_DELAY for (B,) delays, BAND_TABLE for a (B, H, 2) table."""
    return dict(PER_BATCH_DELAY=delays is not None and delays.dim() == 1,
                BAND_TABLE=delays is not None and delays.dim() == 3)


def band_table(window: int | torch.Tensor | None, delay: int | torch.Tensor, B: int, H: int, T: int,
               device: torch.device) -> torch.Tensor:
    """The (B, H, 2) int32 table of (window, delay) of every sequence and head that the kernels read with
    BAND_TABLE: ``window`` None (T), an int or an (H,) tensor; ``delay`` an int, a (B,) or a (B, H) tensor.
    Written on the device (an int is a fill, no host-to-device copy)."""
    table = torch.empty((B, H, 2), dtype=torch.int32, device=device)
    table[..., 0] = T if window is None else window
    table[..., 1] = delay[:, None] if isinstance(delay, torch.Tensor) and delay.dim() == 1 else delay
    return table


def kernel_band(window: int | torch.Tensor | None, delay: int | torch.Tensor, band: torch.Tensor | None, B: int,
                H: int, T: int, device: torch.device) -> tuple[int, int, torch.Tensor | None]:
    """A checked band in the form both fused ops take: (window, -1 for none; delay; DELAYS: None, the int32
    (B,) delays, or the int32 (B, H, 2) table, built here from a per-head window or a (B, H) delay). With
    DELAYS the kernels read neither int."""
    if band is None and (isinstance(window, torch.Tensor) or (isinstance(delay, torch.Tensor) and delay.dim() == 2)):
        band = band_table(window, delay, B, H, T, device)
    if band is not None:
        return -1, 0, band.to(torch.int32).contiguous()
    delays = delay.to(device=device, dtype=torch.int32).contiguous() if isinstance(delay, torch.Tensor) else None
    return -1 if window is None else int(window), 0 if delays is not None else int(delay), delays


def _forward_launch(k: torch.Tensor, v: torch.Tensor, y: torch.Tensor, scale_t: torch.Tensor, cfg: dict,
                    threshold: int, window: int | None, delay: int, delays: torch.Tensor | None,
                    adaptive: int) -> tuple[tuple, tuple, dict]:
    """The forward's launch for these inputs' shapes, strides and dtype and the output ``y``'s layout (only
    those are read): (grid, the arguments after its eight tensors, the keyword arguments), with the tile config
    ``cfg``. A pure function of what it reads, so an eager call of a known signature reuses it (:class:`AttentionPlan`)."""
    B, H, T, D = k.shape
    cfg = dict(cfg)
    grid = (B * H, cdiv(T, cfg["BLOCK_M"]))
    head_group = _head_group(cfg, B * H)
    _, sc_strides, band, meta = _band_args(k, scale_t, window, delay, delays, adaptive)
    args = (*k.stride(), *v.stride(), *y.stride()[:3], *sc_strides, H, T, D, philox_groups(T), keep_scale(threshold),
            *band, head_group)
    return grid, args, dict(BLOCK_D=_block_d(D), PRECISION=_precision(k.dtype), DROPOUT=threshold > 0,
                            THRESHOLD=threshold, **meta, **cfg)


def attention_forward(k: torch.Tensor, v: torch.Tensor, scale_t: torch.Tensor, fwd_config: dict | None = None,
                      heads_last: bool = False, seed: torch.Tensor | None = None, threshold: int = 0,
                      window: int | None = None, delay: int = 1, delays: torch.Tensor | None = None,
                      adaptive: int = 0, row_scales: torch.Tensor | None = None,
                      launch_plan: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward; returns (y, lse), y heads-last or contiguous (_common.empty_heads).
    ``fwd_config`` overrides the tile choice (tuning). Dropout: ``threshold`` > 0
    (:func:`_triton_common.dropout_threshold`) with ``seed``, an int64 tensor of one element.
    ``scale_t``: (H,), or per row (H, T) or (B, H, T), float32, or with ``adaptive`` (2, 3) the (3, H) rows of
    the adaptive bandwidth (:func:`_band_args`), whose per-row scales are written to ``row_scales``, a (B, H, T)
    float32 tensor (allocated and dropped when None), for :func:`attention_backward`. Band: keys t - window ..
    t - delay, ``delays`` an int32 (B,) tensor of per-batch delays or the (B, H, 2) band table (then ``delay`` is
    not read). ``launch_plan``: what :func:`_forward_launch` returned for the same arguments (a cached plan)."""
    B, H, T, D = k.shape
    y = empty_heads(_empty, k.shape, heads_last=heads_last, device=k.device, dtype=v.dtype)
    lse = _empty((B, H, T), device=k.device, dtype=torch.float32)
    if adaptive and row_scales is None:
        row_scales = _empty((B, H, T), device=k.device, dtype=torch.float32)
    grid, args, meta = launch_plan or _forward_launch(
        k, v, y, scale_t, fwd_config or _fwd_config(T, D, window, dtype=k.dtype), threshold, window, delay, delays,
        adaptive)
    # Without dropout the seed pointer is never read, nor DELAYS without delays: any tensor stands in.
    launch(_attn_fwd_kernel, grid, k, v, y, lse, row_scales if adaptive else lse, scale_t,
           scale_t if threshold == 0 else seed, delays if delays is not None else scale_t, *args, **meta)
    return y, lse


def _backward_launch(k: torch.Tensor, v: torch.Tensor, y: torch.Tensor, scale_t: torch.Tensor, cfg: dict,
                     threshold: int, window: int | None, delay: int, delays: torch.Tensor | None) -> dict:
    """The backward's plan for these inputs' shapes, strides and dtype (only those are read): the row term's
    place, the one or two kernels' grids, settings and arguments but the gradient dy's strides, from the plan
    and tiles ``cfg`` (:func:`_bwd_config`). A pure function of what it reads, as :func:`_forward_launch`."""
    B, H, T, D = k.shape
    cfg = dict(cfg)
    if "key" in cfg:
        _check_blocks(cfg["key"]["BLOCK_P"], cfg["key"]["BLOCK_Q"])
        _check_blocks(cfg["query"]["BLOCK_P"], cfg["query"]["BLOCK_K"])
    else:
        _check_blocks(cfg["BLOCK_P"], cfg["BLOCK_Q"], cfg["BLOCK_K"])
    bd = _block_d(D)
    _, sc_strides, band, meta = _band_args(k, scale_t, window, delay, delays)
    in_kernel = delta_in_kernel(B, H, T, D, k.dtype, window)
    common = dict(BLOCK_D=bd, PRECISION=_precision(k.dtype), DROPOUT=threshold > 0, THRESHOLD=threshold, **meta,
                  DELTA_FROM_Y=in_kernel)
    plan = dict(kv_strides=(*k.stride(), *v.stride()), sc_strides=sc_strides, y_strides=y.stride(),
                tail=(H, T, D, philox_groups(T), keep_scale(threshold), *band), in_kernel=in_kernel, block_d=bd,
                delta_block=16 if interpreter_enabled() else 64, row_scale=meta["ROW_SCALE"])
    if "key" not in cfg:
        cfg.pop("HEAD_GROUP", None)  # the one-kernel backward (short rows) keeps its plain (blocks, B*H) order
        n_blocks = cdiv(T, cfg["BLOCK_P"])
        plan.update(n_blocks=n_blocks, grid=(n_blocks, B * H), meta={**common, **cfg})
        return plan
    key, query = dict(cfg["key"]), dict(cfg["query"])
    key_group, query_group = _head_group(key, B * H), _head_group(query, B * H)
    n_blocks = cdiv(T, query["BLOCK_P"])
    plan.update(n_blocks=n_blocks, key=((B * H, cdiv(T, key["BLOCK_P"])), key_group, {**common, **key}),
                query=((B * H, n_blocks), query_group, {**common, **query}))
    return plan


def attention_backward(k: torch.Tensor, v: torch.Tensor, y: torch.Tensor, lse: torch.Tensor, scale_t: torch.Tensor,
                       dy: torch.Tensor, bwd_config: dict | None = None, seed: torch.Tensor | None = None,
                       threshold: int = 0, window: int | None = None, delay: int = 1,
                       delays: torch.Tensor | None = None, launch_plan: dict | None = None) -> tuple:
    """Launch the backward; returns (dk, dv, d(scale) terms): per-program partials of shape (B, H, n_blocks)
    for a per-head scale, the per-row gradient (B, H, T) for a per-row one (for the adaptive bandwidth, the
    ``row_scales`` its forward wrote). ``bwd_config`` overrides the plan and tiles (tuning, tests): a dict as
    :func:`_bwd_config` returns. ``seed`` and ``threshold``: the forward's dropout, whose mask is regenerated
    here; the band as in the forward. ``launch_plan``: what :func:`_backward_launch` returned for the same
    arguments (a cached plan)."""
    B, H, T, D = k.shape
    p = launch_plan or _backward_launch(
        k, v, y, scale_t, bwd_config or _bwd_config(T, D, window, band_table=delays is not None and delays.dim() == 3,
                                                    dtype=k.dtype), threshold, window, delay, delays)
    seed_t = scale_t if threshold == 0 else seed  # never read without dropout
    delays_t = delays if delays is not None else scale_t
    strides = (*p["kv_strides"], *dy.stride(), *p["sc_strides"])
    y_args = (y, *p["y_strides"])
    # With the delta in the kernels, DELTA is a placeholder pointer they never read (lse: any float32 tensor).
    delta = lse if p["in_kernel"] else row_delta(y, dy, p["delta_block"], p["block_d"], _empty)
    dk = _empty((B, H, T, D), device=k.device, dtype=k.dtype)
    dv = _empty((B, H, T, D), device=k.device, dtype=v.dtype)
    part = _empty((B, H, T if p["row_scale"] else p["n_blocks"]), device=k.device, dtype=torch.float32)
    if "key" not in p:
        launch(_attn_bwd_kernel, p["grid"],
            k, v, dy, lse, delta, scale_t, seed_t, delays_t, dk, dv, part, *strides, *p["tail"], *y_args, **p["meta"])
        return dk, dv, part
    (key_grid, key_group, key_meta), (query_grid, query_group, query_meta) = p["key"], p["query"]
    dk_key = _empty((B, H, T, D), device=k.device, dtype=torch.float32)
    launch(_attn_bwd_key_kernel, key_grid,
        k, v, dy, lse, delta, scale_t, seed_t, delays_t, dv, dk_key, *strides, *p["tail"], key_group, *y_args,
        **key_meta)
    launch(_attn_bwd_query_kernel, query_grid,
        k, v, dy, lse, delta, scale_t, seed_t, delays_t, dk_key, dk, part, *strides, *p["tail"], query_group, *y_args,
        **query_meta)
    return dk, dv, part


def _forward(k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, heads_last: bool, seed: torch.Tensor,
             threshold: int, window: int, delay: int, delays: torch.Tensor | None,
             adaptive: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, per-row log-sum-exp in float32, the adaptive bandwidth's per-row scales (B, H, T) float32, or an empty
    tensor without ``adaptive``); scale is float32, (H,) or per row (H, T) or (B, H, T), or the (3, H) rows of
    the adaptive bandwidth when ``adaptive`` (2, 3); dropout when threshold > 0; window -1 for none."""
    B, H, T, _ = k.shape
    row_scales = _empty((B, H, T) if adaptive else (0,), device=k.device, dtype=torch.float32)
    y, lse = attention_forward(k, v, scale, heads_last=heads_last, seed=seed, threshold=threshold,
                               window=None if window < 0 else window, delay=delay, delays=delays, adaptive=adaptive,
                               row_scales=row_scales)
    return y, lse, row_scales


def _fake_forward(k, v, scale, heads_last, seed, threshold, window, delay, delays, adaptive):
    B, H, T, D = k.shape
    return (empty_heads(v.new_empty, k.shape, heads_last=heads_last, device=v.device, dtype=v.dtype),
            k.new_empty((B, H, T), dtype=torch.float32),
            k.new_empty((B, H, T) if adaptive else (0,), dtype=torch.float32))


def _backward(k: torch.Tensor, v: torch.Tensor, y: torch.Tensor, lse: torch.Tensor, row_scales: torch.Tensor,
              scale: torch.Tensor, seed: torch.Tensor, threshold: int, window: int, delay: int,
              delays: torch.Tensor | None, adaptive: int, scale_grad: bool,
              dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dk, dv, d(scale) in float32, of the scale's shape; unwritten when not ``scale_grad``). With ``adaptive``
    the kernels read the per-row scales the forward wrote (``row_scales``), as for a per-row scale tensor."""
    dk, dv, part = attention_backward(k, v, y, lse, row_scales if adaptive else scale, dy, seed=seed,
                                      threshold=threshold, window=None if window < 0 else window, delay=delay,
                                      delays=delays)
    if not scale_grad:  # a constant scale (the model's None): skip the partials' sum, one launch fewer
        return dk, dv, part.new_empty(scale.shape)
    if adaptive:  # the rows' gradients (B, H, T) through beta(n_t) to its three rows, in row_bandwidth's kernel
        return dk, dv, _bandwidth_backward(part, scale[0], scale[1], scale[2], k.shape[2], window, delay, delays,
                                           adaptive == 3)
    # Fixed orders of summation: deterministic. Per head, the programs' partials over (b, blocks); per row
    # (H, T), the batch; per row (B, H, T), nothing.
    return dk, dv, part.sum(dim=(0, 2)) if scale.dim() == 1 else part.sum(dim=0) if scale.dim() == 2 else part


def _fake_backward(k, v, y, lse, row_scales, scale, seed, threshold, window, delay, delays, adaptive, scale_grad, dy):
    return k.new_empty(k.shape), v.new_empty(v.shape), k.new_empty(scale.shape, dtype=torch.float32)


def _save(ctx, inputs, outputs):
    k, v, scale, _heads_last, seed, threshold, window, delay, delays, adaptive = inputs
    ctx.save_for_backward(k, v, *outputs, scale, seed, delays)
    ctx.meta = (threshold, window, delay, adaptive)


def _backward_args(ctx, dy):
    k, v, y, lse, row_scales, scale, seed, delays = ctx.saved_tensors
    threshold, window, delay, adaptive = ctx.meta
    return k, v, y, lse, row_scales, scale, seed, threshold, window, delay, delays, adaptive, ctx.needs_input_grad[2], dy


ATTENTION = fused_op("attention", forward=_forward, fake_forward=_fake_forward, backward=_backward,
                     fake_backward=_fake_backward, save=_save, backward_args=_backward_args,
                     input_grads=lambda ctx, grads: (grads[0], grads[1], grads[2] if ctx.needs_input_grad[2] else None,
                                                     None, None, None, None, None, None, None))
attention_fwd, attention_bwd = ATTENTION.fwd, ATTENTION.bwd


def mosaic_attention_triton(k: torch.Tensor, v: torch.Tensor, scale: float | torch.Tensor | None = None,
                            heads_last: bool = False, dropout_p: float = 0.0,
                            generator: torch.Generator | None = None, window: int | torch.Tensor | None = None,
                            delay: int | torch.Tensor = 1, band: torch.Tensor | None = None,
                            bandwidth: torch.Tensor | None = None, unconstrained: bool = False) -> torch.Tensor:
    """Run the Triton attention (no validation: call :func:`mosaic_kernels.mosaic_attention`). With
    ``dropout_p`` > 0 a fresh Philox seed is drawn from ``generator`` (or the global one) per call.
    ``scale``: None, a float, (H,), or per row (H, T) / (B, H, T); or ``bandwidth``, the (3, H) rows (beta0, beta1,
    alpha) of the adaptive bandwidth computed per row by the forward's kernel (``unconstrained`` as in
    :func:`row_bandwidth`);
    ``window``: None, an int or (H,) tensor; ``delay``: an int, a (B,) or a (B, H) integer tensor; ``band``: a
    (B, H, 2) table instead of both."""
    H = k.shape[1]
    adaptive = 0
    if bandwidth is not None:
        scale_f, adaptive = bandwidth.float().contiguous(), 3 if unconstrained else 2
    elif isinstance(scale, torch.Tensor) and scale.dim() > 1:
        scale_f = scale.float().contiguous()
    else:
        scale_f = per_head_tensor(scale, H, k, 1.0)
    threshold = dropout_threshold(dropout_p)
    seed = draw_seed(generator, k.device) if threshold > 0 else scale_f  # never read without dropout
    B, H, T, _ = k.shape
    return ATTENTION.apply(k, v, scale_f, bool(heads_last), seed, threshold,
                           *kernel_band(window, delay, band, B, H, T, k.device), adaptive)


class AttentionPlan:
    """An eager call's host work done once per call signature: the plain call (``scale`` None or a number, an
    int window and delay or none, no band table or adaptive bandwidth) with inputs of one shape, strides, dtype
    and device. It holds the forward's launch plan (:func:`_forward_launch`) and, from the first backward on, the
    backward's (:func:`_backward_launch`), built by the same functions as every other call's and from the same tile
    choices, so its launches are those :func:`mosaic_attention_triton` would make; :meth:`__call__` runs them
    through :class:`_PlannedAttention`, a leaner autograd node than the registered op's (five inputs and six saved
    tensors against ten and eight, no scale gradient to allocate). mosaic_kernels.mosaic_attention keeps one per
    signature it has checked (issue 38: an eager call's host time)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, scale: float | None, heads_last: bool, dropout_p: float,
                 window: int | None, delay: int):
        B, H, T, D = k.shape
        self.heads_last, self.scale, self.threshold = heads_last, scale, dropout_threshold(dropout_p)
        self.window, self.delay = window, delay
        scale_t = torch.empty(H, device="meta", dtype=torch.float32)  # only its shape and strides are read
        y = empty_heads(torch.empty, k.shape, heads_last=heads_last, device="meta", dtype=v.dtype)
        self.fwd = _forward_launch(k, v, y, scale_t, _fwd_config(T, D, window, dtype=k.dtype), self.threshold,
                                   window, delay, None, 0)
        self.bwd: dict | None = None  # made by the first backward (an inference call never needs it)

    def backward_plan(self, k: torch.Tensor, v: torch.Tensor, y: torch.Tensor, scale_t: torch.Tensor) -> dict:
        """The backward's launch plan, made at the first backward from its saved tensors (the signature's k and
        v, the y this plan's forward allocated)."""
        if self.bwd is None:
            T, D = k.shape[2:]
            self.bwd = _backward_launch(k, v, y, scale_t, _bwd_config(T, D, self.window, dtype=k.dtype),
                                        self.threshold, self.window, self.delay, None)
        return self.bwd

    def __call__(self, k: torch.Tensor, v: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The attention of (k, v) with the autograd node of :class:`_PlannedAttention`; a fresh dropout seed per
        call, drawn as :func:`mosaic_attention_triton` draws it."""
        scale_t = per_head_tensor(self.scale, k.shape[1], k, 1.0)
        seed = draw_seed(generator, k.device) if self.threshold > 0 else scale_t  # never read without dropout
        return _PlannedAttention.apply(k, v, scale_t, seed, self)


class _PlannedAttention(torch.autograd.Function):
    """The autograd node of :class:`AttentionPlan`'s calls: the forward and backward launches of its plans."""

    @staticmethod
    def forward(ctx, k: torch.Tensor, v: torch.Tensor, scale_t: torch.Tensor, seed: torch.Tensor,
                plan: AttentionPlan) -> torch.Tensor:
        y, lse = attention_forward(k, v, scale_t, heads_last=plan.heads_last, seed=seed, threshold=plan.threshold,
                                   window=plan.window, delay=plan.delay, launch_plan=plan.fwd)
        ctx.save_for_backward(k, v, y, lse, scale_t, seed)
        ctx.plan = plan
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple:
        k, v, y, lse, scale_t, seed = ctx.saved_tensors
        plan = ctx.plan
        dk, dv, _ = attention_backward(k, v, y, lse, scale_t, dy, seed=seed, threshold=plan.threshold,
                                       window=plan.window, delay=plan.delay,
                                       launch_plan=plan.backward_plan(k, v, y, scale_t))
        return dk, dv, None, None, None


# --------------------------------------------------------------------------- row_bandwidth

# Time steps per program of the bandwidth kernels (the interpreter's small tiles exercise the loops).
BANDWIDTH_BLOCK_T = 1024


def _bandwidth_forward(beta0: torch.Tensor, beta1: torch.Tensor, alpha: torch.Tensor, T: int, window: int,
                       delay: int, delays: torch.Tensor | None, unconstrained: bool) -> torch.Tensor:
    """The per-row scale, (H, T) for one delay or (B, H, T) for ``delays`` (int32 (B,), or the (B, H, 2) band
    table); window -1 for none; ``unconstrained``: the inputs go through softplus, softplus and sigmoid first
    (in the kernel)."""
    H = beta0.shape[0]
    rows = delays.shape[0] if delays is not None else 1
    out = _empty((rows, H, T), device=beta0.device, dtype=torch.float32)
    block_t = time_tile(T, BANDWIDTH_BLOCK_T)
    launch(_bandwidth_fwd_kernel, (rows * H, cdiv(T, block_t)), beta0, beta1, alpha,
           delays if delays is not None else beta0, out, H, T, T if window < 0 else window, delay, **_band_flags(delays),
           UNCONSTRAINED=unconstrained, BLOCK_T=block_t, num_warps=4)
    return out if delays is not None else out[0]


def _bandwidth_fake_forward(beta0, beta1, alpha, T, window, delay, delays, unconstrained):
    shape = (beta0.shape[0], T) if delays is None else (delays.shape[0], beta0.shape[0], T)
    return beta0.new_empty(shape, dtype=torch.float32)


def _bandwidth_backward(grad: torch.Tensor, beta0: torch.Tensor, beta1: torch.Tensor, alpha: torch.Tensor, T: int,
                        window: int, delay: int, delays: torch.Tensor | None, unconstrained: bool) -> torch.Tensor:
    """(3, H) float32: the gradients of the three inputs (beta0, beta1 and alpha, or their unconstrained
    parameters), summed over the rows in a fixed order."""
    H = beta1.shape[0]
    g = grad if grad.dim() == 3 else grad.unsqueeze(0)
    out = _empty((3, H), device=grad.device, dtype=torch.float32)
    launch(_bandwidth_bwd_kernel, (H,), g, beta0, beta1, alpha, delays if delays is not None else beta1, out,
           g.shape[0], H, T, T if window < 0 else window, delay, *g.stride(), **_band_flags(delays),
           UNCONSTRAINED=unconstrained, BLOCK_T=time_tile(T, BANDWIDTH_BLOCK_T), num_warps=4)
    return out


def _bandwidth_fake_backward(grad, beta0, beta1, alpha, T, window, delay, delays, unconstrained):
    return beta1.new_empty((3, beta1.shape[0]), dtype=torch.float32)


def _bandwidth_save(ctx, inputs, _out):
    beta0, beta1, alpha, T, window, delay, delays, unconstrained = inputs
    ctx.save_for_backward(beta0, beta1, alpha, delays)
    ctx.meta = (T, window, delay)
    ctx.unconstrained = unconstrained
    ctx.dtypes = (beta0.dtype, beta1.dtype, alpha.dtype)


def _bandwidth_backward_args(ctx, grad):
    beta0, beta1, alpha, delays = ctx.saved_tensors
    return grad, beta0, beta1, alpha, *ctx.meta, delays, ctx.unconstrained


def _bandwidth_input_grads(ctx, result):
    return (*(r.to(dtype) for r, dtype in zip(result, ctx.dtypes)), None, None, None, None, None)


ROW_BANDWIDTH = fused_op("row_bandwidth", forward=_bandwidth_forward, fake_forward=_bandwidth_fake_forward,
                         backward=_bandwidth_backward, fake_backward=_bandwidth_fake_backward, save=_bandwidth_save,
                         backward_args=_bandwidth_backward_args, input_grads=_bandwidth_input_grads)
