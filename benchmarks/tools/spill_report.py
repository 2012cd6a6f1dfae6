"""Registers and spills of the float32 tile tables of the attention and the scan, on a machine without a GPU.

Float32 inputs take exact float32 products (``input_precision="ieee"``): Triton lowers them to FMA loops with
every operand in registers, so a tile that fits in 16 bits can spill in float32, and how much depends on the
Triton version (3.6 on the GPU machines spilled 124 to 62,116 bytes a thread at the 16-bit tiles where 3.9
spills far less). This tool records one float32 launch of each kernel under the interpreter (dropout on for the
attention; the per-head and the gated time-varying scan), then, for every entry of the float32 tables
(``mosaic_kernels/attention/function.py``: ``FWD_TILES_FLOAT32`` and the rest; ``leaky_average/function.py``:
``FWD_DOT_TILES_FLOAT32``, ``BWD_DOT_TILES_FLOAT32``; ``--tables 16-bit`` for the 16-bit ones on float32
inputs instead), compiles the kernel at that tile for sm_90 and reads ``ptxas -v`` (the ptxas shipped with
Triton): one line per entry with its registers and spill bytes. The split backward's two kernels are compiled with
a per-head and with a per-row scale (the v2 ops' adaptive bandwidth reads the latter), and once more as the v2
block's call runs them (a band table of window and delay heads, a per-row scale, no dropout, the row term from its
own launch) at the band table's tiles (``BWD_BAND_TABLE_TILES``; float32: the split tiles). ``--inputs bfloat16``
compiles the 16-bit tables on bf16 inputs instead (tensor-core products; the per-row scale's cost at the key
kernel's default tile is a matter of registers there, BENCHMARKS.md "Targets against measurements (issue 36)").

    python -m benchmarks.tools.spill_report [--inputs float32|bfloat16] [--tables float32|16-bit] [--dims 16 64]

Run it with the Triton of the GPU machines to see what they compile (e.g. a Triton 3.6 installed into a
folder of its own: ``pip install --no-deps --target DIR triton==3.6.0``, then ``PYTHONPATH=DIR:.``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

ATTENTION_KERNELS = ("_attn_fwd_kernel", "_attn_bwd_kernel", "_attn_bwd_key_kernel", "_attn_bwd_query_kernel")


def record(inputs: str = "float32") -> list[dict]:
    """One launch of each attention kernel (both backward plans, dropout on; the split plan's two kernels also
    with a per-row scale) and of each scan kernel (per-head, and gated with a per-step decay) on ``inputs``, as
    compile_check's variants; needs TRITON_INTERPRET=1. bfloat16 is recorded in float16 (the interpreter's 16-bit
    type) and its pointers retyped, as compile_check does."""
    import torch

    from benchmarks.tools.compile_check import as_bfloat16, recording
    from mosaic_kernels.attention import function as attention_function
    from mosaic_kernels.attention.function import attention_backward, attention_forward, split_config
    from mosaic_kernels.leaky_average import leaky_average

    g = torch.Generator().manual_seed(0)
    dtype = torch.float32 if inputs == "float32" else torch.float16
    k, v, dy = (torch.randn(1, 2, 40, 16, generator=g, dtype=dtype) for _ in range(3))
    scale, seed = torch.full((2,), 0.3), torch.tensor([5], dtype=torch.int64)
    one = dict(BLOCK_P=16, BLOCK_Q=16, BLOCK_K=16, num_warps=1, num_stages=1)
    launches: list[dict] = []
    with recording(launches):
        for bwd in (one, split_config((16, 16, 1, 1), (16, 16, 1, 1))):
            y, lse = attention_forward(k, v, scale, dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1),
                                       seed=seed, threshold=3277)
            attention_backward(k, v, y, lse, scale, dy, bwd, seed=seed, threshold=3277)
        rows = torch.full((1, 2, 40), 0.3)
        y, lse = attention_forward(k, v, rows, dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1),
                                   seed=seed, threshold=3277)
        attention_backward(k, v, y, lse, rows, dy, bwd, seed=seed, threshold=3277)  # bwd: the split plan's
        # v2's call: one window head and one delayed head in a band table, a per-row scale, no dropout, and the row
        # term from its own launch, as the model's calls at T >= 2048 take it (their work is past the in-kernel line).
        table = torch.tensor([[[8, 1], [40, 4]]], dtype=torch.int32)
        y, lse = attention_forward(k, v, rows, dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1), delays=table)
        with mock.patch.object(attention_function, "DELTA_IN_KERNEL", False):
            attention_backward(k, v, y, lse, rows, dy, bwd, delays=table)
        x = torch.randn(1, 2, 40, 16, generator=g, dtype=dtype, requires_grad=True)
        for decay, gate in ((torch.rand(2, generator=g), None),
                            (torch.rand(1, 2, 40, generator=g), torch.rand(1, 2, 40, generator=g) + 0.5)):
            leaky_average(x, decay.requires_grad_(), normalize=True, gate=gate).square().sum().backward()
    unique = {}
    for launch in launches:
        c = launch["constexprs"]
        if c.get("SUMMARY_ONLY"):  # the scan's chunk-summary pass; the main pass is the one timed
            continue
        if inputs != "float32":
            launch = as_bfloat16(launch)
        unique.setdefault((launch["name"], c.get("DECAY_KIND"), c.get("GATED"), c.get("ROW_SCALE"),
                           c.get("BAND_TABLE")), launch)
    return list(unique.values())


def _variant(constexprs: dict) -> str | None:
    """Which recorded launch of a kernel an entry compiles: the scan's decay kind, v2's call ("v2 call": a band
    table), the attention's per-row scale ("row scale"), else None."""
    if constexprs.get("DECAY_KIND") is not None:
        return {0: "per-head", 1: "gated, per step"}[constexprs["DECAY_KIND"]]
    if constexprs.get("BAND_TABLE"):
        return "v2 call"
    return "row scale" if constexprs.get("ROW_SCALE") else None


