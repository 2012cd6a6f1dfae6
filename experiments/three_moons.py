"""Three moons (the paper's section 3 and Figures 4-6): predictive disentanglement, one head against three.

  python -m experiments.three_moons --out docs/figures/three_moons

A "moon" is a point on the unit circle turning with its own period; the observation at time t is the
three moons' (sin, cos) pairs, six numbers. A sequence is 800 consecutive observations of one triple of
periods. The model is one contextual-memory layer without position, normalisation or embeddings:

    k_t = W_k x_t,   v_t = W_v x_{t+1} (v_{T-1} = 0),   y_t = sum_{s<t} softmax_s(50 <k_t, k_s>) v_s,
    prediction of x_{t+1} = W_z y_t,

per head, with every 2x2 block of W_k, W_v and W_z projected onto a rotation-scaling [[a, b], [-b, a]]
(a complex number acting on a (sin, cos) pair) at every call. With W = I it predicts x_{t+1} by finding
the moment s at which all three moons last stood where they stand now, one full period of the triple
ago. Three heads of two dimensions can each find one moon's own period instead, so they predict well
long before the full period: that is the disentanglement the paper shows.

This is a port of the official MLX experiment: the same data (8 training triples, the held-out triple
(1, 2, 3), the time step 0.0225), model, training (seed, 500 steps, batch 64, AdamW with a linear
learning-rate decay from 1e-2 to 5e-6, the loss clipped at +-0.5) and evaluation (context of each
length taken from the data, then 25 steps generated from the model's own predictions; mean absolute
error). One difference: the error compares the k-th generated step with the k-th true next
observation; the official evaluation is shifted by one step (its y[thresh-1:] against gen[thresh:]).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mosaic_model.cli.common import require_at_least_one

# The nine triples of candidate periods {0.5, ..., 3.5} with the smallest common period, in the
# official code's order (its numpy argsort breaks the ties at 6); the last one is held out.
TRAIN_TRIPLES = ((0.5, 1, 2), (0.5, 1, 1.5), (0.5, 1, 3), (0.5, 1.5, 3), (1, 1.5, 3), (0.5, 1, 2.5),
                 (1, 1.5, 2), (0.5, 1.5, 2))
VAL_TRIPLE = (1, 2, 3)
MAX_PERIOD = 6.0  # the held-out triple's common period
BLOCK = 800
DT = MAX_PERIOD * 3 / BLOCK  # three full periods of the held-out triple in a block: 0.0225
GRID = 10_000
PHASE = 0.3
ATTN_SCALE = 50.0


def lcm_of(periods: tuple) -> float:
    """Common period of a triple at 0.1 precision (the official rule)."""
    return math.lcm(*(round(10 * p) for p in periods)) / 10


def observations(periods: tuple, start: np.ndarray, length: int = BLOCK + 1) -> torch.Tensor:
    """(N, length, 6) float32: [sin, cos] of each moon at grid steps start..start+length-1."""
    t = (start[:, None] + np.arange(length)[None, :]) * DT
    cols = []
    for p in periods:
        angle = 2 * np.pi * t / p + PHASE
        cols += [np.sin(angle), np.cos(angle)]
    return torch.from_numpy(np.stack(cols, axis=-1).astype(np.float32))


def sample_batch(rng: np.random.Generator, batch: int, triples: tuple = TRAIN_TRIPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), each (batch, 800, 6): a uniformly chosen triple per sequence, a random start, y = x shifted."""
    rows = []
    for i in rng.integers(0, len(triples), size=batch):
        rows.append(observations(triples[i], rng.integers(0, GRID - 2 * BLOCK - 1, size=1))[0])
    seq = torch.stack(rows)
    return seq[:, :-1], seq[:, 1:]


