"""Shared test configuration: the gpu marker, devices that can run the Triton kernels, helpers."""
from __future__ import annotations

import os

import pytest
import torch

from mosaic_kernels._common import interpreter_enabled


def pytest_addoption(parser):
    parser.addoption("--cuda-only", action="store_true",
                     help="only the tests that run on a CUDA device: the gpu-marked ones and the 'cuda' cases of "
                          "the device-parametrised ones (the rest is CPU code that CI already runs)")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (run on the H200; skipped on CPU CI)")


def _runs_on_cuda(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return "gpu" in item.keywords or any(v == "cuda" for v in params.values() if isinstance(v, str))


def pytest_collection_modifyitems(config, items):
    if config.getoption("--cuda-only"):
        selected, deselected = [], []
        for item in items:
            (selected if _runs_on_cuda(item) else deselected).append(item)
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _release_cached_gpu_memory():
    """Under pytest-xdist several workers share one GPU, and each worker's caching allocator would keep the
    peak of its largest test (a float64 dense oracle at T = 8192 takes GiBs) from all the others: on
    2026-12-06 16 workers on an 80 GB H100 failed float32 dropout tests at T = 300 to 8192 with CUDA
    out-of-memory errors in one run, and three of them in another (messages not kept; the two rerun alone passed
    with a 10x margin). Hand the cache back after each test of a worker that used CUDA."""
    yield
    if os.environ.get("PYTEST_XDIST_WORKER") and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def kernel_devices() -> list:
    """Devices where the public ops run the Triton kernels in fp32 (CPU only under the interpreter)."""
    devices = []
    if interpreter_enabled():
        devices.append("cpu")
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices or [pytest.param("none", marks=pytest.mark.skip(reason="no GPU and TRITON_INTERPRET unset"))]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative RMS error ||out - ref|| / ||ref|| in float64 (0 when both are 0)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref.norm()
    if denom == 0:
        return float(out.norm())
    return float((out - ref).norm() / denom)


def nan_empty(*shape, **kw) -> torch.Tensor:
    """torch.empty, filled with NaN when floating (the poisoned allocator of :func:`nan_outputs`)."""
    t = torch.empty(*shape, **kw)
    return t.fill_(float("nan")) if t.is_floating_point() else t


@pytest.fixture(autouse=True)
def fresh_call_plans():
    """Each test starts without the ops' cached call plans (the _PLANS of mosaic_kernels.attention, leaky_average
    and peek_ahead), so that one that patches the tile choices sees them taken at its first call."""
    import importlib

    caches = [importlib.import_module(f"mosaic_kernels.{name}")._PLANS for name in ("attention", "leaky_average", "peek_ahead")]
    for cache in caches:
        cache.clear()
    yield
    for cache in caches:
        cache.clear()


@pytest.fixture
def nan_outputs(monkeypatch):
    """Kernel output buffers start as NaN, so an element a kernel forgets to write fails the test: every
    op of the registry allocates what its kernels write through its function module's ``_empty``."""
    from mosaic_kernels.registry import OPS

    for op in OPS:
        monkeypatch.setattr(op.function_module(), "_empty", nan_empty)


def in_bthd_memory(t: torch.Tensor) -> bool:
    """Whether the (B, H, T, D) tensor t is laid out as a contiguous (B, T, H, D) buffer."""
    B, H, T, D = t.shape
    return t.stride() == (T * H * D, D, H * D, 1)


def head_split(x: torch.Tensor) -> torch.Tensor:
    """A (B, H, T, D) view of a fresh leaf (B, T, H*D) tensor holding x, as a model's projection gives it."""
    B, H, T, D = x.shape
    base = x.detach().transpose(1, 2).reshape(B, T, H * D).clone().requires_grad_()
    return base.view(B, T, H, D).transpose(1, 2)
