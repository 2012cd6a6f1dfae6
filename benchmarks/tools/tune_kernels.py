"""Sweep the tile tables of both kernels on the GPU (bf16) and print the fastest per shape.

The winners go into the FWD_/BWD_ (LONG_) tile tables of mosaic_kernels/attention/function.py and into the
active tile tables of mosaic_kernels/leaky_average/function.py (``active_tiles``) by hand, so that
no run pays for autotuning.
The P-mem sweep fills TILES of mosaic_kernels/persistent_memory/function.py.
``attention-dropout`` sweeps the attention's tiles with dropout 0.05 (the mask is generated in every
kernel, so its best tiles may differ from the no-dropout ones). ``band`` sweeps them over the v2 short-term
band (window 256), whose rows see few key blocks at any T. ``v2-attention`` sweeps them for the v2 block's one call of
2H heads (a band table of windows and delays, a per-row scale), whose tiles the host plans as long rows (the
winners go into BWD_BAND_TABLE_TILES). ``row-scale`` times what a per-row scale costs the causal split backward by
key-role tile; ``head-group`` times the attention's launch order in groups of heads (function.HEAD_GROUP).
``time-varying`` sweeps the time-varying scans' tiles and stages (leaky_average's TIME_VARYING_TILES).

Usage: python -m benchmarks.tools.tune_kernels [leaky] [chunks] [chunks-tv] [chunk-rule] [in_tile] [attention] [attention-dropout]
       [band] [v2-attention] [row-scale] [head-group] [pmem] [small-head] [float32-ab]
       [time-varying]
(the sweeps of each op are in SWEEPS, keyed by the op's name in mosaic_kernels.registry)
"""
from __future__ import annotations

import contextlib
from unittest import mock

import torch

from benchmarks._common import bench_ms
from mosaic_kernels import leaky_average
from mosaic_kernels._common import as_heads_last
from mosaic_kernels._triton_common import dropout_threshold
from mosaic_kernels.attention.function import attention_backward, attention_forward, split_config
from mosaic_kernels.leaky_average import function as leaky_fn
from mosaic_kernels.persistent_memory import function as pmem_fn
from mosaic_kernels.registry import OPS

FWD = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 32, 4, 4),
       (64, 32, 4, 3), (128, 64, 4, 4), (128, 128, 8, 2)]
# One-kernel backward (BLOCK_P, BLOCK_Q, BLOCK_K, warps, stages): BLOCK_P a multiple of the loop blocks.
BWD = [(64, 64, 64, 4, 2), (64, 64, 64, 8, 2), (128, 64, 64, 8, 2), (32, 32, 32, 4, 2), (128, 128, 128, 8, 1),
       (64, 32, 32, 4, 2), (128, 32, 32, 8, 2), (64, 64, 64, 4, 3), (32, 32, 32, 4, 1)]
# Two-kernel backward: key role (BLOCK_P, BLOCK_Q, warps, stages), query role (BLOCK_P, BLOCK_K, warps, stages).
BWD_KEY = [(128, 32, 4, 3), (128, 32, 4, 5), (64, 16, 4, 3), (64, 32, 4, 3), (128, 64, 8, 3), (128, 64, 4, 3),
           (64, 64, 4, 3), (128, 32, 8, 4), (64, 64, 8, 3)]
BWD_QUERY = [(64, 64, 4, 3), (64, 32, 4, 3), (64, 32, 4, 4), (128, 64, 8, 3), (128, 64, 8, 4), (128, 32, 4, 3),
             (64, 64, 4, 2), (32, 32, 4, 3)]
ATT_SHAPES = [(32, 12, 512, 64), (16, 12, 1024, 64), (8, 12, 2048, 64), (2, 12, 8192, 64), (4, 16, 2048, 128),
              (2, 16, 4096, 128), (1, 16, 16384, 128)]
BAND_SHAPES = [(8, 12, 2048, 64), (8, 12, 8192, 64), (4, 16, 8192, 128)]
LEAKY = {64: [(32, 4), (64, 4), (64, 8), (128, 8), (128, 4), (16, 4)],
         128: [(16, 4), (32, 4), (32, 8), (64, 8), (32, 2), (16, 2)]}
LEAKY_SHAPES = [(16, 12, 512, 64), (1, 12, 8192, 64), (8, 16, 4096, 128), (16, 16, 16384, 128)]


def _sweep(label, fn, configs, make_cfg=lambda c: c, top=3, bench=bench_ms):
    """Time fn(make_cfg(c)) for every c with ``bench``, print the ``top`` fastest; returns the fastest c."""
    res = []
    for c in configs:
        try:
            res.append((bench(lambda: fn(make_cfg(c))), c))
        except Exception as e:  # a tile the compiler refuses (shared memory, registers)
            print(label, "fail", c, str(e)[:80])
    res.sort(key=lambda r: r[0])
    print(label, [(round(t, 4), c) for t, c in res[:top]], flush=True)
    return res[0][1]