def complex_project(w: torch.Tensor) -> torch.Tensor:
    """Each 2x2 block [[w00, w01], [w10, w11]] -> [[a, b], [-b, a]], a = (w00 + w11)/2, b = (w01 - w10)/2."""
    n, m = w.shape
    blocks = w.view(n // 2, 2, m // 2, 2)
    a = (blocks[:, 0, :, 0] + blocks[:, 1, :, 1]) / 2
    b = (blocks[:, 0, :, 1] - blocks[:, 1, :, 0]) / 2
    return torch.stack([torch.stack([a, b], -1), torch.stack([-b, a], -1)], 1).reshape(n, m)


class ComplexLinear(nn.Module):
    """A bias-free linear map whose 2x2 blocks act as complex numbers (projected on every call)."""

    def __init__(self, dim: int):
        super().__init__()
        bound = 1 / math.sqrt(dim)
        self.weight = nn.Parameter(complex_project(torch.empty(dim, dim).uniform_(-bound, bound)))

    def matrix(self) -> torch.Tensor:
        return complex_project(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix().T


class MoonMemory(nn.Module):
    """One contextual-memory layer over 6 features with ``n_head`` heads (see the module docstring)."""

    def __init__(self, n_head: int, dim: int = 6):
        super().__init__()
        if dim % n_head or (dim // n_head) % 2:
            raise ValueError(f"n_head must split {dim} features into heads of an even size, got {n_head}")
        self.n_head = n_head
        self.W_k, self.W_v, self.W_z = ComplexLinear(dim), ComplexLinear(dim), ComplexLinear(dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, d = t.shape
        return t.view(B, T, self.n_head, d // self.n_head).transpose(1, 2)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, T) attention weights; row 0 is all zero (no earlier key)."""
        k = self._heads(self.W_k(x))
        T = x.shape[1]
        logits = ATTN_SCALE * k @ k.transpose(-1, -2)
        keep = torch.ones(T, T, dtype=torch.bool).tril(-1)
        p = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
        return torch.nan_to_num(p, nan=0.0)  # row 0 has no key: weight 0 everywhere

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, 6) observations -> (B, T, 6) predictions of the next observation.

        Query t reads keys j < t, whose values v_j = W_v x_{j+1} are known at t. That is ordinary
        causal attention (j <= i) of the queries 1..T-1 over the keys 0..T-2, which SDPA computes
        without materialising the (T, T) weights; row 0 reads nothing and is 0."""
        k = self._heads(self.W_k(x))
        v = self._heads(self.W_v(x[:, 1:]))  # v_j = W_v x_{j+1}, j = 0..T-2
        y = F.scaled_dot_product_attention(k[:, :, 1:], k[:, :, :-1], v, is_causal=True, scale=ATTN_SCALE)
        y = torch.cat([torch.zeros_like(y[:, :, :1]), y], dim=2).transpose(1, 2).reshape(x.shape)
        return self.W_z(y)

    @torch.no_grad()
    def rollout_error(self, seq: torch.Tensor, context: int, horizon: int = 25) -> float:
        """Mean |truth - prediction| over ``horizon`` steps generated after ``context`` true observations.

        seq: (B, >= context + horizon, 6). The first prediction reads the true context; each later one
        reads the model's own earlier predictions as observations (keys and values of a cache)."""
        Wk, Wv, Wz = self.W_k.matrix(), self.W_v.matrix(), self.W_z.matrix()
        obs = seq[:, :context]
        keys = self._heads(obs @ Wk.T)  # (B, H, context, hs)
        vals = self._heads(obs[:, 1:] @ Wv.T)  # v_s = W_v x_{s+1}, s <= context - 2
        errors = []
        for j in range(horizon):
            q = keys[:, :, -1:]  # the newest observation's key
            p = torch.softmax(ATTN_SCALE * q @ keys[:, :, :-1].transpose(-1, -2), dim=-1) if keys.shape[2] > 1 else None
            y = (p @ vals).transpose(1, 2).reshape(seq.shape[0], 6) if p is not None else torch.zeros_like(seq[:, 0])
            pred = y @ Wz.T  # the observation at position context + j
            errors.append((pred - seq[:, context + j]).abs().mean())
            keys = torch.cat([keys, self._heads((pred @ Wk.T)[:, None])], dim=2)
            vals = torch.cat([vals, self._heads((pred @ Wv.T)[:, None])], dim=2)
        return float(torch.stack(errors).mean())


def clipped_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean(clip(pred - target, -0.5, 0.5)^2): the official loss, needed for reliable convergence."""
    return (pred - target).clamp(-0.5, 0.5).pow(2).mean()


def train(n_head: int, steps: int = 500, batch: int = 64, seed: int = 100, progress: bool = True) -> tuple[MoonMemory, list]:
    """Train one model as the official script does; returns it and its loss per step."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MoonMemory(n_head)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0)
    losses = []
    for step in tqdm(range(steps), desc=f"{n_head} head(s)", disable=not progress):
        for g in opt.param_groups:  # linear from 1e-2 to 5e-6 over the run
            g["lr"] = 1e-2 + (5e-6 - 1e-2) * step / max(steps - 1, 1)
        x, y = sample_batch(rng, batch)
        loss = clipped_mse(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model, losses


def error_curve(model: MoonMemory, periods: tuple, contexts: list[int], n_seqs: int = 512, seed: int = 0,
                horizon: int = 25) -> list[float]:
    """Rollout error at each context length, on ``n_seqs`` random windows of one triple."""
    rng = np.random.default_rng(seed)
    seq = observations(periods, rng.integers(0, GRID - 2 * BLOCK - 1, size=n_seqs))
    return [model.rollout_error(seq, c, horizon) for c in contexts]


def main(argv: list[str] | None = None) -> int:
    """Train 1 and 3 heads, evaluate on the held-out and a training triple, write JSON and figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/three_moons", help="folder for results.json and the PNG figures")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--eval-seqs", type=int, default=512)
    p.add_argument("--context-step", type=int, default=3, help="evaluate every this many context lengths (1 = all)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    require_at_least_one(p, a, ("steps", "eval_seqs", "context_step"))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    contexts = list(range(1, 775, a.context_step))
    triples = {"held-out (1, 2, 3)": VAL_TRIPLE, "training (0.5, 1, 2.5)": TRAIN_TRIPLES[5]}
    results = {"contexts": contexts, "dt": DT, "models": {}}
    models = {}
    for n_head in (1, 3):
        model, losses = train(n_head, a.steps, seed=a.seed, progress=not a.quiet)
        models[n_head] = model
        curves = {name: error_curve(model, per, contexts, a.eval_seqs) for name, per in triples.items()}
        results["models"][f"{n_head} head(s)"] = {"final_loss": losses[-1], "loss": losses, "error": curves}
    # The headline number: error at a context of one period of the slowest held-out moon (3 time units).
    one_period = round(3 / DT)
    for name, r in results["models"].items():
        m = models[int(name[0])]
        r["error_at_slowest_period"] = error_curve(m, VAL_TRIPLE, [one_period + 1], a.eval_seqs)[0]
        r["error_after_full_period"] = error_curve(m, VAL_TRIPLE, [round(MAX_PERIOD / DT) + 10], a.eval_seqs)[0]
        if not a.quiet:
            print(f"{name}: held-out error {r['error_at_slowest_period']:.3f} at a context of one slowest-moon "
                  f"period ({one_period + 1} steps), {r['error_after_full_period']:.3f} after a full period")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    _figures(results, models, triples, out)
    print(f"wrote {out}/results.json and figures", file=sys.stderr)
    return 0


def _figures(results: dict, models: dict, triples: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contexts = results["contexts"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, (name, periods) in zip(axes, triples.items()):
        for label, r in results["models"].items():
            ax.plot(contexts, r["error"][name], label=label)
        for per in periods:
            ax.axvline(per / DT, color="grey", lw=0.8, ls=":")
        ax.axvline(lcm_of(periods) / DT, color="red", lw=1, label="full period")
        ax.set(title=f"{name} triple", xlabel="context length (steps)", ylabel="mean |error|, 25 generated steps")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "error_by_context.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(2, 3, figsize=(9, 6))
    for row, (n_head, model) in enumerate(sorted(models.items())):
        for col, (name, lin) in enumerate((("W_k", model.W_k), ("W_v", model.W_v), ("W_z", model.W_z))):
            w = lin.matrix().detach()
            mag = torch.sqrt(w[0::2, 0::2] ** 2 + w[0::2, 1::2] ** 2)  # |a + ib| of each 2x2 block
            im = axes[row, col].imshow(mag, cmap="viridis", vmin=0)
            axes[row, col].set(title=f"{n_head} head(s): |{name}|", xticks=range(3), yticks=range(3))
            fig.colorbar(im, ax=axes[row, col], fraction=0.046)
    fig.tight_layout()
    fig.savefig(out / "complex_magnitudes.png", dpi=120)
    plt.close(fig)
    seq = observations(VAL_TRIPLE, np.array([1000]))[:, :-1]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    panels = [(models[1], 0, "1 head")] + [(models[3], h, f"3 heads: head {h}") for h in range(3)]
    for ax, (model, h, title) in zip(axes, panels):
        with torch.no_grad():
            ax.imshow(model.attention(seq)[0, h], cmap="viridis", aspect="auto")
        ax.set(title=title, xlabel="key position", ylabel="query position")
    fig.tight_layout()
    fig.savefig(out / "attention.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
