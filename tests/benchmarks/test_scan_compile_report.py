"""tools.scan_compile_report: its argument checks, and its report, compiled for sm_90 without a GPU."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import scan_compile_report

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv, message", [(["--head-dims", "8"], "--head-dims must be in [16, 256]"),
                                           (["--stages", "1"], "--stages must be 0 or >= 2")])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        scan_compile_report.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def _cannot_compile_here() -> str:
    """Why this machine cannot compile for sm_90 the way the tool does ('' when it can)."""
    from triton.compiler import ASTSource

    if "attrs" not in inspect.signature(ASTSource).parameters:
        return "this Triton's ASTSource takes no attrs"
    if not os.path.exists(scan_compile_report.cuobjdump()):
        return "this Triton wheel ships no cuobjdump"
    return ""


def test_report_of_the_backward_shows_its_pipelined_loads(tmp_path):
    """The D=64 backward, with the register prefetch and with 3 stages, compiled in a process without the
    interpreter (the test suite runs under it): a register count from each cubin, and more asynchronous
    copies (loads Triton pipelined) with 3 stages."""
    reason = _cannot_compile_here()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "report.md"
    subprocess.run([sys.executable, "-m", "tools.scan_compile_report", "--head-dims", "64", "--stages", "0", "3",
                    "--out", str(out)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith("| bwd | main")]
    by_stages = {int(r[3]): r for r in rows}
    assert set(by_stages) == {0, 3}
    assert all(32 <= int(r[5]) <= 255 for r in rows)                 # registers a thread
    assert int(by_stages[3][7]) > int(by_stages[0][7])              # asynchronous copies