def tune_attention(dropout_p: float = 0.0, window: int | None = None, shapes=ATT_SHAPES):
    """Forward, one-kernel backward and both kernels of the split backward, each over its tile list
    (with ``window``, over a band of that many keys back)."""
    drop = dict(seed=torch.tensor([123], device="cuda", dtype=torch.int64), threshold=dropout_threshold(dropout_p),
                window=window)
    tag = (f" dropout={dropout_p}" if dropout_p else "") + (f" window={window}" if window is not None else "")
    for (B, H, T, D) in shapes:
        k = (torch.nn.functional.normalize(torch.randn(B, H, T, D, device="cuda"), dim=-1) * 2.7).bfloat16()
        v = torch.randn_like(k)
        dy = torch.randn_like(k)
        s = torch.ones(H, device="cuda")
        shape = (B, H, T, D)
        _sweep(f"FWD{tag} {shape}", lambda cfg: attention_forward(k, v, s, cfg, **drop), FWD,
               lambda c: dict(BLOCK_M=c[0], BLOCK_N=c[1], num_warps=c[2], num_stages=c[3]))
        y, lse = attention_forward(k, v, s, **drop)
        bwd = lambda cfg: attention_backward(k, v, y, lse, s, dy, cfg, **drop)  # noqa: E731
        _sweep(f"BWD{tag} one kernel {shape}", bwd, BWD,
               lambda c: dict(BLOCK_P=c[0], BLOCK_Q=c[1], BLOCK_K=c[2], num_warps=c[3], num_stages=c[4]))
        # Two kernels: the key-role tiles with the first query-role tiles, then the query-role tiles.
        key = _sweep(f"BWD{tag} two kernels, key role {shape}", bwd, BWD_KEY, lambda c: split_config(c, BWD_QUERY[0]))
        _sweep(f"BWD{tag} two kernels, query role {shape}", bwd, BWD_QUERY, lambda c: split_config(key, c))


def tune_band():
    """The attention's tiles over the v2 short-term band (window 256) at long T, where a row sees few key blocks."""
    tune_attention(window=256, shapes=BAND_SHAPES)


V2_SHAPES = [(8, 24, 2048, 64), (2, 24, 8192, 64)]


def _attention_inputs(B: int, H: int, T: int, D: int, device: str) -> tuple:
    """(generator, k, v, dy) of a sweep: unit keys of norm 2.7 (logits up to e^2, the model's scale), bf16 on the
    GPU and float32 in the CPU suite's interpreter; the generator, seeded 0, draws the sweep's other inputs."""
    g = torch.Generator(device=device).manual_seed(0)
    k = torch.nn.functional.normalize(torch.randn(B, H, T, D, device=device, generator=g), dim=-1) * 2.7
    k = k.to(torch.bfloat16 if device == "cuda" else torch.float32)
    v, dy = torch.randn_like(k), torch.randn_like(k)
    return g, k, v, dy


def tune_v2_attention(device: str = "cuda", shapes=V2_SHAPES, bench=bench_ms, fwd=FWD, key=BWD_KEY, query=BWD_QUERY,
                      window: int = 256) -> list[tuple]:
    """The v2 block's attention as the model calls it (``MosaicV2Block.read_memories``): one call of 2H heads
    with a band table (the first H heads a window of ``window`` keys, the others every key up to t - m, m per
    sequence in [64, 256]) and the adaptive bandwidth computed from (3, 2H) unconstrained rows by the forward,
    whose (B, 2H, T) scales the backward reads (153f16a; the first sweep of 2026-12-06 read a scale from row_bandwidth,
    the second computed it in every kernel, d18c962). A table's windows live on the device, so the host
    plans this call as rows of T keys: the long forward tiles and the two-kernel backward from LONG_T on, at
    every T of V2_SHAPES. Sweeps the forward's tiles, then the key-role kernel's with the first query-role tiles,
    then the query role's; returns the winners [(shape, fwd, key, query)]. ``device``, the tile lists and
    ``bench`` let the CPU suite run it."""
    from benchmarks.bench_v2_ops import two_memory_table

    winners = []
    for (B, H, T, D) in shapes:
        g, k, v, dy = _attention_inputs(B, H, T, D, device)
        delays = torch.randint(64, 257, (B,), device=device, generator=g)
        table = two_memory_table(B, H, T, window, delays)
        rows = torch.randn(3, H, device=device, generator=g) * 0.3      # unconstrained beta0, beta1, alpha
        shape = (B, H, T, D)
        best_fwd = _sweep(f"V2 FWD {shape}", lambda cfg: attention_forward(k, v, rows, cfg, delays=table, adaptive=3),
                          fwd, lambda c: dict(BLOCK_M=c[0], BLOCK_N=c[1], num_warps=c[2], num_stages=c[3]), bench=bench)
        row_scales = torch.empty(B, H, T, device=device)
        y, lse = attention_forward(k, v, rows, delays=table, adaptive=3, row_scales=row_scales)
        bwd = lambda cfg: attention_backward(k, v, y, lse, row_scales, dy, cfg, delays=table)  # noqa: E731
        best_key = _sweep(f"V2 BWD key role {shape}", bwd, key, lambda c: split_config(c, query[0]), bench=bench)
        best_query = _sweep(f"V2 BWD query role {shape}", bwd, query, lambda c: split_config(best_key, c), bench=bench)
        winners.append((shape, best_fwd, best_key, best_query))
    return winners


