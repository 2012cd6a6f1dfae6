"""The op registry (mosaic_kernels.registry): every public op has a record, and every record has its
reference, its opcheck cases, NaN-poisoning coverage, a benchmark, and a sweep for its tile tables."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import mosaic_kernels
from benchmarks.tools import tune_kernels
from mosaic_kernels import registry
from mosaic_kernels.registry import OPS
from mosaic_model.models.config import REFERENCE_OP_CHOICES
from tests.conftest import kernel_devices, nan_empty

ROOT = Path(__file__).resolve().parents[2]
NAMES = [op.name for op in OPS]


def test_every_public_op_has_a_record():
    public = [name for name in mosaic_kernels.__all__ if callable(getattr(mosaic_kernels, name))]
    assert sorted(public) == sorted(NAMES)
    assert sorted(mosaic_kernels.reference.__all__) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_record_names_its_public_function_and_reference(name):
    op = registry.op(name)
    assert op.public() is getattr(mosaic_kernels, name)
    assert op.reference() is getattr(mosaic_kernels.reference, name)
    assert op.reference() is not op.public()


@pytest.mark.parametrize("name", NAMES)
def test_record_has_opcheck_cases_of_its_forward_custom_op(name):
    op = registry.op(name)
    cases = op.opcheck_cases("cpu")
    assert cases and len({case_id for case_id, _ in cases}) == len(cases)
    assert isinstance(op.forward_op(), torch.library.CustomOpDef)
    assert op.forward_op()._qualname.startswith("mosaic::")


@pytest.mark.parametrize("name", NAMES)
def test_record_has_a_benchmark_that_calls_the_op(name):
    op = registry.op(name)
    path = ROOT / "benchmarks" / f"{op.benchmark}.py"
    assert path.is_file(), f"{name}: no benchmarks/{op.benchmark}.py"
    imported = {alias.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
                and node.module == "mosaic_kernels" for alias in node.names}
    assert name in imported, f"benchmarks/{op.benchmark}.py does not import mosaic_kernels.{name}"


@pytest.mark.parametrize("name", NAMES)
def test_tile_tables_exist_and_have_a_sweep(name):
    op = registry.op(name)
    tables = op.tiles()
    assert all(isinstance(t, dict) and t for t in tables.values())
    if tables:
        assert tune_kernels.SWEEPS.get(name), f"{name} has tile tables but no sweep in benchmarks/tools/tune_kernels.py"


def test_model_reference_ops_are_the_registrys():
    assert REFERENCE_OP_CHOICES == tuple(op.name for op in OPS if op.model_reference)
    assert set(REFERENCE_OP_CHOICES) == {"mosaic_attention", "leaky_average", "peek_ahead_value"}


def test_unknown_op_names_the_known_ones():
    with pytest.raises(ValueError, match="mosaic_attention"):
        registry.op("softmax")


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("name", NAMES)
def test_nan_poisoning_covers_every_buffer_the_kernels_write(device, name, monkeypatch):
    """The record's function module allocates every kernel output through ``_empty`` (it is called, and
    with it poisoned, the output and every gradient come back finite: each element was written)."""
    op = registry.op(name)
    calls = []

    def counting_nan_empty(*shape, **kw):
        calls.append(shape)
        return nan_empty(*shape, **kw)

    monkeypatch.setattr(op.function_module(), "_empty", counting_nan_empty)
    args, kwargs = op.sample(device)
    y = op.public()(*args, **kwargs)
    leaves = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(y.square().sum(), leaves)
    assert calls, f"{name}: the kernels allocated nothing through _empty"
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
