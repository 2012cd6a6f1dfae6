"""experiments.step_curves: per-step curves of runs stopped early, and its argument checks."""
from __future__ import annotations

import json

import pytest

from experiments import step_curves


def _run(folder, model, depth, losses, val, **config):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": model, "n_layer": depth, **config}))
    rows = [{"step": i + 1, "split": "train", "loss": v} for i, v in enumerate(losses)]
    rows += [{"step": s, "split": "val", "loss": v, "train_loss": v} for s, v in val]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_running_mean_against_a_plain_loop():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0]
    expected = [sum(values[max(0, i - 2):i + 1]) / len(values[max(0, i - 2):i + 1]) for i in range(len(values))]
    assert step_curves.running_mean(values, 3) == pytest.approx(expected, rel=1e-15)
    with pytest.raises(ValueError, match="window"):
        step_curves.running_mean(values, 0)


def test_curves_of_runs_stopped_at_different_steps(tmp_path):
    _run(tmp_path / "a", "mosaic", 12, [10.0] * 100, [(100, 7.9)])
    _run(tmp_path / "b", "gpt", 1, [float(200 - i) / 20 for i in range(200)], [(100, 5.6), (200, 5.2)])
    out = tmp_path / "out"
    assert step_curves.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--smooth", "1"]) == 0
    table = json.loads((out / "curves.json").read_text())
    assert table["a"]["last_step"] == 100 and table["a"]["val"] == {"100": 7.9}
    assert table["b"]["train_running_mean"] == {"1": 10.0, "50": 7.55, "100": 5.05, "200": 0.05}
    assert (out / "curves.png").stat().st_size > 0


def test_the_output_layer_arm_is_told_apart(tmp_path):
    _run(tmp_path / "lib", "mosaic", 12, [10.0] * 10, [(10, 7.9)], output_layer="library")
    _run(tmp_path / "head", "mosaic", 12, [6.0] * 10, [(10, 5.4)], output_layer="gpt2")
    out = tmp_path / "out"
    assert step_curves.main([str(tmp_path / "lib"), str(tmp_path / "head"), "--out", str(out)]) == 0
    table = json.loads((out / "curves.json").read_text())
    assert table["head"]["output_layer"] == "gpt2" and table["lib"]["output_layer"] == "library"


def test_the_legend_names_the_learning_rate_and_seed_only_where_they_vary(tmp_path):
    runs = [dict(model="gpt", depth=12, output_layer="library", lr=lr, seed=seed) for lr, seed in
            [(1e-3, 1337), (2e-3, 1337), (2e-3, 1338)]]
    assert step_curves.label(runs[0], {"lr", "seed"}) == "GPT2, 12 layers, lr 0.001, seed 1337"
    assert step_curves.label(runs[0], set()) == "GPT2, 12 layers"
    for i, r in enumerate(runs):
        _run(tmp_path / f"r{i}", r["model"], r["depth"], [6.0] * 10, [(10, 5.0 + i)], lr=r["lr"], seed=r["seed"])
    out = tmp_path / "out"
    argv = [str(tmp_path / f"r{i}") for i in range(3)] + ["--out", str(out), "--colour-by", "lr", "--ylim", "3", "7"]
    assert step_curves.main(argv) == 0
    table = json.loads((out / "curves.json").read_text())
    assert [table[f"r{i}"]["lr"] for i in range(3)] == [1e-3, 2e-3, 2e-3] and table["r2"]["seed"] == 1338
    with pytest.raises(ValueError, match="colour_by"):
        step_curves.plot([], out / "x.png", 1, colour_by="width")


@pytest.mark.parametrize("argv", [["--smooth", "0"], ["--ylim", "5", "4"], []])
def test_bad_arguments(argv, tmp_path, capsys):
    run = tmp_path / "empty"
    run.mkdir()
    with pytest.raises(SystemExit) as e:
        step_curves.main([str(run), "--out", str(tmp_path / "o"), *argv])
    assert e.value.code == 2 and (argv[0] in capsys.readouterr().err if argv else True)