ROW_SCALE_SHAPES = [(8, 12, 2048, 64), (2, 12, 8192, 64), (8, 12, 8192, 64)]
# (128, 32, 4, 2): the default tile one pipeline stage shallower, which spills 500 bytes a thread with a per-row
# scale under Triton 3.6 against 656 at three stages (compiled for sm_90a as spill_report does, dropout off,
# 2026-12-07; not yet timed).
ROW_SCALE_KEY = [(128, 32, 4, 3), (128, 32, 4, 2), (128, 32, 8, 4), (128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3)]


def tune_row_scale(device: str = "cuda", shapes=ROW_SCALE_SHAPES, bench=bench_ms, key=ROW_SCALE_KEY,
                   query=(64, 64, 4, 3)) -> list[tuple]:
    """What a per-row scale costs the strictly causal op's split backward, by key-role tile: the backward's
    time with a (B, H, T) scale over its time with an (H,) one, the query role at ``query``. Prints and
    returns [(shape, key tile, per-head ms, per-row ms)]. ``device``, the tiles and ``bench`` let the CPU
    suite run it."""
    rows = []
    for (B, H, T, D) in shapes:
        g, k, v, dy = _attention_inputs(B, H, T, D, device)
        scales = (torch.rand(H, device=device, generator=g) + 0.5, torch.rand(B, H, T, device=device, generator=g) + 0.5)
        outs = [attention_forward(k, v, sc) for sc in scales]
        for tile in key:
            cfg = split_config(tile, query)
            head, row = (bench(lambda: attention_backward(k, v, y, lse, sc, dy, cfg))
                         for sc, (y, lse) in zip(scales, outs))
            print("ROW SCALE", (B, H, T, D), tile, f"per-head {head:.4f} per-row {row:.4f} ms, {row / head:.3f}x",
                  flush=True)
            rows.append(((B, H, T, D), tile, head, row))
    return rows


HEAD_GROUP_SHAPES = [((8, 12, 8192, 64), False), ((2, 12, 8192, 64), False), ((2, 24, 8192, 64), True),
                     ((8, 24, 2048, 64), True)]
HEAD_GROUPS = [None, 48, 24, 16, 8, 4]


def tune_head_group(device: str = "cuda", shapes=HEAD_GROUP_SHAPES, bench=bench_ms, groups=HEAD_GROUPS,
                    window: int = 256) -> list[tuple]:
    """The attention's launch order by groups of heads (``HEAD_GROUP``: None is every head, the plain grid
    order; groups of B*H or more are the same): forward and backward time of the default tiles at each
    group size, on the strictly causal op with a per-head scale, or (``True`` in ``shapes``) on v2's call
    of 2H heads with a band table and the adaptive bandwidth computed by the forward (the model's call).
    Prints and returns [(shape, v2, group, fwd ms, bwd ms)]. The launches copy the config dicts
    before reading HEAD_GROUP out of them, so one dict serves every call."""
    from benchmarks.bench_v2_ops import two_memory_table
    from mosaic_kernels.attention.function import _bwd_config, _fwd_config

    rows = []
    for (B, H, T, D), v2 in shapes:
        g, k, v, dy = _attention_inputs(B, H, T, D, device)
        if v2:
            table = two_memory_table(B, H, T, window, torch.randint(64, 257, (B,), device=device, generator=g))
            scale, adaptive = torch.randn(3, H, device=device, generator=g) * 0.3, 3   # unconstrained rows
        else:
            table, scale, adaptive = None, torch.rand(H, device=device, generator=g) + 0.5, 0
        for group in groups:
            fwd = dict(_fwd_config(T, D, dtype=k.dtype), HEAD_GROUP=group)
            bwd = _bwd_config(T, D, band_table=v2, dtype=k.dtype)
            for cfg in (bwd["key"], bwd["query"]) if "key" in bwd else (bwd,):
                cfg["HEAD_GROUP"] = group
            row_scales = torch.empty(B, H, T, device=device) if adaptive else scale
            y, lse = attention_forward(k, v, scale, fwd, delays=table, adaptive=adaptive, row_scales=row_scales)
            f = bench(lambda: attention_forward(k, v, scale, fwd, delays=table, adaptive=adaptive,
                                                row_scales=row_scales))
            b = bench(lambda: attention_backward(k, v, y, lse, row_scales, dy, bwd, delays=table))
            print("HEAD GROUP", (B, H, T, D), "v2" if v2 else "causal", f"group {group or B * H}",
                  f"fwd {f:.4f} bwd {b:.4f} ms", flush=True)
            rows.append(((B, H, T, D), v2, group, f, b))
    return rows


def _leaky_tiles(D: int, tile):
    """Both directions' active tile tables, those of 16-bit and of float32 inputs, set to ``tile`` at head dim D,
    restored on exit."""
    stack = contextlib.ExitStack()
    for direction in ("fwd", "bwd"):
        for dtype in (torch.bfloat16, torch.float32):
            stack.enter_context(mock.patch.dict(leaky_fn.active_tiles(direction, dtype), {D: tile}))
    return stack


