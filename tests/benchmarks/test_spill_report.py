"""benchmarks/tools/spill_report: the float32 tables' registers and spills, compiled for sm_90 on the CPU."""
from __future__ import annotations

import pytest

from benchmarks.tools import spill_report


def test_every_float32_table_entry_of_one_head_dim_is_compiled_and_read(capsys, monkeypatch):
    """At D = 16: the attention's forward (short and long rows), one-kernel backward and split backward (two
    kernels), the scan's forward and backward for both decays: nine entries, each with a register count from
    ptxas (at most 255 on sm_90) and its spill bytes."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # compiled here; the recording sets it for itself
    assert spill_report.main(["--dims", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "float32 inputs, the float32 tables" in lines[0] and len(lines) == 1 + 9
    for line in lines[1:]:
        regs = int(line.split("registers")[1].split()[0])
        assert 0 < regs <= 255 and line.endswith("bytes") and "D=16" in line


def test_bad_head_dims_are_a_cli_error(capsys):
    with pytest.raises(SystemExit) as exc:
        spill_report.main(["--dims", "48"])
    assert exc.value.code == 2 and "--dims must be among 16, 32, 64, 128, 256" in capsys.readouterr().err
