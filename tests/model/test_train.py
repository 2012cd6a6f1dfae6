"""mosaic-train: a short run, exact resume from a checkpoint, argument errors."""
from __future__ import annotations

import json

import pytest
import torch

from mosaic_model.cli import train as train_mod
from mosaic_model.training.optim import lr_at

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--num-train", "24", "--num-test", "8",
        "--max-string-len", "5", "--batch-size", "8", "--eval-batch-size", "8", "--log-every", "1",
        "--warmup", "2", "--device", "cpu", "--kernels", "reference", "--quiet"]


def _run(tmp_path, name, extra):
    out = tmp_path / name
    code = train_mod.main(TINY + ["--out-dir", str(out)] + extra)
    assert code == 0
    return out


@pytest.mark.parametrize("model", ["mosaic", "gpt"])
def test_short_run_writes_metrics_and_checkpoint(tmp_path, model, capsys):
    out = _run(tmp_path, model, ["--steps", "4", "--eval-every", "2", "--model", model])
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["split"] for l in lines].count("train") == 4
    elapsed = [l["elapsed_s"] for l in lines if l["split"] == "train"]  # the loop's wall clock, evaluations included
    assert elapsed[0] >= 0 and elapsed == sorted(elapsed)
    assert [l["step"] for l in lines if l["split"] == "val"] == [2, 4]
    final = lines[-1]
    assert final["split"] == "test" and 0 <= final["accuracy"] <= 1 and final["tvd"] == final["l1"] / 2
    assert (out / "ckpt.pt").exists()
    assert "in-context accuracy" in capsys.readouterr().out


