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


@pytest.mark.parametrize("argv", [["--steps", "5"], ["--warmup", "0"], ["--data", "/no/such/text"]])
def test_bad_arguments_exit_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench_trainer.main(["--data", str(tmp_path), *argv])
    assert e.value.code == 2 and "error: --" in capsys.readouterr().err
