"""``mosaic-train``'s own speed under each of its speed flags, both models, one run: which flags to use.

For every model and flag combination (eager, ``--compile``, ``--cuda-graph``; for the Memory Mosaic each
with both P-mem kernels, ``--pmem-kernel sdpa`` and ``triton``), on the same settings (``--preset paper``
by default: 12 layers, d=768, T=512, batch 32, one micro-step a step, bf16 on CUDA):

    step_ms       the trainer's step function alone (``training.step.make_step``: forward, backward,
                  clipping, AdamW), on batches drawn before the clock starts: mean over --steps steps after
                  --warmup steps (compilation and graph recording happen there)
    tokens_per_s  the same step in tokens a second
    trainer_tok_s ``train(config)`` itself, the whole loop a user runs (batches drawn from the text, the
                  learning rate set, the progress bar, a log line every --warmup steps that waits for the
                  GPU): its logged tokens a second, mean of the log windows after the first
    trainer_over_step  tokens_per_s / trainer_tok_s: what the loop costs beyond the step (issue 38's target:
                  at most 1.05)
    ratio_range   with --rounds R > 1: the step and the loop are timed R times, alternated (each time in a
                  fresh model), the columns above are medians (the ratio that of the medians), and this is the
                  lowest and highest ratio of one round: on a host-bound step the host's noise shows here
    peak_GiB      the allocator's peak over the timed steps of the step alone (CUDA)
    over_gpt      tokens_per_s over GPT2's fastest combination in the same run

The cases run one after another in this process, each in a fresh model (``torch._dynamo.reset()`` between
them). On the CPU only the eager combination runs (a CUDA graph needs CUDA; compiling on a CPU says nothing
about the GPU), which is what the tests use.

    python -m benchmarks.bench_trainer --data TEXT [--models mosaic gpt] [--flags eager compile cuda-graph]
        [--steps 30] [--warmup 10] [--rounds 1] [--out FILE]
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import command_line, emit, header, table
from mosaic_model.cli.common import require_at_least_one
from mosaic_model.models.build import build_model
from mosaic_model.training import preset, train
from mosaic_model.training.optim import make_optimizer
from mosaic_model.training.step import make_step
from mosaic_model.training.tasks import make_task

MODELS = ("mosaic", "gpt", "mosaic-v2", "llama")
FLAGS = {"eager": {}, "compile": {"compile": True}, "cuda-graph": {"cuda_graph": True}}


def combinations(models: list[str], device: str, only: list[str] | None = None) -> list[tuple[str, str, dict]]:
    """(model, label, TrainConfig fields) of every case: each speed flag (those in ``only`` when given), and both
    P-mem kernels for the Memory Mosaic; on a CPU the eager one only."""
    flags = FLAGS if device.startswith("cuda") else {"eager": {}}
    flags = {k: v for k, v in flags.items() if only is None or k in only}
    out = []
    for model in models:
        for name, fields in flags.items():
            kernels = ("sdpa", "triton") if model == "mosaic" else (None,)
            for k in kernels:
                label = name if k is None else f"{name}, pmem {k}"
                out.append((model, label, {**fields, **({"pmem_kernel": k} if k else {})}))
    return out


SIZE_OPTIONS = ("n_layer", "n_embd", "n_head", "block_size", "batch_size")


def size_overrides(a: argparse.Namespace) -> dict:
    """The size options given on the command line (the preset's values stand for the others)."""
    return {k: getattr(a, k) for k in SIZE_OPTIONS if getattr(a, k)}


def config_for(model: str, fields: dict, a: argparse.Namespace, out_dir: Path):
    """The case's TrainConfig: the preset with the size options and the flags, one micro-step, logs every
    --warmup steps; the run stops after --warmup + --steps steps (``max_steps_this_run``) of a longer
    schedule, so that neither a periodic evaluation nor the final pass over the validation text runs."""
    run = a.warmup + a.steps
    return preset(a.preset, model=model, data=a.data, doc_split=a.doc_split, device=a.device, grad_accum=1,
                  steps=10 * run, max_steps_this_run=run, log_every=a.warmup, eval_every=10 * run,
                  out_dir=str(out_dir), overwrite=True, quiet=True, **size_overrides(a), **fields).resolved()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_alone(cfg, warmup: int, steps: int) -> dict:
    """Time the trainer's step function on pre-drawn batches: ms a step, tokens a second, peak GiB."""
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg, progress=False)
    model = build_model(cfg.model, cfg.model_config(task.block_size, task.vocab_size)).to(device).train()
    opt = make_optimizer(model, cfg, device)
    step = make_step(model, opt, cfg, device, dtype, 1, 0, task.fixed_shape)
    batches = [[task.batch(i, cfg.batch_size, device)] for i in range(warmup + steps)]
    for b in batches[:warmup]:
        step(b)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for b in batches[warmup:]:
        loss, _ = step(b)
    float(loss)  # waits for the last step
    ms = (time.perf_counter() - t0) / steps * 1e3
    tokens = cfg.batch_size * task.block_size
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
    del model, opt, step, batches
    return {"step_ms": ms, "tokens_per_s": tokens / ms * 1e3, "peak_GiB": peak}


