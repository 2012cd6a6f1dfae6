"""Benchmark of the Memory Mosaics v2 forms of the two ops against what a user would call instead, in one run.

Attention over a band (bf16, keys pre-scaled unless a per-row scale is timed, fwd and fwd+bwd):
  ours_full        mosaic_attention(k, v): the strictly causal op of v1 (the baseline of the targets)
  ours_window      window=W (the short-term memory: keys t-W .. t-1)
  ours_delay       delay=M (the long-term memory at inference: keys 0 .. t-M)
  ours_delays      one delay per sequence, drawn from [64, 256] (the long-term memory in training)
  ours_row_scale   the strictly causal op with a (B, H, T) per-row scale, against ours_full's per-head one
  ours_adaptive    the strictly causal op with the adaptive bandwidth computed in its kernels (bandwidth=, the
                   (3, H) unconstrained rows), against ours_row_scale's scale read from memory
  ours_two_calls   v2's two memories as the model called them until 9585c1e: the first H/2 heads with window=W,
                   the others with per-sequence delays, two calls and a concatenation of their outputs
  ours_one_call    the same two memories in one call of H heads (band=, a band per sequence and head)
  ours_one_call_row_scale, ours_one_call_adaptive
                   that call with v2's per-row bandwidth: as a (B, H, T) scale (the model until d18c962), or
                   computed in the kernels (the model since: in every kernel at d18c962, in the forward's
                   since 153f16a, whose backward reads the scales the forward wrote)
  flex_window      compiled FlexAttention, mask_mod t-W <= kv <= t-1 (the block mask built once)
  flex_delay       compiled FlexAttention, mask_mod kv <= t-M
  sdpa_window      SDPA with an explicit boolean (T, T) window mask (the math or efficient backend)
  sdpa_causal      SDPA with is_causal=True (its fastest backend: cuDNN or flash), the llama-style model's attention,
                   beside ours_full and ours_delays (its causal mask keeps the diagonal: the same cost class)
  fa_window        flash-attn's flash_attn_func(causal=True, window_size=(W, 0)) if the package imports (its band
                   keeps the diagonal: one key more per row than ours, the same cost class)
Time-varying key scan (bf16 input, normalised and scaled as the model calls it, fwd+bwd):
  ours_head        leaky_average(x, decay (H,)): v1's per-head scan (the baseline of the target)
  ours_step        a decay (B, H, T)
  ours_step_gate   a decay (B, H, T) and a gate (B, H, T) fused into the kernel
  ours_step_mul    the same gate multiplied into x before the call (x * gate, then ours_step)
  ours_step_tf32x3  ours_step and ours_step_gate with the forward's product in three TF32 products instead of
  ours_step_gate_tf32x3  the default two 16-bit parts (TIME_VARYING_FWD_PRECISION = "tf32x3", the default before
                   2026-12-06)
  ours_channel     a decay (B, H, T, D)
  ours_channel_bf16  the same decay in bfloat16 (the kernels read it and write its gradient in 16 bits)
  torch_doubling   the PyTorch reference (recursive doubling) of ours_step, eager
  torch_dense      the (T, T) decay-matrix product of ours_step (T <= 4096)
  torch_chunked    ours_step in PyTorch by chunks of 64 steps: a (64, 64) decay matrix inside each chunk, the
                   state carried across chunks by a loop (the usual chunked form of a linear recurrence)
  fla_hgrn         fla-core's chunk_hgrn (h_t = exp(g_t) h_{t-1} + x_t per channel, no norm) if it imports,
                   against ours_channel without the norm (ours_channel_raw)
  copy             a device copy of x: the floor
Every table carries the GPU, versions and command; medians of triton.testing.do_bench. The attention's fwd+bwd
is timed twice: called eagerly (what a plain training loop pays, host included) and replayed as one CUDA
graph (the GPU's time alone, what a captured step pays); a band a few blocks wide is short enough work
that the eager time measures the host.

Usage: python -m benchmarks.bench_v2_ops [--part attention scan] [--out results.md]
"""
from __future__ import annotations

