"""Language modelling end to end on CPU: mosaic-train --task lm, mosaic-eval, cached generation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mosaic_model import GPT, GPTConfig, MemoryMosaic, MosaicConfig
from mosaic_model.cli import eval as eval_mod
from mosaic_model.cli import train as train_mod
from mosaic_model.data import text
from mosaic_model.evaluation.prompts import default_prompts
from tests import tolerances
from tests.model.test_text import byte_encoding

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park", "Lily", "Ben", "saw"]


@pytest.fixture
def corpus_file(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "gpt2_encoding", lambda tokenizer_dir=None: byte_encoding())
    monkeypatch.setenv("MOSAIC_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, rng.integers(8, 30))) + "." for _ in range(120)]
    path = tmp_path / "stories.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in docs))
    return path


def _train(tmp_path, corpus_file, model, extra=()):
    out = tmp_path / f"run-{model}"
    argv = ["--task", "lm", "--data", str(corpus_file), "--model", model, "--n-layer", "1", "--n-head", "2",
            "--n-embd", "16", "--block-size", "32", "--batch-size", "4", "--steps", "4", "--eval-every", "2",
            "--eval-batches", "2", "--eval-batch-size", "4", "--warmup", "1", "--device", "cpu",
            "--kernels", "reference", "--quiet", "--out-dir", str(out), *extra]
    assert train_mod.main(argv) == 0
    return out


@pytest.mark.parametrize("model", ["mosaic", "gpt"])
def test_lm_training_logs_train_and_val_loss(tmp_path, corpus_file, model, capsys):
    out = _train(tmp_path, corpus_file, model)
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [l for l in lines if l["split"] == "val"]
    assert [v["step"] for v in vals] == [2, 4]
    assert all(np.isfinite(v["loss"]) and np.isfinite(v["train_loss"]) for v in vals)
    assert lines[-1]["split"] == "final"
    assert "val loss" in capsys.readouterr().out
    ck = torch.load(out / "ckpt.pt", weights_only=False)
    assert ck["model_config"]["vocab_size"] == 50304 and ck["model_config"]["block_size"] == 32
    prov = [json.loads(l) for l in (out / "provenance.jsonl").read_text().splitlines()]
    assert len(prov) == 1 and prov[0]["start_step"] == 0 and prov[0]["torch"] == torch.__version__
    assert "commit" in prov[0]  # a hash in a git checkout, None in an installed copy


def test_lm_resume_is_exact(tmp_path, corpus_file):
    straight = _train(tmp_path, corpus_file, "mosaic", ["--dropout", "0.1"])
    part = tmp_path / "part"
    common = ["--task", "lm", "--data", str(corpus_file), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
              "--block-size", "32", "--batch-size", "4", "--steps", "4", "--eval-every", "2", "--eval-batches", "2",
              "--eval-batch-size", "4", "--warmup", "1", "--device", "cpu", "--kernels", "reference", "--quiet",
              "--dropout", "0.1", "--out-dir", str(part)]
    train_mod.main(common + ["--max-steps-this-run", "2"])
    train_mod.main(common + ["--resume"])
    a, b = (torch.load(d / "ckpt.pt", weights_only=False) for d in (straight, part))
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_preset_paper_sets_the_recipe_and_flags_override():
    a = train_mod.parse_args(["--preset", "paper", "--data", "x.txt", "--n-layer", "4", "--device", "cpu"])
    assert a.task == "lm" and a.n_layer == 4 and a.n_embd == 768 and a.lr == 5e-3 and a.beta2 == 0.95
    assert a.min_lr_ratio * a.lr == pytest.approx(1e-4) and a.warmup == 2000 and a.steps == 80000


def test_bad_corpus_is_a_one_line_error(tmp_path, corpus_file, capsys):
    short = tmp_path / "short.txt"
    short.write_text("hi")
    with pytest.raises(SystemExit) as exc:
        train_mod.main(["--task", "lm", "--data", str(short), "--val-data", str(short), "--device", "cpu",
                        "--out-dir", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "shorter than one window" in err and len(err.splitlines()) == 1


def test_mosaic_eval_subcommands(tmp_path, corpus_file, capsys):
    runs = [str(_train(tmp_path, corpus_file, m)) for m in ("mosaic", "gpt")]
    common = ["--data", str(corpus_file), "--device", "cpu", "--batch-size", "8", "--quiet"]
    out = tmp_path / "ev"
    assert eval_mod.main(["loss", *runs, *common, "--out", str(out / "loss")]) == 0
    loss = json.loads((out / "loss.json").read_text())["results"]
    assert all(np.isfinite(r["loss"]) and r["tokens"] > 0 for r in loss.values())
    assert eval_mod.main(["per-position", *runs, *common, "--max-docs", "20", "--out", str(out / "pp-lr0.003")]) == 0
    pp = json.loads((out / "pp-lr0.003.json").read_text())["results"]  # the dot of a stem is kept
    assert all(len(r["loss"]) == 32 for r in pp.values()) and (out / "pp-lr0.003.png").stat().st_size > 0
    assert eval_mod.main(["per-position", *runs, *common, "--full-length", "--out", str(out / "full")]) == 0
    full = json.loads((out / "full.json").read_text())["results"]
    for r in full.values():  # the same documents at every position
        assert r["full_length"] and len(set(r["documents"])) == 1 and r["documents"][0] >= 1
    assert eval_mod.main(["per-position", *runs, *common, "--full-length", "--block-size", "100000",
                          "--out", str(out / "none")]) == 2
    assert "no document has 100001 tokens or more" in capsys.readouterr().err
    assert eval_mod.main(["attention", *runs, *common, "--num-seqs", "6", "--out", str(out / "att")]) == 0
    att = json.loads((out / "att.json").read_text())["results"]
    mosaic, gpt = (np.array(att[r]["attention"]) for r in runs)
    assert mosaic.shape == (1, 2, 31) and gpt.shape == (1, 2, 32)  # strict mask: the Mosaic's last row sees T-1
    assert np.allclose(mosaic.sum(-1), 1) and np.allclose(gpt.sum(-1), 1)
    assert eval_mod.main(["long-context", *runs, *common, "--num-seqs", "4", "--max-docs", "10", "--out", str(out / "lc")]) == 0
    lc = json.loads((out / "lc.json").read_text())["results"]
    assert all(len(r["loss"]) == 96 for r in lc["loss_by_position"].values())
    assert lc["loss_by_position"][runs[1]]["gpt_sliding_window"] == 32
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["the cat", "Lily saw"]))
    assert eval_mod.main(["generate", *runs, "--prompts", str(prompts), "--max-new-tokens", "5", "--device", "cpu",
                          "--out", str(out / "gen")]) == 0
    md = (out / "gen.md").read_text()
    assert "temperature 0.0" in md and md.count("1. the cat") == 2


def test_mosaic_eval_bad_run_is_a_one_line_error(tmp_path, capsys):
    assert eval_mod.main(["loss", str(tmp_path), "--data", "x.txt", "--device", "cpu"]) == 2
    assert f"{tmp_path / 'ckpt.pt'}: no checkpoint there" in capsys.readouterr().err


def test_the_24_prompts_ship_with_the_package():
    prompts = default_prompts()
    assert len(prompts) == 24 and prompts[0].startswith("Alice was so tired")


@pytest.mark.parametrize("make", [
    lambda: MemoryMosaic(MosaicConfig(n_layer=2, n_head=4, n_embd=32, block_size=24, vocab_size=50, dropout=0.1)),
    lambda: GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=24, vocab_size=50, dropout=0.1)),
], ids=["mosaic", "gpt"])
def test_static_cache_decodes_as_the_growing_cache(make):
    """The static cache (fixed-size buffers, the position a tensor: what a CUDA graph replays) gives the
    growing cache's logits at every position (tolerances.FP32: the masked rows add exact zeros, but the
    sums run over the block, in another order) and the same greedy tokens, also past block_size."""
    from mosaic_model.models.generation import static_cache
    from tests.conftest import rel_err

    torch.manual_seed(0)
    m = make().eval()
    idx = torch.randint(0, 50, (3, 9))
    grow, fixed = {}, static_cache(m.config.block_size, idx.device)
    a = torch.stack([m.decode_step(idx[:, t], grow) for t in range(9)], dim=1)
    b = torch.stack([m.decode_step(idx[:, t], fixed) for t in range(9)], dim=1)
    assert int(fixed["pos"]) == 9 and rel_err(b, a) < tolerances.FP32
    m._static_decoding = True
    # 9 + 20 tokens: the last 5 steps past block_size (24), each rebuilding the cache from the last 24
    assert torch.equal(m.generate(idx, 20, temperature=0), m.generate(idx, 20, temperature=0, use_cache=False))


def test_cuda_graph_needs_a_cache_on_cuda():
    m = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50))
    with pytest.raises(ValueError, match="cuda_graph needs use_cache=True and idx on a CUDA device"):
        m.generate(torch.zeros(1, 3, dtype=torch.long), 2, cuda_graph=True)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["mosaic", "gpt"])
def test_gpu_cuda_graph_decoding_gives_the_eager_tokens(model):
    """In float32 the graphed static decoding gives the eager growing cache's greedy tokens."""
    torch.manual_seed(0)
    common = dict(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=50, dropout=0.0)
    m = (MemoryMosaic(MosaicConfig(**common)) if model == "mosaic" else GPT(GPTConfig(**common))).cuda().eval()
    idx = torch.randint(0, 50, (2, 5), device="cuda")
    eager = m.generate(idx, 30, temperature=0)
    assert torch.equal(m.generate(idx, 30, temperature=0, cuda_graph=True), eager)


