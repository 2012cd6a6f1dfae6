"""The depth study's driver on the CPU at a toy size: the grid with seeds, resumption, the report's
selection and its seed table."""
from __future__ import annotations

import json

import pytest

from experiments import lm_depth
from mosaic_model.data import text
from tests.model.test_lm import corpus_file  # noqa: F401  (the fixture)


def test_grid_with_seeds_runs_skips_finished_and_reports_the_seed_table(tmp_path, corpus_file, capsys):  # noqa: F811
    # The training processes cannot use the test's byte tokenizer; they read the corpus from the cache
    # that this process fills (its key is the source's content, not the tokenizer object).
    text.load_corpus(str(corpus_file), doc_split="auto", progress=False)
    common = ["--data", str(corpus_file), "--doc-split", "auto", "--val-fraction", "0.2", "--out", str(tmp_path / "g"),
              "--depths", "1", "--lrs", "1e-3", "--width", "64", "--block-size", "16", "--batch-size", "2",
              "--steps", "2", "--eval-every", "1", "--parallel", "2", "--device", "cpu", "--kernels", "reference"]
    assert lm_depth.main(["run", *common, "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 to run" in out and "status: 4/4 runs finished" in out
    for name in ("mosaic-L1-lr0.001-reference", "mosaic-L1-lr0.001-s1-reference", "gpt-L1-lr0.001-s1"):
        assert (tmp_path / "g" / name / "metrics.jsonl").exists()
    assert lm_depth.main(["run", *common, "--seeds", "0", "1"]) == 0
    assert "0 to run" in capsys.readouterr().out
    figs = tmp_path / "figs"
    assert lm_depth.main(["report", *common, "--seeds", "0", "1", "--no-evals", "--figures", str(figs)]) == 0
    summary = json.loads((figs / "lm_depth_summary.json").read_text())
    table = summary["seeds"]["1"]
    assert set(table["val_loss"]["mosaic"]) == {"0", "1"} and set(table["val_loss"]["gpt"]) == {"0", "1"}
    means = table["mean"]
    assert table["gap_of_means"] == pytest.approx(means["gpt"] - means["mosaic"])
    assert table["gap_min"] <= table["gap_of_means"] <= table["gap_max"]
    # Different seeds train differently (weights and batches).
    assert table["val_loss"]["gpt"]["0"] != table["val_loss"]["gpt"]["1"]
    # A grid point added after the seeds, with seed 0 only: whichever rate the selection takes, the seed
    # table stays at the rate that has the seeds.
    grown = [("3e-3" if x == "1e-3" else x) for x in common]
    assert lm_depth.main(["run", *grown]) == 0
    both = [*common[:common.index("--lrs") + 2], "3e-3", *common[common.index("--lrs") + 2:]]
    assert lm_depth.main(["report", *both, "--seeds", "0", "1", "--no-evals", "--figures", str(figs)]) == 0
    summary = json.loads((figs / "lm_depth_summary.json").read_text())
    assert summary["grid_lrs"] == [1e-3, 3e-3]
    assert summary["seeds"]["1"]["lr"] == {"mosaic": 1e-3, "gpt": 1e-3}
    assert set(summary["seeds"]["1"]["val_loss"]["gpt"]) == {"0", "1"}


def test_bad_arguments_exit_2(capsys):
    for argv, msg in ((["run", "--data", "x", "--width", "100"], "--width must be a multiple of 64"),
                      (["run", "--data", "x", "--seeds", "-1"], "--seeds must be >= 0"),
                      (["report"], "--data: report needs the training text"),
                      (["compare", "--depths", "8", "--summaries", "x=/nowhere"], "--summaries: expected LABEL=FOLDER"),
                      (["compare", "--depths", "4", "8"], "--depths: compare takes one depth")):
        with pytest.raises(SystemExit) as e:
            lm_depth.main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_report_without_seed_0_runs_exits_2(tmp_path, capsys):
    """Runs of other seeds alone cannot be selected from: a one-line error, not an empty report."""
    (tmp_path / "mosaic-L8-lr0.01-s3").mkdir()
    with pytest.raises(SystemExit) as e:
        lm_depth.main(["report", "--no-evals", "--out", str(tmp_path), "--depths", "8", "--seeds", "3",
                       "--figures", str(tmp_path / "figs")])
    assert e.value.code == 2 and "--out: no seed-0 run of the grid" in capsys.readouterr().err


def test_report_runs_the_evaluations_on_every_ood_source(tmp_path, corpus_file):  # noqa: F811
    # The first --ood source feeds the loss by position and the long context (documents of 3 x 16 tokens
    # and more: the byte tokenizer makes one token a character); a second one gets its own
    # loss-by-position files; the attention maps read the training text.
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(json.dumps(f"the dog saw {i} cats and ran to the park. " * 2) for i in range(40)))
    text.load_corpus(str(corpus_file), doc_split="auto", progress=False)
    common = ["--data", str(corpus_file), "--doc-split", "auto", "--val-fraction", "0.2", "--out", str(tmp_path / "g"),
              "--depths", "1", "--lrs", "1e-3", "--width", "64", "--block-size", "16", "--batch-size", "2",
              "--steps", "2", "--eval-every", "1", "--parallel", "2", "--device", "cpu", "--kernels", "reference"]
    assert lm_depth.main(["run", *common]) == 0
    figs = tmp_path / "figs"
    assert lm_depth.main(["report", *common, "--eval-depth", "1", "--ood", str(other), str(corpus_file),
                          "--num-seqs", "4", "--figures", str(figs)]) == 0
    for name in ("ood_loss_by_position.json", "ood_loss_by_position_stories.json", "attention_1layer.json",
                 "long_context_1layer.json", "prompts.md"):
        assert (figs / name).exists(), name
    first = json.loads((figs / "ood_loss_by_position.json").read_text())
    second = json.loads((figs / "ood_loss_by_position_stories.json").read_text())
    assert first != second  # two sources, two measurements
    claims = json.loads((figs / "claims.json").read_text())  # written by report; bands past 16 tokens are absent
    assert set(claims["ood_loss_by_position"]) == {"mosaic", "gpt", "mosaic_minus_gpt"}
    assert list(claims["ood_loss_by_position"]["gpt"]["bands"]) == ["0-9"]
    assert set(claims["attention_1layer"]) == {"mosaic", "gpt"}
    # Attention maps on the training text (as the paper's Fig 12), long context on the first --ood text.
    assert json.loads((figs / "attention_1layer.json").read_text())["data"] == str(corpus_file)
    assert json.loads((figs / "long_context_1layer.json").read_text())["data"] == str(other)
    assert (figs / "ood_gap_by_position.png").stat().st_size > 0
    # Every position averages the same documents (those that reach the last one).
    per_pos = json.loads((figs / "ood_loss_by_position.json").read_text())
    assert per_pos["data"] == str(other)
    assert all(len(set(r["documents"])) == 1 for r in per_pos["results"].values())


def test_claim_numbers_from_known_curves(tmp_path):
    # Memory Mosaic: loss falls by 1e-3 a position all along; GPT2: falls until 100, then flat. Attention:
    # uniform for one model, all on the last key for the other.
    mm = [5.0 - 1e-3 * i for i in range(512)]
    gpt = [5.0 - 1e-3 * min(i, 100) for i in range(512)]
    counts = [10.0] * 512
    per_pos = {"results": {"/x/mosaic-L2-lr0.01": {"loss": mm, "documents": counts},
                           "/x/gpt-L2-lr0.002": {"loss": gpt, "documents": counts}}}
    (tmp_path / "ood_loss_by_position.json").write_text(json.dumps(per_pos))
    flat, last = [[[1.0] * 100]], [[[0.0] * 99 + [1.0]]]
    (tmp_path / "attention_1layer.json").write_text(json.dumps(
        {"results": {"/x/mosaic-L1-lr0.01": {"attention": flat}, "/x/gpt-L1-lr0.002": {"attention": last}}}))
    c = lm_depth.claim_numbers(tmp_path)
    ood = c["ood_loss_by_position"]
    # Band 40-59 has mean position 49.5, band 400-511 has 455.5: 0.406 nats apart at 1e-3 a position.
    assert ood["mosaic"]["gain_after_50"] == pytest.approx(0.406)
    assert ood["gpt"]["gain_after_150"] == pytest.approx(0.0, abs=1e-12)
    assert ood["mosaic_minus_gpt"]["0-9"] == pytest.approx(0.0, abs=1e-12)
    assert ood["mosaic_minus_gpt"]["400-511"] == pytest.approx(-0.3555)
    att = c["attention_1layer"]
    assert att["mosaic"]["entropy_over_uniform"] == pytest.approx(1.0)
    assert att["mosaic"]["last_10"] == pytest.approx(att["mosaic"]["last_10_uniform"]) == pytest.approx(0.1)
    assert att["gpt"]["last_10"] == 1.0 and att["gpt"]["entropy_over_uniform"] == pytest.approx(0.0, abs=1e-12)
    assert att["gpt"]["thirds"] == pytest.approx([0.0, 0.0, 1.0])
    lm_depth._gap_plot(tmp_path)
    assert (tmp_path / "ood_gap_by_position.png").stat().st_size > 0
    empty = tmp_path / "empty"
    empty.mkdir()
    lm_depth._gap_plot(empty)  # no evaluated pair: no figure
    assert not any(empty.iterdir())


def test_plan_trains_eval_copies_and_sets_old_folders_aside(tmp_path):
    # A selected run whose weights did not come back is trained again into its own -eval folder (the grid's
    # run, and so the selection, stays as it was), and a run cut short without a checkpoint starts from
    # scratch; each old folder is kept beside it, and a second such call must not collide with the first
    # one's .prior (the TinyStories call of 2026-12-01 did).
    import argparse

    def run(name, loss, final=True):
        (tmp_path / name).mkdir()
        lines = [{"step": 10, "split": "val", "loss": loss, "train_loss": loss}]
        lines += [{"step": 10, "split": "final", "loss": loss, "train_loss": loss}] if final else []
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))

    run("mosaic-L1-lr0.001", 4.0)
    run("mosaic-L1-lr0.001-eval", 4.1, final=False)  # an earlier copy cut short, its checkpoint gone
    run("mosaic-L1-lr0.001-eval.prior", 4.5)
    run("gpt-L1-lr0.001", 4.2)
    (tmp_path / "gpt-L1-lr0.001" / "ckpt.pt").write_bytes(b"")  # its weights are here: not trained again
    run("gpt-L1-lr0.002", 3.0, final=False)  # cut short, checkpoint gone: not a candidate of the selection
    a = argparse.Namespace(models=["mosaic", "gpt"], rerun_selected=[1], lrs=[1e-3, 2e-3], kernels="fused")
    grid = [(m, 1, lr, 0) for m in a.models for lr in a.lrs]
    todo = lm_depth._plan(a, tmp_path, grid)
    assert [(m, lr, out.name, state) for m, d, lr, seed, out, state in todo] == [
        ("mosaic", 1e-3, "mosaic-L1-lr0.001-eval", "new"), ("mosaic", 2e-3, "mosaic-L1-lr0.002", "new"),
        ("gpt", 2e-3, "gpt-L1-lr0.002", "new")]
    assert (tmp_path / "mosaic-L1-lr0.001" / "metrics.jsonl").exists()  # the grid's run is untouched
    assert not (tmp_path / "mosaic-L1-lr0.001-eval").exists() and not (tmp_path / "gpt-L1-lr0.002").exists()
    kept = json.loads((tmp_path / "mosaic-L1-lr0.001-eval.prior2" / "metrics.jsonl").read_text().splitlines()[0])
    assert kept["loss"] == 4.1 and (tmp_path / "mosaic-L1-lr0.001-eval.prior").exists()
    assert (tmp_path / "gpt-L1-lr0.002.prior" / "metrics.jsonl").exists()
    assert lm_depth.eval_folder(tmp_path / "gpt-L1-lr0.001") == tmp_path / "gpt-L1-lr0.001"
    assert lm_depth.eval_folder(tmp_path / "mosaic-L1-lr0.001") is None

    # The copy finished with worse validation loss than a neighbour of the grid: it is evaluated, not
    # trained again, and the selection still reads the grid's run.
    run("mosaic-L1-lr0.001-eval", 4.3)
    (tmp_path / "mosaic-L1-lr0.001-eval" / "ckpt.pt").write_bytes(b"")
    run("mosaic-L1-lr0.002", 4.2)
    assert lm_depth.eval_folder(tmp_path / "mosaic-L1-lr0.001") == tmp_path / "mosaic-L1-lr0.001-eval"
    assert lm_depth.select(tmp_path, ["mosaic"], [1], [1e-3, 2e-3])["mosaic-L1"]["lr"] == 1e-3
    assert lm_depth._rerun_for_evals(a, tmp_path) == []  # both selected runs have weights to evaluate

    # A finished copy whose weights stayed on another machine is trained again from scratch, its folder
    # set aside (not appended to).
    (tmp_path / "mosaic-L1-lr0.001-eval" / "ckpt.pt").unlink()
    todo = lm_depth._rerun_for_evals(a, tmp_path)
    assert [(out.name, state) for *_, out, state in todo] == [("mosaic-L1-lr0.001-eval", "new")]
    assert not (tmp_path / "mosaic-L1-lr0.001-eval").exists()
    assert json.loads((tmp_path / "mosaic-L1-lr0.001-eval.prior3" / "metrics.jsonl").read_text().splitlines()[0])["loss"] == 4.3