import argparse
from unittest import mock

import torch
import torch.nn.functional as F

from benchmarks._common import bench_graph_ms, bench_ms, command_line, emit, header, table
from mosaic_kernels import leaky_average, mosaic_attention
from mosaic_kernels import reference as R
from mosaic_kernels.attention import band_table

# The last two shapes carry enough work that the window's fwd+bwd is not bound by the host.
ATT_SHAPES = [(8, 12, 2048, 64), (2, 12, 8192, 64), (1, 16, 8192, 128), (8, 12, 8192, 64), (4, 16, 8192, 128)]
WINDOW, DELAY = 256, 64
SCAN_SHAPES = [(16, 12, 512, 64), (4, 12, 2048, 64), (1, 12, 8192, 64), (8, 16, 4096, 128), (16, 16, 16384, 128)]


def _flex(mask_mod, T, device):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    block_mask = create_block_mask(mask_mod, None, None, T, T, device=device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda k, v: compiled(k, k, v, block_mask=block_mask, scale=1.0)


def _flash_window(window: int):
    """flash-attn's sliding window on our (B, H, T, D) layout, or None when the package does not import."""
    try:
        from flash_attn import flash_attn_func
    except ImportError as e:
        print(f"flash-attn is not importable ({e}): fa_window left out", flush=True)
        return None

    def run(k, v):
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)                                   # (B, T, H, D) views
        return flash_attn_func(kt, kt, vt, softmax_scale=1.0, causal=True, window_size=(window, 0)).transpose(1, 2)
    return run


def two_memory_table(B: int, H: int, T: int, window: int, delays: torch.Tensor) -> torch.Tensor:
    """The (B, H, 2) band table of v2's two memories as one call: the first H // 2 heads see the last ``window``
    keys, the others every key up to t - delays[b] (no window), as ``MosaicV2Block.read_memories`` calls it."""
    half, device = H // 2, delays.device
    return band_table(torch.tensor([window] * half + [T] * (H - half), device=device),
                      torch.cat([torch.ones(B, half, dtype=torch.int64, device=device),
                                 delays[:, None].expand(B, H - half)], dim=1), B, H, T)


