"""The length-extrapolation report: selection on the training text's validation loss, seeds averaged,
losses by position band."""
from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import long_context as lc


def _run(root, name, final, val=None):
    run = root / name
    run.mkdir(parents=True)
    lines = [{"step": 1, "split": "train", "loss": 9.0}] + ([{"step": 2, "split": "val", "loss": val}] if val else []) \
        + ([{"step": 2, "split": "final", "loss": final}] if final else [])
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    return str(run)


def test_report_selects_on_validation_and_averages_seeds(tmp_path, capsys):
    arm = tmp_path / "mosaic-v2"
    a0, a1 = _run(arm, "mosaic-v2-L4-lr0.002", 4.0), _run(arm, "mosaic-v2-L4-lr0.002-s1", 4.2)   # mean 4.1
    _run(arm, "mosaic-v2-L4-lr0.005", 3.9)
    _run(arm, "mosaic-v2-L4-lr0.005-s1", None)          # unfinished: its learning rate does not compete
    b0 = _run(arm, "mosaic-v2-L4-lr0.001", 4.5)
    T = 8
    results = {a0: {"loss": [1.0] * T, "documents": [2] * T}, a1: {"loss": [3.0] * T, "documents": [2] * T},
               b0: {"loss": [0.0] * T, "documents": [2] * T}}
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / f"mosaic-v2_T{T}.json").write_text(json.dumps({"results": results}))
    assert lc.main(["report", "--out", str(tmp_path), "--figures", str(tmp_path / "figs"), "--train-T", "2"]) == 0
    s = json.loads((tmp_path / "figs" / "summary.json").read_text())["arms"]["mosaic-v2"]
    assert s["lr"] == "0.002" and sorted(s["runs"]) == sorted([a0, a1])
    r = s["by_length"]["8"]
    assert r["bands"] == [[0, 2], [2, 4], [4, 8]] and r["mean_loss"] == [2.0, 2.0, 2.0]   # (1 + 3) / 2
    assert (tmp_path / "figs" / "loss_by_position.png").is_file()
    assert s["every_run"]["mosaic-v2-L4-lr0.001"]["8"] == [0.0, 0.0, 0.0]   # the unselected run's bands too


def test_unfinished_runs_compete_on_their_last_validation_loss(tmp_path):
    arm = tmp_path / "llama"
    _run(arm, "llama-L4-lr0.001", None, val=4.4)
    stopped = _run(arm, "llama-L4-lr0.003", None, val=4.3)
    assert lc.select_runs(arm) is None                       # by default only finished runs compete
    chosen = lc.select_runs(arm, unfinished=True)
    assert chosen["runs"] == [stopped] and chosen["steps"] == {"llama-L4-lr0.001": 2, "llama-L4-lr0.003": 2}
    T = 6  # evaluations found by run name, wherever the study's folder was when they ran
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / f"llama_T{T}.json").write_text(json.dumps(
        {"results": {"/elsewhere/llama/llama-L4-lr0.003": {"loss": [1.0, 1.0, 2.0, 2.0, 4.0, 6.0], "documents": [1] * T}}}))
    assert lc.main(["report", "--out", str(tmp_path), "--figures", str(tmp_path / "f"), "--train-T", "2",
                    "--unfinished", "--bin", "4"]) == 0
    s = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert s["selected_on"].startswith("last validation")
    assert s["arms"]["llama"]["by_length"]["6"]["binned_loss"] == [1.5, 5.0]


def test_selection_on_one_seed_keeps_every_seed_of_the_chosen_rate(tmp_path, capsys):
    # Seed 0 searched the rates; seed 1 ran at the selected rate only. Over all runs the 0.01 rate's mean (4.20)
    # would lose to 0.003's single run (4.15); on seed 0 alone 0.01 wins (4.10), and both its seeds are kept.
    arm = tmp_path / "mosaic-v2"
    _run(arm, "mosaic-v2-L4-lr0.003", 4.15)
    s0, s1 = _run(arm, "mosaic-v2-L4-lr0.01", 4.10), _run(arm, "mosaic-v2-L4-lr0.01-s1", 4.30)
    assert lc.select_runs(arm)["lr"] == "0.003"
    chosen = lc.select_runs(arm, select_seed=0)
    assert chosen["lr"] == "0.01" and sorted(chosen["runs"]) == sorted([s0, s1])
    assert chosen["val_loss_by_lr"] == {"0.003": 4.15, "0.01": 4.10}
    assert lc.select_runs(arm, select_seed=3) is None      # no run of that seed
    assert lc.main(["report", "--out", str(tmp_path), "--figures", str(tmp_path / "f"), "--select-seed", "0"]) == 0
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["selected_on"].endswith("seed 0's runs only")
    with pytest.raises(SystemExit) as e:
        lc.main(["report", "--out", str(tmp_path), "--select-seed", "-1"])
    assert e.value.code == 2 and "--select-seed" in capsys.readouterr().err


def test_a_later_call_scores_only_new_runs_into_a_tagged_file(tmp_path):
    # EVAL=new: the first call's <arm>_T<L>.json holds seed 0, a later call's <arm>_T<L>_<tag>.json seed 1; the
    # report reads both (and no other arm's file, though "mosaic_T*" and "mosaic-v2_T*" share a prefix).
    arm = tmp_path / "mosaic"
    s0, s1 = _run(arm, "mosaic-L4-lr0.01", 4.6), _run(arm, "mosaic-L4-lr0.01-s1", 4.5)
    evals = tmp_path / "evals"
    evals.mkdir()
    T = 4
    (evals / f"mosaic_T{T}.json").write_text(json.dumps({"results": {s0: {"loss": [1.0] * T, "documents": [1] * T}}}))
    (evals / f"mosaic_T{T}_1765000000.json").write_text(json.dumps(
        {"results": {s1: {"loss": [3.0] * T, "documents": [1] * T}}}))
    (evals / f"mosaic-v2_T{T}.json").write_text(json.dumps({"results": {s0: {"loss": [9.0] * T, "documents": [1] * T}}}))
    assert set(lc.evaluations(evals, "mosaic")[T]) == {"mosaic-L4-lr0.01", "mosaic-L4-lr0.01-s1"}
    assert lc.main(["report", "--out", str(tmp_path), "--figures", str(tmp_path / "f"), "--train-T", "2"]) == 0
    r = json.loads((tmp_path / "f" / "summary.json").read_text())["arms"]["mosaic"]["by_length"][str(T)]
    assert r["mean_loss"] == [2.0, 2.0] and len(r["per_seed"]) == 2


def test_bands_double_up_to_the_length():
    assert lc.bands(1024, 16384) == [(0, 1024), (1024, 2048), (2048, 4096), (4096, 8192), (8192, 16384)]
    assert np.isnan(lc.band_means([1.0, 2.0], [0, 0], [(0, 2)])[0])


def test_a_missing_folder_is_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        lc.main(["report", "--out", str(tmp_path / "nope")])
    assert e.value.code == 2 and "error: --out" in capsys.readouterr().err
