"""What a newcomer meets on the command lines: evaluation refuses run kinds it cannot take, a run folder is
never written over silently, prompts from the command line or a checked file, one-line warnings where a
run is legal but surely not meant, and help text on every option."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from experiments import induction, lm_depth, regbench, three_moons
from mosaic_model.cli import eval as eval_cli
from mosaic_model.cli import hf as hf_cli
from mosaic_model.cli import train as train_cli
from mosaic_model.data import text
from tests.model.test_text import byte_encoding

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--num-train", "24", "--num-test", "8",
        "--max-string-len", "5", "--batch-size", "8", "--eval-batch-size", "8", "--steps", "2", "--eval-every", "2",
        "--warmup", "1", "--device", "cpu", "--kernels", "reference", "--quiet"]


def _one_line_error(capsys, call) -> str:
    capsys.readouterr()  # what came before is not this call's
    with pytest.raises(SystemExit) as e:
        call()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def icl_run(tmp_path):
    out = tmp_path / "icl"
    assert train_cli.main(TINY + ["--out-dir", str(out)]) == 0
    return out


@pytest.mark.parametrize("command", ["loss", "per-position", "attention", "long-context", "generate"])
def test_every_eval_command_says_which_runs_it_takes(icl_run, tmp_path, command, capsys):
    (tmp_path / "f.txt").write_text("some text\n\nmore text")
    argv = [command, str(icl_run), "--device", "cpu"] + ([] if command == "generate" else ["--data", str(tmp_path / "f.txt")])
    assert eval_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an in-context task run" in err[0] and "mosaic-train --task lm" in err[0]


def test_a_folder_holding_a_run_is_not_overwritten(icl_run, capsys):
    before = (icl_run / "metrics.jsonl").read_text()
    err = _one_line_error(capsys, lambda: train_cli.main(TINY + ["--out-dir", str(icl_run), "--steps", "4"]))
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (icl_run / "metrics.jsonl").read_text() == before  # untouched
    assert train_cli.main(TINY + ["--out-dir", str(icl_run), "--steps", "4", "--overwrite"]) == 0
    lines = [json.loads(l) for l in (icl_run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["weights_step"] == 4 and [l["step"] for l in lines if l["split"] == "val"] == [2, 4]
    assert len((icl_run / "provenance.jsonl").read_text().splitlines()) == 1  # the replaced run's line is gone
    err = _one_line_error(capsys, lambda: train_cli.parse_args(TINY + ["--resume", "--overwrite"]))
    assert "--overwrite and --resume exclude each other" in err


def test_warm_up_longer_than_the_run_is_a_warning(tmp_path, capsys):
    assert train_cli.main(TINY + ["--out-dir", str(tmp_path / "w"), "--warmup", "1000"]) == 0
    warnings = [l for l in capsys.readouterr().err.splitlines() if "warning" in l]
    assert warnings == ["warning: --warmup 1000 is not shorter than the run (--steps 2): the learning rate never "
                        "reaches --lr 0.003"]


@pytest.fixture
def lm_run(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "gpt2_encoding", lambda tokenizer_dir=None: byte_encoding())
    monkeypatch.setenv("MOSAIC_CACHE_DIR", str(tmp_path / "cache"))
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n\n".join(f"Story {i}: the cat sat on the mat and looked at {i} birds." for i in range(40)))
    out = tmp_path / "lm"
    argv = ["--task", "lm", "--data", str(corpus), "--block-size", "16", "--eval-batch-size", "4", "--batch-size", "4"]
    assert train_cli.main(TINY[:6] + TINY[12:] + argv + ["--out-dir", str(out)]) == 0
    return out, corpus


def test_the_final_lm_evaluation_scores_the_whole_validation_split(lm_run):
    out, _ = lm_run
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    final, last_val = lines[-1], [l for l in lines if l["split"] == "val"][-1]
    assert final["split"] == "final" and final["tokens"] > 0 and final["loss"] != last_val["loss"]


def test_evaluating_on_the_training_text_is_a_warning(lm_run, capsys):
    out, corpus = lm_run
    assert eval_cli.main(["loss", str(out), "--data", str(corpus), "--device", "cpu", "--out", str(out / "e")]) == 0
    warnings = [l for l in capsys.readouterr().err.splitlines() if "warning" in l]
    assert len(warnings) == 1 and "is the text lm trained on" in warnings[0] and "0.05 held out" in warnings[0]


def test_prompts_from_the_command_line_and_a_checked_file(lm_run, tmp_path, capsys):
    out, _ = lm_run
    common = ["generate", str(out), "--device", "cpu", "--max-new-tokens", "3", "--out", str(tmp_path / "g")]
    assert eval_cli.main(common + ["--prompt", "the cat", "--prompt", "a dog"]) == 0
    md = (tmp_path / "g.md").read_text()
    assert "Continuations of the 2 prompts" in md and "1. the cat" in md and "2. a dog" in md
    capsys.readouterr()
    for content, expected in (("[1, 2", "not JSON"), ("[1, 2]", "expected a JSON list of non-empty strings"),
                              ("[]", "the list is empty")):
        path = tmp_path / "p.json"
        path.write_text(content)
        assert eval_cli.main(common + ["--prompts", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and expected in err[0], err


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    found = [("mosaic-train", train_cli.build_parser())]
    for name, module in (("mosaic-eval", eval_cli), ("mosaic-hf", hf_cli)):
        parser = module.build_parser()
        subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        found += [(f"{name} {sub}", p) for sub, p in subs.choices.items()]
    found += [(f"experiments.{m.__name__.split('.')[-1]}", m.build_parser())
              for m in (lm_depth, regbench, three_moons, induction) if hasattr(m, "build_parser")]
    return found


@pytest.mark.parametrize("name, parser", _parsers(), ids=[n for n, _ in _parsers()])
def test_every_option_has_help_text(name, parser):
    missing = [a.option_strings or a.dest for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, f"{name}: options without help: {missing}"
    text = parser.format_help()
    assert "(default: None)" not in text and not re.search(r"\(default: [^)]*\)\s*\(default:", text)


def test_the_readme_lists_every_part_of_gpu_check():
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    parts = set()
    for case in re.findall(r"^\s{4}([a-z0-9|-]+)\)$", script, flags=re.M):
        parts |= set(case.split("|"))
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## On a GPU"):]
    listed = set(re.findall(r"`(-?[a-z0-9-]+)`", section))
    listed |= {"training-compiled" + p for p in listed if p.startswith("-")}
    assert parts <= listed, f"README misses {sorted(parts - listed)}"
