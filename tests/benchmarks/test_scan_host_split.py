"""tools.scan_host_split: its argument check, and each measured path runs (in the interpreter on the CPU)."""
from __future__ import annotations

import os

import pytest
import torch

from tools import scan_host_split


def test_bad_shape_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        scan_host_split.main(["--shape", "1,2,3"])
    assert e.value.code == 2 and "B,H,T,D" in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the scan's kernels on the CPU need the interpreter")
def test_every_path_runs_and_the_launch_gradients_match_autograd():
    paths = scan_host_split.rows((1, 2, 40, 16), device="cpu")
    assert [label for label, _, _ in paths][:2] == ["forward launch, main thread", "backward launch, main thread"]
    outputs = {}
    for label, needs_grad, call in paths:
        with torch.enable_grad() if needs_grad else torch.no_grad():
            outputs[label] = call()
    gx_direct, per_head = outputs["backward launch, main thread"]
    gx_autograd, ga, gs = outputs["fwd+bwd through autograd"]
    # The same kernels on the same inputs, once through autograd: the same bits.
    assert torch.equal(gx_direct, gx_autograd) and torch.equal(per_head[0], ga) and torch.equal(per_head[1], gs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_no_gpu_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        scan_host_split.main([])
    assert e.value.code == 2 and "needs a GPU" in capsys.readouterr().err