def test_train_config_is_the_paper_recipe_scaled_down():
    a = lm_depth.build_parser().parse_args(["run", "--data", "x", "--steps", "300", "--eval-every", "50"])
    c = lm_depth.train_config(a, "mosaic", 2, 1e-3, seed=1)
    # The paper's optimiser settings, one micro-step a step (the preset accumulates 16), a tenth warming up.
    assert (c.task, c.beta1, c.beta2, c.weight_decay, c.grad_clip, c.dropout) == ("lm", 0.9, 0.95, 0.1, 1.0, 0.05)
    assert (c.min_lr_ratio, c.eval_batches, c.grad_accum, c.warmup) == (1e-4 / 5e-3, 10, 1, 30)
    assert (c.n_layer, c.n_embd, c.n_head, c.block_size, c.batch_size, c.eval_batch_size) == (2, 256, 4, 512, 16, 16)
    assert (c.steps, c.eval_every, c.save_every, c.no_best, c.seed, c.lr) == (300, 50, 300, True, lm_depth.TRAIN_SEED + 1, 1e-3)
    a = lm_depth.build_parser().parse_args(["run", "--data", "x", "--warmup", "2000", "--log-every", "1", "--width", "768"])
    c = lm_depth.train_config(a, "gpt", 12, 5e-3)
    assert (c.warmup, c.log_every, c.n_embd, c.n_head) == (2000, 1, 768, 12)   # the paper-width study's schedule start


