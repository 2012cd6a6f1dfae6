"""The RegBench recipe: ``mosaic-train --preset regbench`` (as REPRODUCTION.md states), the timm-style
schedule, epochs, the IID split of Table 4, and test metrics from the weights of best validation loss."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mosaic_model.cli import train as train_mod
from mosaic_model.data.regbench import ICLTask, ICLTaskConfig
from mosaic_model.training.optim import lr_at


def test_preset_holds_the_benchmark_settings():
    a = train_mod.parse_args(["--preset", "regbench", "--device", "cpu"])
    assert (a.n_layer, a.n_embd, a.n_head, a.pmem_size) == (2, 128, 8, 448)
    assert (a.dropout, a.attn_dropout, a.max_string_len, a.num_test) == (0.05, 0.05, 49, 1000)
    assert (a.lr, a.weight_decay, a.decay_all, a.beta2, a.batch_size, a.grad_clip) == (5e-4, 0.1, True, 0.999, 32, 1.0)
    assert (a.dtype, a.final_from, a.schedule) == ("float32", "best", "regbench")
    # seq_icl with 100 training languages: 4 steps an epoch, 800 steps, 80 of warm-up, evaluation every epoch.
    assert (a.steps, a.warmup, a.eval_every) == (800, 80, 4)
    b = train_mod.parse_args(["--preset", "regbench", "--device", "cpu", "--num-train", "40000", "--step-cap", "5000"])
    assert (b.steps, b.warmup, b.eval_every) == (5000, 500, 1250)  # 200 epochs would be 250,000 steps


def test_regbench_schedule_is_timms_cosine_from_step_zero():
    a = train_mod.parse_args(["--preset", "regbench", "--device", "cpu"])
    lr, floor = 5e-4, 5e-5
    assert lr_at(0, a) == pytest.approx(1e-6)
    assert lr_at(40, a) == pytest.approx(1e-6 + 40 * (lr - 1e-6) / 80)
    for t in (80, 400, 799):  # after the warm-up the cosine is measured from step 0, not from step 80
        assert lr_at(t, a) == pytest.approx(floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * t / 800)))
    assert lr_at(800, a) == pytest.approx(floor)


def test_iid_split_resamples_the_training_languages():
    common = dict(num_train=12, num_test=10, max_string_len=7, seed=5)
    plain, iid = ICLTask(ICLTaskConfig(**common)), ICLTask(ICLTaskConfig(**common, iid=True))
    assert plain.train.sequences == iid.train.sequences  # the training split does not move
    train_langs = set(iid.train.dfas)
    for split in (iid.test, iid.val):
        assert len(split) == 5 and set(split.dfas) <= train_langs
        assert all(s not in iid.train.sequences for s in split.sequences)  # new walks
    assert not set(plain.test.dfas) & train_langs  # the default holds out whole languages


def _run(tmp_path, *extra):
    out = tmp_path / "run"
    argv = ["--preset", "regbench", "--num-train", "8", "--num-test", "4", "--epochs", "3", "--max-string-len", "5",
            "--n-embd", "32", "--n-head", "4", "--pmem-size", "16", "--device", "cpu", "--quiet",
            "--kernels", "reference",  # under TRITON_INTERPRET=1 the fused kernels would take minutes here
            "--out-dir", str(out), *extra]
    assert train_mod.main(argv) == 0
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", ["mosaic", "gpt"])
def test_final_metrics_come_from_the_best_validation_weights(tmp_path, model):
    lines = _run(tmp_path, "--model", model, "--lr", "1e-2")
    vals = [l for l in lines if l["split"] == "val"]
    test = [l for l in lines if l["split"] == "test"][0]
    best = min(vals, key=lambda v: v["loss"])
    assert test["weights_from"] == "best" and test["weights_step"] == best["step"]
    assert [v["step"] for v in vals] == [1, 2, 3]  # one step an epoch at 8 languages, batch 32
    for key in ("accuracy", "l1", "tvd"):
        assert math.isfinite(test[key])
    assert test["tvd"] == pytest.approx(test["l1"] / 2)
    # best.pt keeps the weights alone; ckpt.pt, the one --resume reads, keeps the optimizer too.
    best_ckpt, last_ckpt = (torch.load(tmp_path / "run" / f, weights_only=False) for f in ("best.pt", "ckpt.pt"))
    assert "optimizer" not in best_ckpt and best_ckpt["step"] == best["step"] and "optimizer" in last_ckpt


@pytest.mark.parametrize("argv, msg", [
    (["--task", "lm", "--data", "x.txt", "--epochs", "3"], "--epochs is for --task icl"),
    (["--step-cap", "10"], "--step-cap goes with --epochs"),
    (["--preset", "regbench", "--model", "gpt", "--attn-dropout", "0.2"], "GPT2's attention dropout is --dropout"),
    (["--preset", "regbench", "--attn-dropout", "1.0"], "--attn-dropout must be in [0, 1)"),
    (["--preset", "regbench", "--epochs", "0"], "must be >= 1"),
    (["--preset", "regbench", "--steps", "10"], "cap it with --step-cap"),
])
def test_recipe_arguments_are_checked(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        train_mod.parse_args(argv + ["--device", "cpu"])
    assert e.value.code == 2 and msg in capsys.readouterr().err
