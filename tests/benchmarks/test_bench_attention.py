"""The attention benchmark's in-process A/Bs (the in-kernel row term, the call plans), and its ratio table."""
from benchmarks.bench_attention import CONTEXTS, PROVIDERS, ratios
from mosaic_kernels import _common
from mosaic_kernels.attention import function


def test_delta_in_kernel_provider_sets_the_flag_only_inside_its_measurement():
    before = function.DELTA_IN_KERNEL
    with CONTEXTS["ours_delta_in_kernel"]():
        assert function.DELTA_IN_KERNEL is True      # the backward reads it when it runs: the whole measurement
    assert function.DELTA_IN_KERNEL == before
    assert set(CONTEXTS) <= set(PROVIDERS)


def test_ratios_give_the_in_kernel_speedup_beside_the_sdpa_ratios():
    rows = [dict(shape="s", provider="ours", mode="fwd+bwd", ms=0.8),
            dict(shape="s", provider="ours_delta_in_kernel", mode="fwd+bwd", ms=0.5),
            dict(shape="s", provider="sdpa_flash", mode="fwd+bwd", ms=0.6),
            dict(shape="s", provider="sdpa_cudnn", mode="fwd+bwd", ms=0.4),
            dict(shape="t", provider="ours", mode="fwd+bwd", ms=1.0),
            dict(shape="t", provider="sdpa_cudnn", mode="error", ms="no kernel")]   # a peer that failed
    s, t = ratios(rows)
    assert abs(s["best_sdpa"] - 0.5) < 1e-12 and abs(s["delta_in_kernel_speedup"] - 1.6) < 1e-12
    assert abs(s["best_sdpa_over_in_kernel"] - 0.8) < 1e-12
    assert "delta_in_kernel_speedup" not in t and "sdpa_cudnn" not in t


def test_unplanned_provider_turns_the_call_plans_off_only_inside_its_measurement():
    before = _common.CALL_PLANS
    with CONTEXTS["ours_unplanned"]():
        assert _common.CALL_PLANS is False
    assert _common.CALL_PLANS == before


def test_ratios_give_the_plans_speedup():
    rows = [dict(shape="s", provider="ours", mode="fwd+bwd", ms=0.4),
            dict(shape="s", provider="ours_unplanned", mode="fwd+bwd", ms=0.5),
            dict(shape="s", provider="sdpa_flash", mode="fwd+bwd", ms=0.6)]
    (s,) = ratios(rows)
    assert abs(s["plans_speedup"] - 1.25) < 1e-12 and abs(s["best_sdpa"] - 1.5) < 1e-12
