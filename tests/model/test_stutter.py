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
    assert (out / "push.png").is_file() and (out / "feedback.png").is_file()
    assert set(mm["feedback"]) == set(gpt["feedback"]) == {str(k) for k in stutter.FEEDBACK_COPIES}
    assert set(mm["without_latest_key"]["feedback"]) == set(mm["feedback"])
    for fb in (mm["feedback"], gpt["feedback"]):
        assert all(0 <= v["p_current"] <= 1 and 0 <= v["argmax_is_current"] <= 1 for v in fb.values())
    assert set(mm["decoding_cached"]["greedy_loops"]) == {"start", "start_pairs", "go_on", "go_on_pairs"}
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


def test_loop_stats_split_repeats_into_starts_and_go_ons():
    # [5, 5, 5, 7, 7, 8]: (5,5) starts a loop, (5,5) goes on, (5,7) ends it, (7,7) starts one, (7,8) ends it;
    # [1, 2]: a start pair that does not repeat; [3]: no pair. Starts 2 of 3 pairs, go-ons 1 of 3.
    got = stutter.loop_stats([[5, 5, 5, 7, 7, 8], [1, 2], [3]])
    assert got == {"start": 2 / 3, "start_pairs": 3, "go_on": 1 / 3, "go_on_pairs": 3}


def test_feedback_at_zero_copies_is_the_windows_own_prediction(tmp_path, corpus_file):  # noqa: F811
    """With k = 0 extra copies, a context of length L read at its last position is, by causality, the full
    window's prediction at position L - 1: the feedback's probability equals the one read off one forward of
    the windows, and its parts' pushes sum to the centred logit there."""
    for model_type in ("mosaic", "gpt"):
        kernels = {"kernels": "reference"} if model_type == "mosaic" else {}  # a GPT's config has no kernels field
        model, _ = load_model(_train(tmp_path / model_type, corpus_file, model_type, ["--n-layer", "2"]), **kernels)
        x = torch.randint(0, 200, (3, 16))
        fb = stutter.repeat_feedback(model, x, batch=2)
        with torch.no_grad():
            logp = torch.log_softmax(model(x)[0].double(), dim=-1)       # (3, 16, vocab)
        lengths = (4, 8, 12, 13)                                          # T/4, T/2, 3T/4, T - 3
        expected = torch.stack([logp[:, L - 1].gather(-1, x[:, L - 1:L]).exp()[:, 0] for L in lengths]).mean()
        # Float32 forwards of different lengths: the same sums over at most 16 positions, so the
        # probabilities agree to a few ulps of O(1e-3..1) values; 1e-5 absolute is ~100x that.
        assert abs(fb[0]["p_current"] - float(expected)) < 1e-5
        logits = model(x)[0].detach().double()
        centred = torch.stack([logits[:, L - 1].gather(-1, x[:, L - 1:L])[:, 0] - logits[:, L - 1].mean(-1)
                               for L in lengths]).mean()
        assert abs(sum(fb[0]["push"].values()) - float(centred)) < 1e-4  # as the decomposition test's bound
        assert fb[3]["contexts"] == 12
