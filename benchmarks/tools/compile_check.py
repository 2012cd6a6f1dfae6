"""Compile every Triton kernel variant the package launches for an NVIDIA GPU, on a machine without one.

Triton's interpreter (``TRITON_INTERPRET=1``, the CPU path of CI) runs a kernel's body as Python: it never
runs the GPU compiler, so code that the compiler rejects (a non-constexpr global, a type the code
generator does not accept, a shape ptxas cannot lower) passes every CPU test and fails on the first GPU
launch. This tool closes that gap in two steps, each in its own process (the interpreter is chosen when
Triton is imported):

1. ``record`` (under the interpreter): run each registered op's opcheck cases forward and backward, and
   one training step of a small Memory Mosaic (v1) and Memory Mosaic v2 on the fused ops (and the launches
   no public float32 call makes: the attention's long-row backward, the 16-bit scans' "split" forward), and
   write down every launch: the kernel, its argument types, its compile-time constants and its warps and stages.
2. ``compile`` (without the interpreter): compile each distinct variant with ``triton.compile`` for a GPU
   target (default sm_90, the H100/H200), through every stage of Triton's pipeline down to a cubin.

The variants are those of the recording's shapes and the interpreter's tiles (small blocks, one warp),
not the GPU tile tables: what this catches is code the compiler rejects, not a tile that does not fit.

    python -m benchmarks.tools.compile_check [--arch 90] [--out variants.json]
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

POINTER_TYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64", "int32": "i32",
                 "int64": "i64", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}


def argument_type(value: object) -> str:
    """Triton's signature type of one runtime argument ("*fp32" for a float32 tensor, "i32" for a small int)."""
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + POINTER_TYPES[str(value.dtype).removeprefix("torch.")]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for a runtime argument of type {type(value).__name__}")


def variant(fn: object, args: tuple, kwargs: dict) -> dict:
    """One launch as {module, name, signature, constexprs, options}: what ``triton.compile`` needs."""
    params = inspect.signature(fn).parameters
    bound = dict(zip(params, args)) | {k: v for k, v in kwargs.items() if k in params}
    options = {k: v for k, v in kwargs.items() if k not in params}
    constexpr = {name for name, p in params.items() if "constexpr" in str(p.annotation)}
    signature, constants = {}, {}
    for name, value in bound.items():
        if name in constexpr or value is None:
            signature[name], constants[name] = "constexpr", value
        else:
            signature[name] = argument_type(value)
    return dict(module=fn.__module__, name=fn.__name__, signature=signature, constexprs=constants,
                options={k: options[k] for k in ("num_warps", "num_stages") if k in options})


@contextlib.contextmanager
def recording(into: list) -> Iterator[None]:
    """Inside this block every interpreted launch is appended to ``into`` as a :func:`variant`, then runs."""
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        into.append(variant(self.fn, args, kwargs))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = record
    try:
        yield
    finally:
        InterpretedFunction.run = run


def _backward(out: object) -> None:
    import torch

    first = out[0] if isinstance(out, tuple) else out
    if isinstance(first, torch.Tensor) and first.requires_grad:
        first.float().square().sum().backward()


def _model_steps() -> None:
    """One forward and backward of a small v1 and v2 model on the fused ops (every model-path variant)."""
    import torch

    from mosaic_model.models.build import build_model

    tokens = torch.randint(0, 50, (2, 37), generator=torch.Generator().manual_seed(0))
    small = dict(n_layer=1, n_head=2, n_embd=32, vocab_size=50, block_size=64, kernels="fused")
    for model_type, extra in (("mosaic", {}), ("mosaic-v2", dict(window=8, delay_min=3, delay_max=9, delay_eval=4))):
        model = build_model(model_type, {**small, **extra}).train()
        _, loss = model(tokens[:, :-1], tokens[:, 1:])  # (logits, loss)
        loss.backward()


