"""benchmarks.tools.compile_check: every kernel of the package compiles for a GPU target on a CPU-only machine.

The CPU suite runs the kernels in Triton's interpreter, which never runs the GPU compiler; this test does
(down to the cubin, for sm_90), for every launch that the registry's opcheck cases, the model steps and the
long-row backward make. It would have failed on d390349, whose bandwidth kernel compiled under the
interpreter only (checked: the tool reports that kernel's NameError there).
"""
from __future__ import annotations

import json

import pytest
import torch
import triton

from benchmarks.tools import compile_check
from tests.kernels.test_kernel_globals import KERNELS


def test_argument_types():
    assert compile_check.argument_type(torch.zeros(2, dtype=torch.bfloat16)) == "*bf16"
    assert compile_check.argument_type(torch.zeros(2, dtype=torch.int32)) == "*i32"
    assert compile_check.argument_type(7) == "i32" and compile_check.argument_type(2 ** 40) == "i64"
    assert compile_check.argument_type(0.5) == "fp32" and compile_check.argument_type(True) == "i1"
    with pytest.raises(TypeError, match="str"):
        compile_check.argument_type("x")


def test_variant_splits_runtime_arguments_constants_and_options():
    def kernel(X, n, scale, BLOCK: "tl.constexpr", FLAG: "tl.constexpr"):  # noqa: F821 (the annotation is a string)
        pass

    v = compile_check.variant(kernel, (torch.zeros(1), 3, 0.5), dict(BLOCK=16, FLAG=None, num_warps=4, num_stages=2))
    assert v["signature"] == {"X": "*fp32", "n": "i32", "scale": "fp32", "BLOCK": "constexpr", "FLAG": "constexpr"}
    assert v["constexprs"] == {"BLOCK": 16, "FLAG": None} and v["options"] == {"num_warps": 4, "num_stages": 2}


@pytest.mark.skipif("nvidia" not in getattr(triton.backends, "backends", {}),
                    reason="this Triton build has no NVIDIA backend to compile with")
def test_every_kernel_compiles_for_sm90(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = compile_check.main(["--out", str(out)])
    report = json.loads(out.read_text())
    assert report["failures"] == [], capsys.readouterr().out
    assert code == 0
    compiled = {f"{v['module']}.{v['name']}" for v in report["variants"]}
    launched = {name for name, _ in KERNELS if name.endswith("_kernel")}  # the launched kernels, not the helpers
    assert launched <= compiled, f"never recorded, so never compiled: {sorted(launched - compiled)}"


def test_bad_arch(capsys):
    with pytest.raises(SystemExit) as e:
        compile_check.main(["--arch", "7"])
    assert e.value.code == 2 and "--arch" in capsys.readouterr().err
