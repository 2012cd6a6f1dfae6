"""mosaic_attention's cached call plans (mosaic_kernels.attention._PLANS): an eager call of a signature already
checked skips the checks and the planning of its launches and runs through function.AttentionPlan. These tests
hold it to the uncached path: the same bits, the same errors, a new plan wherever a launch would change; and
the switch that turns the plans on (MOSAIC_PLANS)."""
from __future__ import annotations

import pytest
import torch

import mosaic_kernels.attention as attention
from mosaic_kernels import _common, mosaic_attention
from tests.conftest import kernel_devices


@pytest.fixture(autouse=True)
def plans_on(monkeypatch):
    """The plans on (CALL_PLANS True), whatever the environment says."""
    monkeypatch.setattr(_common, "CALL_PLANS", True)

CALLS = [
    dict(),
    dict(scale=0.3),
    dict(scale=2),  # an int scale: converted by the checks, the signature keeps the int
    dict(dropout_p=0.2),
    dict(window=5),
    dict(window=7, delay=3),
    dict(delay=0),
    dict(heads_last=True),
    dict(scale=0.25, dropout_p=0.1, window=9, heads_last=True),
]


def _inputs(dtype, device, strided=False):
    g = torch.Generator().manual_seed(3)
    B, H, T, D = 2, 3, 21, 16
    if strided:  # head-split views of (B, T, H*D) projections
        k = torch.randn(B, T, H * D, generator=g).view(B, T, H, D).transpose(1, 2)
        v = torch.randn(B, T, H * D, generator=g).view(B, T, H, D).transpose(1, 2)
    else:
        k, v = torch.randn(B, H, T, D, generator=g), torch.randn(B, H, T, D, generator=g)
    dy = torch.randn(B, H, T, D, generator=g)
    return (t.to(device=device, dtype=dtype) for t in (k, v, dy))


def _run(op, k, v, dy, call):
    kd, vd = k.detach().requires_grad_(), v.detach().requires_grad_()
    generator = torch.Generator(device=k.device).manual_seed(11) if call.get("dropout_p") else None
    y = op(kd, vd, generator=generator, **call)
    return (y, *torch.autograd.grad(y, (kd, vd), dy))


def _uncached(k, v, generator=None, scale=None, **call):
    """The registered op's eager path, which no plan serves: mosaic_attention_triton after the same checks."""
    from mosaic_kernels.attention.function import mosaic_attention_triton

    scale = None if scale is None else float(scale)
    return mosaic_attention_triton(k, v, scale, generator=generator, **call)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype, call", [(torch.float32, call) for call in CALLS] + [(torch.bfloat16, CALLS[-1])],
                         ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()) or "plain" if isinstance(c, dict)
                         else str(c).replace("torch.", ""))
def test_plans_give_the_uncached_bits(device, dtype, call):
    """The first call (which makes the plan), the second (which uses it) and the uncached path give the same
    output and gradients bitwise: the same kernels with the same arguments, the same dropout seed drawn from the
    same generator. Strided inputs too (their strides are part of the plan)."""
    for strided in (False, True):
        k, v, dy = _inputs(dtype, device, strided)
        attention._PLANS.clear()
        first, second = _run(mosaic_attention, k, v, dy, call), _run(mosaic_attention, k, v, dy, call)
        assert len(attention._PLANS) == 1
        plain = _run(_uncached, k, v, dy, call)
        for name, a, b, c in zip(("y", "dk", "dv"), first, second, plain):
            assert torch.equal(a, b) and torch.equal(a, c), (name, strided)
        assert first[0].is_contiguous() == (not call.get("heads_last"))


