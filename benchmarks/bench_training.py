"""End-to-end training-step benchmark: Memory Mosaic (fused ops), Memory Mosaic (reference ops, the
official algorithm), and the GPT2 baseline on SDPA; one run, same GPU, same tokens per step.
``mosaic_fused`` runs the P-mem retrieval on SDPA with the batch folded into the query rows (the
default); ``mosaic_fused_triton_pmem`` runs it on mosaic_kernels.persistent_memory instead. On request
(``--models mosaic_v2 llama``): Memory Mosaics v2 on the fused ops against its llama-style baseline
(rotary positions, SDPA, SwiGLU) at the same width, depth and tokens (``v2_over_llama`` ratios).

A step is what training does: bf16 autocast forward, backward, fused AdamW, zero_grad. Models have
the GPT2-small width (d=768, 12 heads, vocab 50304, P-mem 2688 slots) at 1 and 12 layers; batches of
16,384 tokens (32 x 512, 8 x 2048, 2 x 8192). Each case is timed over --steps steps after --warmup
steps (compilation happens in the warm-up), in a fresh model; peak memory is the allocator's peak
over the timed steps. A case that runs out of memory is reported as OOM.

Usage: python -m benchmarks.bench_training [--out results.md] [--part all|eager|compiled|quick]
       [--seq-lens 512 2048 8192] [--layers 1 12] [--models mosaic_fused ... gpt2]

Compiling takes 10 s to 2.5 min a case, so the compiled part of one sequence length fits a 10-minute
GPU call, not all three: ``--seq-lens`` runs some of them (every ratio is within one run).
"""
from __future__ import annotations

import argparse
import gc
import time

import torch

from benchmarks._common import command_line, emit, header, table
from mosaic_model import GPT, GPTConfig, Llama, LlamaConfig, MemoryMosaic, MemoryMosaicV2, MosaicConfig, MosaicV2Config

TOKENS = 16384
SEQ_LENS = (512, 2048, 8192)
MODELS = ("mosaic_fused", "mosaic_fused_triton_pmem", "mosaic_reference", "gpt2")  # the default cases
V2_MODELS = ("mosaic_v2", "llama")                                                  # on request


def build(name: str, n_layer: int, T: int, dropout: float | None = None):
    """The model of a case. ``dropout`` None keeps the configs' default (0.05 in v1 and GPT2: residual
    dropout, the P-mem's slot dropout, GPT2's attention dropout; 0.0 in v2 and the llama-style model);
    0.0 is nano's and nanoGPT's setting."""
    common = dict(n_layer=n_layer, n_head=12, n_embd=768, block_size=T, vocab_size=50304)
    if dropout is not None:
        common["dropout"] = dropout
    if name == "gpt2":
        return GPT(GPTConfig(**common))
    if name == "llama":
        return Llama(LlamaConfig(**common))
    if name == "mosaic_v2":
        return MemoryMosaicV2(MosaicV2Config(**common))
    kernels = "reference" if name == "mosaic_reference" else "fused"
    pmem_kernel = "triton" if name == "mosaic_fused_triton_pmem" else "sdpa"
    return MemoryMosaic(MosaicConfig(**common, kernels=kernels, pmem_kernel=pmem_kernel))


def dropout_note(dropout: float | None, models) -> str:
    """The dropout the cases ran with, for the table's heading: the rate given, or each config's default."""
    if dropout is not None:
        return f"{dropout:g}"
    defaults = {"mosaic_v2": MosaicV2Config.dropout, "llama": LlamaConfig.dropout, "gpt2": GPTConfig.dropout}
    rate = {m: defaults.get(m, MosaicConfig.dropout) for m in models}  # the v1 cases take MosaicConfig's
    if len(set(rate.values())) == 1:
        return f"{next(iter(rate.values())):g} (the configs' default)"
    return "the configs' defaults (" + ", ".join(f"{m} {r:g}" for m, r in rate.items()) + ")"


