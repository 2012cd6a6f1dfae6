"""The new-knowledge task: every scored value is stated once earlier in the context, the grid resumes and
selects on validation, the ablation empties the long-term band, bad arguments exit 2."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from experiments import new_knowledge as nk


@pytest.mark.parametrize("T,facts,queries", [(64, 4, 2), (300, 32, 4), (30, 8, 2)])
def test_every_query_is_answered_by_one_earlier_fact(T, facts, queries):
    x, y, scored = nk.make_batch(np.random.default_rng(T), 16, T, facts, queries)
    assert x.shape == y.shape == scored.shape == (16, T) and torch.equal(x[:, 1:], y[:, :-1])
    assert int(scored.sum()) == 16 * queries
    for b in range(16):
        stated = {}
        for t in range(T - 1):
            if x[b, t] == nk.FACT:
                assert int(x[b, t + 1]) not in stated            # distinct keys
                stated[int(x[b, t + 1])] = int(y[b, t + 1])
        assert len(stated) == facts                             # no fact overwrote another
        for t in scored[b].nonzero()[:, 0].tolist():
            assert x[b, t - 1] == nk.QUERY and stated[int(x[b, t])] == int(y[b, t])
            assert nk.VALUE0 <= int(y[b, t]) < nk.FACT


def test_too_many_facts_for_the_context_is_an_error():
    with pytest.raises(ValueError, match="too short"):
        nk.make_batch(np.random.default_rng(0), 1, 20, 6, 2)


def test_v2_without_long_term_memory_reads_an_empty_band():
    from mosaic_model.models.config import MosaicV2Config
    from mosaic_model.models.mosaic_v2 import AssociativeMemory

    torch.manual_seed(0)
    mem = AssociativeMemory(MosaicV2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=10, kernels="reference"),
                            long_term=True)
    x = torch.randn(2, 40, 16)
    assert mem(x, nk.evaluations("mosaic-v2")["no long-term memory"]["delay"]).abs().max() == 0
    assert mem(x, 3).abs().max() > 0


SMALL = ["--steps", "2", "--eval-every", "1", "--train-T", "32", "--train-facts", "3", "--queries", "1",
         "--test-T", "32", "64", "--test-facts", "3", "--eval-tokens", "128", "--eval-seqs", "4", "--eval-chunk", "2",
         "--width", "16", "--heads", "2", "--depth", "1", "--window", "8", "--delay-min", "2", "--delay-max", "4",
         "--seeds", "0", "--kernels", "reference", "--quiet"]


def test_the_fixed_bandwidth_arm_is_v2_with_one_bandwidth_per_head():
    """mosaic-v2-fixed-bandwidth: the same v2 with one learned bandwidth per head instead of beta(n), and the
    same evaluations (its own and without the long-term memory)."""
    a = argparse.Namespace(depth=1, heads=2, width=16, train_T=32, test_T=[32], kernels="reference", window=8,
                           delay_min=4, delay_max=8)
    adaptive, fixed = nk.build("mosaic-v2", a), nk.build("mosaic-v2-fixed-bandwidth", a)
    assert adaptive.config.adaptive_bandwidth and not fixed.config.adaptive_bandwidth
    assert {n for n, _ in fixed.named_parameters()} == ({n for n, _ in adaptive.named_parameters()
                                                          if not n.endswith(("beta0", "beta1", "alpha"))}
                                                         | {n.replace("beta0", "log_beta") for n, _ in
                                                            adaptive.named_parameters() if n.endswith("beta0")})
    assert nk.evaluations("mosaic-v2-fixed-bandwidth") == nk.evaluations("mosaic-v2")


def test_grid_runs_keeps_finished_runs_and_tests_every_length(tmp_path):
    argv = ["--out", str(tmp_path), "--models", "mosaic-v2", "llama", *SMALL]
    assert nk.main(argv) == 0
    summary = json.loads((tmp_path / "results.json").read_text())["models"]
    assert set(summary["mosaic-v2"]["test"]) == {"facts=3|T=32", "facts=3|T=64", "no long-term memory|facts=3|T=32",
                                                 "no long-term memory|facts=3|T=64"}
    kept = nk.run_file(tmp_path, "llama", 1e-3, 0)
    kept.write_text(kept.read_text().replace('"facts=3|T=64": ', '"facts=3|T=64": 0.5, "was": '))
    assert nk.main(argv) == 0                                      # reads the kept file, trains nothing
    assert json.loads((tmp_path / "results.json").read_text())["models"]["llama"]["test"]["facts=3|T=64"]["mean"] == 0.5


def test_selection_reads_validation_and_reports_test():
    def r(lr, seed, val, test):
        return {"model": "llama", "lr": lr, "seed": seed, "final_val": val, "params": 1, "test": {"facts=8|T=256": test}}
    results = [r(1e-3, 0, 0.9, 0.1), r(1e-3, 1, 0.1, 0.1), r(3e-3, 0, 0.6, 0.7), r(3e-3, 1, 0.6, 0.9)]
    s = nk.select(results, ["llama"], [1e-3, 3e-3], [0, 1])["llama"]
    assert s["lr"] == 3e-3 and s["test"]["facts=8|T=256"]["per_seed"] == [0.7, 0.9]


@pytest.mark.parametrize("argv", [["--train-T", "10"], ["--queries", "9"], ["--delay-max", "1"], ["--lrs", "-1"],
                                  ["--device", "tpu"], ["--jobs", "0"]])
def test_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        nk.main(argv)
    assert e.value.code == 2 and "error: --" in capsys.readouterr().err


def test_a_stopped_run_resumes_exactly_where_it_stopped(tmp_path):
    """A run stopped after 2 of 5 steps (checkpoint kept, no result) and continued in a second call ends with
    the curve and test accuracies of the same run made in one call; the checkpoint goes once it is done.
    v2 draws its training delays from torch's generator: its state travels in the checkpoint too."""
    argv = [*SMALL, "--models", "mosaic-v2", "--steps", "5", "--eval-every", "1", "--save-every", "100"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    ckpt = nk.checkpoint_file(nk.run_file(split, "mosaic-v2", 1e-3, 0))
    assert nk.main(["--out", str(straight), *argv, "--max-steps-this-run", "4"]) == 0
    assert nk.main(["--out", str(split), *argv, "--max-steps-this-run", "2"]) == 0
    assert ckpt.exists() and not nk.run_file(split, "mosaic-v2", 1e-3, 0).exists()
    assert torch.load(ckpt, weights_only=False)["step"] == 2
    assert json.loads((split / "results.json").read_text())["models"] == {}
    assert nk.main(["--out", str(split), *argv, "--max-steps-this-run", "2"]) == 0
    # step 4 reached in one call and in two: the same weights and optimizer state, bit for bit (the batches
    # and v2's delays come from the restored generators; a run that redrew them would train on others)
    at_4 = [torch.load(nk.checkpoint_file(nk.run_file(d, "mosaic-v2", 1e-3, 0)), weights_only=False)
            for d in (straight, split)]
    assert at_4[0]["step"] == at_4[1]["step"] == 4
    for name, w in at_4[0]["model"].items():
        assert torch.equal(w, at_4[1]["model"][name]), name
    assert all(torch.equal(x, y) for x, y in zip(*(torch.cat([t.flatten() for st in o["opt"]["state"].values()
                                                              for t in st.values()]) for o in at_4)))
    for d in (straight, split):
        assert nk.main(["--out", str(d), *argv]) == 0
    a, b = (json.loads(nk.run_file(d, "mosaic-v2", 1e-3, 0).read_text()) for d in (straight, split))
    assert a == b and len(a["curve"]) == 5
    assert not ckpt.exists()


def test_a_checkpoint_of_other_settings_is_refused(tmp_path, capsys):
    argv = ["--out", str(tmp_path), *SMALL, "--models", "llama", "--steps", "4", "--max-steps-this-run", "1"]
    assert nk.main(argv) == 0
    with pytest.raises(SystemExit) as e:
        nk.main([*argv, "--width", "32"])
    assert e.value.code == 2 and "other width (width=16)" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--time-limit", "0"], ["--save-every", "0"], ["--max-steps-this-run", "0"]])
def test_bad_resume_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        nk.main(argv)
    assert e.value.code == 2 and "error: --" in capsys.readouterr().err
