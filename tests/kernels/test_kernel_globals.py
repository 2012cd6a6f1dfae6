"""Every Triton kernel reads only the globals the GPU compiler accepts.

Triton's interpreter (the CPU path of CI) runs a kernel body as Python, so it reads any module-level
global; the GPU compiler accepts only constexpr globals, modules, other jit functions and
``triton.language`` objects, and fails with "Cannot access global variable" otherwise. A float constant
written as ``LN2 = 0.693...`` instead of ``tl.constexpr(0.693...)`` once passed the whole CPU suite and
broke every CUDA launch of the kernel that read it. This checks the compiler's rule on the CPU, for every
kernel of every module of the package.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

import mosaic_kernels

# A kernel is a JITFunction, or an InterpretedFunction under TRITON_INTERPRET=1 (CI's path).
KERNEL_TYPES = (JITFunction, InterpretedFunction)


def _kernels() -> list[tuple[str, JITFunction | InterpretedFunction]]:
    found = {}
    for info in pkgutil.walk_packages(mosaic_kernels.__path__, "mosaic_kernels."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, KERNEL_TYPES) and value.fn.__module__ == info.name:
                found[f"{info.name}.{name}"] = value
    return sorted(found.items())


def _accepted(value: object) -> bool:
    """The GPU code generator's rule for a global read inside a kernel (triton.compiler.code_generator)."""
    return (isinstance(value, (ModuleType, *KERNEL_TYPES, tl.constexpr, tl.dtype))
            or getattr(value, "__triton_builtin__", False)
            or getattr(value, "__module__", "").startswith("triton.language"))


KERNELS = _kernels()


def test_the_package_has_kernels_to_check():
    assert len(KERNELS) >= 10, [name for name, _ in KERNELS]


@pytest.mark.parametrize("name,kernel", KERNELS, ids=[name for name, _ in KERNELS])
def test_kernel_reads_only_globals_the_gpu_compiler_accepts(name, kernel):
    fn = kernel.fn
    bad = {n: type(fn.__globals__[n]).__name__ for n in fn.__code__.co_names
           if n in fn.__globals__ and not _accepted(fn.__globals__[n])}
    assert not bad, f"{name} reads non-constexpr globals {bad}: wrap constants in tl.constexpr(...)"
