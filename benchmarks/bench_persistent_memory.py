"""Benchmark of the P-mem retrieval: softmax over learned slots shared by the whole batch.

The official code expands the (1, H, P, hs) slots to the batch (lib) or lets SDPA broadcast batch 1
(nano); both make SDPA write a (B, H, P, hs) slot gradient that autograd then sums. Folding the batch
into the query rows, (1, H, B*T, hs), gives one slot tensor per head and the summed gradient directly.

Providers (one run, same keys and slots, fwd+bwd, bf16):
  expand_default / expand_flash / expand_cudnn / expand_efficient   lib: slots expanded to B
  broadcast_default                                                  nano: batch-1 slots, SDPA broadcasts
  fold_default / fold_flash / fold_cudnn / fold_efficient            SDPA with the batch folded into queries
  ours                                                               mosaic_kernels.persistent_memory (Triton)
The same layouts are also timed with the training slot dropout (0.05), where the backends differ.

Usage: python -m benchmarks.bench_persistent_memory [--out results.md]
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks._common import bench_ms, peak_mib, table_main
from mosaic_kernels import persistent_memory

# (B, H, T, hs, P): the 12-layer GPT2-small match at the three training lengths of bench_training.
SHAPES = [(32, 12, 512, 64, 2688), (8, 12, 2048, 64, 2688), (2, 12, 8192, 64, 2688)]
DROPOUT = 0.05
BACKENDS = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def _pin(backend):
    return contextlib.nullcontext() if backend is None else sdpa_kernel([backend])


def expand(k, mk, mv, backend, p=0.0):
    B = k.shape[0]
    with _pin(backend):
        return F.scaled_dot_product_attention(k, mk.expand(B, -1, -1, -1), mv.expand(B, -1, -1, -1),
                                              dropout_p=p, scale=1.0)


def broadcast(k, mk, mv, backend, p=0.0):
    with _pin(backend):
        return F.scaled_dot_product_attention(k, mk, mv, dropout_p=p, scale=1.0)


def fold(k, mk, mv, backend, p=0.0):
    B, H, T, hs = k.shape
    q = k.transpose(0, 1).reshape(1, H, B * T, hs)
    with _pin(backend):
        y = F.scaled_dot_product_attention(q, mk, mv, dropout_p=p, scale=1.0)
    return y.view(H, B, T, hs).transpose(0, 1)


def ours(k, mk, mv, backend, p=0.0):
    return persistent_memory(k, mk[0], mv[0], dropout_p=p)


def run() -> list[dict]:
    rows = []
    for (B, H, T, hs, P) in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        k0 = F.normalize(torch.randn(B, H, T, hs, device="cuda", generator=g), dim=-1) * 7.39
        slots = [torch.randn(1, H, P, hs, device="cuda", generator=g) / hs ** 0.5 for _ in range(2)]
        dy = torch.randn(B, H, T, hs, device="cuda", dtype=torch.bfloat16, generator=g)
        cases = [("broadcast", "default", broadcast, 0.0)] + [
            (layout, name, fn, 0.0) for layout, fn in (("expand", expand), ("fold", fold)) for name in BACKENDS]
        cases += [("ours", None, ours, 0.0)]
        # Training applies slot dropout (ic_dropout = 0.05 by default): the backends differ there.
        cases += [(layout, name, fn, DROPOUT) for layout, fn in (("expand", expand), ("fold", fold))
                  for name in ("default", "flash", "cudnn")] + [("ours", None, ours, DROPOUT)]
        ref = None
        for layout, name, fn, p in cases:
            provider = (f"{layout}_{name}" if name else layout) + (f"_dropout{p}" if p else "")
            k = k0.to(torch.bfloat16).requires_grad_()
            mk, mv = (s.detach().clone().requires_grad_() for s in slots)

            def step():
                y = fn(k, mk.to(torch.bfloat16), mv.to(torch.bfloat16), BACKENDS.get(name), p)
                return torch.autograd.grad(y, (k, mk, mv), dy)
            try:
                grads = step()
            except RuntimeError as e:  # a pinned backend that refuses these inputs
                rows.append(dict(shape=str((B, H, T, hs, P)), provider=provider, ms="n/a",
                                 note=str(e).splitlines()[0][:80]))
                continue
            ref = ref or grads
            err = max(float((a.float() - b.float()).norm() / b.float().norm()) for a, b in zip(grads, ref))
            rows.append(dict(shape=str((B, H, T, hs, P)), provider=provider, ms=bench_ms(step),
                             peak_MiB=peak_mib(step), grad_rel_diff=err if not p else "(random mask)"))
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    table_main(__doc__, "benchmarks.bench_persistent_memory", run,
               "P-mem retrieval fwd+bwd, bf16 (shape = B, H, T, hs, P); grad_rel_diff = largest relative "
               "difference of the three gradients to the first provider.",
               ["shape", "provider", "ms", "peak_MiB", "grad_rel_diff", "note"])


if __name__ == "__main__":
    main()
