"""benchmarks/tools/spill_report: the tile tables' registers and spills, compiled for sm_90 on the CPU."""
from __future__ import annotations

import pytest

from benchmarks.tools import spill_report


@pytest.mark.parametrize("inputs", ["float32", "bfloat16"])
def test_every_table_entry_of_one_head_dim_is_compiled_and_read(inputs, capsys, monkeypatch):
    """At D = 16: the attention's forward (short and long rows), one-kernel backward and split backward (two
    kernels, with a per-head and with a per-row scale, and as v2's call runs them), the scan's forward and backward
    for both decays: thirteen entries, each with a register count from ptxas (at most 255 on sm_90) and its spill
    bytes."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # compiled here; the recording sets it for itself
    assert spill_report.main(["--inputs", inputs, "--dims", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    tables = "float32" if inputs == "float32" else "16-bit"
    assert f"{inputs} inputs, the {tables} tables" in lines[0] and len(lines) == 1 + 13
    assert sum("split, row scale" in line for line in lines) == 2 and sum("v2 call" in line for line in lines) == 2
    for line in lines[1:]:
        regs = int(line.split("registers")[1].split()[0])
        assert 0 < regs <= 255 and line.endswith("bytes") and "D=16" in line


def test_bad_head_dims_are_a_cli_error(capsys):
    with pytest.raises(SystemExit) as exc:
        spill_report.main(["--dims", "48"])
    assert exc.value.code == 2 and "--dims must be among 16, 32, 64, 128, 256" in capsys.readouterr().err