def attention_rows(only: list[str] | None = None) -> list[dict]:
    """fwd and fwd+bwd of every attention provider at ATT_SHAPES (of ``only`` and ours_full, when given)."""
    rows = []
    for (B, H, T, D) in ATT_SHAPES:
        # Dynamo keeps a few compiled versions of flex_attention; past its limit it falls back to eager
        # FlexAttention (a 100x slower dense path: 146 ms at the fifth shape on 2026-12-04). Start afresh.
        torch._dynamo.reset()
        g = torch.Generator(device="cuda").manual_seed(0)
        k = (F.normalize(torch.randn(B, H, T, D, device="cuda", generator=g), dim=-1) * 2.7).bfloat16()
        v = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=g)
        row_scale = torch.rand(B, H, T, device="cuda", generator=g) + 0.5
        coefficients = torch.randn(3, H, device="cuda", generator=g) * 0.3       # unconstrained beta0, beta1, alpha
        delays = torch.randint(64, 257, (B,), device="cuda", generator=g)
        window_mask = torch.arange(T, device="cuda")[:, None] - torch.arange(T, device="cuda")[None, :]
        window_mask = (window_mask >= 1) & (window_mask <= WINDOW)
        half = H // 2
        table = two_memory_table(B, H, T, WINDOW, delays)
        providers = {
            "ours_full": lambda k, v: mosaic_attention(k, v),
            "ours_window": lambda k, v: mosaic_attention(k, v, window=WINDOW),
            "ours_delay": lambda k, v: mosaic_attention(k, v, delay=DELAY),
            "ours_delays": lambda k, v: mosaic_attention(k, v, delay=delays),
            "ours_row_scale": lambda k, v: mosaic_attention(k, v, row_scale),
            "ours_two_calls": lambda k, v: torch.cat([mosaic_attention(k[:, :half], v[:, :half], window=WINDOW),
                                                      mosaic_attention(k[:, half:], v[:, half:], delay=delays)], dim=1),
            "ours_adaptive": lambda k, v: mosaic_attention(k, v, bandwidth=coefficients, unconstrained=True),
            "ours_one_call": lambda k, v: mosaic_attention(k, v, band=table),
            "ours_one_call_row_scale": lambda k, v: mosaic_attention(k, v, row_scale, band=table),
            "ours_one_call_adaptive": lambda k, v: mosaic_attention(k, v, band=table, bandwidth=coefficients,
                                                                    unconstrained=True),
            "flex_window": _flex(lambda b, h, q, kv: (kv <= q - 1) & (kv >= q - WINDOW), T, "cuda"),
            "flex_delay": _flex(lambda b, h, q, kv: kv <= q - DELAY, T, "cuda"),
            "sdpa_window": lambda k, v: F.scaled_dot_product_attention(k, k, v, attn_mask=window_mask, scale=1.0),
            "sdpa_causal": lambda k, v: F.scaled_dot_product_attention(k, k, v, is_causal=True, scale=1.0),
        }
        flash_window = _flash_window(WINDOW) if only is None or "fa_window" in only else None
        if flash_window is not None:
            providers["fa_window"] = flash_window
        if only is not None:
            providers = {name: fn for name, fn in providers.items() if name in only or name == "ours_full"}
        for name, fn in providers.items():
            kr, vr = k.clone().requires_grad_(), v.clone().requires_grad_()
            dy = torch.randn_like(v)
            step = lambda: torch.autograd.grad(fn(kr, vr), (kr, vr), dy)  # noqa: E731
            try:
                t_fwd = bench_ms(lambda: fn(kr, vr))
                t_all = bench_ms(step)
            except Exception as e:  # a provider that cannot run this shape (memory, compile)
                print(f"{name} {(B, H, T, D)}: {type(e).__name__}: {str(e)[:100]}", flush=True)
                continue
            try:
                t_graph = bench_graph_ms(step)
            except Exception as e:  # a provider that cannot be captured
                print(f"{name} {(B, H, T, D)} as a CUDA graph: {type(e).__name__}: {str(e)[:100]}", flush=True)
                t_graph = None
            rows.append(dict(shape=str((B, H, T, D)), provider=name, fwd_ms=t_fwd, fwd_bwd_ms=t_all,
                             graph_ms=t_graph))
        torch.cuda.empty_cache()
    return rows


def _dense(x, a):
    """u = W x with the (T, T) matrix W[t, s] = a_{s+1} ... a_t (s <= t), from cumulative log-decays."""
    T = x.shape[2]
    cum = torch.cumsum(torch.log(a.float().clamp_min(1e-30)), dim=-1)                 # (B, H, T)
    lower = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    w = torch.exp((cum[..., :, None] - cum[..., None, :]).masked_fill(~lower, float("-inf")))
    return F.normalize(w @ x.float(), dim=-1).to(x.dtype)


def chunked_scan(x, a, scale, chunk: int = 64):
    """normalize(u) * scale for u_t = a_t u_{t-1} + x_t, in PyTorch by chunks of `chunk` steps.

    x (B, H, T, D), a (B, H, T). Inside a chunk u = W x with W[t, s] = a_{s+1} ... a_t; across chunks the
    state h_j entering chunk j obeys h_{j+1} = (a over chunk j) h_j + (chunk j's own last output).
    """
    B, H, T, D = x.shape
    pad = -T % chunk
    xf = F.pad(x.float(), (0, 0, 0, pad)).view(B, H, -1, chunk, D)                        # (B, H, n, C, D)
    log_a = F.pad(a.float(), (0, pad), value=1.0).clamp_min(1e-30).log().view(B, H, -1, chunk)
    cum = torch.cumsum(log_a, -1)                                                         # (B, H, n, C), per chunk
    lower = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    w = torch.exp((cum[..., :, None] - cum[..., None, :]).masked_fill(~lower, float("-inf")))
    inner = w @ xf                                                                        # (B, H, n, C, D)
    states, h = [], torch.zeros_like(inner[:, :, 0, -1])                                  # h: (B, H, D)
    for j in range(inner.shape[2]):
        states.append(h)
        h = cum[:, :, j, -1, None].exp() * h + inner[:, :, j, -1]
    u = inner + cum[..., None].exp() * torch.stack(states, dim=2)[:, :, :, None]
    u = u.reshape(B, H, -1, D)[:, :, :T]
    return (F.normalize(u, dim=-1) * scale[:, None, None]).to(x.dtype)