def _long_row_plan_and_masks() -> None:
    """The launches no public call makes under the interpreter: the attention's two-kernel backward (the GPU
    takes it for long rows; the interpreter's config is always the one-kernel plan), plain, with dropout, with
    a band and with a band per head (a table), the latter with a per-row scale too, and the dropout masks'
    inspection kernel."""
    import torch

    from mosaic_kernels._triton_common import dropout_keep_mask
    from mosaic_kernels.attention.function import attention_backward, attention_forward, split_config

    g = torch.Generator().manual_seed(0)
    k, v, dy = (torch.randn(2, 2, 40, 24, generator=g) for _ in range(3))
    scale = torch.full((2,), 0.3)
    seed = torch.tensor([5], dtype=torch.int64)
    delays = torch.tensor([2, 5], dtype=torch.int32)
    fwd, bwd = dict(BLOCK_M=32, BLOCK_N=16, num_warps=1, num_stages=1), split_config((32, 16, 1, 1), (16, 16, 1, 1))
    table = torch.tensor([[[6, 1], [40, 2]], [[6, 1], [40, 5]]], dtype=torch.int32)  # one band per (b, h)
    rows = torch.rand(2, 2, 40, generator=g) + 0.1                                 # a per-row scale
    for extra in (dict(), dict(seed=seed, threshold=6554), dict(window=6, delays=delays), dict(delays=table)):
        for sc in (scale, rows) if "delays" in extra and extra["delays"].dim() == 3 else (scale,):
            y, lse = attention_forward(k, v, sc, fwd, **extra)
            attention_backward(k, v, y, lse, sc, dy, bwd, **extra)
    for rng in ("philox", "hash"):
        dropout_keep_mask(seed, 1, 2, 20, 30, 0.1, rng=rng)


def _delta_in_kernel_backwards() -> None:
    """The attention's backward kernels with the row term computed inside them (attention.function.DELTA_IN_KERNEL
    forced on; by default only small 16-bit calls take it): both plans, plain and with a band and dropout."""
    import torch

    from mosaic_kernels.attention import function

    g = torch.Generator().manual_seed(0)
    k, v, dy = (torch.randn(2, 2, 40, 24, generator=g) for _ in range(3))
    scale, seed = torch.full((2,), 0.3), torch.tensor([5], dtype=torch.int64)
    fwd = dict(BLOCK_M=32, BLOCK_N=16, num_warps=1, num_stages=1)
    with mock.patch.object(function, "DELTA_IN_KERNEL", True):
        for bwd in (None, function.split_config((32, 16, 1, 1), (16, 16, 1, 1))):
            for extra in (dict(), dict(seed=seed, threshold=6554, window=6, delay=2)):
                y, lse = function.attention_forward(k, v, scale, fwd, **extra)
                function.attention_backward(k, v, y, lse, scale, dy, bwd, **extra)


def _split_scan_forwards() -> None:
    """The 16-bit time-varying and gated scans' forward with its product in two 16-bit parts
    (leaky_average.function.TIME_VARYING_FWD_PRECISION = "split"), which the float32 opcheck cases never take:
    float16 here (the interpreter multiplies no bfloat16 tiles; record_all adds the bfloat16 variants)."""
    import torch

    from mosaic_kernels.leaky_average import function

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 40, 16, generator=g).half()
    gate, scale = torch.rand(2, 2, 40, generator=g) + 0.5, torch.ones(2)
    with mock.patch.object(function, "TIME_VARYING_FWD_PRECISION", "split"):
        for decay, gated in ((torch.rand(2, 2, 40, generator=g), None), (torch.rand(2, 2, 40, generator=g), gate),
                             (torch.rand(2, generator=g), gate)):
            function._launch_forward(x, decay, scale, True, 1e-12, 0, False, gated)


def as_bfloat16(v: dict) -> dict:
    """A recorded float16 variant with its float16 pointers made bfloat16."""
    return {**v, "signature": {k: "*bf16" if t == "*fp16" else t for k, t in v["signature"].items()}}