def tune_leaky():
    """Time every tile of the per-head scan's table at each of LEAKY_SHAPES and print the fastest."""
    for (B, H, T, D) in LEAKY_SHAPES:
        x = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
        a = torch.rand(H, device="cuda").requires_grad_()
        sc = torch.rand(H, device="cuda").add(1).requires_grad_()
        dy = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
        res = []
        for bt, w in LEAKY[D]:  # tiles of at least 16 rows: the decay-matrix tl.dot needs K >= 16
            with _leaky_tiles(D, (bt, w)):
                try:
                    y = leaky_average(x, a, normalize=True, scale=sc)
                    f = bench_ms(lambda: leaky_average(x, a, normalize=True, scale=sc))
                    b = bench_ms(lambda: torch.autograd.grad(y, (x, a, sc), dy, retain_graph=True))
                except Exception as e:  # a tile the compiler refuses
                    print("fail", (B, H, T, D), bt, w, str(e)[:80])
                    continue
            res.append((f, b, bt, w))
        copy = bench_ms(lambda: x.detach().contiguous())
        ranked = sorted([(round(f, 4), round(b, 4), bt, w) for f, b, bt, w in res])
        print("LEAKY", (B, H, T, D), f"copy {copy:.4f}", ranked, flush=True)


CHUNK_SHAPES = [(4, 12, 2048, 64), (1, 12, 8192, 64), (8, 16, 4096, 128), (16, 16, 16384, 128)]


def tune_leaky_chunks():
    """Programs per SM (time chunking) x tile height, forward and backward kernels alone (normalize)."""
    for (B, H, T, D) in CHUNK_SHAPES:
        x = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        a = torch.rand(H, device="cuda")
        sc = torch.rand(H, device="cuda").add(1)
        dy = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
        copy = bench_ms(lambda: x.contiguous())
        fwd, bwd = [], []
        for per_sm in (1, 2, 4, 8, 16):
            for bt, w in LEAKY[D]:
                with _leaky_tiles(D, (bt, w)), mock.patch.multiple(leaky_fn, FWD_PROGRAMS_PER_SM=per_sm,
                                                                   BWD_PROGRAMS_PER_SM=per_sm):
                    y, norm = leaky_fn._launch_forward(x, a, sc, True, 1e-12, 0, False)
                    fwd.append((bench_ms(lambda: leaky_fn._launch_forward(x, a, sc, True, 1e-12, 0, False)), per_sm, bt, w))
                    run_bwd = lambda: leaky_fn._launch_backward(dy, y, norm, a, sc, True, 1e-12, 0, False)
                    bwd.append((bench_ms(run_bwd), per_sm, bt, w))
        for name, res in (("fwd", fwd), ("bwd", bwd)):
            res.sort()
            print("LEAKY_CHUNKS", name, (B, H, T, D), f"copy {copy:.4f}",
                  [(round(t, 4), f"per_sm={p}", bt, w) for t, p, bt, w in res[:4]], flush=True)


# The v2 gated key scan at the shapes of the v2 training step (bench_training: 16,384 tokens, 12 heads of 64).
TV_CHUNK_SHAPES = [(8, 12, 2048, 64), (2, 12, 8192, 64), (16, 12, 512, 64)]


def tune_leaky_chunks_tv():
    """Programs per SM (time chunking) of the time-varying scan with a gate, as the v2 keys call it: x a
    heads-last view of a wider projection, decay and gate (B, H, T) float32, normalised, tiles as tabled."""
    for (B, H, T, D) in TV_CHUNK_SHAPES:
        wide = torch.randn(B, T, 2 * H * D + 2 * H, device="cuda", dtype=torch.bfloat16)
        x = wide[..., :H * D].view(B, T, H, D).transpose(1, 2)
        decay = torch.rand(B, H, T, device="cuda").mul(0.5).add(0.5)
        gate = torch.rand(B, H, T, device="cuda").add(0.5)
        sc = torch.ones(H, device="cuda")
        dy = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
        copy = bench_ms(lambda: x.contiguous())
        fwd, bwd = [], []
        for per_sm in (1, 2, 4, 8, 16, 32):
            with mock.patch.multiple(leaky_fn, FWD_PROGRAMS_PER_SM=per_sm, BWD_PROGRAMS_PER_SM=per_sm):
                run_fwd = lambda: leaky_fn._launch_forward(x, decay, sc, True, 1e-12, 0, True, gate)  # noqa: E731
                y, norm = run_fwd()
                fwd.append((bench_ms(run_fwd), per_sm))
                run_bwd = lambda: leaky_fn._launch_backward(dy, y, norm, decay, sc, True, 1e-12, 0, True, x, gate)  # noqa: E731
                bwd.append((bench_ms(run_bwd), per_sm))
        for name, res in (("fwd", fwd), ("bwd", bwd)):
            print("LEAKY_CHUNKS_TV", name, (B, H, T, D), f"copy {copy:.4f}",
                  [(round(t, 4), f"per_sm={p}") for t, p in res], flush=True)