def test_resume_continues_bit_exactly(tmp_path):
    """6 steps straight == 3 steps, stop, resume for 3 more (dropout on, so RNG state matters)."""
    common = ["--steps", "6", "--eval-every", "3", "--dropout", "0.1"]
    straight = _run(tmp_path, "straight", common)
    part = tmp_path / "part"
    train_mod.main(TINY + ["--out-dir", str(part), "--steps", "6", "--eval-every", "3", "--dropout", "0.1",
                           "--max-steps-this-run", "3"])
    ck = torch.load(part / "ckpt.pt", weights_only=False)
    assert ck["step"] == 3
    train_mod.main(TINY + ["--out-dir", str(part)] + common + ["--resume"])
    a = torch.load(straight / "ckpt.pt", weights_only=False)
    b = torch.load(part / "ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    la = [json.loads(l) for l in (straight / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l) for l in (part / "metrics.jsonl").read_text().splitlines()]
    assert [l["loss"] for l in la] == [l["loss"] for l in lb]


def test_resume_refuses_a_different_configuration(tmp_path, capsys):
    out = _run(tmp_path, "run", ["--steps", "2", "--eval-every", "2"])
    with pytest.raises(SystemExit) as exc:
        train_mod.main(TINY[:4] + ["--n-embd", "32"] + TINY[6:] + ["--out-dir", str(out), "--steps", "2",
                                                                    "--eval-every", "2", "--resume"])
    assert exc.value.code == 2
    assert "other n_embd (n_embd=16)" in capsys.readouterr().err


def test_resume_of_a_finished_run_adds_nothing(tmp_path, capsys):
    out = _run(tmp_path, "run", ["--steps", "2", "--eval-every", "2"])
    before = (out / "metrics.jsonl").read_text()
    assert train_mod.main(TINY + ["--out-dir", str(out), "--steps", "2", "--eval-every", "2", "--resume"]) == 0
    assert (out / "metrics.jsonl").read_text() == before
    assert "already finished at step 2" in capsys.readouterr().err


def test_extending_a_finished_run_follows_the_longer_schedule(tmp_path):
    out = _run(tmp_path, "run", ["--steps", "4", "--eval-every", "2"])
    train_mod.main(TINY + ["--out-dir", str(out), "--steps", "6", "--eval-every", "2", "--resume"])
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [l["step"] for l in lines if l["split"] == "test"] == [4, 6]
    a = train_mod.parse_args(TINY + ["--steps", "6"])
    assert [l["lr"] for l in lines if l["split"] == "train"][4] == lr_at(4, a)
    assert torch.load(out / "ckpt.pt", weights_only=False)["step"] == 6
    with pytest.raises(SystemExit):  # shrinking is refused
        train_mod.main(TINY + ["--out-dir", str(out), "--steps", "3", "--resume"])


def test_resume_errors_name_the_file(tmp_path, capsys):
    missing = tmp_path / "none"
    with pytest.raises(SystemExit) as exc:
        train_mod.main(TINY + ["--out-dir", str(missing), "--resume"])
    assert exc.value.code == 2 and f"no run to resume in {missing}" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exc:
        train_mod.main(TINY + ["--out-dir", str(bad), "--resume"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"{bad / 'ckpt.pt'}: not a readable checkpoint" in err
    assert len(err.strip().splitlines()) == 1


def test_checkpoint_rebuilds_its_model(tmp_path):
    from mosaic_model.models import build_model
    from mosaic_model.training.checkpoint import load_model

    out = _run(tmp_path, "run", ["--steps", "1", "--eval-every", "1"])
    model, ckpt = load_model(out)
    assert ckpt["model_type"] == "mosaic" and model.config.block_size == ckpt["model_config"]["block_size"] > 0
    x = torch.randint(0, 20, (1, 5))
    config = train_mod.parse_args(TINY)
    trained = build_model(config.model, config.model_config(model.config.block_size, 20))
    trained.load_state_dict(ckpt["model"])
    assert torch.equal(model(x)[0], trained.eval()(x)[0])


def test_time_limit_stops_with_a_checkpoint_to_resume(tmp_path):
    out = _run(tmp_path, "run", ["--steps", "50", "--eval-every", "50", "--time-limit", "1e-9"])
    ck = torch.load(out / "ckpt.pt", weights_only=False)
    assert ck["step"] == 1 and not ck.get("finished")  # one step, then the limit
    assert train_mod.main(TINY + ["--out-dir", str(out), "--steps", "3", "--eval-every", "3", "--resume"]) == 0
    assert torch.load(out / "ckpt.pt", weights_only=False)["finished"]


def _scripted_validation(monkeypatch, losses):
    """The runs' validation losses replaced by ``losses``, one per evaluation (the other metrics kept)."""
    from mosaic_model.training import loop

    scripted, make_task = iter(losses), loop.make_task

    def make(*args, **kwargs):
        task = make_task(*args, **kwargs)
        validate = task.validate
        task.validate = lambda *a: {**validate(*a), "loss": next(scripted)}
        return task

    monkeypatch.setattr(loop, "make_task", make)


def test_patience_ends_the_run_once_the_validation_loss_stops_improving(tmp_path, monkeypatch, capsys):
    # Evaluations at steps 2, 4, ...: best at 4, two worse, a new best at 10 (the count starts again), then three
    # worse: the run ends at step 16 of 40, scored from best.pt (step 10), and a resume adds nothing.
    _scripted_validation(monkeypatch, [3.0, 2.0, 2.5, 2.1, 1.9, 2.2, 2.3, 2.4])
    out = _run(tmp_path, "run", ["--steps", "40", "--eval-every", "2", "--patience", "3", "--final-from", "best"])
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l["split"] == "val"] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert max(l["step"] for l in lines if l["split"] == "train") == 16
    final = lines[-1]
    assert final["split"] == "test" and final["step"] == 16 and final["early_stop"] == 3
    assert final["weights_from"] == "best" and final["weights_step"] == 10
    ck = torch.load(out / "ckpt.pt", weights_only=False)
    assert ck["finished"] and ck["step"] == 16 and ck["best_step"] == 10 and ck["early_stop"] == 3
    assert "the run ends here (--patience 3)" in capsys.readouterr().err
    before = (out / "metrics.jsonl").read_text()
    assert train_mod.main(TINY + ["--out-dir", str(out), "--steps", "40", "--eval-every", "2", "--patience", "3",
                                  "--final-from", "best", "--resume"]) == 0
    assert (out / "metrics.jsonl").read_text() == before
    assert "ended at step 16" in capsys.readouterr().err


def test_patience_warns_when_the_last_weights_are_scored(capsys):
    from mosaic_model.training.config import TrainConfig

    assert any("--final-from best scores the best" in w for w in TrainConfig(patience=3).warnings())
    assert not TrainConfig(patience=3, final_from="best").warnings()


def test_patience_counts_across_a_resume(tmp_path, monkeypatch):
    # Best at step 2, then stopped at step 4 (one worse evaluation); resumed, one more worse evaluation at 6
    # makes two in a row: the count was kept in the checkpoint (best_step), not restarted.
    _scripted_validation(monkeypatch, [1.0, 2.0, 2.0, 2.0])
    common = ["--steps", "20", "--eval-every", "2", "--patience", "2"]
    out = _run(tmp_path, "run", common + ["--max-steps-this-run", "4"])
    assert torch.load(out / "ckpt.pt", weights_only=False)["best_step"] == 2
    assert train_mod.main(TINY + ["--out-dir", str(out), "--resume"] + common) == 0
    final = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["split"] == "test" and final["step"] == 6 and final["early_stop"] == 2


@pytest.mark.parametrize("new_best", [False, True])
def test_a_resume_that_lost_best_pt_never_scores_other_weights(tmp_path, monkeypatch, capsys, new_best):
    # Best at step 2, stopped at step 4, best.pt lost (a ckpt.pt carried alone between machines). Resumed: a warning;
    # with no better loss later the final metrics cannot come from the best weights and the run ends with an error
    # (exit 2) instead of scoring the last ones; a better loss after the resume writes a new best.pt, scored as usual.
    _scripted_validation(monkeypatch, [1.0, 2.0, 0.5 if new_best else 2.0, 2.0])
    common = ["--steps", "8", "--eval-every", "2", "--final-from", "best"]
    out = _run(tmp_path, "run", common + ["--max-steps-this-run", "4"])
    (out / "best.pt").unlink()
    try:
        code = train_mod.main(TINY + ["--out-dir", str(out), "--resume"] + common)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "best.pt is missing, but the best validation loss so far (1.0000) was at step 2" in err
    final = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][-1]
    if new_best:
        assert code == 0 and final["split"] == "test" and final["weights_from"] == "best" and final["weights_step"] == 6
    else:
        assert code == 2 and "the weights of best validation loss are gone" in err and final["split"] != "test"


def test_patience_needs_one_process(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exc:
        train_mod.main(TINY + ["--patience", "2"])
    assert exc.value.code == 2 and "--patience works with one process" in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        train_mod.main(["--help"])
    out = capsys.readouterr().out
    assert "(default: 150)" in out and "0 disables" in out


@pytest.mark.parametrize("argv,msg", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--n-embd", "30", "--n-head", "4"], "must be divisible"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--device", "tpu"], "--device must be"),
    (["--model", "rnn"], "invalid choice"),
    (["--dtype", "bfloat16", "--device", "cpu"], "on CPU use float32"),
    (["--grad-clip", "-1"], "--grad-clip must be a positive norm, or 0 to disable"),
    (["--beta2", "2"], "--beta2 must be in [0, 1)"),
    (["--beta1", "-0.1"], "--beta1 must be in [0, 1)"),
    (["--out-dir", "/dev/null/x"], "--out-dir /dev/null/x is not a writable folder"),
    (["--task", "lm"], "--task lm needs --data"),
    (["--data", "x.txt"], "--data and --val-data are for --task lm"),
    (["--task", "lm", "--data", "x.txt", "--val-fraction", "1"], "--val-fraction must be in (0, 1)"),
    (["--block-size", "0"], "--block-size must be >= 1"),
    (["--cuda-graph", "--device", "cpu"], "--cuda-graph needs a CUDA device, got --device cpu"),
    (["--cuda-graph", "--compile"], "--cuda-graph runs one process without --compile"),
    (["--reference-ops", "mosaic_attention", "--kernels", "reference"], "picks ops of a Memory Mosaic's fused path"),
    (["--reference-ops", "mosaic_attention", "--model", "gpt"], "--reference-ops picks ops"),
    (["--reference-ops", "softmax"], "invalid choice"),
    (["--patience", "0"], "--patience must be >= 1"),
])
def test_bad_arguments_exit_nonzero_with_a_message(argv, msg, capsys):
    with pytest.raises(SystemExit) as exc:
        train_mod.main(argv)
    assert exc.value.code == 2
    assert msg in capsys.readouterr().err


