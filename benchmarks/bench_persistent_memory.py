"""Benchmark of the P-mem retrieval: softmax over learned slots shared by the whole batch.

The official code expands the (1, H, P, hs) slots to the batch (lib) or lets SDPA broadcast batch 1
(nano); both make SDPA write a (B, H, P, hs) slot gradient that autograd then sums. Folding the batch
into the query rows, (1, H, B*T, hs), gives one slot tensor per head and the summed gradient directly.

Providers (one run, same keys and slots, fwd+bwd, bf16):
  expand_default / expand_flash / expand_cudnn / expand_efficient   lib: slots expanded to B
  broadcast_default                                                  nano: batch-1 slots, SDPA broadcasts
  fold_default / fold_flash / fold_cudnn / fold_efficient            SDPA with the batch folded into queries
  ours                                                               mosaic_kernels.persistent_memory (Triton)
  mlp_same_flops                                                     not a retrieval: the GEMMs of an MLP
                                                                     d -> P -> d (d = H*hs) over the B*T tokens
The same layouts are also timed with the training slot dropout (0.05), where the backends differ.

tflops counts tensor-core work only: a retrieval does 7 GEMMs of 2*B*T*H*P*hs FLOPs (forward 2,
backward 5 with the scores recomputed: FlashAttention's convention, backward = 2.5 x forward); the
MLP does 6 of the same size (d*P = H*hs*P), with no softmax, exponentials or dropout. So the MLP row
is what the P-mem's arithmetic costs at plain GEMM speed: GPT2's MLP does this work at P = 4d.

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
    """SDPA with the memory's keys and values expanded to the batch (a view, no copy)."""
    B = k.shape[0]
    with _pin(backend):
        return F.scaled_dot_product_attention(k, mk.expand(B, -1, -1, -1), mv.expand(B, -1, -1, -1),
                                              dropout_p=p, scale=1.0)


def broadcast(k, mk, mv, backend, p=0.0):
    """SDPA with batch-1 keys and values, left to SDPA's own broadcasting."""
    with _pin(backend):
        return F.scaled_dot_product_attention(k, mk, mv, dropout_p=p, scale=1.0)


def fold(k, mk, mv, backend, p=0.0):
    """SDPA with the batch folded into the rows: one (1, H, B*T, hs) query against the shared memory."""
    B, H, T, hs = k.shape
    q = k.transpose(0, 1).reshape(1, H, B * T, hs)
    with _pin(backend):
        y = F.scaled_dot_product_attention(q, mk, mv, dropout_p=p, scale=1.0)
    return y.view(H, B, T, hs).transpose(0, 1)


def ours(k, mk, mv, backend, p=0.0):
    """The fused P-mem op (``backend`` unused: the same signature as the SDPA providers)."""
    return persistent_memory(k, mk[0], mv[0], dropout_p=p)


def gemm_flops(B: int, H: int, T: int, hs: int, P: int) -> int:
    """FLOPs of one (B*T*H) x hs x P GEMM: the unit of both the retrieval (7) and the MLP (6)."""
    return 2 * B * T * H * P * hs


def mlp_same_flops_row(B: int, H: int, T: int, hs: int, P: int) -> dict:
    """fwd+bwd of two bf16 GEMMs (B*T, d) @ (d, P) @ (P, d), d = H*hs: the P-mem's FLOPs as an MLP."""
    g = torch.Generator(device="cuda").manual_seed(1)
    d = H * hs
    x = torch.randn(B * T, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    w1 = (torch.randn(d, P, device="cuda", generator=g) / d ** 0.5).to(torch.bfloat16).requires_grad_()
    w2 = (torch.randn(P, d, device="cuda", generator=g) / P ** 0.5).to(torch.bfloat16).requires_grad_()
    dy = torch.randn(B * T, d, device="cuda", dtype=torch.bfloat16, generator=g)

    def step():
        return torch.autograd.grad((x @ w1) @ w2, (x, w1, w2), dy)
    ms = bench_ms(step)
    return dict(shape=str((B, H, T, hs, P)), provider="mlp_same_flops", ms=ms, peak_MiB=peak_mib(step),
                tflops=6 * gemm_flops(B, H, T, hs, P) / ms / 1e9, note="GEMMs only, not a retrieval")


def run() -> list[dict]:
    """Time every provider at every shape, dropout off and on; one row per measurement."""
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
            ms = bench_ms(step)
            rows.append(dict(shape=str((B, H, T, hs, P)), provider=provider, ms=ms, peak_MiB=peak_mib(step),
                             tflops=7 * gemm_flops(B, H, T, hs, P) / ms / 1e9,
                             grad_rel_diff=err if not p else "(random mask)"))
        rows.append(mlp_same_flops_row(B, H, T, hs, P))
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    """Run the benchmark, print the table and write it to --out."""
    table_main(__doc__, "benchmarks.bench_persistent_memory", run,
               "P-mem retrieval fwd+bwd, bf16 (shape = B, H, T, hs, P); grad_rel_diff = largest relative "
               "difference of the three gradients to the first provider.",
               ["shape", "provider", "ms", "tflops", "peak_MiB", "grad_rel_diff", "note"])


if __name__ == "__main__":
    main()
