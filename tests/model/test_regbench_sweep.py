"""The RegBench sweep driver: a tiny grid on the CPU, resumption, selection on validation, the report."""
from __future__ import annotations

import json

import pytest

from experiments import regbench


def test_sweep_runs_skips_finished_runs_and_reports(tmp_path, capsys):
    common = ["--out", str(tmp_path / "sweep"), "--sizes", "8", "--depths", "1", "--widths", "32", "--wds", "0.1",
              "--lrs", "3e-3", "--epochs", "2", "--num-test", "4", "--parallel", "2", "--device", "cpu",
              # Reference ops: under TRITON_INTERPRET=1 the fused ones would crawl (their own tests cover them).
              "--train-args", "--max-string-len", "5", "--kernels", "reference"]
    assert regbench.main(["run", *common]) == 0
    out = capsys.readouterr().out
    assert "2 to run" in out and "status: 2/2 runs finished" in out
    result = json.loads((tmp_path / "sweep" / "mosaic-N8-L1-d32-wd0.1-lr0.003" / "result.json").read_text())
    assert result["num_train"] == 8 and result["test"]["weights_step"] == result["best_val_step"]
    assert result["early_stop"] is None and result["steps_trained"] >= result["best_val_step"]  # no --patience
    assert regbench.main(["run", *common]) == 0  # everything finished: nothing runs again
    assert "0 to run" in capsys.readouterr().out
    figs = tmp_path / "figs"
    assert regbench.main(["report", "--out", str(tmp_path / "sweep"), "--figures", str(figs)]) == 0
    summary = json.loads((figs / "regbench_summary.json").read_text())
    assert set(summary["held_out"]) == {"mosaic", "gpt"} and (figs / "regbench_fig11.png").stat().st_size > 0
    assert (figs / "regbench_lr_search.png").stat().st_size > 0
    assert (figs / "regbench_curves.png").stat().st_size > 0
    assert "| 8 | mosaic | 1 |" in (figs / "regbench_table.md").read_text()
    runs = (figs / "regbench_runs.md").read_text().splitlines()
    assert len(runs) == 2 + 2 and "| held-out | 8 | gpt | 1 | 32 | 0.1 | 0.003 |" in runs[2]  # one line a run
    assert f"| {result['steps_trained']} |" in runs[3]  # the Memory Mosaic's line: where its training ended


def test_resume_only_starts_no_new_run(tmp_path, capsys, monkeypatch):
    """With --resume-only a grid point without a checkpoint is left alone and one with a checkpoint resumes."""
    started = []
    monkeypatch.setattr(regbench, "run_jobs", lambda jobs, *_a, **_k: started.extend(jobs) or 0)
    root = tmp_path / "sweep"
    partial = root / "gpt-N8-L1-d32-wd0.1-lr0.003"
    partial.mkdir(parents=True)
    (partial / "ckpt.pt").write_bytes(b"")
    grid = ["--out", str(root), "--sizes", "8", "--depths", "1", "--widths", "32", "--wds", "0.1", "--lrs", "3e-3",
            "--device", "cpu"]
    assert regbench.main(["run", *grid, "--resume-only"]) == 0
    assert [(j.out.name, j.resume) for j in started] == [(partial.name, True)]
    assert "1 to run (4 at a time), 1 not started (--resume-only)" in capsys.readouterr().out
    started.clear()
    assert regbench.main(["run", *grid]) == 0  # without it the new run starts too
    assert sorted(j.out.name for j in started) == [partial.name, "mosaic-N8-L1-d32-wd0.1-lr0.003"]


def test_runs_table_marks_runs_ended_by_patience():
    rows = [{"num_train": 8, "model": m, "n_layer": 1, "n_embd": 32, "weight_decay": 0.1, "lr": 1e-3,
             "best_val_loss": 1.0, "best_val_step": 40, "test": {"accuracy": 0.5, "l1": 0.4}, **extra}
            for m, extra in (("gpt", {"steps_trained": 90, "early_stop": 5}), ("mosaic", {}))]
    table = regbench._runs_table(rows)
    assert "| 40 | 90 (early) | 0.500 |" in table and "| 40 | - | 0.500 |" in table


def test_collect_leaves_out_a_run_scored_from_other_weights_than_its_best(tmp_path, capsys):
    # A run resumed without its best.pt (before mosaic-train refused to score one) has test metrics of its last
    # weights: the report must not select on them.
    for name, scored in (("good", 30), ("lost-best", 90)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(
            {"model": "mosaic", "num_train": 8, "best_val_loss": 1.0, "best_val_step": 30,
             "test": {"accuracy": 0.5, "l1": 0.4, "weights_step": scored}}))
    assert [r["run"] for r in regbench.collect(tmp_path)] == ["good"]
    assert "left out lost-best: its test metrics are of step 90's weights" in capsys.readouterr().err


def _result(model, size, val, acc, l1):
    return {"model": model, "num_train": size, "best_val_loss": val,
            "test": {"accuracy": acc, "l1": l1, "tvd": l1 / 2}}


