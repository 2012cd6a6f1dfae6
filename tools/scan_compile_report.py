"""Compiler report of the leaky-average scan's kernels for an H100/H200 (sm_90), made on any machine: no GPU
needed. For each kernel (forward, backward; main pass and chunk-summary pass), head dim and latency
hiding (``STAGES``), with the tiles and precision ``function.py`` picks for bf16: registers a thread, shared memory,
how many loads Triton turned into asynchronous copies (pipelined), and the programs per SM those allow.

It compiles with the installed Triton, which may differ from the GPU's (3.9 on CI, 3.6 on the H200), so
the numbers guide a change before device time is spent; ``tools.kernel_report`` measures the real thing
on the GPU. Argument divisibility is assumed as Triton's JIT specialises it for the benchmark shapes
(every size and stride a multiple of 16, unit last strides).

Usage: python -m tools.scan_compile_report [--head-dims 64 128] [--stages 0 3] [--out FILE]
(without TRITON_INTERPRET: under the interpreter the kernels are not compiled)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

from benchmarks._common import emit, table

# An H100/H200 SM: 65,536 registers, 227 KiB of shared memory a block, 64 warps.
REGS_PER_SM, SMEM_PER_SM, WARPS_PER_SM = 65536, 232448, 64
_BF16_TENSORS = {"X", "Y", "GY", "GX"}
_F32_TENSORS = {"NORM", "DECAY", "SCALE", "SUMMARY", "PARTS"}


def compile_scan_kernel(direction: str, head_dim: int, stages: int, summary_only: bool):
    """The scan's ``direction`` ("fwd" or "bwd") kernel compiled for sm_90 with the tiles, in-tile scan and
    bf16 precision that ``function`` picks, normalised and scaled as the model calls it."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mosaic_kernels.leaky_average import function, triton_scan

    fwd_t, fwd_w, bwd_t, bwd_w, block_d = function._tiling(head_dim)
    if direction == "fwd":
        kernel, block_t, warps = triton_scan._leaky_fwd_kernel, fwd_t, fwd_w
        use_dot, precision = function.FWD_IN_TILE == "dot", function._fwd_precision(torch.bfloat16)
    else:
        kernel, block_t, warps = triton_scan._leaky_bwd_kernel, bwd_t, bwd_w
        use_dot, precision = function.BWD_IN_TILE == "dot", function._bwd_precision(torch.bfloat16)
    consts = dict(NORMALIZE=True, SUMMARY_ONLY=summary_only, BLOCK_T=block_t, BLOCK_D=block_d, USE_DOT=use_dot,
                  PRECISION=precision, STAGES=stages)
    consts.update({name: 1 for name in ("sxd", "sgd") if name in kernel.arg_names})  # unit last strides
    signature = {n: "constexpr" if n in consts else "*bf16" if n in _BF16_TENSORS else "*fp32" if n in _F32_TENSORS
                 else "fp32" if n == "eps" else "i32" for n in kernel.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names) if n not in consts and n != "eps"}
    return triton.compile(ASTSource(kernel, signature, constexprs=consts, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps)), warps


def cuobjdump() -> str:
    """The cuobjdump that ships with Triton's NVIDIA backend."""
    import triton.backends.nvidia as nvidia

    return os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")


def registers(cubin: bytes) -> int:
    """Registers a thread of a compiled kernel, read with Triton's cuobjdump."""
    tool = cuobjdump()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    for word in out.split():
        if word.startswith("REG:"):
            return int(word[4:])
    raise RuntimeError(f"cuobjdump -res-usage printed no register count:\n{out}")


def report(head_dims: list[int], stages: list[int]) -> list[dict]:
    """One row per kernel, pass, head dim and latency hiding."""
    rows = []
    for direction in ("fwd", "bwd"):
        for head_dim in head_dims:
            for st in stages:
                for summary_only in (False, True):
                    kernel, warps = compile_scan_kernel(direction, head_dim, st, summary_only)
                    regs, smem = registers(kernel.asm["cubin"]), kernel.metadata.shared
                    # Registers are allocated 8 a thread at a time.
                    by_regs = REGS_PER_SM // (-(-max(regs, 1) // 8) * 8 * 32 * warps)
                    by_smem = SMEM_PER_SM // smem if smem else 32
                    rows.append(dict(kernel=direction, launch="summary" if summary_only else "main", D=head_dim,
                                     stages=st, warps=warps, regs=regs, smem_KiB=smem / 1024,
                                     async_copies=kernel.asm["ttgir"].count("async_copy_global_to_local"),
                                     per_SM=min(by_regs, by_smem, WARPS_PER_SM // warps),
                                     limit="regs" if by_regs <= by_smem else "smem"))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print (and with ``--out`` write) the markdown table."""
    import triton

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128], help="head dims D (16 to 256)")
    p.add_argument("--stages", type=int, nargs="+", default=[0, 3], help="latency hiding: 0 or >= 2")
    p.add_argument("--out", help="also write the markdown here")
    a = p.parse_args(argv)
    if any(not 16 <= d <= 256 for d in a.head_dims):
        p.error(f"--head-dims must be in [16, 256], got {a.head_dims}")
    if any(s < 0 or s == 1 for s in a.stages):
        p.error(f"--stages must be 0 or >= 2, got {a.stages}")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        p.error("TRITON_INTERPRET is set: this tool compiles the kernels for the GPU; run it without the interpreter")
    rows = report(a.head_dims, a.stages)
    columns = ["kernel", "launch", "D", "stages", "warps", "regs", "smem_KiB", "async_copies", "per_SM", "limit"]
    md = (f"Scan kernels compiled for sm_90 by Triton {triton.__version__} on this machine (bf16, normalised, "
          f"the tiles of function.py): `python -m tools.scan_compile_report`\n\n" + table(rows, columns))
    emit(md, a.out)


if __name__ == "__main__":
    main()
