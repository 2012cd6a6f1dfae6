"""Shared pieces of the benchmarks: environment header, timing, markdown tables."""
from __future__ import annotations

import subprocess
import sys

import torch


def delta_in_kernel():
    """A context in which the attention's backward computes its row term inside its kernels
    (mosaic_kernels.attention.function.DELTA_IN_KERNEL): around a whole measurement, as a backward reads the
    setting when it runs, not at its forward."""
    from unittest import mock

    from mosaic_kernels.attention import function
    return mock.patch.object(function, "DELTA_IN_KERNEL", True)


def without_call_plans():
    """A context in which the ops' cached call plans are off (mosaic_kernels._common.CALL_PLANS, on by default):
    every call checks its arguments and plans its launches, as MOSAIC_PLANS=0 makes a whole process do; around a
    whole measurement, for an A/B in one process."""
    from unittest import mock

    from mosaic_kernels import _common
    return mock.patch.object(_common, "CALL_PLANS", False)


def header(command: str) -> str:
    """One line naming the GPU, driver, CUDA, torch and Triton versions, and the command."""
    import triton

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = "unknown"
    return (f"GPU: {gpu} | driver {driver} | CUDA {torch.version.cuda} | torch {torch.__version__} | "
            f"triton {triton.__version__} | command: `{command}`")


def bench_ms(fn, rep_ms: int = 100) -> float:
    """Median milliseconds of ``fn`` by triton.testing.do_bench (events, L2 flushed between runs)."""
    import triton

    return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))


def bench_graph_ms(fn, rep_ms: int = 100) -> float:
    """Median milliseconds of ``fn`` replayed as one CUDA graph: the GPU time without host overhead.

    This is what a training step pays once it is captured (torch.compile's "reduce-overhead" mode).
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # Capture on the warm-up stream: autograd's gradient-accumulation nodes remember their stream.
    with torch.cuda.graph(graph, stream=side):
        fn()
    return bench_ms(graph.replay, rep_ms)


def peak_mib(fn) -> float:
    """Peak extra device memory (MiB) of one call of ``fn`` over what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def command_line(module: str) -> str:
    """The command that produced a table, as a user would type it."""
    return f"python -m {module} " + " ".join(sys.argv[1:])


def emit(md: str, out: str | None) -> None:
    """Print a benchmark's markdown and, when ``out`` is given, write it to that file too."""
    print(md)
    if out:
        with open(out, "w") as f:
            f.write(md + "\n")


def table_main(doc: str, module: str, run, caption: str, columns: list[str]) -> None:
    """The command line of a benchmark that prints one table: ``--out``, then header, caption, table."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="also write the markdown to this file")
    a = p.parse_args()
    rows = run()
    emit(f"{header(command_line(module))}\n\n{caption}\n\n" + table(rows, columns), a.out)


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def dtype_and_out(doc: str, dtypes: tuple[str, ...] = ("bf16", "fp16", "fp32")) -> tuple[str, torch.dtype, str | None]:
    """The command line of a benchmark run in one dtype: (``--dtype`` name, its torch dtype, ``--out``)."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=dtypes, default="bf16")
    p.add_argument("--out", default=None, help="also write the markdown to this file")
    a = p.parse_args()
    return a.dtype, DTYPES[a.dtype], a.out