def test_selection_uses_validation_and_reports_the_test_selected_choice_beside_it():
    runs = [_result("mosaic", 100, 1.0, 0.80, 0.5), _result("mosaic", 100, 1.2, 0.90, 0.4),
            _result("gpt", 100, 2.0, 0.5, 0.7)]
    chosen = regbench.select(runs)
    m = chosen["mosaic"][100]
    assert m["runs_searched"] == 2 and m["selected_on_val"]["test"]["accuracy"] == 0.80  # not the better test run
    assert (m["test_selected_accuracy"], m["test_selected_l1"]) == (0.90, 0.4)
    assert chosen["gpt"][100]["selected_on_val"]["best_val_loss"] == 2.0


def test_only_sizes_searched_alike_by_both_models_compare():
    def run(model, size, lr):
        return {**_result(model, size, 1.0, 0.5, 0.5), "n_layer": 2, "n_embd": 128, "weight_decay": 0.1, "lr": lr}
    runs = [run(m, 100, lr) for m in ("mosaic", "gpt") for lr in (1e-3, 5e-4)]
    runs += [run("gpt", 500, 1e-3), run("mosaic", 500, 5e-4)]  # one run each, at different points
    runs += [run("gpt", 1000, 1e-3)]  # one model only
    assert regbench.same_search(regbench.select(runs)) == [100]
    assert regbench.same_search(regbench.select(runs[:2])) == []  # the transformer absent


def test_epochs_trained_under_the_step_cap():
    # batch 32: 100 languages make 4 steps an epoch, 40,000 make 1,250
    assert regbench.epochs_trained(100, 200, 3200) == 200
    assert regbench.epochs_trained(1000, 200, 3200) == 100
    assert regbench.epochs_trained(40000, 200, 3200) == 3200 / 1250
    assert regbench.epochs_trained(40000, 200, None) == 200


def test_run_epochs_counts_a_run_ended_by_patience_to_its_last_step():
    # 2,500 languages make 79 steps an epoch (batch 32); a run --patience ended at step 1,580 trained 20 of its 200
    ended = {"num_train": 2500, "epochs": 200, "step_cap": None, "steps_trained": 1580, "early_stop": 40}
    assert regbench.run_epochs(ended) == 20
    assert regbench.run_epochs({**ended, "steps_trained": None}) == 200  # a record from before the field: the cap's
    assert regbench.run_epochs({"num_train": 40000, "epochs": 200, "step_cap": 3200}) == 3200 / 1250


def test_bad_grid_arguments_exit_2(capsys):
    for argv, msg in ((["run", "--widths", "40"], "multiples of 16"), (["run", "--lrs", "0"], "--lrs must be > 0"),
                      (["run", "--parallel", "0"], "--parallel must be >= 1"),
                      (["run", "--save-every", "0"], "--save-every must be >= 1")):
        with pytest.raises(SystemExit) as e:
            regbench.main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_v2_and_llama_join_the_sweep_and_the_report(tmp_path):
    common = ["--out", str(tmp_path / "sweep"), "--sizes", "8", "--depths", "1", "--widths", "32", "--wds", "0.1",
              "--lrs", "3e-3", "--epochs", "1", "--num-test", "4", "--parallel", "2", "--device", "cpu",
              "--models", "mosaic-v2", "llama", "--train-args", "--max-string-len", "5", "--kernels", "reference"]
    assert regbench.main(["run", *common]) == 0
    figs = tmp_path / "figs"
    assert regbench.main(["report", "--out", str(tmp_path / "sweep"), "--figures", str(figs)]) == 0
    summary = json.loads((figs / "regbench_summary.json").read_text())
    assert set(summary["held_out"]) == {"mosaic-v2", "llama"} and (figs / "regbench_fig11.png").stat().st_size > 0


def test_patience_steps_become_whole_epochs_of_each_size():
    # Batch 32: 2,500 languages make 79 steps an epoch, 10,000 make 313. 3,160 steps of patience are 40 epochs at
    # 2,500 and ceil(10.1) = 11 at 10,000 (the run then waits 3,443 steps, never fewer than asked).
    a = regbench.build_parser().parse_args(["run", "--patience-steps", "3160"])
    assert regbench.train_config(a, "gpt", 2500, 2, 128, 0.1, 1e-3).patience == 40
    assert regbench.train_config(a, "gpt", 10000, 2, 128, 0.1, 1e-3).patience == 11
    a = regbench.build_parser().parse_args(["run"])
    assert regbench.train_config(a, "gpt", 2500, 2, 128, 0.1, 1e-3).patience is None


def test_patience_steps_below_one_is_a_cli_error(capsys):
    with pytest.raises(SystemExit) as e:
        regbench.main(["run", "--patience-steps", "0"])
    assert e.value.code == 2 and "--patience-steps must be >= 1, got 0" in capsys.readouterr().err