def tune_leaky_chunk_rule(device: str = "cuda", shapes: list | None = None, bench=bench_ms) -> list[str]:
    """The chunk rules against each other (leaky_fn.CHUNK_RULE "length", the default since 2026-12-06, and "occupancy"), the
    forward and backward launches of both scans alone, alternated twice in one process: the per-head scan
    (normalised, strided input) at CHUNK_SHAPES and (16, 12, 512, 64), the gated time-varying one as the v2
    keys call it at TV_CHUNK_SHAPES. Prints (and returns) one line per shape: ms of each rule, and the
    chunk counts. ``device``, ``shapes`` ([(kind, (B, H, T, D))]) and ``bench`` let the CPU suite run it."""
    if shapes is None:
        shapes = [("per-head", s) for s in [(16, 12, 512, 64)] + CHUNK_SHAPES] + [("gated", s) for s in TV_CHUNK_SHAPES]
    lines = []
    for kind, (B, H, T, D) in shapes:
        if kind == "gated":
            wide = torch.randn(B, T, 2 * H * D + 2 * H, device=device, dtype=torch.bfloat16)
            x = wide[..., :H * D].view(B, T, H, D).transpose(1, 2)
            decay = torch.rand(B, H, T, device=device).mul(0.5).add(0.5)
            gate, sc, heads_last = torch.rand(B, H, T, device=device).add(0.5), torch.ones(H, device=device), True
        else:
            x = torch.randn(B, T, H, D, device=device, dtype=torch.bfloat16).transpose(1, 2)
            decay, gate, heads_last = torch.rand(H, device=device), None, False
            sc = torch.rand(H, device=device).add(1)
        dy = torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16)
        times = {rule: [] for rule in ("occupancy", "length")}
        counts = {}
        for _ in range(2):
            for rule in times:
                with mock.patch.object(leaky_fn, "CHUNK_RULE", rule):
                    run_fwd = lambda: leaky_fn._launch_forward(x, decay, sc, True, 1e-12, 0, heads_last, gate)  # noqa: E731
                    y, norm = run_fwd()
                    run_bwd = lambda: leaky_fn._launch_backward(dy, y, norm, decay, sc, True, 1e-12, 0, heads_last,  # noqa: E731
                                                                x if gate is not None else None, gate)
                    times[rule].append((bench(run_fwd), bench(run_bwd)))
                    fwd_tiles, _, bwd_tiles, *_ = leaky_fn._tiling(D, x.dtype)
                    counts[rule] = tuple(leaky_fn._chunking(B, H, T, x.device, bt, None, per_sm)[1]
                                         for bt, per_sm in ((fwd_tiles, leaky_fn.FWD_PROGRAMS_PER_SM),
                                                            (bwd_tiles, leaky_fn.BWD_PROGRAMS_PER_SM)))
        cells = ", ".join(f"{rule}: fwd {min(f for f, _ in t):.4f} bwd {min(b for _, b in t):.4f} "
                          f"(chunks fwd/bwd {counts[rule][0]}/{counts[rule][1]})" for rule, t in times.items())
        lines.append(f"LEAKY_CHUNK_RULE {kind} {(B, H, T, D)} {cells}")
        print(lines[-1], flush=True)
    return lines


def tune_leaky_in_tile():
    """Forward in-tile scan: tl.associative_scan against the decay-matrix tl.dot, by tile (normalize)."""
    for (B, H, T, D) in [(16, 12, 512, 64)] + CHUNK_SHAPES:
        x = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        a = torch.rand(H, device="cuda")
        sc = torch.rand(H, device="cuda").add(1)
        res = []
        for mode in ("scan", "dot"):
            for bt, w in LEAKY[D] + [(32, 2), (64, 2)]:
                with mock.patch.object(leaky_fn, "FWD_IN_TILE", mode), _leaky_tiles(D, (bt, w)):
                    try:
                        res.append((bench_ms(lambda: leaky_fn._launch_forward(x, a, sc, True, 1e-12, 0, False)), mode, bt, w))
                    except Exception as e:  # a tile the compiler refuses
                        print("fail", mode, bt, w, str(e)[:80])
        copy = bench_ms(lambda: x.contiguous())
        for mode in ("scan", "dot"):
            best = sorted(r for r in res if r[1] == mode)[:3]
            print("LEAKY_IN_TILE", (B, H, T, D), f"strided copy {copy:.4f}", mode,
                  [(round(t, 4), bt, w) for t, _, bt, w in best], flush=True)


# RegBench's preset (8 heads of 16 channels, T = 563, B = 32) trains in float32, where the forward's decay-matrix
# product is exact float32 (FMA, no tensor cores): its profile (2026-12-06, H100) had the forward at 1.05 ms a
# step for 4 calls, ten times the backward, for 18 MB of input and output a call; Triton 3.6 spilled registers at
# the 16-bit table's tiles (leaky_average/function.py, FWD_DOT_TILES_FLOAT32). The 12-layer model's head dim, 64,
# beside it for the float32 table's other rows.
SMALL_HEAD_SHAPES = [(32, 8, 563, 16), (16, 12, 512, 64)]
SMALL_HEAD_TILES = [(16, 4), (16, 8), (32, 4), (32, 8), (64, 4), (64, 8), (32, 2), (64, 2)]