def entries(tables: str, dims: list[int]) -> list[tuple[str, str, int, tuple, str | None]]:
    """(kernel name, label, head dim, tile, :func:`_variant`) of every table entry to compile: the attention's forward
    (short and long rows), one-kernel backward and the two kernels of the split backward (each with a per-head and
    a per-row scale), the scan's forward and backward (each for the per-head and the gated time-varying variant)."""
    import torch

    from mosaic_kernels.attention import function as att
    from mosaic_kernels.leaky_average import function as scan

    dtype = torch.float32 if tables == "float32" else torch.bfloat16
    fwd, fwd_long, bwd, bwd_long, band_table = att._tables(dtype)
    out = []
    for D in dims:
        for label, table in (("short", fwd), ("long", fwd_long)):
            if D in table:
                out.append(("_attn_fwd_kernel", label, D, table[D], None))
        if D in bwd:
            out.append(("_attn_bwd_kernel", "one kernel", D, bwd[D], None))
        if D in bwd_long:
            for label, variant in (("split", None), ("split, row scale", "row scale")):
                out += [("_attn_bwd_key_kernel", label, D, bwd_long[D][0], variant),
                        ("_attn_bwd_query_kernel", label, D, bwd_long[D][1], variant)]
        if D in band_table:
            out += [("_attn_bwd_key_kernel", "v2 call", D, band_table[D][0], "v2 call"),
                    ("_attn_bwd_query_kernel", "v2 call", D, band_table[D][1], "v2 call")]
        for name, direction in (("_leaky_fwd_kernel", "fwd"), ("_leaky_bwd_kernel", "bwd")):
            tile = scan.active_tiles(direction, dtype).get(D)
            if tile is not None:
                out += [(name, label, D, tile, label) for label in ("per-head", "gated, per step")]
    return out


def _constexprs(variant: dict, name: str, D: int, tile: tuple) -> tuple[dict, dict]:
    """The variant's compile-time constants and options at this tile (the table's layout per kernel)."""
    c = dict(variant["constexprs"], BLOCK_D=D)
    if name == "_attn_fwd_kernel":
        c.update(BLOCK_M=tile[0], BLOCK_N=tile[1])
    elif name == "_attn_bwd_kernel":
        c.update(BLOCK_P=tile[0], BLOCK_Q=tile[1], BLOCK_K=tile[2])
    elif name == "_attn_bwd_key_kernel":
        c.update(BLOCK_P=tile[0], BLOCK_Q=tile[1])
    elif name == "_attn_bwd_query_kernel":
        c.update(BLOCK_P=tile[0], BLOCK_K=tile[1])
    else:  # the scan: (BLOCK_T, warps)
        c.update(BLOCK_T=tile[0])
        return c, {"num_warps": tile[1]}
    return c, {"num_warps": tile[-2], "num_stages": tile[-1]}