def trainer_alone(cfg) -> float:
    """``train(cfg)``'s logged tokens a second, mean of the log windows after the first."""
    train(cfg)
    records = [json.loads(line) for line in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if r.get("split") == "train"][1:]
    if not rates:
        raise ValueError("--steps must be at least --warmup, so that one log window follows the first")
    return sum(rates) / len(rates)


def measure(model: str, label: str, fields: dict, a: argparse.Namespace, work: Path) -> dict:
    """One case's row (or the error that stopped it, e.g. out of memory): the step and the loop timed --rounds
    times, alternated; medians, and with several rounds the range of the rounds' ratios."""
    row = {"model": model, "flags": label}
    try:
        steps, loops = [], []
        for _ in range(a.rounds):
            steps.append(step_alone(config_for(model, fields, a, work / "step"), a.warmup, a.steps))
            loops.append(trainer_alone(config_for(model, fields, a, work / "trainer")))
        row["step_ms"] = statistics.median(s["step_ms"] for s in steps)
        row["tokens_per_s"] = statistics.median(s["tokens_per_s"] for s in steps)
        peaks = [s["peak_GiB"] for s in steps if s["peak_GiB"] is not None]
        row["peak_GiB"] = max(peaks) if peaks else None
        row["trainer_tok_s"] = statistics.median(loops)
        row["trainer_over_step"] = row["tokens_per_s"] / row["trainer_tok_s"]
        if a.rounds > 1:
            ratios = [s["tokens_per_s"] / t for s, t in zip(steps, loops)]
            row["ratio_range"] = f"{min(ratios):.3f}-{max(ratios):.3f}"
    except torch.OutOfMemoryError:
        row["step_ms"] = "OOM"
    finally:
        gc.collect()
        torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


def add_over_gpt(rows: list[dict]) -> list[dict]:
    """Each row's tokens a second over the fastest GPT2 combination's (when GPT2 ran)."""
    gpt = [r["tokens_per_s"] for r in rows if r["model"] == "gpt" and isinstance(r.get("tokens_per_s"), float)]
    for r in rows:
        if gpt and isinstance(r.get("tokens_per_s"), float):
            r["over_gpt"] = r["tokens_per_s"] / max(gpt)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Time every case and print (and with --out write) the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="training text (any --data of mosaic-train)")
    p.add_argument("--doc-split", default="auto", help="as mosaic-train's --doc-split")
    p.add_argument("--models", nargs="+", choices=MODELS, default=["mosaic", "gpt"])
    p.add_argument("--preset", default="paper", choices=("paper",), help="the settings every case starts from")
    p.add_argument("--n-layer", type=int, help="override the preset's depth")
    p.add_argument("--n-embd", type=int, help="override the preset's width")
    p.add_argument("--n-head", type=int, help="override the preset's heads")
    p.add_argument("--block-size", type=int, help="override the preset's context T")
    p.add_argument("--batch-size", type=int, help="override the preset's sequences per step")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps (compilation, graph recording)")
    p.add_argument("--steps", type=int, default=30, help="timed steps (a multiple of --warmup for whole log windows)")
    p.add_argument("--rounds", type=int, default=1, help="times the step and the loop are each timed, alternated")
    p.add_argument("--flags", nargs="+", choices=tuple(FLAGS), default=None,
                   help="time only these speed flags (default: all on CUDA, eager on a CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="also write the markdown to this file")
    a = p.parse_args(argv)
    require_at_least_one(p, a, ("warmup", "steps", "rounds", *SIZE_OPTIONS))
    if a.steps % a.warmup:
        p.error(f"--steps: expected a multiple of --warmup ({a.warmup}), got {a.steps}")
    if not Path(a.data).exists() and not a.data.startswith("hf:"):
        p.error(f"--data: {a.data} does not exist")
    rows = []
    cases = combinations(a.models, a.device, a.flags)
    if not cases:
        p.error(f"--flags: none of {' '.join(a.flags)} runs on {a.device} (a CPU runs eager only)")
    with tempfile.TemporaryDirectory() as work:
        for i, (model, label, fields) in enumerate(cases, 1):
            rows.append(measure(model, label, fields, a, Path(work)))
            print(f"[{i}/{len(cases)}] {rows[-1]}", flush=True)
    add_over_gpt(rows)
    md = (f"{header(command_line('benchmarks.bench_trainer'))}\n\nmosaic-train's step and loop, --preset {a.preset} "
          f"with {json.dumps(size_overrides(a))}"
          f", one micro-step; {a.steps} timed steps after {a.warmup}"
          + (f", medians of {a.rounds} alternated rounds" if a.rounds > 1 else "") + ".\n\n"
          + table(rows, ["model", "flags", "step_ms", "tokens_per_s", "trainer_tok_s", "trainer_over_step", "over_gpt",
                         *(["ratio_range"] if a.rounds > 1 else []), "peak_GiB"]))
    emit(md, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
