"""Compiler report of every Triton kernel launched by one fwd+bwd of each op of the registry, at its
benchmark shapes (``mosaic_kernels.registry``: each record's ``report_cases``).

For each launch: grid size, warps, registers per thread, spilled registers, shared memory, and the
resident programs per SM those allow on an H200 (65,536 registers, 227 KiB shared memory, 64 warps
per SM), with the resulting number of waves over the 132 SMs. This is what bounds a kernel when its
timings fall short of the FLOP or bandwidth roofline.

Usage: python -m benchmarks.tools.kernel_report [--out report.md]
"""
from __future__ import annotations

import contextlib

import torch
from triton.runtime.jit import JITFunction

from benchmarks._common import table_main
from mosaic_kernels.registry import OPS

SM_COUNT, REGS_PER_SM, SMEM_PER_SM, WARPS_PER_SM = 132, 65536, 232448, 64


@contextlib.contextmanager
def recorded_launches():
    """Collect (kernel name, grid, compiled kernel) of every Triton launch inside the block."""
    launches = []
    original = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        kernel = original(self, *args, grid=grid, warmup=warmup, **kwargs)
        launches.append((self.fn.__name__, grid, kernel))
        return kernel
    JITFunction.run = run
    try:
        yield launches
    finally:
        JITFunction.run = original


def _row(op: str, shape, name: str, grid, kernel) -> dict:
    md = kernel.metadata
    warps, regs, smem = md.num_warps, kernel.n_regs, md.shared
    by_regs = REGS_PER_SM // max(1, regs * 32 * warps)
    by_smem = SMEM_PER_SM // smem if smem else 32
    resident = max(0, min(by_regs, by_smem, WARPS_PER_SM // warps, 32))
    programs = 1
    for g in (grid if isinstance(grid, tuple) else (grid,)):
        programs *= int(g)
    waves = programs / max(1, resident * SM_COUNT)
    return dict(op=op, shape=str(shape), kernel=name, programs=programs, warps=warps, regs=regs,
                spills=kernel.n_spills, smem_KiB=smem / 1024, per_SM=resident,
                limit="regs" if resident == by_regs else "smem" if resident == by_smem else "warps",
                waves=waves)


def run() -> list[dict]:
    """One fwd+bwd of every op of the registry at its report cases (bf16); a row per Triton launch (grid,
    warps, registers, spills, shared memory, residency)."""
    rows = []
    for op in OPS:
        for shape, options in op.report_cases:
            args, kwargs = op.sample("cuda", torch.bfloat16, shape, **options)
            with recorded_launches() as launches:
                op.public()(*args, **kwargs).float().sum().backward()
                torch.cuda.synchronize()
            label = op.name + "".join(f" {k}={v}" for k, v in options.items())
            rows += [_row(label, shape, *launch) for launch in launches]
    return rows


def main() -> None:
    """Write the report to --out and print it."""
    table_main(__doc__, "benchmarks.tools.kernel_report", run,
               f"Every Triton launch of one fwd+bwd (bf16). per_SM = programs resident per SM from registers, "
               f"shared memory and warps (limit names the binding one); waves = programs / (per_SM x {SM_COUNT}).",
               ["op", "shape", "kernel", "programs", "warps", "regs", "spills", "smem_KiB", "per_SM", "limit", "waves"])


if __name__ == "__main__":
    main()
