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