def test_train_config_passes_the_precision_and_reference_ops_only_when_asked():
    a = lm_depth.build_parser().parse_args(["run", "--data", "x"])
    assert lm_depth.train_config(a, "mosaic", 1, 1e-3).dtype == "auto"
    a = lm_depth.build_parser().parse_args(["run", "--data", "x", "--dtype", "float32"])
    assert lm_depth.train_config(a, "gpt", 1, 1e-3).dtype == "float32"
    a = lm_depth.build_parser().parse_args(["run", "--data", "x", "--reference-ops", "mosaic_attention", "leaky_average"])
    assert lm_depth.train_config(a, "mosaic", 1, 1e-3).reference_ops == ("mosaic_attention", "leaky_average")
    assert lm_depth.train_config(a, "gpt", 1, 1e-3).reference_ops == ()  # GPT2 has no such ops


def test_reference_seed_means_and_compare_from_known_curves(tmp_path, capsys):
    # Three seeds of a fused run and its reference twin, and a GPT2, with known final losses: the
    # kernel table and the comparison across two reports must return those numbers. Seed 2's reference
    # stopped at step 1, so the kernel table, which compares every seed at one step, is at step 1.
    def run(root, name, losses):
        (root / name).mkdir(parents=True)
        lines = [{"step": i + 1, "split": "val", "loss": l, "train_loss": l} for i, l in enumerate(losses)]
        lines.append({"step": len(losses), "split": "final", "loss": losses[-1], "train_loss": losses[-1]})
        (root / name / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))

    folders = {}
    for label, shift in (("a", 0.0), ("b", -1.0)):
        root = tmp_path / label
        for seed, suffix in ((0, ""), (1, "-s1"), (2, "-s2")):
            run(root, f"mosaic-L8-lr0.01{suffix}", [6.0 + shift + seed, 5.0 + shift + seed])
            run(root, f"mosaic-L8-lr0.01{suffix}-reference", [5.5 + shift + seed] + ([4.0 + shift + seed] if seed < 2 else []))
            run(root, f"gpt-L8-lr0.002{suffix}", [6.0, 4.5 + seed / 10])
        folders[label] = tmp_path / f"figs_{label}"
        assert lm_depth.main(["report", "--out", str(root), "--depths", "8", "--lrs", "0.002", "0.01", "--no-evals",
                              "--seeds", "0", "1", "2", "--figures", str(folders[label])]) == 0
    summary = json.loads((folders["a"] / "lm_depth_summary.json").read_text())
    table = summary["fused_vs_reference_seeds"]["mosaic-L8-lr0.01"]
    assert table["step"] == 1 and table["seeds"] == [0, 1, 2]
    assert table["reference_minus_fused"] == pytest.approx([-0.5, -0.5, -0.5])
    assert table["mean_fused"] == pytest.approx(7.0) and table["mean_reference"] == pytest.approx(6.5)
    capsys.readouterr()
    out = tmp_path / "both"
    assert lm_depth.main(["compare", "--depths", "8", "--figures", str(out), "--summaries",
                          f"a={folders['a']}", f"b={folders['b']}"]) == 0
    numbers = json.loads((out / "compare.json").read_text())
    # Fused and GPT2 come from the seed table (step 2: every fused and GPT2 run reached it), the reference
    # from the pairs that reached that same step (seeds 0 and 1).
    a, b = numbers["a"], numbers["b"]
    assert a["mosaic"]["step"] == 2 and a["mosaic"]["val_loss"] == pytest.approx({"0": 5.0, "1": 6.0, "2": 7.0})
    assert a["gpt"]["mean"] == pytest.approx(4.6)
    assert a["reference"]["val_loss"] == pytest.approx({"0": 4.0, "1": 5.0})  # seed 2 never reached step 2
    assert b["mosaic"]["mean"] == pytest.approx(5.0) and b["reference"]["mean"] == pytest.approx(3.5)
    assert (out / "compare.png").exists() and "b Memory Mosaic reference ops: mean 3.5000" in capsys.readouterr().out

    # A study of one model (fused runs with some ops on the reference) still gets its seed table, without a
    # gap, and compares beside the others.
    solo = tmp_path / "solo"
    for seed, suffix in ((0, ""), (1, "-s1")):
        run(solo, f"mosaic-L8-lr0.01{suffix}", [6.0, 4.0 + seed])
    assert lm_depth.main(["report", "--out", str(solo), "--depths", "8", "--lrs", "0.01", "--no-evals",
                          "--seeds", "0", "1", "--figures", str(tmp_path / "figs_solo")]) == 0
    table = json.loads((tmp_path / "figs_solo" / "lm_depth_summary.json").read_text())["seeds"]["8"]
    assert table["mean"] == pytest.approx({"mosaic": 4.5}) and "gap_of_means" not in table
    assert lm_depth.main(["compare", "--depths", "8", "--figures", str(out), "--summaries",
                          f"a={folders['a']}", f"solo={tmp_path / 'figs_solo'}"]) == 0
    assert json.loads((out / "compare.json").read_text())["solo"] == {
        "mosaic": {"step": 2, "val_loss": {"0": 4.0, "1": 5.0}, "mean": 4.5}}


def test_repeat_rate_counts_adjacent_equal_words():
    from experiments.repeat_rate import continuations, repeat_rate

    md = "# t\n\n## model a\n\n1. Go **to to the, the park**\n\n2. x **fine words here**\n\n## model b\n\n1. y **No no.**\n"
    parsed = continuations(md)
    assert list(parsed) == ["model a", "model b"]
    assert repeat_rate(parsed["model a"]) == (2, 6)      # "to to", "the, the"; 4 + 2 pairs
    assert repeat_rate(parsed["model b"]) == (1, 1)      # case-folded


def test_last_row_finds_a_sink_off_key_zero_in_one_head():
    import numpy as np

    from experiments.lm_depth import _last_row

    n = 100
    att = np.full((1, 2, n), 1.0 / n)
    att[0, 1, 2] += 0.15                    # head 1 piles weight on key 2; key 0 stays uniform
    r = _last_row(att.tolist())
    assert r["key_0"] < 1.0 / n             # the head-averaged key-0 metric sees no sink
    assert r["sink"]["key"][0][1] == 2 and r["sink_max"] > 10
    assert r["sink"]["over_uniform"][0][0] == pytest.approx(1.0)   # the flat head: uniform weight
