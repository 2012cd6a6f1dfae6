"""Benchmark of the peek-ahead value: ours against the PyTorch composition a user would write, compiled
and not, and a copy of the same bytes.

Providers (one run, same inputs, the model's strided head-split input and (H,) mix and scale):
  ours        peek_ahead_value(x, mix, scale=s): one kernel each way
  eager       the composition: shift by one step, mix, F.normalize, scale (the reference's formula)
  compiled    torch.compile of that composition (inductor)
  copy        a device copy of the same bytes (x -> y): the floor
Modes: fwd, fwd+bwd, and fwd+bwd replayed as a CUDA graph (the GPU time without host overhead).
Bytes for GB/s: read x + write y forward; read dy + read x + write dx backward.

Usage: python -m benchmarks.bench_peek_ahead [--dtype bf16] [--out results.md]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks._common import bench_graph_ms, bench_ms, command_line, dtype_and_out, emit, header, table
from mosaic_kernels import peek_ahead_value

SHAPES = [(16, 12, 512, 64), (32, 12, 512, 64), (4, 12, 2048, 64), (1, 12, 8192, 64), (8, 16, 4096, 128)]


def composition(x: torch.Tensor, mix: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale_h * normalize((1 - mix_h) x[t+1] + mix_h x[t])`` with ``x[T] = 0``, in plain PyTorch."""
    nxt = F.pad(x[:, :, 1:], (0, 0, 0, 1))
    m = mix.view(1, -1, 1, 1).to(x.dtype)
    return F.normalize((1 - m) * nxt + m * x, dim=-1) * scale.view(1, -1, 1, 1).to(x.dtype)


def run(dtype: torch.dtype) -> list[dict]:
    """Time ours and the peers at every shape in ``dtype``; one row per measurement."""
    compiled = torch.compile(composition)
    rows = []
    for (B, H, T, D) in SHAPES:
        x = torch.randn(B, T, H, D, device="cuda", dtype=dtype).transpose(1, 2)  # the model's strided view
        mix = torch.rand(H, device="cuda", requires_grad=True)
        scale = torch.full((H,), 0.6, device="cuda", requires_grad=True)
        n, elem = x.numel(), x.element_size()
        copy_ms = bench_ms(lambda: x.contiguous())
        rows.append(dict(shape=str((B, H, T, D)), provider="copy", mode="fwd", ms=copy_ms,
                         GBps=2 * n * elem / copy_ms / 1e6, x_copy_time=1.0))
        providers = {"ours": lambda xr: peek_ahead_value(xr, mix, scale=scale), "eager": lambda xr: composition(xr, mix, scale),
                     "compiled": lambda xr: compiled(xr, mix, scale)}
        for name, fn in providers.items():
            xr = x.detach().clone().requires_grad_()
            dy = torch.randn(B, H, T, D, device="cuda", dtype=dtype)
            t_fwd = bench_ms(lambda: fn(xr))
            t_all = bench_ms(lambda: torch.autograd.grad(fn(xr), (xr, mix, scale), dy))
            t_graph = bench_graph_ms(lambda: torch.autograd.grad(fn(xr), (xr, mix, scale), dy))
            for mode, t, nbytes in (("fwd", t_fwd, 2 * n * elem), ("fwd+bwd", t_all, 5 * n * elem),
                                    ("fwd+bwd graph", t_graph, 5 * n * elem)):
                rows.append(dict(shape=str((B, H, T, D)), provider=name, mode=mode, ms=t, GBps=nbytes / t / 1e6,
                                 x_copy_time=t / copy_ms))
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    """Run the benchmark, print the table and write it to --out."""
    name, dtype, out = dtype_and_out(__doc__)
    rows = run(dtype)
    emit(f"{header(command_line('benchmarks.bench_peek_ahead'))}\n\npeek_ahead_value, {name}; GBps counts the "
         f"bytes each mode must move; x_copy_time = time / copy time.\n\n"
         + table(rows, ["shape", "provider", "mode", "ms", "GBps", "x_copy_time"]), out)


if __name__ == "__main__":
    main()
