"""benchmarks/tools/tune_kernels: the chunk-rule sweep runs end to end on the CPU (Triton's interpreter,
small shapes, a stand-in timer), so a GPU call does not spend its minutes on a broken script."""
from __future__ import annotations

import pytest

from benchmarks.tools import tune_kernels
from mosaic_kernels.leaky_average import function as leaky_fn
from tests.conftest import kernel_devices


@pytest.mark.parametrize("device", [d for d in kernel_devices() if d == "cpu"])
def test_chunk_rule_sweep_runs_both_scans_under_both_rules(device, monkeypatch):
    """Both kinds of scan, both rules, each shape's line; the rule is restored afterwards. On the CPU's 4
    stand-in SMs, B*H = 2 is below one (b, h) per SM: occupancy asks ceil(2 * 4 / 2) = 4 chunks of 96 / 4 =
    24 steps, rounded up to the interpreter's 16-step tiles: 32, so 3 chunks; the length rule, its target
    set to 16 steps here (192 would need long, slow rows), max(4, min(ceil(96 / 16), 22)) = 6 chunks of 16."""
    monkeypatch.setattr(leaky_fn, "CHUNK_TARGET_LEN", 16)
    calls = []

    def bench(fn):
        fn()
        calls.append(fn)
        return 1.0

    shapes = [("per-head", (1, 2, 96, 16)), ("gated", (1, 2, 96, 16))]
    lines = tune_kernels.tune_leaky_chunk_rule(device, shapes, bench)
    assert len(lines) == 2 and lines[0].startswith("LEAKY_CHUNK_RULE per-head") and "gated" in lines[1]
    assert all("occupancy: fwd 1.0000 bwd 1.0000 (chunks fwd/bwd 3/3)" in line for line in lines)
    assert all("length: fwd 1.0000 bwd 1.0000 (chunks fwd/bwd 6/6)" in line for line in lines)
    assert len(calls) == 2 * 2 * 2 * 2          # shapes x passes x rules x directions
    assert leaky_fn.CHUNK_RULE == "length"          # the default, restored


@pytest.mark.parametrize("device", [d for d in kernel_devices() if d == "cpu"])
def test_v2_attention_sweep_runs_every_tile_on_the_models_call(device):
    """The v2 sweep on a tiny shape (Triton's interpreter, a stand-in timer that favours the later tiles):
    every forward, key-role and query-role tile runs once on a band table with the adaptive bandwidth, and each
    winner is the fastest of its list (the query-role sweep runs with the key role's winner)."""
    calls = []

    def bench(fn):
        fn()
        calls.append(fn)
        return 10.0 - len(calls)         # each tile "faster" than the one before

    fwd, key, query = [(32, 16, 1, 1), (16, 16, 1, 1)], [(32, 16, 1, 1), (16, 16, 1, 1)], [(16, 16, 1, 1), (32, 16, 1, 1)]
    winners = tune_kernels.tune_v2_attention(device, [(1, 4, 40, 16)], bench, fwd, key, query, window=6)
    assert winners == [((1, 4, 40, 16), fwd[-1], key[-1], query[-1])]
    assert len(calls) == len(fwd) + len(key) + len(query)


def _stand_in_timer(times=None):
    """(bench, calls): a timer for the sweeps that runs each call once, records it in ``calls`` and returns the
    next of ``times`` (1.0 each without)."""
    calls, values = [], iter(times) if times is not None else None

    def bench(fn):
        fn()
        calls.append(fn)
        return 1.0 if values is None else float(next(values))

    return bench, calls


@pytest.mark.parametrize("device", [d for d in kernel_devices() if d == "cpu"])
def test_row_scale_sweep_times_both_scales_at_every_key_tile(device):
    """The per-row scale's cost by key-role tile (Triton's interpreter, a stand-in timer): each tile's
    backward runs once with a per-head and once with a per-row scale, in that order."""
    bench, calls = _stand_in_timer(range(1, 100))
    key = [(32, 16, 1, 1), (16, 16, 1, 1)]
    rows = tune_kernels.tune_row_scale(device, [(1, 2, 40, 16)], bench, key, (16, 16, 1, 1))
    assert rows == [((1, 2, 40, 16), key[0], 1.0, 2.0), ((1, 2, 40, 16), key[1], 3.0, 4.0)]
    assert len(calls) == 2 * len(key)


@pytest.mark.parametrize("device", [d for d in kernel_devices() if d == "cpu"])
def test_head_group_sweep_times_every_group_on_both_calls(device):
    """The launch-order sweep (Triton's interpreter, a stand-in timer): at each group size the forward and
    the backward run once, on the strictly causal op and on v2's band-table call; a group of every head is
    the plain order."""
    bench, calls = _stand_in_timer()
    shapes = [((1, 4, 40, 16), False), ((1, 4, 40, 16), True)]
    rows = tune_kernels.tune_head_group(device, shapes, bench, [None, 3, 1], window=6)
    assert [(v2, group) for _, v2, group, _, _ in rows] == [(False, None), (False, 3), (False, 1),
                                                             (True, None), (True, 3), (True, 1)]
    assert len(calls) == 2 * len(rows)