@pytest.mark.parametrize("make", [
    lambda: MemoryMosaic(MosaicConfig(n_layer=2, n_head=4, n_embd=32, block_size=24, vocab_size=50, dropout=0.1)),
    lambda: GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=24, vocab_size=50, dropout=0.1)),
], ids=["mosaic", "gpt"])
def test_cached_decoding_equals_the_full_forward(make):
    """The cache's logits equal the full forward's at every position (float32 sums in another order:
    tolerances.FP32), and greedy generation gives the same tokens with and without it, also past
    block_size, where both paths see the last block_size tokens."""
    torch.manual_seed(0)
    m = make().eval()
    idx = torch.randint(0, 50, (3, 9))
    cache: dict = {}
    steps = torch.stack([m.decode_step(idx[:, t], cache) for t in range(9)], dim=1)
    from tests.conftest import rel_err

    assert rel_err(steps, m(idx)[0]) < tolerances.FP32
    m.train()  # generate() switches to eval and back
    cached = m.generate(idx, 20, temperature=0, use_cache=True)  # 9 + 20 tokens: 5 steps past block_size (24)
    assert m.training
    assert torch.equal(cached, m.generate(idx, 20, temperature=0, use_cache=False))
    g1, g2 = (torch.Generator().manual_seed(1) for _ in range(2))
    assert torch.equal(m.generate(idx, 10, temperature=1.0, top_k=5, generator=g1),
                       m.generate(idx, 10, temperature=1.0, top_k=5, generator=g2, use_cache=False))


