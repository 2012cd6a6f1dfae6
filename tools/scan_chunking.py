"""How many time chunks the leaky-average scan should use: GPU time of the normalised, scaled scan as
CUDA graphs (forward, forward+backward) and eager forward+backward, at each benchmark shape, for
several chunk counts forced through ``chunk_len``, each count measured ``--reps`` times in turn.

The chunk policy lives in ``mosaic_kernels/leaky_average/function.py`` (``_chunking``); this tool
measures the alternatives it chose between.

Usage: python -m tools.scan_chunking [--chunks 1 2 3 6 11 22] [--chunk-lens 128 192 256] [--reps 2]
                                    [--stages 0 3 0/3] [--bwd-per-sm 2 4] [--no-eager]

Each repetition also times the rule itself (``chunk_len`` left to ``_chunking``), in the same process,
so that a candidate rule can be read against the current one (``--bwd-per-sm``: the rule once per value
of ``function.BWD_PROGRAMS_PER_SM``). ``--stages`` repeats everything for each way of hiding memory
latency: ``S`` sets ``function.FWD_STAGES`` and ``BWD_STAGES`` both, ``F/B`` each (0 is the register
prefetch of one tile, S >= 2 Triton's pipelined loads S - 1 tiles ahead).
"""
from __future__ import annotations

import argparse
import math

import torch

from benchmarks._common import bench_graph_ms, bench_ms
from benchmarks.bench_leaky_average import SHAPES
from mosaic_kernels.leaky_average import function
from mosaic_kernels.leaky_average.function import leaky_average_triton


def _stage_pair(text: str) -> tuple[int, int] | None:
    """``"S"`` -> (S, S), ``"F/B"`` -> (F, B); None unless each is 0 or >= 2."""
    try:
        pair = tuple(int(v) for v in text.split("/"))
    except ValueError:
        return None
    pair = pair * 2 if len(pair) == 1 else pair
    return pair if len(pair) == 2 and all(v == 0 or v >= 2 for v in pair) else None


def main(argv: list[str] | None = None) -> None:
    """Print one line per shape, chunk count and repetition."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, nargs="*", default=[1, 2, 3, 6, 11, 22],
                   help="time chunks per (b, h) to compare (those longer than T / 64 chunks are skipped)")
    p.add_argument("--chunk-lens", type=int, nargs="+", default=[],
                   help="time-chunk lengths to compare as well, multiples of 64 (the tile height's largest value); "
                        "those longer than T are skipped")
    p.add_argument("--reps", type=int, default=2, help="how many times each count is measured, in turn")
    p.add_argument("--stages", nargs="+", default=[f"{function.FWD_STAGES}/{function.BWD_STAGES}"],
                   help="latency hiding to compare, S or F/B (forward/backward): 0 (register prefetch) or a pipeline "
                        "depth >= 2 (default: the current)")
    p.add_argument("--bwd-per-sm", type=int, nargs="+", default=[function.BWD_PROGRAMS_PER_SM],
                   help="the rule's backward programs per SM below one (b, h) per SM, each timed (default: the current)")
    p.add_argument("--no-eager", action="store_true", help="skip the eager fwd+bwd timing (host-bound, slow)")
    a = p.parse_args(argv)
    if any(n < 1 for n in a.chunks) or any(cl < 64 or cl % 64 for cl in a.chunk_lens):
        p.error(f"--chunks must be >= 1 and --chunk-lens multiples of 64, got {a.chunks} and {a.chunk_lens}")
    stages = [_stage_pair(st) for st in a.stages]
    if any(st is None for st in stages):
        p.error(f"--stages must be S or F/B, each 0 or >= 2, got {a.stages}")
    if any(n < 1 for n in a.bwd_per_sm):
        p.error(f"--bwd-per-sm must be >= 1, got {a.bwd_per_sm}")
    if not torch.cuda.is_available():
        p.error("--chunks: this tool times CUDA kernels and needs a GPU")
    saved_per_sm = function.BWD_PROGRAMS_PER_SM
    print(torch.__version__, torch.cuda.get_device_name(), "SMs", torch.cuda.get_device_properties(0).multi_processor_count)
    for (B, H, T, D) in SHAPES:
        x = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)  # the model's view
        decay = torch.exp(-torch.linspace(0.5, 5.0, H, device="cuda")).requires_grad_()
        scale = torch.full((H,), 2.7, device="cuda", requires_grad=True)
        dy = torch.randn_like(x)
        xc = x.contiguous()
        copy = bench_ms(lambda: torch.empty_like(xc).copy_(xc))
        xg = x.detach().clone().requires_grad_()
        lengths = [(f"rule (bwd {n} per SM)", None, n) for n in a.bwd_per_sm]
        lengths += [(f"chunks {n}", math.ceil(T / n), None) for n in a.chunks if n <= T // 64]
        lengths += [(f"chunks {math.ceil(T / cl)} (length {cl})", cl, None) for cl in a.chunk_lens if cl <= T]
        for _ in range(a.reps):
            for fwd_stages, bwd_stages in stages:
                function.FWD_STAGES, function.BWD_STAGES = fwd_stages, bwd_stages
                for label, cl, per_sm in lengths:
                    function.BWD_PROGRAMS_PER_SM = per_sm or saved_per_sm
                    fn = lambda xr: leaky_average_triton(xr, decay, normalize=True, scale=scale, chunk_len=cl)  # noqa: E731
                    g_fwd = bench_graph_ms(lambda: fn(xg))
                    g_all = bench_graph_ms(lambda: torch.autograd.grad(fn(xg), xg, dy))
                    eager = "" if a.no_eager else \
                        f" | fwd+bwd eager {bench_ms(lambda: torch.autograd.grad(fn(xg), xg, dy)) * 1e3:.1f} us"
                    print(f"{(B, H, T, D)} B*H {B * H} stages {fwd_stages}/{bwd_stages} {label} | fwd graph {g_fwd * 1e3:.1f} us "
                          f"({g_fwd / copy:.2f} copies) | fwd+bwd graph {g_all * 1e3:.1f} us ({g_all / copy:.2f} copies)"
                          f"{eager}", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
