"""Kernel launches of one training step (forward and backward), per block, for each model, counted on the CPU.

An eager step on a GPU waits on the host when its kernels are small (BENCHMARKS.md "Host cost of an eager
call"), and the host's time grows with the number of launches. This counts them without a GPU: the model
runs under Triton's interpreter (``TRITON_INTERPRET=1``, the fused path, as on a GPU) with every Triton
launch stubbed out and counted, and every aten op that computes is counted through a dispatch mode (each is
one kernel launch or more on a GPU; views, reshapes and allocations launch nothing and are left out). A
1-block and a 2-block model are counted and subtracted, so the columns are per block; ``base`` is what a
step has besides its blocks (embedding, final norm, head, loss). The outputs of stubbed launches are
garbage: only the counts mean anything. ``--autocast`` runs the forward under the CPU's bf16 autocast, which
adds the casts a GPU step's autocast makes (the default leaves them out). Not counted: the optimizer. SDPA
is counted as the CPU runs it: one op without dropout, but its decomposed math path (a few ops) with
dropout (GPT2's attention, v1's P-mem), where a GPU launches one fused kernel.

``--saved B,T`` adds what one block keeps for its backward at batch B and length T (the bench's d=768):
the bytes of the distinct storages the autograd graph saves during the forward (a saved-tensors hook; the
parameters left out), of a 2-block model less a 1-block one, in MiB; with the Triton launches stubbed the kernels' outputs keep
their shapes, so this is the activation memory a GPU step holds per block, measured on the CPU.

    python -m benchmarks.tools.count_launches [--models mosaic_fused gpt2 mosaic_v2 llama] [--layers 12] [--autocast]
        [--saved 8,2048]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.bench_training import build

MODELS = ("mosaic_fused", "gpt2", "mosaic_v2", "llama")
# Aten ops that only make views, change metadata or allocate: no kernel launch on a GPU.
NO_LAUNCH = frozenset({
    "empty", "empty_strided", "new_empty", "new_empty_strided", "view", "_unsafe_view", "_reshape_alias", "reshape",
    "transpose", "t", "permute", "expand", "as_strided", "select", "slice", "unsqueeze", "squeeze", "split",
    "split_with_sizes", "unbind", "chunk", "unflatten", "flatten", "view_as", "detach", "alias", "lift_fresh",
})


class _OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched inside it, by name."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counted_triton_launches(counter: collections.Counter) -> Iterator[None]:
    """Every Triton launch returns at once inside this block and adds one to ``counter[kernel name]``."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    saved = {cls: cls.__dict__["run"] for cls in (JITFunction, InterpretedFunction)}

    def run(self, *args, **kwargs):
        counter[getattr(self, "__name__", None) or getattr(self.fn, "__name__", "kernel")] += 1

    try:
        for cls in saved:
            cls.run = run
        yield
    finally:
        for cls, original in saved.items():
            cls.run = original


def count_step(model: torch.nn.Module, T: int = 64,
               autocast: bool = False) -> tuple[collections.Counter, collections.Counter]:
    """(aten ops that launch, Triton launches) of one forward and backward of ``model`` on a (2, T) batch,
    after one uncounted step (first-call work such as caches); with ``autocast``, under bf16 autocast."""
    idx = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(0))
    triton_launches: collections.Counter = collections.Counter()
    with counted_triton_launches(triton_launches):
        for counted in (False, True):
            model.zero_grad(set_to_none=True)
            triton_launches.clear()
            with _OpCounter() if counted else contextlib.nullcontext() as mode:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    _, loss = model(idx, targets=idx)
                loss.backward()
    aten = collections.Counter({op: n for op, n in mode.ops.items() if op not in NO_LAUNCH})
    return aten, triton_launches


def saved_bytes(model: torch.nn.Module, B: int, T: int, autocast: bool = False) -> int:
    """Bytes of the distinct storages that one forward of ``model`` on a (B, T) batch saves for its backward,
    the parameters themselves left out (every Triton launch stubbed: the kernels' outputs are allocated, not
    computed). Autocast's casts of the weights are counted: a GPU step holds them too."""
    idx = torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with counted_triton_launches(collections.Counter()), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(idx, targets=idx)
    return sum(storages.values())


def measure(names: list[str], layers: int, autocast: bool = False, saved: tuple[int, int] | None = None) -> list[dict]:
    """One row per model: launches per block and besides the blocks, and a step's total at ``layers``."""
    os.environ["TRITON_INTERPRET"] = "1"  # the fused path on the CPU (read at each call)
    rows = []
    for name in names:
        torch.manual_seed(0)
        # bench_training's models (d=768, 12 heads): the widths do not change the number of launches
        (aten1, tri1), (aten2, tri2) = (count_step(build(name, n, T=64), autocast=autocast) for n in (1, 2))
        block_aten, block_triton = aten2 - aten1, tri2 - tri1
        per_block = sum(block_aten.values()) + sum(block_triton.values())
        base = sum(aten1.values()) + sum(tri1.values()) - per_block
        row = {"model": name, "aten_per_block": sum(block_aten.values()),
               "triton_per_block": sum(block_triton.values()), "base": base,
               f"step_at_{layers}_layers": base + layers * per_block}
        if saved is not None:
            B, T = saved
            one, two = (saved_bytes(build(name, n, T=T), B, T, autocast) for n in (1, 2))
            row[f"saved_MiB_per_block_B{B}_T{T}"] = (two - one) / 2**20
        row["most_frequent"] = ", ".join(f"{op} {n}" for op, n in (block_aten + block_triton).most_common(8))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Count, print the markdown table (and write it to ``--out``)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.tools.count_launches", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--layers", type=int, default=12, help="the depth of the step total")
    p.add_argument("--out", help="also write the markdown here")
    p.add_argument("--autocast", action="store_true", help="count under bf16 autocast (its casts included)")
    p.add_argument("--saved", metavar="B,T", help="also the MiB a block saves for its backward at batch B, length T")
    a = p.parse_args(argv)
    if a.layers < 1:
        p.error(f"--layers must be >= 1, got {a.layers}")
    saved = None
    if a.saved is not None:
        try:
            saved = tuple(int(v) for v in a.saved.split(","))
        except ValueError:
            saved = ()
        if len(saved) != 2 or min(saved) < 1:
            p.error(f"--saved must be two positive integers B,T, got {a.saved!r}")
    from benchmarks._common import command_line, emit, header, table

    rows = measure(a.models, a.layers, a.autocast, saved)
    md = (header(command_line("benchmarks.tools.count_launches")) + "\n\n"
          + "Kernel launches of one training step (forward + backward), counted on the CPU (see the module "
          + "docstring).\n\n" + table(rows, list(rows[0])))
    emit(md, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
