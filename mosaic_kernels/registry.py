"""The registry of ops: one record per public op, which the tests, the tools and the model iterate over.

A record names the op's public function and reference, its folder (where ``function.py`` holds the
launches, the ``_empty`` allocator the NaN-poisoning test fixture swaps, the registered custom ops
and the tile tables), the benchmark that times it against its peers, and small sample inputs: the
arguments of the public function and of the forward custom op (what ``torch.library.opcheck``
checks). Adding an op is: its folder, one record here, its tests, its benchmark (CONTRIBUTING.md).

Nothing here imports Triton: the function modules are imported when a record's accessor asks, so
the registry (and the model's choice of ops that can run on their reference) imports on any machine.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import torch

Sample = tuple[tuple, dict]  # (positional, keyword) arguments of the public function


@dataclass(frozen=True)
class Op:
    """One op of ``mosaic_kernels``.

    Attributes:
        name: the public function's name (``mosaic_kernels.<name>``, ``mosaic_kernels.reference.<name>``).
        folder: the op's package under ``mosaic_kernels``.
        fused: the ``_registration.FusedOp`` in ``<folder>/function.py`` (its ``fwd`` is the forward
            custom op ``mosaic::*_fwd``).
        benchmark: the module under ``benchmarks/`` that times the op against what a user would call
            instead.
        tile_tables: names of the tile tables in ``<folder>/function.py`` that the tile sweep
            (``benchmarks/tools/tune_kernels.py``) fills.
        model_reference: whether the Memory Mosaic can run this op on its PyTorch reference while
            the others stay fused (``MosaicConfig.reference_ops``): the C-mem ops.
        sample: ``sample(device, dtype, shape, **options) -> (args, kwargs)`` of the public function,
            the differentiable inputs requiring grad; ``shape`` is ``(B, H, T, D)``.
        opcheck_cases: ``opcheck_cases(device) -> [(id, args)]``, the forward custom op's arguments.
        report_cases: ``(shape, options)`` pairs of :attr:`sample` that the compiler report
            (``benchmarks/tools/kernel_report.py``) compiles on the GPU: the benchmark shapes.
    """

    name: str
    folder: str
    fused: str
    benchmark: str
    tile_tables: tuple[str, ...]
    model_reference: bool
    sample: Callable[..., Sample]
    opcheck_cases: Callable[[str], list[tuple[str, tuple]]]
    report_cases: tuple[tuple[tuple, dict], ...] = field(default=())

    def public(self) -> Callable:
        """The public function, ``mosaic_kernels.<name>``."""
        return getattr(importlib.import_module("mosaic_kernels"), self.name)

    def reference(self) -> Callable:
        """The PyTorch reference, ``mosaic_kernels.reference.<name>``."""
        return getattr(importlib.import_module("mosaic_kernels.reference"), self.name)

    def function_module(self) -> ModuleType:
        """``mosaic_kernels.<folder>.function``: launches, ``_empty``, the fused op, the tile tables."""
        return importlib.import_module(f"mosaic_kernels.{self.folder}.function")

    def forward_op(self) -> torch.library.CustomOpDef:
        """The forward custom op (``mosaic::*_fwd``) that ``torch.compile`` traces."""
        return getattr(self.function_module(), self.fused).fwd

    def tiles(self) -> dict[str, dict]:
        """The live tile tables by name (the sweep's results are copied into them by hand)."""
        module = self.function_module()
        return {table: getattr(module, table) for table in self.tile_tables}


def _randn(shape: tuple, device: str, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(device=device, dtype=dtype)


def _head_split(shape: tuple, device: str, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A (B, H, T, D) strided view of a (B, T, H*D) leaf, as a model's projection gives it."""
    B, H, T, D = shape
    return _randn((B, T, H, D), device, dtype, seed).requires_grad_().transpose(1, 2)


def _per_head(values: list[float], H: int, device: str) -> torch.Tensor:
    return torch.tensor([values[h % len(values)] for h in range(H)], device=device).requires_grad_()


def _attention_sample(device: str, dtype: torch.dtype = torch.float32, shape: tuple = (2, 3, 16, 16),
                      window: int | None = None, delay: int = 1) -> Sample:
    k = torch.nn.functional.normalize(_randn(shape, device, torch.float32, 0), dim=-1).mul(2.0).to(dtype)
    return (k.requires_grad_(), _randn(shape, device, dtype, 1).requires_grad_()), {"window": window, "delay": delay}


def _leaky_sample(device: str, dtype: torch.dtype = torch.float32, shape: tuple = (2, 3, 16, 16),
                  time_varying: bool = False) -> Sample:
    H = shape[1]
    if time_varying:  # a decay and a gate per head and step
        g = torch.Generator().manual_seed(1)
        decay = torch.rand(shape[:3], generator=g).to(device).requires_grad_()
        gate = (torch.rand(shape[:3], generator=g) + 0.5).to(device).requires_grad_()
        return ((_head_split(shape, device, dtype, 0), decay),
                {"normalize": True, "scale": _per_head([1.0, 2.0, 0.5], H, device), "gate": gate})
    return ((_head_split(shape, device, dtype, 0), _per_head([0.0, 0.5, 0.9], H, device)),
            {"normalize": True, "scale": _per_head([1.0, 2.0, 0.5], H, device)})


def _peek_sample(device: str, dtype: torch.dtype = torch.float32, shape: tuple = (2, 3, 16, 16)) -> Sample:
    H = shape[1]
    return ((_head_split(shape, device, dtype, 0), _per_head([0.0, 0.5, 0.9], H, device)),
            {"scale": _per_head([1.0, 2.0, 0.5], H, device)})


def _pmem_sample(device: str, dtype: torch.dtype = torch.float32, shape: tuple = (2, 3, 16, 16),
                 slots: int = 24, dropout_p: float = 0.0) -> Sample:
    B, H, T, D = shape
    keys, values = (_randn((H, slots, D), device, dtype, s).requires_grad_() for s in (1, 2))
    return ((_randn(shape, device, dtype, 0).requires_grad_(), keys, values),
            {"out_scale": _per_head([1.0, 2.0, 0.5], H, device), "dropout_p": dropout_p})


def _opcheck_base(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A strided (2, 3, 16, 16) input and two (3,) per-head tensors."""
    x = _randn((2, 16, 3, 16), device, torch.float32, 0).transpose(1, 2).requires_grad_()
    return x, torch.tensor([0.0, 0.5, 0.9], device=device), torch.tensor([1.0, 2.0, 0.5], device=device)


def _attention_opchecks(device: str) -> list[tuple[str, tuple]]:
    x, _, scale = _opcheck_base(device)
    v = torch.randn_like(x).requires_grad_()
    seed = torch.tensor([17], dtype=torch.int64, device=device)
    # threshold 6554 = round(0.1 * 2^16): dropout 0.1. The band: the strict causal mask (window -1: none,
    # delay 1), a window with per-sequence delays, and a per-row scale.
    delays = torch.tensor([2, 5], dtype=torch.int32, device=device)
    row_scale = (torch.rand(x.shape[:3], generator=torch.Generator().manual_seed(3)) + 0.5).to(device)
    cases = [(f"{layout}-{drop}", (x, v, scale, heads_last, seed, threshold, -1, 1, None, 0))
             for layout, heads_last in (("contig_out", False), ("heads_last_out", True))
             for drop, threshold in (("nodrop", 0), ("drop", 6554))]
    # The adaptive bandwidth: the (3, H) unconstrained rows (beta0, beta1, alpha), computed per row in the kernels.
    H = x.shape[1]
    coefficients = (torch.randn(3, H, generator=torch.Generator().manual_seed(4)) * 0.5).to(device).requires_grad_()
    return cases + [("band-row_scale", (x, v, row_scale, False, seed, 0, 4, 0, delays, 0)),
                    ("window-drop", (x, v, scale, True, seed, 6554, 5, 2, None, 0)),
                    ("band-adaptive", (x, v, coefficients, False, seed, 0, 4, 0, delays, 3))]


def _leaky_opchecks(device: str) -> list[tuple[str, tuple]]:
    x, decay, scale = _opcheck_base(device)
    g = torch.Generator().manual_seed(5)
    per_step = torch.rand(x.shape[:3], generator=g).to(device).requires_grad_()        # (B, H, T)
    per_channel = torch.rand(x.shape, generator=g).to(device).requires_grad_()         # (B, H, T, D)
    gate = (torch.rand(x.shape[:3], generator=g) * 2).to(device).requires_grad_()
    cases = [(f"{norm}-{layout}", (x, decay, scale, normalize, 1e-12, 0, heads_last, None))
             for norm, normalize in (("plain", False), ("norm", True))
             for layout, heads_last in (("contig_out", False), ("heads_last_out", True))]
    return cases + [("per_step-gated-norm", (x, per_step, scale, True, 1e-12, 0, False, gate)),
                    ("per_channel-plain", (x, per_channel, scale, False, 1e-12, 0, True, None)),
                    # a 16-bit time-varying decay reaches the kernels as it is, its gradient in its dtype
                    ("per_channel-fp16_decay-norm", (x, per_channel.detach().half().requires_grad_(), scale, True,
                                                     1e-12, 0, False, None))]


def _peek_opchecks(device: str) -> list[tuple[str, tuple]]:
    x, mix, scale = _opcheck_base(device)
    return [("value", (x, mix, scale, 1e-12))]


def _pmem_opchecks(device: str) -> list[tuple[str, tuple]]:
    x, _, scale = _opcheck_base(device)
    mk, mv = (torch.randn(3, 24, 16, device=device).requires_grad_() for _ in range(2))
    seed = torch.tensor([7], dtype=torch.int64, device=device)
    # threshold 3277 = round(0.05 * 2^16): dropout 0.05.
    return [(drop, (x, mk, mv, scale.requires_grad_(), seed, threshold)) for drop, threshold in (("nodrop", 0), ("drop", 3277))]


OPS: tuple[Op, ...] = (
    Op(name="mosaic_attention", folder="attention", fused="ATTENTION", benchmark="bench_attention",
       tile_tables=("FWD_TILES", "FWD_LONG_TILES", "BWD_TILES", "BWD_LONG_TILES", "BWD_BAND_TABLE_TILES",
                    "FWD_TILES_FLOAT32", "FWD_LONG_TILES_FLOAT32", "BWD_TILES_FLOAT32", "BWD_LONG_TILES_FLOAT32"),
       model_reference=True,
       sample=_attention_sample, opcheck_cases=_attention_opchecks,
       report_cases=(((16, 12, 512, 64), {}), ((1, 12, 8192, 64), {}), ((2, 16, 4096, 128), {}),
                     ((1, 12, 8192, 64), {"window": 256}), ((1, 12, 8192, 64), {"delay": 64}))),
    Op(name="leaky_average", folder="leaky_average", fused="LEAKY_AVERAGE", benchmark="bench_leaky_average",
       tile_tables=("FWD_DOT_TILES", "BWD_DOT_TILES", "FWD_DOT_TILES_FLOAT32", "BWD_DOT_TILES_FLOAT32", "FWD_TILES",
                    "BWD_TILES"), model_reference=True,
       sample=_leaky_sample, opcheck_cases=_leaky_opchecks,
       report_cases=(((16, 12, 512, 64), {}), ((1, 12, 8192, 64), {}), ((16, 16, 16384, 128), {}),
                     ((16, 12, 512, 64), {"time_varying": True}), ((1, 12, 8192, 64), {"time_varying": True}))),
    Op(name="peek_ahead_value", folder="peek_ahead", fused="PEEK_AHEAD", benchmark="bench_peek_ahead",
       tile_tables=(), model_reference=True, sample=_peek_sample, opcheck_cases=_peek_opchecks,
       report_cases=(((32, 12, 512, 64), {}),)),
    Op(name="persistent_memory", folder="persistent_memory", fused="SLOTS", benchmark="bench_persistent_memory",
       tile_tables=("TILES",), model_reference=False, sample=_pmem_sample, opcheck_cases=_pmem_opchecks,
       report_cases=(((32, 12, 512, 64), {"slots": 2688}), ((32, 12, 512, 64), {"slots": 2688, "dropout_p": 0.05}))),
)

BY_NAME: dict[str, Op] = {op.name: op for op in OPS}

# The ops a Memory Mosaic on the fused path can run on their PyTorch reference (``reference_ops``).
MODEL_REFERENCE_OPS: tuple[str, ...] = tuple(op.name for op in OPS if op.model_reference)


def op(name: str) -> Op:
    """The record of the op ``name``; ValueError naming the known ops otherwise."""
    if name not in BY_NAME:
        raise ValueError(f"no op named {name!r}; the ops are {', '.join(BY_NAME)}")
    return BY_NAME[name]