def tune_leaky_small_head(device: str = "cuda", shapes=SMALL_HEAD_SHAPES, bench=bench_ms,
                          tiles=SMALL_HEAD_TILES) -> list[str]:
    """The per-head scan at small head dims, float32 and bf16, heads-last input as the model passes it: the
    forward by in-tile mode (decay-matrix dot or associative scan), tile and latency hiding (FWD_STAGES 0 or 2),
    then fwd+bwd at the table's tiles; one line per shape, dtype and mode (the three fastest), returned too."""
    lines = []
    for (B, H, T, D) in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(B, T, H, D, device=device, dtype=dtype).transpose(1, 2)
            a, sc = torch.rand(H, device=device), torch.rand(H, device=device).add(1)
            copy = bench(lambda: x.contiguous())
            res = []
            for mode in ("dot", "scan"):
                for stages in (0, 2):
                    for tile in tiles:
                        with mock.patch.object(leaky_fn, "FWD_IN_TILE", mode), \
                                mock.patch.object(leaky_fn, "FWD_STAGES", stages), _leaky_tiles(D, tile):
                            try:
                                t = bench(lambda: leaky_fn._launch_forward(x, a, sc, True, 1e-12, 0, True))
                            except Exception as e:  # a tile the compiler refuses
                                print("fail", mode, stages, tile, str(e)[:80])
                                continue
                        res.append((t, mode, stages, tile))
            for mode in ("dot", "scan"):
                best = sorted(r for r in res if r[1] == mode)[:3]
                lines.append(f"LEAKY_SMALL_HEAD fwd {(B, H, T, D)} {str(dtype)[6:]} strided copy {copy:.4f} {mode} "
                             f"{[(round(t, 4), st, tile) for t, _, st, tile in best]}")
                print(lines[-1], flush=True)
            xg, ag, sg = x.detach().requires_grad_(), a.clone().requires_grad_(), sc.clone().requires_grad_()
            y = leaky_average(xg, ag, normalize=True, scale=sg)
            dy = torch.randn_like(y)
            f = bench(lambda: leaky_average(xg, ag, normalize=True, scale=sg))
            b = bench(lambda: torch.autograd.grad(y, (xg, ag, sg), dy, retain_graph=True))
            lines.append(f"LEAKY_SMALL_HEAD table tiles {(B, H, T, D)} {str(dtype)[6:]} fwd {f:.4f} bwd {b:.4f}")
            print(lines[-1], flush=True)
    return lines


# The float32 tables against the 16-bit tiles float32 used before them (BENCHMARKS.md "Float32 tiles": those spill
# under Triton 3.6): RegBench's preset, the depth study's width, and long rows (the two-kernel backward).
FLOAT32_AB_SHAPES = [(32, 8, 563, 16), (16, 4, 512, 64), (2, 12, 4096, 64)]


def tune_float32_ab(device: str = "cuda", shapes=FLOAT32_AB_SHAPES, bench=bench_ms) -> list[str]:
    """Float32, dropout 0.05 on the attention: the attention's forward and backward, then the normalised scan's
    forward and backward, at the 16-bit tables' tiles ("16-bit") and at the float32 tables' ("float32"), in one
    process; one line per op and shape, returned too."""
    from mosaic_kernels.attention import function as att

    lines = []
    for (B, H, T, D) in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        k = torch.nn.functional.normalize(torch.randn(B, H, T, D, device=device, generator=g), dim=-1) * 2.7
        v, dy = torch.randn_like(k), torch.randn_like(k)
        scale = torch.ones(H, device=device)
        seed, thr = torch.tensor([7], device=device, dtype=torch.int64), dropout_threshold(0.05)
        times = {}
        for name, dtype in (("16-bit", torch.bfloat16), ("float32", torch.float32)):
            fwd, bwd = att._fwd_config(T, D, dtype=dtype), att._bwd_config(T, D, dtype=dtype)
            y, lse = attention_forward(k, v, scale, fwd, seed=seed, threshold=thr)
            times[name] = (bench(lambda: attention_forward(k, v, scale, fwd, seed=seed, threshold=thr)),
                           bench(lambda: attention_backward(k, v, y, lse, scale, dy, bwd, seed=seed, threshold=thr)))
        lines.append(f"FLOAT32_AB attention {(B, H, T, D)} " + "  ".join(
            f"{n}: fwd {f:.4f} bwd {b:.4f}" for n, (f, b) in times.items()))
        print(lines[-1], flush=True)
        x = torch.randn(B, T, H, D, device=device, generator=g).transpose(1, 2)
        a, sc = torch.rand(H, device=device, generator=g), torch.rand(H, device=device, generator=g) + 1
        times = {}
        for name, dtype in (("16-bit", torch.bfloat16), ("float32", torch.float32)):
            tiles = [mock.patch.dict(leaky_fn.active_tiles(d, torch.float32), leaky_fn.active_tiles(d, dtype))
                     for d in ("fwd", "bwd")]
            with tiles[0], tiles[1]:
                y, norm = leaky_fn._launch_forward(x, a, sc, True, 1e-12, 0, True)
                times[name] = (bench(lambda: leaky_fn._launch_forward(x, a, sc, True, 1e-12, 0, True)),
                               bench(lambda: leaky_fn._launch_backward(dy, y, norm, a, sc, True, 1e-12, 0, True)))
        lines.append(f"FLOAT32_AB leaky_average {(B, H, T, D)} " + "  ".join(
            f"{n}: fwd {f:.4f} bwd {b:.4f}" for n, (f, b) in times.items()))
        print(lines[-1], flush=True)
    return lines


