"""The end-to-end benchmark's case list (CPU: no step is run)."""
from __future__ import annotations

from benchmarks.bench_training import MODELS, SEQ_LENS, cases


def test_compiled_part_mirrors_the_eager_part():
    eager = {(m, n, T) for m, n, T, compiled in cases("eager") if not compiled}
    compiled = {(m, n, T) for m, n, T, c in cases("compiled") if c}
    assert len(eager) == len(MODELS) * 2 * len(SEQ_LENS)
    # Only the 12-layer reference at T = 8192 (out of memory in eager) is not compiled.
    assert eager - compiled == {("mosaic_reference", 12, 8192)}
    assert not compiled - eager
    assert sorted(cases("all")) == sorted(cases("eager") + cases("compiled"))


def test_filters_select_cases_and_quick_is_eager_at_512():
    picked = cases("compiled", (2048,), (12,), ("mosaic_fused", "gpt2"))
    assert picked == [("mosaic_fused", 12, 2048, True), ("gpt2", 12, 2048, True)]
    assert {(T, c) for _, _, T, c in cases("quick")} == {(512, False)}


def test_dropout_option_sets_every_rate_of_both_models():
    from benchmarks.bench_training import build

    for name in ("mosaic_fused", "gpt2"):
        assert build(name, 1, 64).config.dropout == 0.05  # the configs' default
        cfg = build(name, 1, 64, dropout=0.0).config
        assert cfg.dropout == 0.0
    assert build("mosaic_reference", 1, 64, dropout=0.0).config.ic_dropout == 0.0
    assert build("mosaic_fused", 1, 64).config.ic_dropout == 0.05


def test_v2_and_llama_build_at_the_benchmark_width_and_pair_in_the_ratios():
    from benchmarks.bench_training import build, ratios

    assert type(build("mosaic_v2", 1, 64)).__name__ == "MemoryMosaicV2"
    assert type(build("llama", 1, 64)).__name__ == "Llama"
    rows = [dict(model="mosaic_v2", layers=1, T=512, compile="no", ms=3.0, peak_GiB=2.0),
            dict(model="llama", layers=1, T=512, compile="no", ms=2.0, peak_GiB=1.0)]
    (r,) = ratios(rows)
    assert (r["v2_over_llama_time"], r["v2_over_llama_tokens_per_s"], r["v2_over_llama_memory"]) == (1.5, 2.0 / 3.0, 2.0)


def test_heading_names_the_dropout_each_model_ran_with():
    # The heading once printed v1's 0.05 for every case, also for v2 and llama, whose configs default to 0.
    from benchmarks.bench_training import dropout_note

    assert dropout_note(None, ["mosaic_v2", "llama"]) == "0 (the configs' default)"
    assert dropout_note(None, ["mosaic_fused", "gpt2"]) == "0.05 (the configs' default)"
    assert dropout_note(None, ["gpt2", "llama"]) == "the configs' defaults (gpt2 0.05, llama 0)"
    assert dropout_note(0.1, ["gpt2", "llama"]) == "0.1"
