"""The host-side helpers that save host time: the integer helpers that stand in for ``triton.cdiv`` and
``triton.next_power_of_2`` (whose calls cost microseconds in recent Triton) give Triton's results; the
constant per-head scale is built once per GPU, never inside a CUDA graph capture; the ops' gradients take
their input's heads-last layout, a column slice of a wider projection included, so that the backward of
the head split copies nothing."""
from __future__ import annotations

import pytest
import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode

from mosaic_kernels import leaky_average, peek_ahead_value
from mosaic_kernels._common import cdiv, is_heads_last, next_power_of_2, per_head_tensor
from tests.conftest import kernel_devices


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


def test_is_heads_last_on_each_layout():
    B, T, H, D = 2, 5, 3, 4
    assert is_heads_last(torch.zeros(B, T, H, D).transpose(1, 2))                  # a head split
    wide = torch.zeros(B, T, 2 * H * D + H)
    assert is_heads_last(wide[..., H * D:2 * H * D].unflatten(-1, (H, D)).transpose(1, 2))  # a column slice
    assert not is_heads_last(torch.zeros(B, H, T, D))                              # heads first
    assert not is_heads_last(torch.zeros(B, T, D, H).permute(0, 3, 1, 2))          # D not innermost
    assert not is_heads_last(torch.zeros(B, 1, T, D).transpose(1, 2).transpose(1, 2))  # contiguous as it stands


class _AtenOps(TorchDispatchMode):
    """Records (name, dimensions of the first argument) of every aten op dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        first = args[0] if args else None
        self.ops.append((func.overloadpacket.__name__, first.dim() if isinstance(first, torch.Tensor) else 0))
        return func(*args, **(kwargs or {}))

    def copies(self) -> int:
        """Copies of tensors of two or more dimensions (Triton's CPU interpreter copies each kernel's flat
        buffers back with ``copy_``: those are not the model's)."""
        return sum(name in ("clone", "copy_", "_to_copy") and dims >= 2 for name, dims in self.ops)

    def count(self, name: str) -> int:
        """How many ops of this name ran."""
        return sum(n == name for n, _ in self.ops)


@pytest.mark.parametrize("device", kernel_devices())
def test_the_backward_of_a_column_sliced_head_split_copies_nothing(device):
    """v2 reads its keys and values as column slices of one product of all a block's projections: the
    ops' input gradients come back in that layout, so autograd's backward of the head split is a view
    (before, a contiguous (B, H, T, D) gradient cost one clone per op, four per v2 block)."""
    B, T, H, D = 2, 16, 3, 8
    wide = torch.randn(B, T, 2 * H * D, device=device, requires_grad=True)
    keys_in, values_in = wide.split(H * D, dim=-1)
    split = lambda t: t.unflatten(-1, (H, D)).transpose(1, 2)  # noqa: E731  (mosaic_model's split_heads)
    decay = torch.rand(B, H, T, device=device).mul(0.5).add(0.4)
    y = leaky_average(split(keys_in), decay, normalize=True) + peek_ahead_value(split(values_in), 0.3)
    counter = _AtenOps()
    with counter:
        y.sum().backward()
    assert counter.copies() == 0 and wide.grad.shape == wide.shape and torch.isfinite(wide.grad).all()


@pytest.mark.parametrize("device", kernel_devices())
def test_the_scan_backward_sums_only_the_per_head_gradients_that_are_needed(device):
    """The per-head sums of d(decay) and d(scale) are one launch when both are needed (one sum over the (2, B, H,
    nchunk) partials), one when either is: a time-varying decay's gradient is the kernel's, and a constant scale
    (v2's keys) needs none."""
    B, H, T, D = 2, 3, 16, 8
    x = torch.randn(B, H, T, D, device=device, requires_grad=True)
    per_head = torch.rand(H, device=device).mul(0.5).add(0.4)
    time_varying = torch.rand(B, H, T, device=device).mul(0.5).add(0.4)
    scale = torch.rand(H, device=device).add(1.0)
    cases = [(per_head.clone().requires_grad_(), scale.clone().requires_grad_(), 1),
             (per_head.clone().requires_grad_(), None, 1),
             (per_head, scale.clone().requires_grad_(), 1),
             (time_varying.clone().requires_grad_(), None, 0)]
    for decay, s, sums in cases:
        y = leaky_average(x, decay, normalize=True, scale=s)
        counter = _AtenOps()
        with counter:
            y.backward(torch.ones_like(y))
        assert counter.count("sum") == sums, (decay.shape, s is not None)
        assert all(t.grad is not None for t in (x, decay, s) if t is not None and t.requires_grad)