@pytest.mark.parametrize("kind", ["mosaic", "gpt", "llama", "mosaic-v2"])
def test_a_step_without_logits_fills_the_same_cache(kind):
    """decode_step(..., logits=False), the prompt's tokens before its last in generate() and the Hugging Face
    wrapper, skips the output layer only: it returns None and leaves the cache as a step with logits does, so
    the next step's logits are the same bits."""
    from mosaic_model.models.build import build_model

    torch.manual_seed(0)
    common = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=50)
    extra = dict(window=4, delay_min=2, delay_max=5, delay_eval=3) if kind == "mosaic-v2" else dict(block_size=24)
    m = build_model(kind, {**common, **extra}).eval()
    idx = torch.randint(0, 50, (2, 7))
    caches: list[dict] = [{}, {}]
    with torch.no_grad():
        for t in range(6):
            assert m.decode_step(idx[:, t], caches[0], logits=False) is None
            assert m.decode_step(idx[:, t], caches[1]).shape == (2, 50)
        assert torch.equal(m.decode_step(idx[:, 6], caches[0]), m.decode_step(idx[:, 6], caches[1]))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_token_losses_do_not_depend_on_the_rows_per_model_call(monkeypatch, device):
    """The evaluation's per-token losses are the same whether the batch goes through the model one row a call
    (the CPU's budget at GPT-2's vocabulary) or all at once (the GPU's): the rows are independent."""
    from mosaic_model.evaluation import metrics
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)).to(device).eval()
    x, y = torch.randint(0, 50, (6, 16)), torch.randint(0, 50, (6, 16))
    y[0, :3] = -100  # ignored targets give 0
    budgets = {"one": 16 * 50, "all": 6 * 16 * 50}
    out = {}
    for name, budget in budgets.items():
        monkeypatch.setattr(metrics, "EVAL_LOGITS", budget)
        monkeypatch.setattr(metrics, "EVAL_LOGITS_GPU", budget)
        out[name] = metrics.token_losses(model, x, y, device, torch.float32).cpu()
    assert out["one"].shape == (6, 16) and (out["one"][0, :3] == 0).all()
    # float32 rows of one model: a batched GEMM may sum its 32-term (width) products in another order than six
    # single-row ones, a difference of at most about 32 * 6e-8 = 2e-6 of O(1) values per product; through two
    # blocks, the head and a log-sum-exp of 50 logits of size O(1) that stays a few times 2e-6: 1e-5.
    torch.testing.assert_close(out["one"], out["all"], rtol=0, atol=1e-5)