def make_step(model, T: int, compiled: bool, compile_mode: str = "default"):
    """(step, optimizer): ``step()`` runs one training step on a fixed random batch of TOKENS tokens.
    ``compile_mode`` is torch.compile's mode ("reduce-overhead" replays CUDA graphs)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    fn = torch.compile(model, mode=compile_mode) if compiled else model
    idx = torch.randint(0, 50304, (TOKENS // T, T), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = fn(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, opt


def measure(name: str, n_layer: int, T: int, compiled: bool, warmup: int, steps: int,
            compile_mode: str = "default", dropout: float | None = None) -> dict:
    """ms per step, tokens/s and peak GiB of one configuration (or an OOM note); ``dropout`` as in
    :func:`build`."""
    torch.manual_seed(0)
    B = TOKENS // T
    row = dict(model=name, layers=n_layer, T=T, B=B, compile="yes" if compiled else "no")
    model = opt = None
    try:
        model = build(name, n_layer, T, dropout).cuda()
        step, opt = make_step(model, T, compiled, compile_mode)
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        row["warmup_s"] = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / steps
        row.update(ms=ms, tokens_per_s=TOKENS / ms * 1e3, peak_GiB=torch.cuda.max_memory_allocated() / 2**30)
    except torch.OutOfMemoryError:
        row.update(ms="OOM")
    finally:
        del model, opt
        gc.collect()
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    return row


def cases(part: str, seq_lens=SEQ_LENS, layers=(1, 12), models=MODELS):
    """(model, layers, T, compiled) in run order, for --part eager, compiled, all or quick."""
    out = []
    modes = {"eager": (False,), "quick": (False,), "compiled": (True,), "all": (False, True)}[part]
    for compiled in modes:
        for T in seq_lens:
            for n_layer in layers:
                for name in models:
                    # The reference's dense T x T attention runs out of memory at 12 layers and
                    # T = 8192 in eager mode; compiling it there is not attempted.
                    if not (compiled and name == "mosaic_reference" and n_layer == 12 and T == 8192):
                        out.append((name, n_layer, T, compiled))
    if part == "quick":
        out = [c for c in out if c[2] == 512]
    return out


def ratios(rows: list[dict]) -> list[dict]:
    """Per (layers, T, compile): fused / GPT2 step time and memory, reference / fused step time, tokens/s."""
    out = []
    by = {(r["model"], r["layers"], r["T"], r["compile"]): r for r in rows}
    for (name, layers, T, comp), r in by.items():
        llama = by.get(("llama", layers, T, comp), {})
        if name == "mosaic_v2" and isinstance(r.get("ms"), float) and isinstance(llama.get("ms"), float):
            out.append(dict(layers=layers, T=T, compile=comp, v2_over_llama_time=r["ms"] / llama["ms"],
                            v2_over_llama_tokens_per_s=llama["ms"] / r["ms"],
                            v2_over_llama_memory=r["peak_GiB"] / llama["peak_GiB"]))
        if name != "mosaic_fused" or not isinstance(r.get("ms"), float):
            continue
        g, ref = by.get(("gpt2", layers, T, comp), {}), by.get(("mosaic_reference", layers, T, comp), {})
        entry = dict(layers=layers, T=T, compile=comp)
        if isinstance(g.get("ms"), float):
            entry.update(fused_over_gpt2_time=r["ms"] / g["ms"], fused_over_gpt2_tokens_per_s=g["ms"] / r["ms"],
                         fused_over_gpt2_memory=r["peak_GiB"] / g["peak_GiB"])
        if isinstance(ref.get("ms"), float):
            entry.update(reference_over_fused_time=ref["ms"] / r["ms"])
        out.append(entry)
    return out


def main() -> None:
    """Parse the case filters, time every selected case, print and write the tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="also write the markdown to this file")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--part", choices=("all", "eager", "compiled", "quick"), default="all",
                   help="quick: T = 512 without compile")
    p.add_argument("--seq-lens", type=int, nargs="+", choices=SEQ_LENS, default=list(SEQ_LENS),
                   help="sequence lengths to run (default: all three)")
    p.add_argument("--layers", type=int, nargs="+", choices=(1, 12), default=[1, 12])
    p.add_argument("--models", nargs="+", choices=MODELS + V2_MODELS, default=list(MODELS),
                   help="the cases' models (mosaic_v2 and llama only when named)")
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"), default="default",
                   help="torch.compile mode of the compiled cases (reduce-overhead: CUDA graphs, no host cost; "
                        "the allocator's peak then leaves out the graphs' memory pool)")
    p.add_argument("--dropout", type=float, default=None,
                   help="every dropout rate of every model (default: each config's own, 0.05 in v1 and GPT2, 0 in v2 "
                        "and llama; 0 is the setting "
                        "of nano and nanoGPT, where the issue's official timings come from)")
    a = p.parse_args()
    rows = []
    todo = cases(a.part, tuple(a.seq_lens), tuple(a.layers), tuple(a.models))
    for i, (name, n_layer, T, comp) in enumerate(todo):
        rows.append(measure(name, n_layer, T, comp, a.warmup, a.steps, a.compile_mode, a.dropout))
        print(f"[{i + 1}/{len(todo)}] {rows[-1]}", flush=True)
    cols = ["model", "layers", "T", "B", "compile", "ms", "tokens_per_s", "peak_GiB", "warmup_s"]
    md = (f"{header(command_line('benchmarks.bench_training'))}\n\nTraining step (bf16 autocast fwd + bwd + "
          f"fused AdamW), {TOKENS} tokens per step, d=768, 12 heads, vocab 50304, dropout "
          f"{dropout_note(a.dropout, a.models)}; mean of {a.steps} steps "
          f"after {a.warmup} warm-up steps.\n\n" + table(rows, cols)
          + "\n\nRatios (same run):\n\n" + table(ratios(rows), [
              "layers", "T", "compile", "fused_over_gpt2_time", "fused_over_gpt2_tokens_per_s",
              "fused_over_gpt2_memory", "reference_over_fused_time", "v2_over_llama_time", "v2_over_llama_tokens_per_s",
              "v2_over_llama_memory"]))
    emit(md, a.out)


if __name__ == "__main__":
    main()
