"""Host cost of one eager call of each fused op: what the CPU spends issuing a call against what the GPU
spends running it (issue 21: the scan's forward+backward at (16,12,512,64) issued in about 0.5 ms for
0.09 ms of GPU work).

For each op at one shape, forward alone and forward+backward (``torch.autograd.grad`` of every input):

    host_us      CPU time to issue one call (our ops through Triton's launch): the device is synchronised,
                 ``--calls`` calls are issued back to back, and the clock stops before the next
                 synchronisation. The calls are few enough that CUDA's launch queue never fills, so the host
                 never waits on the GPU.
    wrapper_us   the same with every Triton launch stubbed out (the launcher returns at once): our
                 Python, the argument checks, autograd and the tensor allocations alone.
    launcher_us  host_us - wrapper_us: Triton's launcher and the driver.
    host_direct_us  host_us with the direct launch of the compiled kernels (mosaic_kernels/_triton_common.py,
                 DIRECT_LAUNCH; on by default) instead of Triton's ``kernel[grid](...)``: the two paths
                 alternate three times and each is the median of its three.
    eager_us     median wall time of one call (triton.testing.do_bench) on the process's default launch path
                 (the direct one unless MOSAIC_DIRECT_LAUNCH=0): what an eager step pays.
    graph_us     the call captured once as a CUDA graph and replayed: the GPU time alone.
    eager/graph  issue 21's target: at most 2 for leaky_average at (16,12,512,64).
    over_sdpa    host_us / sdpa's host_us in the same mode (issue 38's target: at most 1.5 for fwd+bwd);
                 direct_over_sdpa the same for host_direct_us, the default path's.

``mosaic_attention_unplanned``, ``leaky_average_unplanned`` and ``peek_ahead_value_unplanned`` are the op without
its cached call plans (mosaic_kernels._common.CALL_PLANS off, as MOSAIC_PLANS=0 sets it for a process): every call
checks its arguments and plans its launches. The plain rows are the default path, which takes the plans (on by
default since 2026-12-07): an A/B in one process.

``mosaic_attention_delta_in_kernel`` is the attention with the backward's row term computed inside its kernels
(mosaic_kernels.attention.function.DELTA_IN_KERNEL forced on) over its whole measurement: one launch fewer per
fwd+bwd call, measured in the same process as ``mosaic_attention``, the default path (which picks the row term's
place by the call's work: MOSAIC_ATTN_DELTA_IN_KERNEL=0 makes it the own launch, for an A/B).

``sdpa`` is the peer: ``F.scaled_dot_product_attention(k, k, v, is_causal=True)`` at the same shape (its best
backend, no Triton launch, so only host_us and what follows are measured for it; GPU only).

``autograd_floor`` is the least any op of the attention's signature written as a Python ``autograd.Function``
costs: its forward allocates the output and its backward the two input gradients, nothing else (no kernel,
no check). Its host_us is the floor under our wrappers' host time that no cut of their own code can go below;
set against SDPA's (whose autograd is C++) it says what a Python autograd op can reach at all.

The ops run with the model's settings: the scan normalised and scaled by (H,) tensors, the peek-ahead
value with (H,) mix and scale, the attention on keys that are their own queries (``--dropout`` on its
weights and on the P-mem slots), the P-mem with ``--slots`` slots and an (H,) output scale.

On the CPU (``--device cpu``) the kernels run in Triton's interpreter, whose launches take
milliseconds; only ``wrapper_us`` means anything there, and it is all that is measured. It is the
part of the host cost that our code controls.

    python -m benchmarks.host_cost [--shape 16,12,512,64] [--dtype bfloat16] [--out FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch

from mosaic_model.cli.common import require_at_least_one

OPS = ("leaky_average", "leaky_average_unplanned", "peek_ahead_value", "peek_ahead_value_unplanned", "mosaic_attention",
       "mosaic_attention_unplanned", "mosaic_attention_delta_in_kernel", "persistent_memory", "autograd_floor", "sdpa")
NO_TRITON = ("autograd_floor", "sdpa")  # no Triton launch to stub or to take directly
MODES = ("fwd", "fwd+bwd")


@contextlib.contextmanager
def stubbed_launches() -> Iterator[None]:
    """Every Triton launch (``kernel[grid](...)``, compiled or interpreted) returns at once inside this
    block: nothing is compiled, bound or enqueued, and the outputs keep whatever their buffers held."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from mosaic_kernels import _triton_common

    saved = {cls: cls.__dict__["run"] for cls in (JITFunction, InterpretedFunction)}
    compiled = dict(_triton_common._COMPILED)  # direct launches need a compiled kernel: none while stubbed
    _triton_common._COMPILED.clear()
    try:
        for cls in saved:
            cls.run = lambda self, *args, **kwargs: None
        yield
    finally:
        for cls, run in saved.items():
            cls.run = run
        _triton_common._COMPILED.clear()
        _triton_common._COMPILED.update(compiled)


