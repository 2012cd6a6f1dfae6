"""Benchmark of the two layouts of the model's SDPA P-mem retrieval (PersistentMemory._sdpa), to check the rule
that picks between them (sdpa_folds_batch in mosaic_model/models/memory.py).

  fold         the batch folded into the query rows, (1, H, B*T, hs) against the (1, H, P, hs) slots
  batch_kept   the batch kept, (B, H, T, hs) against the slots expanded to it (a view)

fwd+bwd with SDPA's default backend, in float32 and bf16, slot dropout 0.05 (training) and 0, at shapes that
span the heads x slots of the package's presets and studies: RegBench's widths 64, 128 and 256 (heads of 16,
P = 3.5 d, T = 679, batch 32), the depth study's width 256 (4 heads of 64), and GPT2-small's width 768 (12
heads, P = 2688), with a few between. ``fold_over_kept`` > 1: keeping the batch is the faster layout;
``model`` names the layout the model uses there.

Usage: python -m benchmarks.bench_pmem_layout [--out results.md]
"""
from __future__ import annotations

import torch

from benchmarks._common import bench_ms, table_main
from benchmarks.bench_persistent_memory import expand, fold
from mosaic_model.models.memory import sdpa_folds_batch

# (B, H, T, hs, P), heads x slots from 896 to 32,256
SHAPES = [(32, 4, 679, 16, 224), (32, 8, 679, 16, 448), (16, 4, 512, 64, 896), (32, 8, 679, 16, 768),
          (16, 8, 512, 64, 896), (16, 6, 512, 64, 1344), (32, 16, 679, 16, 512), (16, 12, 512, 64, 896),
          (16, 8, 512, 64, 1792), (32, 16, 679, 16, 896), (16, 12, 512, 64, 2688)]


def run() -> list[dict]:
    """Time both layouts at every shape, dtype and dropout rate; one row each."""
    rows = []
    for (B, H, T, hs, P) in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator(device="cuda").manual_seed(0)
            k = torch.randn(B, H, T, hs, device="cuda", generator=g).to(dtype).requires_grad_()
            mk, mv = ((torch.randn(1, H, P, hs, device="cuda", generator=g) / hs ** 0.5).to(dtype).requires_grad_()
                      for _ in range(2))
            dy = torch.randn(B, H, T, hs, device="cuda", generator=g).to(dtype)
            for p in (0.05, 0.0):
                ms = {name: bench_ms(lambda fn=fn: torch.autograd.grad(fn(k, mk, mv, None, p), (k, mk, mv), dy))
                      for name, fn in (("fold", fold), ("batch_kept", expand))}
                rows.append(dict(shape=str((B, H, T, hs, P)), heads_x_slots=H * P, dtype=str(dtype)[6:], dropout=p,
                                 fold_ms=ms["fold"], batch_kept_ms=ms["batch_kept"],
                                 fold_over_kept=ms["fold"] / ms["batch_kept"],
                                 model="fold" if sdpa_folds_batch(H, P, dtype) else "batch_kept"))
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    """Run the benchmark, print the table and write it to --out."""
    table_main(__doc__, "benchmarks.bench_pmem_layout", run,
               "P-mem retrieval fwd+bwd on SDPA's default backend (shape = B, H, T, hs, P): the batch folded into "
               "the rows against the batch kept; fold_over_kept > 1 where keeping the batch is faster.",
               ["shape", "heads_x_slots", "dtype", "dropout", "fold_ms", "batch_kept_ms", "fold_over_kept", "model"])


if __name__ == "__main__":
    main()
