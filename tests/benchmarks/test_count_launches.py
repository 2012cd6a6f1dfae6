"""The launch counter (benchmarks/tools/count_launches.py) on the CPU: it counts our Triton launches and the
aten ops that compute, per block, and leaves views out."""
from __future__ import annotations

import collections

import torch

from benchmarks.tools import count_launches as cl


def test_per_block_counts_subtract_the_shared_part(tmp_path):
    out = tmp_path / "launches.md"
    assert cl.main(["--models", "mosaic_v2", "llama", "--layers", "3", "--out", str(out)]) == 0
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:6]]
            for r in out.read_text().splitlines() if r.startswith("| mosaic_v2") or r.startswith("| llama")}
    v2_aten, v2_triton, v2_base, v2_step = (int(x) for x in rows["mosaic_v2"])
    llama_aten, llama_triton, llama_base, llama_step = (int(x) for x in rows["llama"])
    # v2's block runs its memories through our Triton kernels (the attention, the scan, the gates, the values
    # and the bandwidth of both memories at once, each forward and backward); the llama-style block has none.
    assert v2_triton >= 8 and llama_triton == 0 and v2_aten > 0 and llama_aten > 0
    assert v2_step == v2_base + 3 * (v2_aten + v2_triton) and llama_step == llama_base + 3 * llama_aten


def test_triton_launches_are_counted_by_kernel_and_views_are_not_ops(monkeypatch):
    from mosaic_kernels import leaky_average

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the Triton path on the CPU, as the counter runs it
    x, decay = torch.randn(1, 2, 16, 8), torch.full((2,), 0.5)
    launches = collections.Counter()
    with cl.counted_triton_launches(launches), cl._OpCounter() as mode:
        leaky_average(x, decay)
        x.transpose(1, 2).reshape(1, 16, 16)
    assert sum(launches.values()) >= 1 and all(k.startswith("_leaky") for k in launches)
    assert "transpose" in mode.ops and "transpose" in cl.NO_LAUNCH


def test_autocast_adds_the_casts_of_a_gpu_step(monkeypatch):
    """Under bf16 autocast the forward casts the block's inputs and weights (``_to_copy``) that a GPU step
    casts too; without it there are fewer such ops, and the Triton launches do not change."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from benchmarks.bench_training import build

    torch.manual_seed(0)
    model = build("llama", 1, T=16)
    (plain, plain_triton), (cast, cast_triton) = (cl.count_step(model, T=16, autocast=a) for a in (False, True))
    assert cast["_to_copy"] > plain["_to_copy"] and cast_triton == plain_triton


def test_saved_memory_grows_linearly_with_the_tokens(monkeypatch, capsys):
    """saved_bytes: what a forward keeps for its backward (parameters left out) grows by the same amount for
    every 32 more tokens, for both models: no T x T tensor is saved (the attention keeps a log-sum-exp per
    row); the T-independent rest (autocast's weight casts) cancels in the differences. --saved checks its
    value (a CLI error, exit code 2)."""
    import pytest

    from mosaic_model.models.build import build_model

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    small = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=128, dropout=0.0)
    for name, extra in (("mosaic-v2", dict(window=8, delay_min=2, delay_max=8, delay_eval=2)), ("llama", {})):
        torch.manual_seed(0)
        model = build_model(name, {**small, **extra})
        sizes = [cl.saved_bytes(model, 2, T, autocast=True) for T in (32, 64, 96)]
        steps = (sizes[1] - sizes[0], sizes[2] - sizes[1])
        assert steps[0] > 0 and abs(steps[1] - steps[0]) <= 0.05 * steps[0], (name, sizes)
    with pytest.raises(SystemExit) as e:
        cl.main(["--saved", "2"])
    assert e.value.code == 2 and "--saved must be two positive integers" in capsys.readouterr().err