def record_all() -> list[dict]:
    """Every distinct launch of the registry's opcheck cases (forward and backward) and of the model steps."""
    import torch

    from mosaic_kernels.registry import OPS

    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("record needs TRITON_INTERPRET=1 (the kernels run on the CPU)")
    launches: list[dict] = []
    with recording(launches):
        for op in OPS:
            fused = getattr(op.function_module(), op.fused)
            for _, args in op.opcheck_cases("cpu"):
                _backward(fused.apply(*args))
        from mosaic_kernels.attention import row_bandwidth
        from mosaic_kernels.leaky_average import stable_gate_and_decay

        h = [torch.rand(3, requires_grad=True) for _ in range(3)]
        _backward(row_bandwidth(*h, 20, window=6, delay=torch.tensor([2, 4])))
        _backward(row_bandwidth(*h, 20, window=6, delay=2))
        gates = [(torch.randn(2, 3, 20) - 1).requires_grad_() for _ in range(2)]
        pair = stable_gate_and_decay(*gates)
        (pair[0].square().sum() + pair[1].square().sum()).backward()
        _model_steps()
        _long_row_plan_and_masks()
        _delta_in_kernel_backwards()
        split = len(launches)
        _split_scan_forwards()
    launches += [as_bfloat16(v) for v in launches[split:]]
    unique = {json.dumps(v, sort_keys=True): v for v in launches}
    return list(unique.values())


def compile_variants(variants: list[dict], arch: int) -> list[tuple[str, str]]:
    """[(kernel name, the error's first lines)] of the variants that do not compile for sm_``arch``."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile must run without TRITON_INTERPRET=1 (the kernels must be JIT functions)")
    failures = []
    target = GPUTarget("cuda", arch, 32)
    for v in variants:
        kernel = getattr(importlib.import_module(v["module"]), v["name"])
        try:
            triton.compile(ASTSource(kernel, v["signature"], constexprs=v["constexprs"]), target=target,
                           options=v["options"])
        except Exception as e:  # noqa: BLE001 (every compiler error is a finding, whatever its class)
            failures.append((f"{v['module']}.{v['name']}", f"{type(e).__name__}: {str(e)[-600:]}"))
    return failures


def _phase(flag: str, path: Path, interpret: bool) -> None:
    """Run this module with ``flag path`` in a fresh process, under the interpreter or not."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    root = Path(__file__).resolve().parents[2]  # where `benchmarks` imports from
    subprocess.run([sys.executable, "-m", "benchmarks.tools.compile_check", flag, str(path)], env=env, check=True,
                   cwd=root)


def main(argv: list[str] | None = None) -> int:
    """Record the launches in one fresh process (interpreter on), compile them in another (off); print the
    failures and return 1 if there is one. Safe to call from a process that imported Triton either way."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="the CUDA compute capability to compile for (90: H100, H200)")
    p.add_argument("--out", type=Path, default=None, help="also keep the recorded variants and failures (JSON) here")
    p.add_argument("--record-to", type=Path, default=None, help=argparse.SUPPRESS)    # the recording process
    p.add_argument("--compile-from", type=Path, default=None, help=argparse.SUPPRESS)  # the compiling process
    a = p.parse_args(argv)
    if a.arch < 50:
        p.error(f"--arch must be a CUDA compute capability of at least 50, got {a.arch}")
    if a.record_to is not None:
        a.record_to.write_text(json.dumps(record_all()))
        return 0
    if a.compile_from is not None:
        report = json.loads(a.compile_from.read_text())
        report["failures"] = compile_variants(report["variants"], report["arch"])
        a.compile_from.write_text(json.dumps(report, indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "variants.json"
        _phase("--record-to", path, interpret=True)
        path.write_text(json.dumps({"arch": a.arch, "variants": json.loads(path.read_text())}))
        _phase("--compile-from", path, interpret=False)
        report = json.loads(path.read_text())
    if a.out is not None:
        a.out.write_text(json.dumps(report, indent=1))
    kernels = {f"{v['module']}.{v['name']}" for v in report["variants"]}
    print(f"{len(report['variants'])} variants of {len(kernels)} kernels compiled for sm_{a.arch}: "
          f"{len(report['failures'])} failed")
    for name, error in report["failures"]:
        print(f"FAILED {name}: {error}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
