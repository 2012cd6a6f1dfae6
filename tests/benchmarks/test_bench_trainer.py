"""The trainer-flags benchmark: its cases, and one eager case of each model timed end to end on the CPU."""
from __future__ import annotations

import pytest

from benchmarks import bench_trainer
from tests.model.test_lm import corpus_file  # noqa: F401  (a fixture)


def test_cases_cover_every_flag_and_both_pmem_kernels_on_cuda_and_eager_alone_on_cpu():
    cuda = bench_trainer.combinations(["mosaic", "gpt"], "cuda")
    assert [(m, label) for m, label, _ in cuda] == [
        ("mosaic", "eager, pmem sdpa"), ("mosaic", "eager, pmem triton"), ("mosaic", "compile, pmem sdpa"),
        ("mosaic", "compile, pmem triton"), ("mosaic", "cuda-graph, pmem sdpa"), ("mosaic", "cuda-graph, pmem triton"),
        ("gpt", "eager"), ("gpt", "compile"), ("gpt", "cuda-graph")]
    assert cuda[4][2] == {"cuda_graph": True, "pmem_kernel": "sdpa"}
    assert [label for _, label, _ in bench_trainer.combinations(["gpt"], "cpu")] == ["eager"]


def test_step_and_trainer_are_timed_on_the_same_settings(tmp_path, corpus_file, capsys):  # noqa: F811
    out = tmp_path / "table.md"
    assert bench_trainer.main(["--data", str(corpus_file), "--models", "mosaic", "gpt", "--n-layer", "1",
                               "--n-embd", "16", "--n-head", "2", "--block-size", "16", "--batch-size", "2",
                               "--warmup", "2", "--steps", "4", "--device", "cpu", "--out", str(out)]) == 0
    text = out.read_text()
    assert "eager, pmem sdpa" in text and "eager, pmem triton" in text and "| gpt" in text
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(rows) == 3
    for line in rows:
        row = eval(line.split("] ", 1)[1])  # the printed dict of one case
        assert row["step_ms"] > 0 and row["trainer_tok_s"] > 0
        assert row["trainer_over_step"] == pytest.approx(row["tokens_per_s"] / row["trainer_tok_s"])
    assert "over_gpt" in text


def test_rounds_alternate_step_and_loop_and_report_medians_and_the_ratio_range(tmp_path, corpus_file, capsys,  # noqa: F811
                                                                                 monkeypatch):
    """--rounds 3: the step and the loop each timed three times, alternated; the row holds their medians, the ratio
    of the medians and the range of the rounds' ratios (stand-in timings, so the numbers are known)."""
    order, step_ms, loop_tok_s = [], iter([10.0, 30.0, 20.0]), iter([1000.0, 3000.0, 2000.0])

    def step_alone(cfg, warmup, steps):
        order.append("step")
        ms = next(step_ms)
        return {"step_ms": ms, "tokens_per_s": 1e5 / ms, "peak_GiB": None}

    def trainer_alone(cfg):
        order.append("loop")
        return next(loop_tok_s)

    monkeypatch.setattr(bench_trainer, "step_alone", step_alone)
    monkeypatch.setattr(bench_trainer, "trainer_alone", trainer_alone)
    assert bench_trainer.main(["--data", str(corpus_file), "--models", "gpt", "--flags", "eager", "--rounds", "3",
                               "--device", "cpu", "--n-layer", "1"]) == 0
    assert order == ["step", "loop"] * 3
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[1/1]")][0]
    row = eval(line.split("] ", 1)[1])
    assert row["step_ms"] == 20.0 and row["tokens_per_s"] == 5000.0 and row["trainer_tok_s"] == 2000.0
    assert row["trainer_over_step"] == 2.5
    assert row["ratio_range"] == "1.111-10.000"     # 10000/1000, 3333/3000, 5000/2000


@pytest.mark.parametrize("argv", [["--steps", "5"], ["--warmup", "0"], ["--data", "/no/such/text"], ["--rounds", "0"],
                                  ["--flags", "compile", "--device", "cpu"], ["--flags", "fast"]])
def test_bad_arguments_exit_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench_trainer.main(["--data", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--" in err.split("error: ", 1)[1]     # the option named (argparse: "argument --")
