"""The stutter study (experiments.stutter): its logit decomposition is exact, its intervention cuts the
most recent key and nothing else, and it runs end to end on a Memory Mosaic and a GPT2."""
from __future__ import annotations

import json

import torch

from experiments import stutter
from mosaic_model.training.checkpoint import load_model
from tests.model.test_lm import _train, corpus_file  # noqa: F401  (corpus_file is a fixture)


def test_study_runs_and_its_decomposition_is_exact(tmp_path, corpus_file):  # noqa: F811
    runs = [_train(tmp_path, corpus_file, m, ["--n-layer", "2"]) for m in ("mosaic", "gpt")]
    out = tmp_path / "study"
    assert stutter.main([*map(str, runs), "--out", str(out), "--windows", "4", "--batch", "2", "--samples", "1",
                         "--max-new-tokens", "3"]) == 0
    mm, gpt = json.loads((out / "stutter.json").read_text())
    assert (out / "push.png").is_file()
    # The parts' pushes sum to the centred logit of the current token. Float32: each term is a sum of
    # d = 16 products of O(1) numbers, the logits O(1); the sums of 5-6 terms agree to a few ulps of O(10),
    # so 1e-4 is ~100 ulps of margin while a missing part (pushes of O(0.01-1)) would fail it.
    assert mm["push_reconstruction_error"] < 1e-4 and gpt["push_reconstruction_error"] < 1e-4
    assert set(mm["push_all_positions"]) == {"embedding", "0.cmem", "0.pmem", "1.cmem", "1.pmem"}
    assert set(gpt["push_all_positions"]) == {"embedding", "0.attn", "0.mlp", "1.attn", "1.mlp"}
    assert mm["cached_equals_uncached_greedy"] and gpt["cached_equals_uncached_greedy"]
    assert len(mm["latest_key_weight"]) == 2 and "without_latest_key" in mm and "without_latest_key" not in gpt
    for r in (mm, gpt):
        assert 0 <= r["text_repeats"] <= 1 and 0 <= r["teacher_forced"]["p_current"] <= 1


def test_cut_reads_keys_up_to_t_minus_2_and_is_undone(tmp_path, corpus_file):  # noqa: F811
    model, _ = load_model(_train(tmp_path, corpus_file, "mosaic", ["--n-layer", "2"]), kernels="reference")
    x = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        before = model(x)[0]
        with stutter.cmem_reading_from(model, delay=2):
            cut = model(x)[0]
            # Under the cut, row 1 reads no key at all: its C-mem output is c_proj's bias alone.
            cmem_in = {}
            h = model.blocks[0].cmem.register_forward_hook(lambda m, i, o: cmem_in.setdefault("y", o))
            model(x)
            h.remove()
        after = model(x)[0]
    bias = model.blocks[0].cmem.c_proj.bias
    expected_row1 = bias if bias is not None else torch.zeros_like(cmem_in["y"][0, 1])
    assert torch.equal(cmem_in["y"][:, 1], expected_row1.expand_as(cmem_in["y"][:, 1]))
    assert torch.equal(before[:, 0], cut[:, 0])             # row 0 reads no key either way
    assert not torch.allclose(before[:, 2:], cut[:, 2:])     # later rows lose key t-1
    assert torch.equal(before, after)                        # the model's own forward is back


def test_latest_key_weight_matches_a_loop(tmp_path, corpus_file):  # noqa: F811
    model, _ = load_model(_train(tmp_path, corpus_file, "mosaic"), kernels="reference")
    x = torch.randint(0, 200, (1, 6))
    _, contrib = stutter.forward_with_parts(model, x)
    got = stutter.latest_key_weight(model, [contrib["cmem_input.0"]])[0]
    with torch.no_grad():
        k = model.blocks[0].cmem.key(contrib["cmem_input.0"]).double()[0]   # (H, T, hs)
    weights = []
    for h in range(k.shape[0]):
        for t in range(1, k.shape[1]):
            logits = torch.stack([k[h, t] @ k[h, j] for j in range(t)])
            weights.append(float(torch.softmax(logits, 0)[t - 1]))
    assert abs(got - sum(weights) / len(weights)) < 1e-12  # float64 both ways, same sums in another order
