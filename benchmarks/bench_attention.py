"""Benchmark of the strictly causal attention with q = k: ours against what users would pick instead.

Providers (one run, same pre-scaled keys, scale 1):
  ours            mosaic_attention(k, v) (its default: the backward's row term inside its kernels or in a launch of
                  its own by the call's work; MOSAIC_ATTN_DELTA_IN_KERNEL=0 for the own launch at every shape)
  ours_delta_in_kernel  the same with the backward's row term <y_t, dy_t> inside its kernels at every shape
                  (function.DELTA_IN_KERNEL set around the whole measurement: an A/B in one process)
  ours_unplanned  the same without the cached call plans (mosaic_kernels._common.CALL_PLANS off around the whole
                  measurement, as MOSAIC_PLANS=0 does for a process): every call checks and plans; an A/B in one process
  sdpa_flash      SDPA shift trick, pinned to the flash backend: SDPA(k[1:], k[:-1], v[:-1], causal),
                  zero row prepended
  sdpa_cudnn      the same, pinned to cuDNN
  sdpa_mask       the official path: SDPA with a boolean strictly causal mask (rows 1..T-1), zero row 0
  flex            compiled FlexAttention with mask_mod kv < q (row 0 set to 0 after)
  naive           materialised scores, masked softmax (T <= 8192)
Modes fwd, bwd, fwd+bwd; TFLOP/s with the causal convention 2*B*H*T^2*D forward, 2.5x that backward;
peak extra memory of fwd+bwd. ``--rounds N`` times every provider N times at each shape, the providers
interleaved round by round, and reports each time's median over the rounds (host-bound small shapes vary by
up to 2x from one process to the next: an A/B is fairer inside one process). ``--dropout P`` gives every
provider dropout P on the attention weights (FlexAttention has none and is left out; ours regenerates its
mask in the backward, SDPA's backends keep their own schemes).

Usage: python -m benchmarks.bench_attention [--dtype bf16] [--dropout 0] [--shapes B,H,T,D ...]
       [--rounds 1] [--out results.md] [--providers ...]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks._common import bench_ms, command_line, delta_in_kernel, emit, header, peak_mib, table, without_call_plans
from mosaic_kernels import mosaic_attention

SHAPES = [(16, 12, 512, 64), (8, 12, 1024, 64), (4, 12, 2048, 64), (2, 12, 4096, 64), (1, 12, 8192, 64),
          (4, 16, 2048, 128), (2, 16, 4096, 128), (1, 16, 16384, 128)]
NAIVE_MAX_T = 8192


def _shift(backend):
    def fn(k, v, p=0.0):
        with sdpa_kernel([backend]):
            y = F.scaled_dot_product_attention(k[:, :, 1:], k[:, :, :-1], v[:, :, :-1], is_causal=True, scale=1.0,
                                               dropout_p=p)
        return torch.cat([torch.zeros_like(v[:, :, :1]), y], dim=2)
    return fn


def sdpa_mask(k, v, p=0.0):
    """SDPA with an explicit boolean mask: rows 1..T-1 see keys j < t; row 0 (no key) is zeros."""
    T = k.shape[2]
    mask = torch.ones(T - 1, T, dtype=torch.bool, device=k.device).tril()
    y = F.scaled_dot_product_attention(k[:, :, 1:], k, v, attn_mask=mask, scale=1.0, dropout_p=p)
    return torch.cat([torch.zeros_like(v[:, :, :1]), y], dim=2)


def naive(k, v, p=0.0):
    """The dense strictly causal softmax in plain PyTorch (softmax over the scores cast to fp32), as a user would write it."""
    T = k.shape[2]
    s = (k @ k.transpose(-1, -2)).float()
    keep = torch.ones(T, T, dtype=torch.bool, device=k.device).tril(-1)
    w = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1).nan_to_num(0.0)
    return (F.dropout(w, p) if p > 0 else w).to(v.dtype) @ v


_FLEX = {}


def flex(k, v, p=0.0):
    """Compiled FlexAttention with the block mask kv < q (cached per shape); row 0 set to zeros."""
    assert p == 0.0, "FlexAttention has no dropout"
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, H, T, D = k.shape
    key = (T, k.device)
    if key not in _FLEX:
        bm = create_block_mask(lambda b, h, q, kv: kv < q, None, None, T, T, device=k.device)
        _FLEX[key] = bm
    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    y = _FLEX["fn"](k, k, v, block_mask=_FLEX[key], scale=1.0)
    return torch.cat([torch.zeros_like(y[:, :, :1]), y[:, :, 1:]], dim=2)  # row 0 has no key


def ours(k, v, p=0.0):
    """mosaic_attention on the pre-scaled keys (scale 1)."""
    return mosaic_attention(k, v, dropout_p=p)


PROVIDERS = {"ours": ours, "sdpa_flash": _shift(SDPBackend.FLASH_ATTENTION),
             "sdpa_cudnn": _shift(SDPBackend.CUDNN_ATTENTION), "sdpa_mask": sdpa_mask, "flex": flex,
             "naive": naive, "ours_delta_in_kernel": ours, "ours_unplanned": ours}
# A provider's setting, active over its whole measurement (the backward reads it when it runs, not at the forward).
CONTEXTS = {"ours_delta_in_kernel": delta_in_kernel, "ours_unplanned": without_call_plans}


def _time(fn, k, v, dy) -> tuple:
    """(fwd ms, bwd ms, fwd+bwd ms, peak MiB of fwd+bwd) of one provider."""
    kr, vr = k.clone().requires_grad_(), v.clone().requires_grad_()
    y = fn(kr, vr)
    t_fwd = bench_ms(lambda: fn(kr, vr))
    t_bwd = bench_ms(lambda: torch.autograd.grad(y, (kr, vr), dy, retain_graph=True))
    t_all = bench_ms(lambda: torch.autograd.grad(fn(kr, vr), (kr, vr), dy))
    y = None  # frees the graph before the memory measurement
    return t_fwd, t_bwd, t_all, peak_mib(lambda: torch.autograd.grad(fn(kr, vr), (kr, vr), dy))


def run(dtype, providers, dropout: float = 0.0, shapes: list | None = None, rounds: int = 1) -> list[dict]:
    """Time every provider at every shape (``rounds`` times, interleaved; medians); one row per (shape,
    provider, mode)."""
    rows = []
    for (B, H, T, D) in shapes or SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        k = F.normalize(torch.randn(B, H, T, D, device="cuda", generator=g), dim=-1) * 2.7  # pre-scaled keys
        k = k.to(dtype)
        v = torch.randn(B, H, T, D, device="cuda", dtype=dtype, generator=g)
        dy = torch.randn_like(v)
        flops = 2 * B * H * T * T * D
        names = [n for n in providers if not ((n == "naive" and T > NAIVE_MAX_T) or (n == "flex" and dropout > 0))]
        times, failed = {n: [] for n in names}, {}
        for _ in range(rounds):
            for name in names:
                if name in failed:
                    continue
                try:
                    with CONTEXTS.get(name, contextlib.nullcontext)():
                        times[name].append(_time(functools.partial(PROVIDERS[name], p=dropout), k, v, dy))
                except Exception as e:  # a peer that cannot run this shape is reported, not hidden
                    failed[name] = str(e)[:60]
        for name in names:
            if name in failed:
                rows.append(dict(shape=str((B, H, T, D)), provider=name, mode="error", ms=failed[name]))
                continue
            t_fwd, t_bwd, t_all, mem = (statistics.median(col) for col in zip(*times[name]))
            for mode, t, f in (("fwd", t_fwd, flops), ("bwd", t_bwd, 2.5 * flops), ("fwd+bwd", t_all, 3.5 * flops)):
                rows.append(dict(shape=str((B, H, T, D)), provider=name, mode=mode, ms=t,
                                 TFLOPs=f / t / 1e9, peak_MiB=mem if mode == "fwd+bwd" else ""))
        torch.cuda.empty_cache()
    return rows


def ratios(rows) -> list[dict]:
    """Speed of ours relative to each peer (peer time / our time; > 1 means ours is faster), and with
    ``ours_delta_in_kernel`` timed, its speed-up over ``ours`` and the best SDPA backend's time over it; with
    ``ours_unplanned`` timed, the call plans' speed-up (its time over ``ours``'s)."""
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        get = {(r["provider"], r["mode"]): r["ms"] for r in rows if r["shape"] == shape and isinstance(r["ms"], float)}
        for mode in ("fwd", "fwd+bwd"):
            if ("ours", mode) not in get:
                continue
            row = dict(shape=shape, mode=mode)
            for peer in ("sdpa_flash", "sdpa_cudnn", "sdpa_mask", "flex", "naive"):
                if (peer, mode) in get:
                    row[peer] = get[(peer, mode)] / get[("ours", mode)]
            best = min(get.get(("sdpa_flash", mode), 1e9), get.get(("sdpa_cudnn", mode), 1e9))
            row["best_sdpa"] = best / get[("ours", mode)]
            if ("ours_delta_in_kernel", mode) in get:  # the A/B: > 1 means the in-kernel row term is faster
                row["delta_in_kernel_speedup"] = get[("ours", mode)] / get[("ours_delta_in_kernel", mode)]
                row["best_sdpa_over_in_kernel"] = best / get[("ours_delta_in_kernel", mode)]
            if ("ours_unplanned", mode) in get:  # the A/B: > 1 means the call plans make the call faster
                row["plans_speedup"] = get[("ours_unplanned", mode)] / get[("ours", mode)]
            out.append(row)
    return out


def main() -> None:
    """Parse the options, run the benchmark, print the tables and write them to --out."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    p.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=list(PROVIDERS))
    p.add_argument("--dropout", type=float, default=0.0, help="dropout on the attention weights, every provider")
    p.add_argument("--shapes", nargs="+", default=None, help="B,H,T,D each (default: the standard list)")
    p.add_argument("--rounds", type=int, default=1, help="time each provider this many times, interleaved (medians)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.rounds < 1:
        p.error(f"--rounds must be a positive integer, got {a.rounds}")
    if not 0.0 <= a.dropout < 1.0:
        p.error(f"--dropout must be in [0, 1), got {a.dropout}")
    try:
        shapes = [tuple(int(x) for x in sh.split(",")) for sh in a.shapes] if a.shapes else None
    except ValueError:
        p.error(f"--shapes must be B,H,T,D integers, got {a.shapes}")
    if shapes and any(len(sh) != 4 for sh in shapes):
        p.error(f"--shapes must be B,H,T,D (four integers each), got {a.shapes}")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    rows = run(dtype, a.providers, a.dropout, shapes, a.rounds)
    md = (f"{header(command_line('benchmarks.bench_attention'))}\n\n"
          f"mosaic_attention, {a.dtype}, pre-scaled unit keys x 2.7, scale 1, dropout {a.dropout}; medians of "
          f"{a.rounds} interleaved round(s).\n\n"
          + table(rows, ["shape", "provider", "mode", "ms", "TFLOPs", "peak_MiB"])
          + "\n\nSpeed of ours relative to each peer (peer ms / our ms; > 1: ours faster):\n\n"
          + table(ratios(rows), ["shape", "mode", "best_sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_mask", "flex", "naive",
                                  "delta_in_kernel_speedup", "best_sdpa_over_in_kernel", "plans_speedup"]))
    emit(md, a.out)


if __name__ == "__main__":
    main()
