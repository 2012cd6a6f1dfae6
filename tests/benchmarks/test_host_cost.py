"""The host-cost benchmark on the CPU: the launch stub really skips kernels and is undone, and the
wrapper measurement covers every op and mode (under the interpreter: the kernels' host path)."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from benchmarks import host_cost
from mosaic_kernels._common import interpreter_enabled

needs_interpreter = pytest.mark.skipif(not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 on CPU")


@triton.jit
def _fill_kernel(OUT, VALUE: tl.constexpr):
    tl.store(OUT + tl.arange(0, 16), tl.full((16,), VALUE, tl.float32))


@needs_interpreter
def test_stubbed_launches_skip_the_kernel_and_are_undone():
    out = torch.zeros(16)
    with host_cost.stubbed_launches():
        _fill_kernel[(1,)](out, VALUE=3.0)
    assert torch.all(out == 0)  # nothing ran
    _fill_kernel[(1,)](out, VALUE=3.0)
    assert torch.all(out == 3)  # the launcher is back


@needs_interpreter
def test_wrapper_cost_of_every_op_and_mode(tmp_path, capsys):
    out = tmp_path / "host.md"
    assert host_cost.main(["--device", "cpu", "--shape", "1,2,16,16", "--slots", "8", "--calls", "2", "--reps", "2",
                           "--out", str(out)]) == 0
    rows = [l for l in out.read_text().splitlines() if l.startswith("| ") and not l.startswith("| op")]
    assert [tuple(c.strip() for c in r.split("|")[1:3]) for r in rows] == [
        (op, mode) for op in host_cost.OPS if op != "sdpa" for mode in host_cost.MODES]   # SDPA: GPU only
    assert all(float(r.split("|")[3]) > 0 for r in rows)


def test_bad_arguments_exit_2(capsys):
    for argv, msg in ((["--shape", "1,2,3"], "expected B,H,T,D"), (["--calls", "0", "--device", "cpu"], "--calls must be >= 1"),
                      (["--dropout", "1.0", "--device", "cpu"], "--dropout must be in [0, 1)")):
        with pytest.raises(SystemExit) as e:
            host_cost.main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_each_op_is_set_against_sdpa_in_its_own_mode():
    rows = [{"op": "sdpa", "mode": "fwd", "host_us": 50.0}, {"op": "sdpa", "mode": "fwd+bwd", "host_us": 100.0},
            {"op": "mosaic_attention", "mode": "fwd", "host_us": 75.0},
            {"op": "mosaic_attention", "mode": "fwd+bwd", "host_us": 300.0, "host_direct_us": 250.0},
            {"op": "leaky_average", "mode": "fwd"}]
    host_cost.add_over_sdpa(rows)
    assert [r.get("over_sdpa") for r in rows] == [1.0, 1.0, 1.5, 3.0, None]
    assert [r.get("direct_over_sdpa") for r in rows] == [None, None, None, 2.5, None]


def test_the_unplanned_row_measures_without_the_plans():
    """host_cost's *_unplanned rows run with the ops' call plans off, and leave the default as they found it."""
    from mosaic_kernels import _common

    default = _common.CALL_PLANS
    for op in ("mosaic_attention_unplanned", "leaky_average_unplanned", "peek_ahead_value_unplanned"):
        with host_cost.op_setting(op):
            assert _common.CALL_PLANS is False
        assert _common.CALL_PLANS is default