def _with_tf32x3(fn):
    """``fn`` run with the time-varying scan's forward product in three TF32 products
    (mosaic_kernels.leaky_average.function.TIME_VARYING_FWD_PRECISION = "tf32x3"), the setting restored after."""
    from mosaic_kernels.leaky_average import function

    return mock.patch.object(function, "TIME_VARYING_FWD_PRECISION", "tf32x3")(fn)


def scan_rows(only: list[str] | None = None) -> list[dict]:
    """fwd and fwd+bwd of every scan provider (or those in ``only``, and ours_head, the ratios' baseline) at
    SCAN_SHAPES, and the copy."""
    try:
        from fla.ops.hgrn import chunk_hgrn
    except ImportError as e:
        print(f"fla-core is not importable ({e}): fla_hgrn left out", flush=True)
        chunk_hgrn = None
    rows = []
    for (B, H, T, D) in SCAN_SHAPES:
        g = torch.Generator(device="cuda").manual_seed(1)
        x = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)  # head split
        head = torch.rand(H, device="cuda", generator=g) * 0.5 + 0.5
        step = torch.rand(B, H, T, device="cuda", generator=g) * 0.5 + 0.5
        chan = torch.rand(B, H, T, D, device="cuda", generator=g) * 0.5 + 0.5
        gate = torch.rand(B, H, T, device="cuda", generator=g) + 0.5
        scale = torch.full((H,), 2.7, device="cuda")
        providers = {
            "ours_head": (lambda xr, a: leaky_average(xr, a, normalize=True, scale=scale), head),
            "ours_step": (lambda xr, a: leaky_average(xr, a, normalize=True, scale=scale), step),
            "ours_step_gate": (lambda xr, a: leaky_average(xr, a, gate=gate, normalize=True, scale=scale), step),
            "ours_step_mul": (lambda xr, a: leaky_average(xr * gate.unsqueeze(-1).to(xr.dtype), a, normalize=True,
                                                          scale=scale), step),
            # The forward's matrix product in three TF32 products instead of the default two 16-bit parts
            # (function.TIME_VARYING_FWD_PRECISION = "tf32x3"; the backward is the same).
            "ours_step_tf32x3": (_with_tf32x3(lambda xr, a: leaky_average(xr, a, normalize=True, scale=scale)), step),
            "ours_step_gate_tf32x3": (_with_tf32x3(lambda xr, a: leaky_average(xr, a, gate=gate, normalize=True,
                                                                               scale=scale)), step),
            "ours_channel": (lambda xr, a: leaky_average(xr, a, normalize=True, scale=scale), chan),
            "ours_channel_raw": (lambda xr, a: leaky_average(xr, a), chan),
            # the same decays in bf16: read by the kernels as they are, the gradient written in bf16
            "ours_channel_bf16": (lambda xr, a: leaky_average(xr, a, normalize=True, scale=scale), chan.bfloat16()),
            "torch_doubling": (lambda xr, a: R.leaky_average(xr, a, normalize=True, scale=scale), step),
            "torch_chunked": (lambda xr, a: chunked_scan(xr, a, scale), step),
        }
        if T <= 4096:
            providers["torch_dense"] = (_dense, step)
        if chunk_hgrn is not None:
            # HGRN's layout: (B, T, H*D) with log-decays; the same recurrence as ours_channel_raw.
            log_chan = chan.log().permute(0, 2, 1, 3).reshape(B, T, H * D).contiguous()
            providers["fla_hgrn"] = (lambda xr, a: chunk_hgrn(xr.transpose(1, 2).reshape(B, T, H * D), a)[0], log_chan)
        if only:
            providers = {name: fn for name, fn in providers.items() if name in only or name == "ours_head"}
        copy_ms = bench_ms(lambda: x.contiguous())
        rows.append(dict(shape=str((B, H, T, D)), provider="copy", fwd_bwd_ms=copy_ms, x_copy=1.0))
        base = None
        for name, (fn, a) in providers.items():
            xr, ar = x.detach().clone().requires_grad_(), a.detach().clone().requires_grad_()
            try:
                out = fn(xr, ar)
                dy = torch.randn_like(out)
                with torch.no_grad():
                    t_fwd = bench_ms(lambda: fn(xr, ar))
                t_all = bench_ms(lambda: torch.autograd.grad(fn(xr, ar), (xr, ar), dy))
            except Exception as e:
                print(f"{name} {(B, H, T, D)}: {type(e).__name__}: {str(e)[:100]}", flush=True)
                continue
            base = t_all if name == "ours_head" else base
            rows.append(dict(shape=str((B, H, T, D)), provider=name, fwd_ms=t_fwd, fwd_bwd_ms=t_all, x_copy=t_all / copy_ms,
                             x_ours_head=t_all / base if base else None))
        torch.cuda.empty_cache()
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Add to every attention row its time over ours_full's at the same shape (eager and graph), and to the
    ours_window rows FlexAttention's window time over theirs; None where a time is missing."""
    def ratio(num, den):
        return num / den if num is not None and den is not None else None

    by = {(r["shape"], r["provider"]): r for r in rows}
    for r in rows:
        full, flex = by.get((r["shape"], "ours_full"), {}), by.get((r["shape"], "flex_window"), {})
        window = r["provider"] == "ours_window"
        for suffix, key in (("", "fwd_bwd_ms"), ("_graph", "graph_ms")):
            r["x_ours_full" + suffix] = ratio(r.get(key), full.get(key))
            r["flex_window_over" + suffix] = ratio(flex.get(key), r.get(key)) if window else None


