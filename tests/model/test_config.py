"""The typed training config: the parser is built from it, presets are data, one validation hands the
model's fields to the model's config, and train(config) runs from Python as mosaic-train does."""
from __future__ import annotations

import dataclasses
import json

import pytest

from mosaic_model.cli import train as train_cli
from mosaic_model.models.config import ConfigError
from mosaic_model.training import PRESETS, SECTIONS, TrainConfig, preset, train
from mosaic_model.training.presets import preset_fields

TINY = dict(n_layer=1, n_head=2, n_embd=16, num_train=24, num_test=8, max_string_len=5, batch_size=8,
            eval_batch_size=8, log_every=1, warmup=2, device="cpu", kernels="reference", quiet=True)


def test_every_field_is_a_flag_with_its_default_and_help():
    parser = train_cli.build_parser()
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        action = actions[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")]
        default = list(f.default) if f.metadata["nargs"] else f.default
        assert action.default == default and action.help == f.metadata["help"]


def test_flags_are_grouped_by_section():
    groups = {g.title: {a.dest for a in g._group_actions} for g in train_cli.build_parser()._action_groups}
    for section in SECTIONS:
        assert groups[section.__doc__] == {f.name for f in dataclasses.fields(section)}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_on_the_command_line_is_the_preset_in_python(name):
    assert set(preset_fields(name)) <= {f.name for f in dataclasses.fields(TrainConfig)}
    data = {"paper": "x.txt", "regbench": None}[name]  # the paper's recipe is language modelling: it needs text
    from_cli = train_cli.parse_args(["--preset", name, "--device", "cpu"] + (["--data", data] if data else []))
    assert from_cli == preset(name, device="cpu", data=data).resolved()


def test_flags_override_a_preset_and_a_config_file(tmp_path):
    config = dataclasses.replace(preset("regbench", device="cpu"), num_train=40, lr=1e-3)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dataclasses.asdict(config)))
    assert train_cli.parse_args(["--config", str(path)]) == config.resolved()
    assert train_cli.parse_args(["--config", str(path), "--lr", "2e-3"]).lr == 2e-3


@pytest.mark.parametrize("content, msg", [("{", "not a readable JSON file"), ('{"n_layers": 2}', "n_layers"),
                                          ("[1]", "got list")])
def test_a_bad_config_file_is_a_one_line_error(tmp_path, capsys, content, msg):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as e:
        train_cli.parse_args(["--config", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err and str(path) in err


@pytest.mark.parametrize("field, value", [("attn_dropout", 1.5), ("n_embd", 30), ("kernels", "cuda"),
                                          ("dropout", -0.1), ("pmem_size", 0)])
def test_model_fields_are_checked_by_the_model_config(field, value):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{field: value}).resolved()
    assert e.value.field == field


@pytest.mark.parametrize("model", ["mosaic", "gpt", "llama"])
def test_v2_settings_on_another_model_are_an_error(model):
    with pytest.raises(ConfigError) as e:
        TrainConfig(model=model, delay_eval=32).resolved()
    assert e.value.field == "delay_eval" and "mosaic-v2" in e.value.what


def test_v2_settings_reach_the_v2_model_config():
    c = TrainConfig(model="mosaic-v2", window=32, delay_min=8, delay_max=8, delay_eval=8, fixed_bandwidth=True,
                    ungated_keys=True).resolved()
    m = c.model_config(block_size=64, vocab_size=10)
    assert (m["window"], m["delay_min"], m["delay_max"], m["delay_eval"]) == (32, 8, 8, 8)
    assert m["adaptive_bandwidth"] is False and m["gated_keys"] is False
    with pytest.raises(ConfigError) as e:
        TrainConfig(model="mosaic-v2", delay_min=9, delay_max=8).resolved()
    assert e.value.field == "delay_max"


def test_resolved_fills_the_derived_fields_once():
    c = preset("regbench", device="cpu", num_train=100)
    r = c.resolved()
    assert (r.steps, r.warmup, r.eval_every) == (800, 80, 4) and r.resolved() == r
    assert TrainConfig().resolved().device in ("cpu", "cuda")


def test_train_from_python_equals_the_command_line(tmp_path):
    final = train(TrainConfig(**TINY, steps=3, eval_every=3, out_dir=str(tmp_path / "py")))
    argv = [x for k, v in TINY.items() for x in (["--" + k.replace("_", "-")] if v is True else
                                                  ["--" + k.replace("_", "-"), str(v)])]
    assert train_cli.main(argv + ["--steps", "3", "--eval-every", "3", "--out-dir", str(tmp_path / "cli")]) == 0
    lines = [json.loads(l) for l in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert final["loss"] == lines[-1]["loss"] and final["accuracy"] == lines[-1]["accuracy"]
    saved = json.loads((tmp_path / "py" / "config.json").read_text())
    assert TrainConfig(**saved) == TrainConfig(**TINY, steps=3, eval_every=3, out_dir=str(tmp_path / "py")).resolved()


def test_gpt2_output_layer_reaches_the_memory_mosaic_only():
    m = TrainConfig(model="mosaic", output_layer="gpt2").resolved().model_config(block_size=8, vocab_size=10)
    assert m["logit_scale"] is False and m["embed_std"] == 0.02
    assert "logit_scale" not in TrainConfig(model="mosaic").resolved().model_config(block_size=8, vocab_size=10)
    with pytest.raises(ConfigError) as e:
        TrainConfig(model="gpt", output_layer="gpt2").resolved()
    assert e.value.field == "output_layer"
