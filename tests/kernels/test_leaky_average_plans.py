"""leaky_average's cached call plans (mosaic_kernels.leaky_average._PLANS, on by default; MOSAIC_PLANS=0 turns them
off): an eager call of a signature already checked skips the checks and the planning of its launches and runs
through function.ScanPlan. Held to the uncached path: the same bits, the same errors, a new plan wherever a launch would
change."""
from __future__ import annotations

import importlib

import pytest
import torch

from mosaic_kernels import _common, leaky_average
from tests.conftest import kernel_devices

scan_package = importlib.import_module("mosaic_kernels.leaky_average")  # the name alone is the function

B, H, T, D = 2, 3, 21, 16


@pytest.fixture(autouse=True)
def plans_on(monkeypatch):
    """The plans on (CALL_PLANS True), whatever the environment says; the uncached runs below turn them off."""
    monkeypatch.setattr(_common, "CALL_PLANS", True)


def _decay(kind: str, g: torch.Generator):
    return {"number": 0.9, "head": torch.rand(H, generator=g) * 0.5 + 0.5,
            "step": torch.rand(B, H, T, generator=g) * 0.5 + 0.5,
            "channel": torch.rand(B, H, T, D, generator=g) * 0.5 + 0.5}[kind]


# (decay, gated, normalize, scale, heads_last): the model's call (per-head tensors), v2's (per-step decay and a
# gate), numbers, a channel decay without normalisation, and the heads-last layout.
CALLS = [("head", False, True, "tensor", True), ("step", True, True, "tensor", True), ("number", False, True, 2, False),
         ("channel", False, False, None, False), ("step", False, True, None, True)]


def _run(device, dtype, call, plans, monkeypatch):
    kind, gated, normalize, scale, heads_last = call
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, T, H, D, generator=g).transpose(1, 2).to(device, dtype).requires_grad_()  # head split
    decay = _decay(kind, g)
    decay = decay.to(device).requires_grad_() if isinstance(decay, torch.Tensor) else decay
    scale = (torch.rand(H, generator=g) + 0.5).to(device).requires_grad_() if scale == "tensor" else scale
    gate = (torch.rand(B, H, T, generator=g) + 0.5).to(device).requires_grad_() if gated else None
    dy = torch.randn(B, H, T, D, generator=g).to(device, dtype)
    monkeypatch.setattr(_common, "CALL_PLANS", plans)
    y = leaky_average(x, decay, normalize=normalize, scale=scale, gate=gate, heads_last=heads_last)
    wrt = [t for t in (x, decay, scale, gate) if isinstance(t, torch.Tensor)]
    return (y, *torch.autograd.grad(y, wrt, dy))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype, call", [(torch.float32, c) for c in CALLS] + [(torch.bfloat16, CALLS[1])],
                         ids=lambda c: str(c).replace("torch.", "") if not isinstance(c, tuple)
                         else "-".join(str(p) for p in c))
def test_plans_give_the_uncached_bits(device, dtype, call, monkeypatch):
    """The call that makes the plan, the call that uses it and the uncached path: the same output and every
    gradient (x, decay, scale, gate) bitwise."""
    first, second = _run(device, dtype, call, True, monkeypatch), _run(device, dtype, call, True, monkeypatch)
    assert len(scan_package._PLANS) == 1
    plain = _run(device, dtype, call, False, monkeypatch)
    for i, (a, b, c) in enumerate(zip(first, second, plain)):
        assert torch.equal(a, b) and torch.equal(a, c), i


@pytest.mark.parametrize("device", kernel_devices())
def test_a_new_plan_wherever_the_launches_change(device, monkeypatch):
    """Another decay kind, a gate, another scale, normalisation, layout, dtype or a changed tuning setting gets a
    plan of its own; the same call again does not."""
    from mosaic_kernels.leaky_average import function

    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, H, T, D, generator=g).to(device)
    head, step = _decay("head", g).to(device), _decay("step", g).to(device)
    calls = [dict(decay=head), dict(decay=head), dict(decay=step), dict(decay=step, gate=step),
             dict(decay=head, normalize=True), dict(decay=head, normalize=True, scale=2.0),
             dict(decay=head, normalize=True, scale=2), dict(decay=head, heads_last=True), dict(decay=0.5)]
    for call in calls:
        leaky_average(x, **call)
    assert len(scan_package._PLANS) == len(calls) - 1
    leaky_average(x.bfloat16(), head)
    monkeypatch.setattr(function, "CHUNK_RULE", "occupancy")
    leaky_average(x, head)
    assert len(scan_package._PLANS) == len(calls) + 1


@pytest.mark.parametrize("device", kernel_devices())
def test_a_cached_signature_still_raises_on_bad_arguments(device):
    """After a plan exists, calls that differ from it in one bad argument raise the errors of the uncached path."""
    x = torch.randn(B, H, T, D).to(device)
    head = torch.full((H,), 0.9, device=device)
    leaky_average(x, head, normalize=True, scale=2.0)
    bad = [(dict(decay=1.5), "decay"), (dict(decay=True), "decay"), (dict(decay=head[:2]), "decay"),
           (dict(decay=head, scale=2.0), "normalize"), (dict(decay=head, normalize=True, eps=0.0), "eps"),
           (dict(decay=head, gate=torch.ones(B, H, device=device)), "gate"),
           (dict(decay=head.double()[None].expand(B, H).contiguous()), "decay")]
    for call, name in bad:
        with pytest.raises(ValueError, match=name):
            leaky_average(x, **call)