@contextlib.contextmanager
def launch_path(direct: bool) -> Iterator[None]:
    """Launch our kernels directly (``direct``, the default) or through Triton's ``kernel[grid]`` inside
    this block (mosaic_kernels._triton_common.DIRECT_LAUNCH)."""
    from mosaic_kernels import _triton_common

    saved = _triton_common.DIRECT_LAUNCH
    _triton_common.DIRECT_LAUNCH = direct
    try:
        yield
    finally:
        _triton_common.DIRECT_LAUNCH = saved


def op_setting(op: str) -> contextlib.AbstractContextManager:
    """The module setting an op variant is measured under (the whole measurement: a backward reads it when it
    runs); a plain op's is no setting."""
    if op == "mosaic_attention_delta_in_kernel":
        from benchmarks._common import delta_in_kernel

        return delta_in_kernel()
    if op.endswith("_unplanned"):
        from benchmarks._common import without_call_plans

        return without_call_plans()
    return contextlib.nullcontext()


class _AllocateOnly(torch.autograd.Function):
    """``autograd_floor``'s op: (k, v) -> an output of v's shape, and (dk, dv) in the backward, each only
    allocated (see the module docstring)."""

    @staticmethod
    def forward(ctx, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Allocate the output."""
        return torch.empty_like(v)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Allocate the two input gradients."""
        return torch.empty_like(dy), torch.empty_like(dy)


def make_calls(op: str, shape: tuple[int, int, int, int], dtype: torch.dtype, device: str, slots: int,
               dropout: float) -> dict[str, Callable[[], object]]:
    """{mode: a no-argument call of ``op``}: its inputs built once (requiring grad), the forward alone,
    and the forward followed by the gradients of every input."""
    import mosaic_kernels as mk

    name, op = op, op.removesuffix("_unplanned")  # the same calls; op_setting turns the plans off around them
    B, H, T, D = shape
    g = torch.Generator(device="cpu").manual_seed(0)

    def tensor(*size: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dtype).requires_grad_()

    def per_head(value: float) -> torch.Tensor:
        return torch.full((H,), value, device=device, dtype=torch.float32, requires_grad=True)

    if op == "leaky_average":
        inputs = (tensor(B, H, T, D), per_head(0.9), per_head(2.0))
        forward = lambda: mk.leaky_average(inputs[0], inputs[1], normalize=True, scale=inputs[2])  # noqa: E731
    elif op == "peek_ahead_value":
        inputs = (tensor(B, H, T, D), per_head(0.5), per_head(2.0))
        forward = lambda: mk.peek_ahead_value(inputs[0], inputs[1], scale=inputs[2])  # noqa: E731
    elif op in ("mosaic_attention", "mosaic_attention_delta_in_kernel", "autograd_floor", "sdpa"):
        inputs = (tensor(B, H, T, D, scale=D ** -0.5), tensor(B, H, T, D))  # keys (= queries), values
        if op == "autograd_floor":
            forward = lambda: _AllocateOnly.apply(*inputs)  # noqa: E731
        elif op == "sdpa":
            forward = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
                inputs[0], inputs[0], inputs[1], is_causal=True, dropout_p=dropout)
        else:
            forward = lambda: mk.mosaic_attention(inputs[0], inputs[1], dropout_p=dropout)  # noqa: E731
    elif op == "persistent_memory":
        inputs = (tensor(B, H, T, D, scale=D ** -0.5), tensor(H, slots, D), tensor(H, slots, D), per_head(1.0))
        forward = lambda: mk.persistent_memory(inputs[0], inputs[1], inputs[2], out_scale=inputs[3],  # noqa: E731
                                               dropout_p=dropout)
    else:
        raise ValueError(f"op must be one of {OPS}, got {name!r}")
    grad_out = torch.ones(B, H, T, D, device=device, dtype=dtype)

    def fwd() -> object:
        with torch.no_grad():
            return forward()

    def fwd_bwd() -> object:
        return torch.autograd.grad(forward(), inputs, grad_out)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def issue_us(fn: Callable[[], object], calls: int, reps: int, warmup: int = 3) -> float:
    """Median microseconds the host takes to issue one call of ``fn`` (see the module docstring)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):  # compilation, caches, the allocator's pools
        fn()
    samples = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls)
    sync()
    return statistics.median(samples) * 1e6


def measure(ops: list[str], shape: tuple, dtype: torch.dtype, device: str, slots: int, dropout: float,
            calls: int, reps: int) -> list[dict]:
    """One row per op and mode: the columns of the module docstring (on the CPU, wrapper_us only)."""
    rows = []
    for op in ops:
        if op == "sdpa" and device != "cuda":
            print("sdpa: measured on the GPU only (on the CPU it computes, it does not issue)", file=sys.stderr)
            continue
        for mode, fn in make_calls(op, shape, dtype, device, slots, dropout).items():
            with op_setting(op):
                rows.append(_measure_call(op, mode, fn, device, calls, reps))
    add_over_sdpa(rows)
    return rows


def _measure_call(op: str, mode: str, fn: Callable[[], object], device: str, calls: int, reps: int) -> dict:
    """The row of one op and mode (see :func:`measure`)."""
    from benchmarks._common import bench_graph_ms, bench_ms

    row = {"op": op, "mode": mode}
    if op != "sdpa":  # SDPA's own wrapper is C++: not separable
        with stubbed_launches():  # (nothing to stub for the floor: its wrapper is all of it)
            row["wrapper_us"] = issue_us(fn, calls, reps)
    if device == "cuda":
        if op in NO_TRITON:
            row["host_us"] = issue_us(fn, calls, reps)
        else:  # A/B of the launch path, alternated so that the host's drift falls on both alike
            direct, through_triton = [], []
            for _ in range(3):
                with launch_path(True):
                    direct.append(issue_us(fn, calls, reps))
                with launch_path(False):
                    through_triton.append(issue_us(fn, calls, reps))
            row["host_us"], row["host_direct_us"] = statistics.median(through_triton), statistics.median(direct)
            row["launcher_us"] = row["host_us"] - row["wrapper_us"]
        row["eager_us"] = bench_ms(fn) * 1e3
        row["graph_us"] = bench_graph_ms(fn) * 1e3
        row["eager/graph"] = row["eager_us"] / row["graph_us"]
    print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
          file=sys.stderr, flush=True)
    return row


def add_over_sdpa(rows: list[dict]) -> None:
    """Each row's host time over SDPA's in the same mode, through Triton's launch (``over_sdpa``) and through
    the direct launch (``direct_over_sdpa``), where both were measured."""
    sdpa = {r["mode"]: r["host_us"] for r in rows if r["op"] == "sdpa" and "host_us" in r}
    for r in rows:
        for mine, ratio in (("host_us", "over_sdpa"), ("host_direct_us", "direct_over_sdpa")):
            if mine in r and r["mode"] in sdpa:
                r[ratio] = r[mine] / sdpa[r["mode"]]


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected B,H,T,D (four positive integers), got {text!r}")
    return shape


def main(argv: list[str] | None = None) -> int:
    """Measure, print the markdown table, and write it to ``--out`` when given."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.host_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--shape", type=_shape, default=(16, 12, 512, 64), help="B,H,T,D")
    p.add_argument("--slots", type=int, default=2688, help="P-mem slots per head (the 12-layer model's)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.add_argument("--dropout", type=float, default=0.0, help="on the attention weights and the P-mem slots")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--calls", type=int, default=20, help="calls issued between two synchronisations")
    p.add_argument("--reps", type=int, default=15, help="timed groups of calls (the median is kept)")
    p.add_argument("--out", help="also write the markdown here")
    a = p.parse_args(argv)
    require_at_least_one(p, a, ("slots", "calls", "reps"))
    if not 0.0 <= a.dropout < 1.0:
        p.error(f"--dropout must be in [0, 1), got {a.dropout}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU here (--device cpu measures the wrapper under the interpreter)")
    if a.device == "cpu":
        # The kernels' launch path on the CPU is the interpreter's; without it the ops take the reference.
        os.environ["TRITON_INTERPRET"] = "1"
        if a.dtype != "float32":
            print(f"--device cpu: the interpreter runs float32; using it instead of {a.dtype}", file=sys.stderr)
            a.dtype = "float32"
    from benchmarks._common import command_line, emit, header, table

    rows = measure(a.ops, a.shape, getattr(torch, a.dtype), a.device, a.slots, a.dropout, a.calls, a.reps)
    columns = ["op", "mode", "wrapper_us"] + (["host_us", "host_direct_us", "launcher_us", "eager_us",
                                               "graph_us", "eager/graph",
                                               "over_sdpa", "direct_over_sdpa"] if a.device == "cuda" else [])
    md = (header(command_line("benchmarks.host_cost")) + "\n\n"
          + f"Host cost of one eager call, shape {a.shape}, {a.dtype}, dropout {a.dropout}, P={a.slots}, "
          + f"device {a.device} (microseconds; see the module docstring for each column).\n\n" + table(rows, columns))
    emit(md, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