def ptxas_report(ptx: str) -> tuple[int, int]:
    """(registers, spill-store bytes) of one kernel's PTX, from the ptxas that ships with Triton (sm_90a)."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        # Triton may emit a newer PTX ISA than its ptxas reads; the kernels use nothing of the newer ones.
        src.write_text(re.sub(r"^\.version \d+\.\d+", ".version 8.7", ptx, flags=re.M))
        out = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                             capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores", out)
    if regs is None:
        raise RuntimeError(f"ptxas gave no register count: {out[-300:]}")
    return int(regs.group(1)), int(spill.group(1)) if spill else 0


def compile_entries(variants: list[dict], todo: list[tuple[str, str, int, tuple, str | None]]) -> list[dict]:
    """Compile each entry for sm_90 (without the interpreter) and read its registers and spills."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    by_kind = {(v["name"], _variant(v["constexprs"])): v for v in variants}
    rows = []
    for name, label, D, tile, variant in todo:
        v = by_kind[(name, variant)]
        kernel = getattr(importlib.import_module(v["module"]), name)
        constexprs, options = _constexprs(v, name, D, tile)
        compiled = triton.compile(ASTSource(kernel, v["signature"], constexprs=constexprs),
                                  target=GPUTarget("cuda", 90, 32), options=options)
        regs, spill = ptxas_report(compiled.asm["ptx"])
        rows.append(dict(kernel=name, variant=label, D=D, tile=list(tile), registers=regs, spill_bytes=spill))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Record in a fresh interpreted process, compile in a fresh compiling one (Triton picks the interpreter when a
    kernel module is imported, so neither can run in a process that imported the kernels the other way); print one
    line per table entry."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", choices=("float32", "bfloat16"), default="float32", help="the inputs' dtype")
    p.add_argument("--tables", choices=("float32", "16-bit"), default=None,
                   help="which tables to compile (default: the inputs' own; 16-bit on float32 inputs: what float32 "
                        "ran before its own tables)")
    p.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64, 128, 256], help="head dims")
    p.add_argument("--record-to", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--compile-from", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if bad := [d for d in a.dims if d not in (16, 32, 64, 128, 256)]:
        p.error(f"--dims must be among 16, 32, 64, 128, 256 (the tables' head dims), got {bad}")
    tables = a.tables or ("float32" if a.inputs == "float32" else "16-bit")
    if a.record_to is not None:
        a.record_to.write_text(json.dumps(record(a.inputs)))
        return 0
    if a.compile_from is not None:
        import triton

        print(f"Triton {triton.__version__}, sm_90a, {a.inputs} inputs, the {tables} tables")
        for r in compile_entries(json.loads(a.compile_from.read_text()), entries(tables, a.dims)):
            print(f"{r['kernel']:24s} {r['variant'] or '':16s} D={r['D']:<4d} tile={tuple(r['tile'])!s:22s} "
                  f"registers {r['registers']:3d}  spills {r['spill_bytes']} bytes", flush=True)
        return 0
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "variants.json"
        # The recording takes the installed Triton's interpreter, whatever PYTHONPATH puts first for the compile (an
        # older Triton's interpreter may not run beside the installed numpy): the launches' signatures are our code's.
        subprocess.run([sys.executable, "-m", "benchmarks.tools.spill_report", "--record-to", str(path),
                        "--inputs", a.inputs],
                       env=dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(root)), check=True, cwd=root)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        done = subprocess.run([sys.executable, "-m", "benchmarks.tools.spill_report", "--compile-from", str(path),
                               "--inputs", a.inputs, "--tables", tables, "--dims", *map(str, a.dims)], env=env, cwd=root,
                              capture_output=True, text=True)
    print(done.stdout, end="")
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
