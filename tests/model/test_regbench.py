"""The embedded in-context task: DFAs, sequences, splits and the two RegBench metrics."""
from __future__ import annotations

import itertools

import numpy as np
import torch

from mosaic_model.data.regbench import (
    DFA,
    IGNORE,
    PAD,
    SEP,
    VOCAB_SIZE,
    ICLTask,
    ICLTaskConfig,
    icl_metrics,
    legal_next_symbols,
    minimize,
    random_dfa,
)


def small_task(**kw) -> ICLTask:
    cfg = dict(num_train=40, num_test=20, max_string_len=9, seed=3)
    cfg.update(kw)
    return ICLTask(ICLTaskConfig(**cfg))


def test_every_string_is_accepted_by_its_own_dfa():
    task = small_task()
    for split in (task.train, task.test, task.val):
        for dfa, seq in zip(split.dfas, split.sequences):
            strings = [list(g) for sep, g in itertools.groupby(seq, lambda t: t == SEP) if not sep]
            assert 10 <= len(strings) <= 19
            assert all(1 <= len(s) <= 9 for s in strings)
            assert all(dfa.accepts(s) for s in strings)


def test_splits_are_disjoint_languages_and_reproducible():
    task = small_task()
    train, held = set(task.train.dfas), set(task.test.dfas) | set(task.val.dfas)
    assert len(train) == 40 and len(held) == 20 and not (train & held)
    again = small_task()
    assert again.train.sequences == task.train.sequences
    assert small_task(seed=4).train.sequences != task.train.sequences


def test_minimize_keeps_the_language_and_merges_equivalent_states():
    # States 1 and 2 are equivalent (both: 'a' -> 3); state 4 is unreachable.
    dfa = DFA(((( 1, 1), (2, 2)), ((1, 3),), ((1, 3),), ((2, 0),), ((1, 0),)))
    small = minimize(dfa)
    assert len(small.transitions) == 3
    rng = np.random.default_rng(0)
    for _ in range(300):
        s = rng.integers(1, 4, size=int(rng.integers(1, 7))).tolist()
        assert small.accepts(s) == dfa.accepts(s)
    rng = np.random.default_rng(1)
    for _ in range(20):
        d = random_dfa(rng, int(rng.integers(4, 13)), rng.choice(np.arange(1, 19), 6, replace=False))
        m = minimize(d)
        assert minimize(m) == m  # canonical: minimising twice changes nothing
        for _ in range(50):
            s = rng.integers(1, 19, size=int(rng.integers(1, 6))).tolist()
            assert m.accepts(s) == d.accepts(s)


def test_batch_layout_inputs_labels_and_padding():
    task = small_task()
    x, y, dfas = task.train.batch([0, 1])
    for row in range(2):
        seq = task.train.sequences[row]
        n = len(seq) - 1
        assert x[row, :n].tolist() == seq[:-1]
        want = [IGNORE if t == SEP else t for t in seq[1:]]
        assert y[row, :n].tolist() == want
        assert torch.all(x[row, n:] == PAD) and torch.all(y[row, n:] == IGNORE)


def _hand_case():
    # Language: from state 0, 'a'(1) -> 1 or 'b'(2) -> 1; from state 1, 'c'(3) -> 0.
    dfa = DFA((((1, 1), (2, 1)), ((3, 0),)))
    seq = [1, 3, SEP, 2, 3, 1]  # "ac | bca"
    x = torch.tensor([seq[:-1]])
    y = torch.tensor([[3, IGNORE, 2, 3, 1]])
    # Legal next symbols after each input position: {c}, {a,b}, {a,b}, {c}, {a,b}
    legal = [[3], [1, 2], [1, 2], [3], [1, 2]]
    return dfa, x, y, legal


def test_metrics_perfect_model():
    dfa, x, y, legal = _hand_case()
    probs = torch.full((1, 5, VOCAB_SIZE), 1e-12)
    for t, syms in enumerate(legal):
        probs[0, t, syms] = 1.0 / len(syms)
    m = icl_metrics(probs.log(), y, legal_next_symbols(x, [dfa]))
    assert m["accuracy"] == 1.0 and m["positions"] == 4
    assert m["l1"] < 1e-9 and abs(m["tvd"] - m["l1"] / 2) < 1e-12
    assert abs(m["chance_accuracy"] - (1 + 2 + 1 + 2) / 18 / 4) < 1e-6


def test_metrics_uniform_and_wrong_predictions():
    dfa, x, y, legal = _hand_case()
    logits = torch.zeros(1, 5, VOCAB_SIZE)
    logits[0, :, SEP] = 5.0  # argmax is the separator: never counted correct
    m = icl_metrics(logits, y, legal_next_symbols(x, [dfa]))
    assert m["accuracy"] == 0.0
    uniform = icl_metrics(torch.zeros(1, 5, VOCAB_SIZE), y, legal_next_symbols(x, [dfa]))
    # L1 of uniform(20) against uniform over n legal symbols: n*(1/n - 1/20) + (20-n)/20
    want = np.mean([len(s) * (1 / len(s) - 1 / 20) + (20 - len(s)) / 20 for s in legal])
    assert abs(uniform["l1"] - want) < 1e-6


def test_split_legal_masks_match_the_walk_and_the_metrics_a_plain_loop():
    # The split keeps each sequence's masks between evaluations; they must be the walk of the batch
    # it serves, in any order and batch composition (padding rows all False).
    task = small_task()
    for idx in ([0, 1, 2], [5, 0], [2]):
        x, y, dfas = task.val.batch(idx)
        assert torch.equal(task.val.legal(idx), legal_next_symbols(x, dfas))
    # The vectorised metrics against a plain loop over positions, on random logits.
    idx = list(range(len(task.val)))
    x, y, dfas = task.val.batch(idx)
    logits = torch.randn(*x.shape, VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    m = icl_metrics(logits, y, task.val.legal(idx))
    probs = torch.softmax(logits.double(), dim=-1)
    correct = scored = real = 0
    l1 = 0.0
    for b, dfa in enumerate(dfas):
        state = 0
        for t, tok in enumerate(x[b].tolist()):
            if t >= len(task.val.sequences[idx[b]]) - 1:
                break
            state = 0 if tok == SEP else dfa.step(state, tok)
            syms = dfa.symbols(state)
            real += 1
            l1 += sum(abs(float(probs[b, t, v]) - (1 / len(syms) if v in syms else 0.0)) for v in range(VOCAB_SIZE))
            if int(y[b, t]) != IGNORE:
                scored += 1
                correct += int(probs[b, t].argmax()) in syms
    assert m["positions"] == scored and m["accuracy"] == correct / scored
    # float32 softmax and a float32 sum over ~1e3 positions of terms <= 2: relative error well under 1e-5.
    assert abs(m["l1"] - l1 / real) < 1e-5