def main() -> None:
    """Run the parts asked for and print (and write) their tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", nargs="+", choices=("attention", "scan"), default=["attention", "scan"],
                   help="which ops to time")
    p.add_argument("--providers", nargs="+", default=None, metavar="NAME",
                   help="time only these attention providers (and ours_full, the ratios' baseline); default: all")
    p.add_argument("--scan-providers", nargs="+", default=None, metavar="NAME",
                   help="time only these scan providers (and ours_head, the ratios' baseline); default: all")
    p.add_argument("--out", default=None, help="also write the markdown to this file")
    a = p.parse_args()
    md = header(command_line("benchmarks.bench_v2_ops"))
    if "attention" in a.part:
        rows = attention_rows(a.providers)
        add_ratios(rows)
        md += (f"\n\nAttention over a band, bf16, window {WINDOW}, delay {DELAY}, per-sequence delays in [64, 256]; "
               "fwd_bwd_ms eager, graph_ms the same fwd+bwd replayed as a CUDA graph; x_ours_full = time / the "
               "strictly causal op's, flex_window_over = FlexAttention's sliding window time / ours_window's (eager, "
               "and _graph as graphs).\n\n"
               + table(rows, ["shape", "provider", "fwd_ms", "fwd_bwd_ms", "graph_ms", "x_ours_full", "x_ours_full_graph",
                              "flex_window_over", "flex_window_over_graph"]))
    if "scan" in a.part:
        columns = ["shape", "provider", "fwd_ms", "fwd_bwd_ms", "x_copy", "x_ours_head"]
        md += ("\n\nTime-varying key scan, bf16 input, fwd (no grad) and fwd+bwd; x_copy = time / a copy of x; "
               "x_ours_head = time / the per-head scan's.\n\n" + table(scan_rows(a.scan_providers), columns))
    emit(md, a.out)


if __name__ == "__main__":
    main()
