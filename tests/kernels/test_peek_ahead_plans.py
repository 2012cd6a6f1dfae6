"""peek_ahead_value's cached call plans (mosaic_kernels.peek_ahead._PLANS, on by default; MOSAIC_PLANS=0 turns them
off): an eager call of a signature already checked skips the checks and the planning of its launches and runs
through function.ValuePlan.
Held to the uncached path: the same bits, the same errors, a new plan wherever a launch would change."""
from __future__ import annotations

import pytest
import torch

import mosaic_kernels.peek_ahead as peek_package
from mosaic_kernels import _common, peek_ahead_value
from tests.conftest import kernel_devices

B, H, T, D = 2, 3, 21, 16


@pytest.fixture(autouse=True)
def plans_on(monkeypatch):
    """The plans on (CALL_PLANS True), whatever the environment says; the uncached runs below turn them off."""
    monkeypatch.setattr(_common, "CALL_PLANS", True)


def _run(device, dtype, mix, scale, plans, monkeypatch):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, T, H, D, generator=g).transpose(1, 2).to(device, dtype).requires_grad_()  # head split
    mix = (torch.rand(H, generator=g)).to(device).requires_grad_() if mix == "tensor" else mix
    scale = (torch.rand(H, generator=g) + 0.5).to(device).requires_grad_() if scale == "tensor" else scale
    dy = torch.randn(B, H, T, D, generator=g).to(device, dtype)
    monkeypatch.setattr(_common, "CALL_PLANS", plans)
    y = peek_ahead_value(x, mix, scale=scale)
    return (y, *torch.autograd.grad(y, [t for t in (x, mix, scale) if isinstance(t, torch.Tensor)], dy))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype, mix, scale", [(torch.float32, "tensor", "tensor"), (torch.float32, 0.3, None),
                                               (torch.float32, 1, 2), (torch.bfloat16, "tensor", "tensor")],
                         ids=["tensors", "numbers", "ints", "bf16"])
def test_plans_give_the_uncached_bits(device, dtype, mix, scale, monkeypatch):
    """The call that makes the plan, the call that uses it and the uncached path: the same output and every
    gradient bitwise, and dx in the head-split layout of x."""
    first, second = (_run(device, dtype, mix, scale, True, monkeypatch) for _ in range(2))
    assert len(peek_package._PLANS) == 1
    plain = _run(device, dtype, mix, scale, False, monkeypatch)
    for i, (a, b, c) in enumerate(zip(first, second, plain)):
        assert torch.equal(a, b) and torch.equal(a, c) and a.stride() == c.stride(), i


@pytest.mark.parametrize("device", kernel_devices())
def test_new_plans_and_the_same_errors(device):
    """Another layout, mix kind, scale or dtype gets a plan of its own, the same call again does not; after a plan
    exists, bad arguments raise the uncached path's errors."""
    x = torch.randn(B, H, T, D).to(device)
    mix = torch.full((H,), 0.3, device=device)
    calls = [(x, mix, None), (x, mix, None), (x, 0.3, None), (x, mix, 2.0), (x.transpose(1, 2).contiguous().transpose(1, 2),
                                                                            mix, None), (x.bfloat16(), mix, None)]
    for xs, m, s in calls:
        peek_ahead_value(xs, m, scale=s)
    assert len(peek_package._PLANS) == len(calls) - 1
    bad = [(dict(mix=None), "mix"), (dict(mix=mix[:2]), "mix"), (dict(mix=True), "mix"), (dict(mix=mix, eps=0.0), "eps"),
           (dict(mix=mix, scale=torch.ones(2, device=device)), "scale")]
    for call, name in bad:
        with pytest.raises(ValueError, match=name):
            peek_ahead_value(x, **call)
