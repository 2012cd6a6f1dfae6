"""The Hugging Face classes (mosaic_model.hf): Auto classes, save/load through safetensors with the same
logits, generate() token for token against the package's own, the run <-> folder conversion, and
lm-evaluation-harness on an exported model with a local task."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the [hf] extra is not installed")

import mosaic_model.hf as mh  # noqa: E402 (after the skip)
from mosaic_model.cli import hf as hf_cli  # noqa: E402
from mosaic_model.cli import train as train_cli  # noqa: E402
from mosaic_model.evaluation.prompts import default_prompts  # noqa: E402
from mosaic_model.models.build import MODEL_CLASSES  # noqa: E402
from mosaic_model.training.checkpoint import load_model  # noqa: E402

SMALL = dict(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=50304)
KINDS = list(MODEL_CLASSES)  # every model type of the package has its transformers classes
EXTRA = {"mosaic": dict(kernels="reference"), "mosaic-v2": dict(kernels="reference", window=5, delay_min=3,
                                                                 delay_max=6, delay_eval=3)}


def _build(kind: str) -> torch.nn.Module:
    cls, config_cls = MODEL_CLASSES[kind]
    return cls(config_cls(**SMALL, **EXTRA.get(kind, {})))


def _models():
    torch.manual_seed(0)
    return {kind: _build(kind).eval() for kind in KINDS}


def test_every_model_type_has_its_transformers_classes():
    assert set(mh.HF_CLASSES) == set(MODEL_CLASSES)


@pytest.mark.parametrize("kind", KINDS)
def test_auto_classes_build_the_model_from_its_config(kind):
    config_cls, model_cls = mh.HF_CLASSES[kind]
    config = transformers.AutoConfig.for_model(config_cls.model_type, **SMALL, **EXTRA.get(kind, {}))
    assert isinstance(config, config_cls) and config.num_hidden_layers == 2 and config.hidden_size == 32
    torch.manual_seed(3)
    hf = transformers.AutoModelForCausalLM.from_config(config)
    torch.manual_seed(3)
    ours = MODEL_CLASSES[kind][0](mh.configuration.own_config(config))
    assert type(hf) is model_cls
    # The package's own initialisation, not transformers' default one.
    for (name, a), (_, b) in zip(hf.model.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_the_same_logits(kind, tmp_path):
    model = _models()[kind]
    mh.convert.to_hf(model).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 50257, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x)[0])
        labels = x.clone()
        ours = torch.nn.functional.cross_entropy(model(x)[0][:, :-1].reshape(-1, 50304), x[:, 1:].reshape(-1))
        assert torch.equal(loaded(x, labels=labels).loss, ours)


@pytest.mark.parametrize("kind", KINDS)
def test_generate_gives_our_tokens(kind):
    """Greedy and sampled, past the block size (24) where both rebuild their cache from the last block."""
    model = _models()[kind]
    hf = mh.convert.to_hf(model)
    prompt = torch.randint(0, 50257, (2, 6), generator=torch.Generator().manual_seed(2))
    ours = model.generate(prompt, 30, temperature=0)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30, do_sample=False)
    assert torch.equal(ours, theirs)
    torch.manual_seed(7)
    ours = model.generate(prompt, 30, temperature=0.8, top_k=40)
    torch.manual_seed(7)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30, do_sample=True,
                         temperature=0.8, top_k=40, top_p=1.0)
    assert torch.equal(ours, theirs)


def test_left_padding_is_refused():
    hf = mh.convert.to_hf(_models()["mosaic"])
    with pytest.raises(ValueError, match="left padding"):
        hf(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1]]))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--num-train", "24", "--num-test", "8",
            "--max-string-len", "5", "--batch-size", "8", "--steps", "2", "--eval-every", "2", "--device", "cpu",
            "--kernels", "reference", "--quiet", "--out-dir", str(out)]
    assert train_cli.main(argv) == 0
    return out


def test_a_run_goes_to_a_folder_and_back(trained_run, tmp_path, capsys):
    assert hf_cli.main(["export", str(trained_run), str(tmp_path / "hf")]) == 0
    written = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "mosaic_run.json"} <= written
    assert json.loads((tmp_path / "hf" / "mosaic_run.json").read_text())["step"] == 2
    assert hf_cli.main(["import", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    a, _ = load_model(trained_run)
    b, ckpt = load_model(tmp_path / "back")
    x = torch.randint(0, 20, (2, 9))
    assert ckpt["step"] == 2 and torch.equal(a(x)[0], b(x)[0])
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok("Hello world, Lily and Ben went to the park.")["input_ids"][:2] == [15496, 995]


def test_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        hf_cli.main(["import", str(tmp_path / "nothing"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no config.json there" in err and len(err.strip().splitlines()) == 1


def test_the_harness_scores_an_exported_model_on_a_local_task(tmp_path, monkeypatch):
    """lm-evaluation-harness's hf model on an exported Memory Mosaic, offline, on a multiple-choice task
    built from the package's own prompts: it prints a score, and each choice's loglikelihood is the one
    our model gives (float32 on the CPU; the harness batches and right-pads, and a causal model's
    positions do not see the padding, so the sums differ only by the GEMMs' blocking: 1e-4 nats on sums
    of 5-20 log-probabilities of magnitude ~10 is ~1e-6 relative, tens of float32 roundings)."""
    pytest.importorskip("lm_eval", reason="the [harness] extra is not installed")
    from mosaic_model.data.text import gpt2_encoding
    from mosaic_model.hf import harness

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _models()["mosaic"]
    model.config.block_size = 128
    folder = tmp_path / "hf"
    mh.convert.to_hf(model).save_pretrained(folder)
    mh.convert.gpt2_tokenizer().save_pretrained(folder)
    task = harness.write_choice_task(tmp_path / "tasks", default_prompts()[:8])
    res = harness.evaluate(folder, [task], include_path=tmp_path / "tasks", log_samples=True)
    acc = res["results"][task]["acc,none"]
    print(f"{task}: acc {acc:.3f}")
    assert 0.0 <= acc <= 1.0 and res["results"][task]["sample_len"] == 8
    enc = gpt2_encoding()
    for sample in res["samples"][task]:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            ctx, whole = enc.encode_ordinary(context), enc.encode_ordinary(context + continuation)
            x = torch.tensor([whole[:-1]])
            with torch.no_grad():
                logp = torch.log_softmax(model(x)[0][0].float(), dim=-1)
            ours = sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))
            assert abs(resp[0][0] - ours) < 1e-4