# The time-varying scans' tiles and pipelining (function.TIME_VARYING_TILES), bf16: at the chunked shape and the two
# GPU-bound shapes of bench_v2_ops' scan part. (BLOCK_T, warps, STAGES) by decay kind; kind 1's product keeps its
# tiles at 64 rows or fewer (its (BLOCK_T x BLOCK_T) matrix lives in registers).
TV_TILE_SHAPES = [(1, 12, 8192, 64), (8, 16, 4096, 128), (16, 16, 16384, 128)]
TV_FWD_CONFIGS = {1: [(bt, w, s) for bt, w in ((16, 2), (32, 2), (32, 4), (64, 4)) for s in (0, 2, 3)],
                  2: [(bt, w, s) for bt, w in ((16, 2), (16, 4), (32, 2), (32, 4), (64, 4), (64, 8)) for s in (0, 2, 3)]}
TV_BWD_CONFIGS = {2: [(bt, w, s) for bt, w in ((16, 2), (16, 4), (32, 2), (32, 4)) for s in (2, 3, 4)]}


def tune_time_varying(device: str = "cuda", shapes=TV_TILE_SHAPES, bench=bench_ms, fwd=TV_FWD_CONFIGS,
                      bwd=TV_BWD_CONFIGS) -> list[dict]:
    """Every (BLOCK_T, warps, STAGES) of ``fwd`` and ``bwd`` (by decay kind) for the time-varying scans' kernels
    alone, normalised, bf16, x heads-last: kind 1 a float32 decay per (b, h, t), without ("step") and with a gate
    ("gated", the v2 keys' call), kind 2 ("channel") a bf16 decay per (b, h, t, d); the per-head scan's forward and
    backward at its table's tile first, as the yardstick. Prints a line per shape, case and direction (the four
    fastest and the table's current time) and returns the rows: dicts of shape, case, kind, direction, block_d,
    table (the current launch), table_ms and times ([(ms, config)] fastest first). ``device``, ``shapes`` and
    ``bench`` let the CPU suite run it (the interpreter ignores TIME_VARYING_TILES: its tiles are fixed)."""
    bf16, rows = torch.bfloat16, []
    for (B, H, T, D) in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(B, T, H, D, device=device, generator=g).to(bf16).transpose(1, 2)
        dy = torch.randn(B, H, T, D, device=device, generator=g).to(bf16)
        sc = torch.ones(H, device=device)
        head = torch.rand(H, device=device, generator=g).mul(0.5).add(0.5)
        gate = torch.rand(B, H, T, device=device, generator=g).add(0.5)
        y, norm = leaky_fn._launch_forward(x, head, sc, True, 1e-12, 0, True)
        f = bench(lambda: leaky_fn._launch_forward(x, head, sc, True, 1e-12, 0, True))
        b = bench(lambda: leaky_fn._launch_backward(dy, y, norm, head, sc, True, 1e-12, 0, True))
        rows.append(dict(shape=(B, H, T, D), case="per-head", fwd_ms=f, bwd_ms=b))
        print(f"TIME_VARYING {(B, H, T, D)} per-head: fwd {f:.4f} bwd {b:.4f}", flush=True)
        cases = [("step", 1, torch.rand(B, H, T, device=device, generator=g).mul(0.5).add(0.5), None),
                 ("gated", 1, torch.rand(B, H, T, device=device, generator=g).mul(0.5).add(0.5), gate),
                 ("channel", 2, torch.rand(B, H, T, D, device=device, generator=g).mul(0.5).add(0.5).to(bf16), None)]
        for name, kind, decay, gt in cases:
            for direction, configs in (("fwd", fwd.get(kind, [])), ("bwd", bwd.get(kind, []))):
                if not configs:
                    continue
                y, norm = leaky_fn._launch_forward(x, decay, sc, True, 1e-12, 0, True, gt)
                table = leaky_fn._launch_tile(direction, kind, D, bf16)
                if direction == "fwd":
                    call = lambda: leaky_fn._launch_forward(x, decay, sc, True, 1e-12, 0, True, gt)  # noqa: E731
                else:
                    call = lambda: leaky_fn._launch_backward(dy, y, norm, decay, sc, True, 1e-12, 0, True,  # noqa: E731
                                                             x if gt is not None else None, gt, (False, False))
                times = []
                for c in configs:
                    with mock.patch.dict(leaky_fn.TIME_VARYING_TILES[(direction, kind)], {table[3]: c}):
                        try:
                            times.append((bench(call), c))
                        except Exception as e:  # a tile the compiler refuses
                            print("TIME_VARYING fail", name, direction, c, str(e)[:80], flush=True)
                times.sort(key=lambda r: r[0])
                rows.append(dict(shape=(B, H, T, D), case=name, kind=kind, direction=direction, block_d=table[3],
                                 table=table[:3], table_ms=bench(call), times=times))
                print(f"TIME_VARYING {(B, H, T, D)} {name} {direction}: table {table[:3]} {rows[-1]['table_ms']:.4f}; "
                      f"fastest {[(round(t, 4), c) for t, c in times[:4]]}", flush=True)
    return rows