@pytest.mark.parametrize("device", kernel_devices())
def test_a_new_plan_wherever_the_launches_change(device, monkeypatch):
    """A call of another shape, strides, dtype, scale, band, dropout or layout gets a plan of its own; so does a
    change of the settings the launches read (function.DELTA_IN_KERNEL, HEAD_GROUP); calls that a plan does not
    serve (a tensor scale or delay, a band table) make none."""
    from mosaic_kernels.attention import function

    k, v, _ = _inputs(torch.float32, device)
    calls = [dict(), dict(scale=0.5), dict(scale=0.5), dict(window=4), dict(delay=2), dict(dropout_p=0.1),
             dict(heads_last=True)]
    for call in calls:
        mosaic_attention(k, v, **call)
    assert len(attention._PLANS) == len(calls) - 1
    mosaic_attention(k[:, :, :12], v[:, :, :12])  # another T and strides
    mosaic_attention(k.transpose(2, 3).contiguous().transpose(2, 3), v)  # another stride of k
    mosaic_attention(k.bfloat16(), v.bfloat16())
    assert len(attention._PLANS) == len(calls) + 2
    monkeypatch.setattr(function, "DELTA_IN_KERNEL", not function.delta_in_kernel(2, 3, 21, 16, k.dtype, None))
    mosaic_attention(k, v)
    monkeypatch.setattr(function, "HEAD_GROUP", 1)
    mosaic_attention(k, v)
    assert len(attention._PLANS) == len(calls) + 4
    before = len(attention._PLANS)
    mosaic_attention(k, v, torch.full((3,), 0.5, device=device))
    mosaic_attention(k, v, delay=torch.tensor([1, 2], device=device))
    assert len(attention._PLANS) == before


@pytest.mark.parametrize("device", kernel_devices())
def test_a_cached_signature_still_raises_on_bad_arguments(device):
    """After a plan exists for (k, v), a bad call that differs from it in one argument raises the same error
    as it does without plans (nothing is skipped for a call the checks have not seen)."""
    k, v, _ = _inputs(torch.float32, device)
    mosaic_attention(k, v, window=4, dropout_p=0.1)
    bad = [(dict(window=-1), "window"), (dict(window=True), "window"), (dict(delay=-2), "delay"),
           (dict(dropout_p=1.0), "dropout_p"), (dict(scale=float("nan")), "scale"), (dict(scale=True), "scale"),
           (dict(generator=0), "generator")]
    for call, name in bad:
        with pytest.raises(ValueError, match=name):
            mosaic_attention(k, v, **call)
    with pytest.raises(ValueError, match="v must have the shape"):
        mosaic_attention(k, v[:, :, :5])
    with pytest.raises(ValueError, match="dtype"):
        mosaic_attention(k, v.double())


@pytest.mark.parametrize("value, expected", [(None, "True"), ("0", "False"), ("1", "True"), ("yes", "ValueError")])
def test_plans_setting_from_the_environment(value, expected):
    """MOSAIC_PLANS: unset or 1 the plans are on (the default), 0 off, anything else is an error at import naming
    the variable (a fresh interpreter: the package reads it once)."""
    import os
    import subprocess
    import sys

    code = "import mosaic_kernels._common as c; print(c.CALL_PLANS)"
    env = {name: setting for name, setting in os.environ.items() if name != "MOSAIC_PLANS"}
    if value is not None:
        env["MOSAIC_PLANS"] = value
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if expected == "ValueError":
        assert run.returncode != 0 and "MOSAIC_PLANS must be 0 or 1" in run.stderr
    else:
        assert run.returncode == 0 and run.stdout.strip() == expected, run.stderr


@pytest.mark.parametrize("device", kernel_devices())
def test_plans_are_bounded(device, monkeypatch):
    """An op keeps at most CALL_PLANS_MAX plans (cached generation sees a new T at each token): past it, all are
    forgotten and the new one kept, and calls still give their results."""
    monkeypatch.setattr(_common, "CALL_PLANS_MAX", 2)
    k, v, _ = _inputs(torch.float32, device)
    for T in (5, 6, 7):
        y = mosaic_attention(k[:, :, :T], v[:, :, :T])
        assert len(attention._PLANS) <= 2 and torch.equal(y, mosaic_attention(k[:, :, :T], v[:, :, :T]))
    assert len(attention._PLANS) == 1
