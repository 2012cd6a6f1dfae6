"""Benchmark of the leaky-average key scan: ours against the official dense T x T product and a copy.

Providers (one run, same inputs):
  ours            leaky_average(x, decay)                                 (plain scan)
  ours_norm       leaky_average(x, decay, normalize=True, scale=s)       (what the model calls)
  dense_norm      the official algorithm: (T x T decay matrix) @ x, then L2 norm and scale
  copy            a device copy of the same bytes (x -> y): the floor
Modes: fwd, bwd (backward alone, graph reused), fwd+bwd, and fwd+bwd replayed as a CUDA graph (the
GPU time without Python/autograd launch overhead, for every provider alike). Bytes for GB/s: read x + write y forward;
read dy + read y + write dx backward (the norm statistics are counted too for ours_norm).

Usage: python -m benchmarks.bench_leaky_average [--dtype bf16] [--out results.md]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks._common import bench_graph_ms, bench_ms, command_line, dtype_and_out, emit, header, table
from mosaic_kernels import leaky_average

SHAPES = [(16, 12, 512, 64), (4, 12, 2048, 64), (1, 12, 8192, 64), (8, 16, 4096, 128), (16, 16, 16384, 128)]
DENSE_MAX_T = 8192  # the T x T product at T = 16384 takes seconds per call


def dense_official(x, beta, scale):
    """docs/MODEL.md 1.2, nano / lib-naive: exp(-beta (t - s)) masked to s <= t, as a (T x T) @ (T x D) matmul."""
    T = x.shape[2]
    idx = torch.arange(T, device=x.device)
    coef = (idx[None, :] - idx[:, None]).clamp(max=0).to(torch.float32)  # -(t - s) for s <= t
    w = torch.exp(beta.view(-1, 1, 1) * coef).tril().to(x.dtype)        # (H, T, T)
    y = w @ x
    return F.normalize(y, dim=-1) * scale.view(1, -1, 1, 1).to(y.dtype)


def run(dtype: torch.dtype) -> list[dict]:
    """Time ours and the peers at every shape in ``dtype``; one row per measurement."""
    rows = []
    for (B, H, T, D) in SHAPES:
        x = torch.randn(B, T, H, D, device="cuda", dtype=dtype).transpose(1, 2)  # the model's strided view
        xc = x.contiguous()
        beta = torch.linspace(0.5, 5.0, H, device="cuda")
        decay = torch.exp(-beta).requires_grad_()
        scale = torch.full((H,), 2.7, device="cuda", requires_grad=True)
        beta = beta.requires_grad_()
        elem = x.element_size()
        n = x.numel()
        providers = {
            "ours": lambda xr: leaky_average(xr, decay),
            "ours_norm": lambda xr: leaky_average(xr, decay, normalize=True, scale=scale),
        }
        if T <= DENSE_MAX_T:
            providers["dense_norm"] = lambda xr: dense_official(xr, beta, scale)
        copy_ms = bench_ms(lambda: torch.empty_like(xc).copy_(xc))
        copy_gbs = 2 * n * elem / copy_ms / 1e6
        rows.append(dict(shape=str((B, H, T, D)), provider="copy", mode="fwd", ms=copy_ms, GBps=copy_gbs,
                         x_copy_bw=1.0, x_copy_time=1.0))
        for name, fn in providers.items():
            xr = x.detach().clone().requires_grad_()
            y = fn(xr)
            dy = torch.randn_like(y)
            stats = (B * H * T * 4) if name == "ours_norm" else 0
            fwd_bytes = 2 * n * elem + stats
            bwd_bytes = 3 * n * elem + stats
            t_fwd = bench_ms(lambda: fn(xr))
            t_bwd = bench_ms(lambda: torch.autograd.grad(y, xr, dy, retain_graph=True))
            t_all = bench_ms(lambda: torch.autograd.grad(fn(xr), xr, dy))
            y = None  # no autograd graph may outlive its stream into the capture
            xg = x.detach().clone().requires_grad_()
            t_graph = bench_graph_ms(lambda: torch.autograd.grad(fn(xg), xg, dy))
            for mode, t, nbytes in (("fwd", t_fwd, fwd_bytes), ("bwd", t_bwd, bwd_bytes),
                                    ("fwd+bwd", t_all, fwd_bytes + bwd_bytes),
                                    ("fwd+bwd graph", t_graph, fwd_bytes + bwd_bytes)):
                gbs = nbytes / t / 1e6
                rows.append(dict(shape=str((B, H, T, D)), provider=name, mode=mode, ms=t, GBps=gbs,
                                 x_copy_bw=gbs / copy_gbs, x_copy_time=t / copy_ms))
            dy = xr = xg = None  # free this provider's tensors before the next one
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    """Run the benchmark, print the table and write it to --out."""
    name, dtype, out = dtype_and_out(__doc__)
    rows = run(dtype)
    md = (f"{header(command_line('benchmarks.bench_leaky_average'))}\n\n"
          f"leaky_average, {name}; GBps counts the bytes each mode must move; "
          f"x_copy_bw = GBps / copy GBps; x_copy_time = time / copy time.\n\n"
          + table(rows, ["shape", "provider", "mode", "ms", "GBps", "x_copy_bw", "x_copy_time"]))
    # Speed-up of ours_norm over the official dense product, fwd+bwd, eager and as CUDA graphs.
    speed = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        get = {(r["provider"], r["mode"]): r["ms"] for r in rows if r["shape"] == shape}
        if ("dense_norm", "fwd+bwd") in get:
            speed.append(dict(shape=shape, dense_ms=get[("dense_norm", "fwd+bwd")],
                              ours_norm_ms=get[("ours_norm", "fwd+bwd")],
                              speedup=get[("dense_norm", "fwd+bwd")] / get[("ours_norm", "fwd+bwd")],
                              speedup_graph=get[("dense_norm", "fwd+bwd graph")] / get[("ours_norm", "fwd+bwd graph")]))
    md += ("\n\nfwd+bwd speed-up of ours_norm over dense_norm (eager, and both replayed as CUDA graphs):\n\n"
           + table(speed, ["shape", "dense_ms", "ours_norm_ms", "speedup", "speedup_graph"]))
    emit(md, out)


if __name__ == "__main__":
    main()