def fastest_time_varying_tiles(rows: list[dict]) -> dict:
    """From :func:`tune_time_varying`'s rows, per (direction, kind, BLOCK_D) the config with the least time summed
    over the shapes and cases (kind 1's "step" and "gated" share a table entry) among those every shape and case
    ran, with that sum and the table's: {(direction, kind, block_d): (config, ms, table_ms)}."""
    sums: dict = {}
    for r in rows:
        if "times" not in r:
            continue
        entry = sums.setdefault((r["direction"], r["kind"], r["block_d"]), {"n": 0, "table": 0.0, "configs": {}})
        entry["n"] += 1
        entry["table"] += r["table_ms"]
        for t, c in r["times"]:
            entry["configs"].setdefault(c, []).append(t)
    out = {}
    for key, entry in sums.items():
        full = {c: sum(ts) for c, ts in entry["configs"].items() if len(ts) == entry["n"]}
        if full:
            best = min(full, key=full.get)
            out[key] = (best, full[best], entry["table"])
    return out


PMEM_SHAPES = [(32, 12, 512, 64, 2688), (2, 16, 8192, 128, 2688)]
PMEM_ROWS_SLOTS = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 128, 4, 3), (128, 32, 4, 3),
                   (64, 64, 4, 4), (128, 64, 4, 4), (64, 32, 4, 3), (128, 128, 8, 2)]


def tune_pmem():
    """P-mem kernels one at a time (the others at their table entry), without and with dropout 0.05."""
    for (B, H, T, D, P) in PMEM_SHAPES:
        q = (torch.nn.functional.normalize(torch.randn(B, H, T, D, device="cuda"), dim=-1) * 7.39).bfloat16()
        mk, mv = (torch.randn(H, P, D, device="cuda").div(D ** 0.5).bfloat16() for _ in range(2))
        dy = torch.randn_like(q)
        c = torch.ones(H, device="cuda")
        for p in (0.0, 0.05):
            thr = dropout_threshold(p)
            seed = torch.tensor([123], device="cuda", dtype=torch.int64)
            y, lse = pmem_fn.slots_forward(q, mk, mv, c, seed, thr)
            dyt = as_heads_last(dy, True)  # the layout autograd passes: (B, T, H, D) memory
            for name, call in (
                    ("fwd", lambda cfg: pmem_fn.slots_forward(q, mk, mv, c, seed, thr, cfg)),
                    ("dq", lambda cfg: pmem_fn.slots_backward(q, mk, mv, c, seed, thr, y, lse, dyt, dq_config=cfg)),
                    ("dkdv", lambda cfg: pmem_fn.slots_backward(q, mk, mv, c, seed, thr, y, lse, dyt, dkdv_config=cfg))):
                _sweep(f"PMEM {name} dropout={p} {(B, H, T, D, P)}", call, PMEM_ROWS_SLOTS, top=4)


# The sweeps of each op of the registry that has tile tables (mosaic_kernels.registry: ``tile_tables``),
# by the name a command line gives them; every such op has at least one (tests/kernels/test_registry.py).
SWEEPS = {
    "mosaic_attention": {"attention": tune_attention, "attention-dropout": lambda: tune_attention(0.05),
                         "band": tune_band, "v2-attention": tune_v2_attention, "row-scale": tune_row_scale,
                         "head-group": tune_head_group, "float32-ab": tune_float32_ab},
    "leaky_average": {"leaky": tune_leaky, "in_tile": tune_leaky_in_tile, "chunks": tune_leaky_chunks,
                      "chunks-tv": tune_leaky_chunks_tv, "chunk-rule": tune_leaky_chunk_rule,
                      "small-head": tune_leaky_small_head, "time-varying": tune_time_varying},
    "persistent_memory": {"pmem": tune_pmem},
}


def main(argv: list[str] | None = None) -> None:
    """Run the named sweeps (default: leaky and attention), in the registry's order of ops."""
    import argparse

    names = [name for sweeps in SWEEPS.values() for name in sweeps]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweeps", nargs="*", choices=names, default=["leaky", "attention"], metavar="SWEEP",
                   help=f"any of {', '.join(names)}")
    parts = p.parse_args(argv).sweeps
    for op in OPS:
        for name, sweep in SWEEPS.get(op.name, {}).items():
            if name in parts:
                sweep()


if __name__ == "__main__":
    main()