def test_ddp_two_processes_equal_one_process_with_accumulation(tmp_path):
    """torchrun, 2 CPU processes (gloo) x 1 micro-step == 1 process x 2 micro-steps: same batches drawn,
    same averaged gradient, so the same weights after 3 optimizer steps."""
    import os
    import subprocess
    import sys

    common = TINY + ["--steps", "3", "--eval-every", "3", "--dropout", "0.0"]
    single = _run(tmp_path, "single", ["--steps", "3", "--eval-every", "3", "--dropout", "0.0", "--grad-accum", "2"])
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "mosaic_model.cli.train", *common, "--out-dir", str(ddp)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("in-context accuracy") == 1  # only rank 0 reports
    a = torch.load(single / "ckpt.pt", weights_only=False)
    b = torch.load(ddp / "ckpt.pt", weights_only=False)
    assert b["args"]["world_size"] == 2 and a["args"]["grad_accum"] == 2
    # The two runs sum the same per-sequence gradients in another order (all-reduce against
    # accumulation): a relative difference of ~sqrt(16) u32 = 2.4e-7. AdamW's step lr * m / sqrt(v)
    # moves a weight by that relative amount of lr (3e-3 here) per step: ~2e-9 after 3 steps, so
    # atol 1e-6 has ~500x to spare and rtol 1e-4 covers the weights themselves.
    for name, tensor in a["model"].items():
        assert torch.allclose(tensor, b["model"][name], rtol=1e-4, atol=1e-6), name
