"""The host-side helpers that save host time: the integer helpers that stand in for ``triton.cdiv`` and
``triton.next_power_of_2`` (whose calls cost microseconds in recent Triton) give Triton's results; the
constant per-head scale is built once per GPU, never inside a CUDA graph capture."""
from __future__ import annotations

import pytest
import torch
import triton

from mosaic_kernels._common import cdiv, next_power_of_2, per_head_tensor


def test_cdiv_and_next_power_of_2_match_triton():
    for n in range(1, 2 ** 12 + 3):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 2, 3, 8, 16, 64, 127, 128):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)
    assert next_power_of_2(2 ** 20 + 1) == 2 ** 21 and cdiv(2 ** 31, 8) == 2 ** 28


def test_per_head_tensor_on_the_cpu_builds_the_value_each_call():
    like = torch.zeros(1)
    a, b = per_head_tensor(None, 3, like, 2.0), per_head_tensor(2.0, 3, like, 1.0)
    assert torch.equal(a, torch.full((3,), 2.0)) and a is not b
    t = torch.arange(3.0, dtype=torch.float64)
    assert torch.equal(per_head_tensor(t, 3, like, 1.0), t.float())


@pytest.mark.gpu
def test_gpu_constant_per_head_scale_is_built_once_and_not_in_a_capture():
    like = torch.zeros(1, device="cuda")
    a = per_head_tensor(0.25, 5, like, 1.0)
    assert a is per_head_tensor(0.25, 5, like, 1.0) and torch.equal(a.cpu(), torch.full((5,), 0.25))
    assert per_head_tensor(0.5, 5, like, 1.0) is not a and per_head_tensor(0.25, 6, like, 1.0).shape == (6,)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        inside = per_head_tensor(0.125, 7, like, 1.0)
    assert per_head_tensor(0.125, 7, like, 1.0) is not inside  # the captured one was not kept