@pytest.mark.parametrize("device", [d for d in kernel_devices() if d == "cpu"])
def test_small_head_sweep_times_every_mode_stage_and_tile_in_both_dtypes(device):
    """The RegBench-shape scan sweep on a tiny shape: per dtype a strided copy, every (mode, stages, tile) forward,
    then the table's forward and fwd+bwd; two lines per dtype for the modes and one for the table tiles, and the
    module's FWD_IN_TILE and FWD_STAGES restored afterwards."""
    calls = []

    def bench(fn):
        fn()
        calls.append(fn)
        return 1.0

    lines = tune_kernels.tune_leaky_small_head(device, [(1, 2, 40, 16)], bench, tiles=[(16, 1)])
    assert len(lines) == 2 * 3 and len(calls) == 2 * (1 + 2 * 2 * 1 + 2)
    assert lines[0].startswith("LEAKY_SMALL_HEAD fwd (1, 2, 40, 16) float32") and " dot [(1.0, 0, (16, 1))" in lines[0]
    assert " scan " in lines[1] and "bfloat16" in lines[3] and lines[5].endswith("fwd 1.0000 bwd 1.0000")
    assert (leaky_fn.FWD_IN_TILE, leaky_fn.FWD_STAGES) == ("dot", 0)


@pytest.mark.parametrize("device", [d for d in kernel_devices() if d == "cpu"])
def test_float32_ab_times_both_tables_for_both_ops(device):
    """A tiny shape under the interpreter (whose tiles are fixed, so this checks the script, not the tables): per
    shape an attention line and a scan line, each with both tables' forward and backward; 8 timed calls a shape,
    and the float32 scan table restored afterwards."""
    calls = []

    def bench(fn):
        fn()
        calls.append(fn)
        return 1.0

    before = dict(leaky_fn.FWD_DOT_TILES_FLOAT32)
    lines = tune_kernels.tune_float32_ab(device, [(1, 2, 40, 16)], bench)
    assert len(lines) == 2 and len(calls) == 8
    assert lines[0].startswith("FLOAT32_AB attention (1, 2, 40, 16) 16-bit: fwd 1.0000 bwd 1.0000  float32:")
    assert lines[1].startswith("FLOAT32_AB leaky_average (1, 2, 40, 16) 16-bit:")
    assert leaky_fn.FWD_DOT_TILES_FLOAT32 == before


@pytest.mark.parametrize("device", [d for d in kernel_devices() if d == "cpu"])
def test_time_varying_sweep_times_every_config_of_each_kind_and_restores_the_table(device):
    """The time-varying scans' tile sweep on a tiny shape (Triton's interpreter, which ignores the table, so this
    checks the script): the per-head yardstick, then per case and direction every config and the table's tile once
    more; a row each, and TIME_VARYING_TILES left as it was."""
    bench, calls = _stand_in_timer()
    before = {k: dict(v) for k, v in leaky_fn.TIME_VARYING_TILES.items()}
    fwd, bwd = {1: [(16, 1, 0)], 2: [(16, 1, 0), (16, 1, 2)]}, {2: [(16, 1, 3)]}
    rows = tune_kernels.tune_time_varying(device, [(1, 2, 40, 16)], bench, fwd, bwd)
    assert rows[0] == dict(shape=(1, 2, 40, 16), case="per-head", fwd_ms=1.0, bwd_ms=1.0)
    assert [(r["case"], r["direction"], r["kind"], len(r["times"])) for r in rows[1:]] == [
        ("step", "fwd", 1, 1), ("gated", "fwd", 1, 1), ("channel", "fwd", 2, 2), ("channel", "bwd", 2, 1)]
    assert len(calls) == 2 + (1 + 1) + (1 + 1) + (2 + 1) + (1 + 1)
    assert leaky_fn.TIME_VARYING_TILES == before


def test_fastest_time_varying_tiles_sums_over_shapes_and_cases():
    """The pick: least time summed over every row of a (direction, kind, BLOCK_D); a config missing from one row
    (the compiler refused it there) is not eligible; kind 1's two cases share the entry."""
    def row(case, kind, times, table_ms=5.0):
        return dict(case=case, kind=kind, direction="fwd", block_d=128, table=(32, 2, 0), table_ms=table_ms,
                    times=sorted(times))

    rows = [dict(case="per-head"),
            row("step", 1, [(1.0, "a"), (2.0, "b"), (0.1, "c")]), row("gated", 1, [(3.0, "a"), (1.5, "b")]),
            row("channel", 2, [(2.0, "a"), (1.0, "b")]), row("channel", 2, [(2.0, "a"), (1.5, "b")], 4.0)]
    assert tune_kernels.fastest_time_varying_tiles(rows) == {("fwd", 1, 128): ("b", 3.5, 10.0),
                                                             ("fwd", 2, 128): ("b", 2.5, 9.0)}
