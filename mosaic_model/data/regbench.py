"""RegBench-style in-context language learning (docs/MODEL.md 6), generated offline from a seed.

A language is a random DFA whose states are all accepting; its PFA picks each state's outgoing
symbols uniformly. A sequence is 10..19 strings sampled from one PFA, joined by the separator '|'.
A model that learns in context must infer the language from the strings it has already seen.

Vocabulary (20): '.' = 0 (padding), 'a'..'r' = 1..18, '|' = 19. A sequence t_0..t_{L-1} gives
inputs t_0..t_{L-2} and labels t_1..t_{L-1}; labels equal to '|' are -100 (never a target).

Deviation from seq_icl, on purpose (docs/MODEL.md 6): languages are de-duplicated by their minimal
DFA, so train and held-out languages are truly disjoint. The random draws follow docs/MODEL.md 6 but
are not bit-identical to seq_icl's (which needs pythomata and PYTHONHASHSEED).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..runtime import to_device

PAD, SEP = 0, 19
LETTERS = "abcdefghijklmnopqr"
VOCAB = ["."] + list(LETTERS) + ["|"]
VOCAB_SIZE = len(VOCAB)
IGNORE = -100


@dataclass(frozen=True)
class DFA:
    """A partial DFA with start state 0 and every state accepting.

    ``transitions[s]`` maps a symbol id (1..18) to the next state.
    """

    transitions: tuple[tuple[tuple[int, int], ...], ...]

    def step(self, state: int, symbol: int) -> int | None:
        """The state after reading ``symbol`` from ``state``, or None where the DFA has no such edge."""
        for sym, nxt in self.transitions[state]:
            if sym == symbol:
                return nxt
        return None

    def symbols(self, state: int) -> list[int]:
        """The symbols leaving ``state`` (the support of the PFA's next-symbol distribution)."""
        return [sym for sym, _ in self.transitions[state]]

    def accepts(self, string: list[int]) -> bool:
        """Whether the DFA accepts the symbol sequence (every reached state is accepting)."""
        state = 0
        for sym in string:
            state = self.step(state, int(sym))
            if state is None:
                return False
        return True


def random_dfa(rng: np.random.Generator, num_nodes: int, alphabet: np.ndarray) -> DFA:
    """Each node gets 1..3 outgoing edges with distinct symbols and distinct targets, no self-loop."""
    trans = []
    for node in range(num_nodes):
        degree = int(rng.integers(1, 4))
        syms = rng.choice(alphabet, size=degree, replace=False)
        others = np.array([n for n in range(num_nodes) if n != node])
        targets = rng.choice(others, size=degree, replace=False)
        trans.append(tuple(sorted((int(s), int(t)) for s, t in zip(syms, targets))))
    return DFA(tuple(trans))


def minimize(dfa: DFA) -> DFA:
    """Minimal DFA of the same language, states renumbered in breadth-first order from 0.

    Keeps the reachable states, merges equivalent ones by partition refinement (all states accept,
    so two states differ only through their outgoing symbols and successors), and renumbers
    canonically: equal languages give equal DFAs.
    """
    order = [0]
    for s in order:  # breadth-first reachable states (the list grows while it is walked)
        for _, t in dfa.transitions[s]:
            if t not in order:
                order.append(t)

    def relabel(signature: dict) -> dict:
        ids: dict = {}
        return {s: ids.setdefault(signature[s], len(ids)) for s in order}

    # Start from "same outgoing symbols", refine by the successors' classes until stable.
    cls = relabel({s: tuple(dfa.symbols(s)) for s in order})
    while True:
        new = relabel({s: (cls[s], tuple(cls[t] for _, t in dfa.transitions[s])) for s in order})
        if len(set(new.values())) == len(set(cls.values())):
            break
        cls = new
    # Renumber the classes breadth-first from the start, visiting symbols in increasing order.
    rep: dict = {}
    for s in order:
        rep.setdefault(cls[s], s)
    number = {cls[0]: 0}
    frontier = [cls[0]]
    trans = []
    for c in frontier:
        edges = []
        for sym, t in dfa.transitions[rep[c]]:
            if cls[t] not in number:
                number[cls[t]] = len(number)
                frontier.append(cls[t])
            edges.append((sym, number[cls[t]]))
        trans.append(tuple(edges))
    return DFA(tuple(trans))


@dataclass
class ICLTaskConfig:
    """Sizes of the task. Defaults are docs/MODEL.md 6's; ``mosaic-train`` shrinks strings for CPU speed."""

    num_train: int = 100
    num_test: int = 500  # held-out languages, split in half: test, then val
    min_strings: int = 10
    max_strings: int = 19
    max_string_len: int = 49
    seed: int = 0
    iid: bool = False  # test and val: new sequences of the training languages (paper Table 4)


def sample_sequence(dfa: DFA, rng: np.random.Generator, cfg: ICLTaskConfig) -> list[int]:
    """One sequence: ``n`` strings walked from the start state, joined by SEP."""
    tokens: list[int] = []
    for i in range(int(rng.integers(cfg.min_strings, cfg.max_strings + 1))):
        if i:
            tokens.append(SEP)
        state = 0
        for _ in range(int(rng.integers(1, cfg.max_string_len + 1))):
            sym, state = dfa.transitions[state][int(rng.integers(len(dfa.transitions[state])))]
            tokens.append(sym)
    return tokens


class ICLSplit:
    """One split: its languages, one sequence each, and padded batches."""

    def __init__(self, dfas: list[DFA], sequences: list[list[int]]):
        self.dfas, self.sequences = dfas, sequences
        self._legal: dict[int, np.ndarray] = {}  # legal-symbol masks, walked once per sequence (legal())

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def max_len(self) -> int:
        """Input length of the longest sequence (its tokens but the last)."""
        return max(len(s) for s in self.sequences) - 1

    def batch(self, indices: list[int], device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, list[DFA]]:
        """Inputs (B, L) padded with PAD and labels (B, L) padded with -100 (SEP labels are -100)."""
        seqs = [self.sequences[i] for i in indices]
        L = max(len(s) for s in seqs) - 1
        x = torch.full((len(seqs), L), PAD, dtype=torch.long)
        y = torch.full((len(seqs), L), IGNORE, dtype=torch.long)
        for row, s in enumerate(seqs):
            t = torch.tensor(s, dtype=torch.long)
            x[row, : len(s) - 1] = t[:-1]
            lab = t[1:].clone()
            lab[lab == SEP] = IGNORE
            y[row, : len(s) - 1] = lab
        return to_device(x, device), to_device(y, device), [self.dfas[i] for i in indices]  # no host wait

    def legal(self, indices: list[int], device: torch.device | str | None = None) -> torch.Tensor:
        """The (B, L, VOCAB_SIZE) legal-next-symbol masks of :meth:`batch`'s inputs
        (:func:`legal_next_symbols`), walked once per sequence and kept: the held-out splits are
        scored at every evaluation, and the walk is a Python loop over positions."""
        for i in indices:
            if i not in self._legal:
                self._legal[i] = _walk_legal(self.dfas[i], self.sequences[i][:-1])
        L = max(len(self.sequences[i]) for i in indices) - 1
        out = np.zeros((len(indices), L, VOCAB_SIZE), dtype=bool)
        for row, i in enumerate(indices):
            out[row, : len(self._legal[i])] = self._legal[i]
        return torch.from_numpy(out).to(device)


class ICLTask:
    """Train / test / val splits of distinct languages, generated from ``cfg.seed``."""

    def __init__(self, cfg: ICLTaskConfig):
        if cfg.num_train < 1 or cfg.num_test < 2:
            raise ValueError("num_train must be >= 1 and num_test >= 2")
        if not (1 <= cfg.min_strings <= cfg.max_strings) or cfg.max_string_len < 1:
            raise ValueError("need 1 <= min_strings <= max_strings and max_string_len >= 1")
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        letters = np.arange(1, len(LETTERS) + 1)
        dfas, seqs, seen = [], [], set()
        total = cfg.num_train + cfg.num_test
        while len(dfas) < total:
            num_nodes = int(rng.integers(4, 13))
            alphabet = rng.choice(letters, size=int(rng.integers(4, 19)), replace=False)
            sampler = np.random.default_rng(int(rng.integers(0, 2**32)))
            dfa = minimize(random_dfa(sampler, num_nodes, alphabet))
            if dfa in seen:  # same language: skip, so that splits never share one
                continue
            seen.add(dfa)
            walk = np.random.default_rng(int(sampler.integers(0, 2**32)))
            dfas.append(dfa)
            seqs.append(sample_sequence(dfa, walk, cfg))
        order = rng.permutation(total)
        n, m = cfg.num_train, cfg.num_test // 2

        def take(idx: np.ndarray) -> ICLSplit:
            return ICLSplit([dfas[i] for i in idx], [seqs[i] for i in idx])

        self.train = take(order[:n])
        if cfg.iid:
            # Table 4: the held-out sequences are new walks of the training languages, one language after
            # another (each split cycles through them), from their own seeds so that the training split is
            # the same as without --iid.
            def resample(split: str, count: int) -> ICLSplit:
                walk = np.random.default_rng([cfg.seed, {"test": 1, "val": 2}[split]])
                langs = [self.train.dfas[i % n] for i in range(count)]
                return ICLSplit(langs, [sample_sequence(d, walk, cfg) for d in langs])

            self.test, self.val = resample("test", m), resample("val", cfg.num_test - m)
        else:
            self.test = take(order[n:n + m])
            self.val = take(order[n + m:])

    def config_dict(self) -> dict:
        """The task's configuration as a plain dict."""
        return asdict(self.cfg)


def _walk_legal(dfa: DFA, inputs: list[int]) -> np.ndarray:
    """(len(inputs), VOCAB_SIZE) bool: after each input token, the symbols leaving the state that the
    current string (the text since the last SEP) has reached; a SEP returns to the start state."""
    legal = np.zeros((len(inputs), VOCAB_SIZE), dtype=bool)
    state = 0
    for t, tok in enumerate(inputs):
        state = 0 if tok == SEP else dfa.step(state, tok)
        legal[t, dfa.symbols(state)] = True
    return legal


def legal_next_symbols(inputs: torch.Tensor, dfas: list[DFA]) -> torch.Tensor:
    """(B, L, VOCAB_SIZE) bool masks of the legal next symbols after each input position of a batch
    (padding positions: all False), on ``inputs``' device. Every DFA state has an outgoing symbol, so
    a position is real exactly when its row has a True."""
    rows = inputs.cpu()
    out = torch.zeros((*rows.shape, VOCAB_SIZE), dtype=torch.bool)
    for b, dfa in enumerate(dfas):
        n_pos = _real_positions(rows[b])
        out[b, :n_pos] = torch.from_numpy(_walk_legal(dfa, rows[b, :n_pos].tolist()))
    return out.to(inputs.device)


def icl_metrics(logits: torch.Tensor, labels: torch.Tensor, legal: torch.Tensor) -> dict:
    """RegBench metrics of one batch (docs/MODEL.md 6), as means over the batch's positions.

    ``legal`` is the (B, L, VOCAB_SIZE) mask of legal next symbols (:func:`legal_next_symbols` or
    :meth:`ICLSplit.legal`); positions whose row is all False are padding. Computed on the logits'
    device, with one read-back at the end.

    accuracy: over positions whose label is a symbol (not SEP, not padding), the greedy prediction is
        correct when it is a legal next symbol of the current string's DFA state.
    l1: over all non-padding input positions, sum_v |softmax(logits)_v - p_PFA(v)|, where p_PFA is
        uniform over the state's outgoing symbols (seq_icl's "TVD", no 1/2); tvd = l1 / 2.
    chance_accuracy: the accuracy of a uniform guess over the 18 letters, for reference.
    """
    legal = legal.to(logits.device)
    labels = labels.to(logits.device)
    probs = torch.softmax(logits.float(), dim=-1)
    n_legal = legal.sum(dim=-1)                                   # (B, L), 0 at padding
    real = n_legal > 0
    q = legal.float() / n_legal.clamp_min(1)[..., None]           # the PFA's next-symbol law
    l1_sum = ((probs - q).abs().sum(dim=-1) * real).sum()
    scored = real & (labels != IGNORE)
    hit = legal.gather(-1, probs.argmax(dim=-1, keepdim=True))[..., 0]
    stats = torch.stack([(hit & scored).sum().float(), scored.sum().float(), l1_sum.float(), real.sum().float(),
                         (n_legal.float() * scored).sum() / len(LETTERS)]).tolist()
    correct, n_scored, l1, n_real, chance = stats
    return {
        "accuracy": correct / max(n_scored, 1),
        "l1": l1 / max(n_real, 1),
        "tvd": 0.5 * l1 / max(n_real, 1),
        "chance_accuracy": chance / max(n_scored, 1),
        "positions": int(n_scored),
    }


def _real_positions(row: torch.Tensor) -> int:
    """Number of non-padding input positions (padding is a run of PAD at the end)."""
    nz = (row != PAD).nonzero()
    return int(nz.max()) + 1 if len(nz) else 0
