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
(1, 2, 3), the time step 0.0225), model, training (500 steps, batch 64, MLX's AdamW with a linear
learning-rate decay from 1e-2 to 5e-6, the loss clipped at +-0.5) and evaluation (context of each
length taken from the data, then 25 steps generated from the model's own predictions; mean absolute
error). MLX's AdamW, the official optimizer, has no bias correction by default: its steps are
1.6x-6.6x those of torch.optim.AdamW over the 500 steps (3.2x at the first, 6.6x at step 12, 1.6x at
the last; ``MLXAdamW`` below; ``--optimizer torch`` gives the corrected one). One difference: the
error compares the k-th generated step with the k-th true next observation; the official evaluation
is shifted by one step (its y[thresh-1:] against gen[thresh:]).
The official script trains one seed (100); this one trains several (``--seeds``), each to its own
folder, resumable: a finished (seed, heads) pair is read back, not retrained.
"""
from __future__ import annotations

import argparse
import json
import math
import os
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
        """The weight projected onto the complex-structured matrices (the layer's actual map)."""
        return complex_project(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim): x times the transposed projected matrix (:meth:`matrix`)."""
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


class MLXAdamW(torch.optim.Optimizer):
    """AdamW as ``mlx.optimizers.AdamW`` computes it by default (``bias_correction=False``).

    Per step, with gradient g: p <- p (1 - lr wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    p <- p - lr m / (sqrt(v) + eps). Without the 1 / (1 - b^t) corrections of torch.optim.AdamW the
    first update is lr (1 - b1) / sqrt(1 - b2) = 3.16 lr for each sign of g instead of lr; the ratio of
    the two, (1 - b1^t) / sqrt(1 - b2^t), peaks at 6.6 (step 12) and falls to 1 over some 1 / (1 - b2) =
    1000 steps (1.6 at step 500).
    """

    def __init__(self, params, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient (closure unsupported: None)."""
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
                m, v = state["m"], state["v"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-group["lr"])


OPTIMIZERS = {"mlx": MLXAdamW, "torch": torch.optim.AdamW}


def train(n_head: int, steps: int = 500, batch: int = 64, seed: int = 100, progress: bool = True,
          optimizer: str = "mlx") -> tuple[MoonMemory, list]:
    """Train one model as the official script does; returns it and its loss per step.

    optimizer: "mlx" (the official one, AdamW without bias correction) or "torch" (torch.optim.AdamW)."""
    from tqdm.auto import tqdm

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MoonMemory(n_head)
    opt = OPTIMIZERS[optimizer](model.parameters(), lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0)
    losses = []
    for step in tqdm(range(steps), desc=f"seed {seed}, {n_head} head(s)", disable=not progress):
        for g in opt.param_groups:  # linear from 1e-2 to 5e-6 over the run
            g["lr"] = 1e-2 + (5e-6 - 1e-2) * step / max(steps - 1, 1)
        x, y = sample_batch(rng, batch)
        loss = clipped_mse(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model, losses


def block_magnitudes(lin: ComplexLinear) -> torch.Tensor:
    """(3, 3) |a + ib| of each 2x2 block: row = output pair (the head, with 3 heads), column = input moon."""
    w = lin.matrix().detach()
    return torch.sqrt(w[0::2, 0::2] ** 2 + w[0::2, 1::2] ** 2)


def head_assignment(model: MoonMemory) -> dict:
    """Which moon each key pair reads: the largest block of its row of |W_k|, that block's share of the
    row, and the row's total. "one_head_per_moon": the three rows pick three different moons, each with
    at least half of its row, and no row is below a quarter of the largest (a near-zero key attends
    uniformly: it has not taken a moon)."""
    mag = block_magnitudes(model.W_k)
    total = mag.sum(dim=1)
    moon = mag.argmax(dim=1)
    share = mag.max(dim=1).values / total.clamp_min(1e-12)
    one_each = (len(set(moon.tolist())) == 3 and bool(share.min() >= 0.5)
                and bool(total.min() >= 0.25 * total.max()))
    return {"moon": moon.tolist(), "share": share.tolist(), "row_total": total.tolist(),
            "one_head_per_moon": one_each}


def error_curve(model: MoonMemory, periods: tuple, contexts: list[int], n_seqs: int = 512, seed: int = 0,
                horizon: int = 25) -> list[float]:
    """Rollout error at each context length, on ``n_seqs`` random windows of one triple."""
    rng = np.random.default_rng(seed)
    seq = observations(periods, rng.integers(0, GRID - 2 * BLOCK - 1, size=n_seqs))
    return [model.rollout_error(seq, c, horizon) for c in contexts]


CONTEXT_POINTS = (40, 90, 135, 200, 270, 400)   # the held-out error reported at these context lengths
SLOWEST_PERIOD = round(3 / DT) + 1                # 134: a context of one period of the slowest held-out moon
AFTER_FULL_PERIOD = round(MAX_PERIOD / DT) + 10   # 277: past the held-out triple's full period
EVAL_TRIPLES = {"held-out (1, 2, 3)": VAL_TRIPLE, "training (0.5, 1, 2.5)": TRAIN_TRIPLES[5]}
MODELS = {1: "1 head", 3: "3 heads"}


def period_drops(model: MoonMemory, n_seqs: int) -> list[float]:
    """Per held-out moon (periods 44.4, 88.9, 133.3 steps): the error 4 steps after a context first
    holds one period, over the error 3 steps before it. Well below 1: the model steps down there."""
    ratios = []
    for per in VAL_TRIPLE:
        steps = per / DT
        before, after = error_curve(model, VAL_TRIPLE, [math.floor(steps) - 3, math.ceil(steps) + 4], n_seqs)
        ratios.append(after / before)
    return ratios


def run_pair(seed: int, n_head: int, folder: Path, steps: int, eval_seqs: int, contexts: list[int],
             optimizer: str, threads: int, progress: bool) -> tuple[dict, MoonMemory]:
    """Train (or read back) one model and evaluate it; writes ``folder/{n}head.json`` and ``.pt``."""
    torch.set_num_threads(threads)
    folder.mkdir(parents=True, exist_ok=True)
    record, weights = folder / f"{n_head}head.json", folder / f"{n_head}head.pt"
    model = MoonMemory(n_head)
    if record.exists() and weights.exists():
        model.load_state_dict(torch.load(weights))
        return json.loads(record.read_text()), model
    model, losses = train(n_head, steps, seed=seed, progress=progress, optimizer=optimizer)
    r = {"seed": seed, "n_head": n_head, "optimizer": optimizer, "steps": steps, "final_loss": losses[-1],
         "loss": losses,
         "error": {name: error_curve(model, per, contexts, eval_seqs) for name, per in EVAL_TRIPLES.items()},
         "error_at": dict(zip(map(str, CONTEXT_POINTS), error_curve(model, VAL_TRIPLE, list(CONTEXT_POINTS),
                                                                     eval_seqs))),
         "error_at_slowest_period": error_curve(model, VAL_TRIPLE, [SLOWEST_PERIOD], eval_seqs)[0],
         "error_after_full_period": error_curve(model, VAL_TRIPLE, [AFTER_FULL_PERIOD], eval_seqs)[0],
         "period_drops": period_drops(model, eval_seqs),
         "magnitudes": {name: block_magnitudes(lin).tolist()
                        for name, lin in (("W_k", model.W_k), ("W_v", model.W_v), ("W_z", model.W_z))}}
    if n_head == 3:
        r["assignment"] = head_assignment(model)
    torch.save(model.state_dict(), weights)
    record.write_text(json.dumps(r, indent=1))
    return r, model


def summarize(runs: dict) -> dict:
    """Medians and means over seeds of each model's headline numbers, and the seeds of each outcome."""
    out = {}
    for n_head, label in MODELS.items():
        rs = [runs[s][n_head] for s in sorted(runs)]
        row = {"seeds": sorted(runs)}
        for key in ("error_at_slowest_period", "error_after_full_period", "final_loss"):
            vals = [r[key] for r in rs]
            row[key] = {"median": float(np.median(vals)), "mean": float(np.mean(vals)), "per_seed": vals}
        if n_head == 3:
            row["seeds_one_head_per_moon"] = [r["seed"] for r in rs if r["assignment"]["one_head_per_moon"]]
            row["seeds_below_one_head_at_slowest_period"] = [
                r["seed"] for r in rs if r["error_at_slowest_period"] < runs[r["seed"]][1]["error_at_slowest_period"]]
        out[label] = row
    return out


def seed_table(runs: dict) -> str:
    """Markdown: one row per seed and model, the held-out error at CONTEXT_POINTS and the headline
    contexts, the final loss, the step at each moon's period and, with 3 heads, which moon each key reads."""
    head = (["seed", "model"] + [str(c) for c in CONTEXT_POINTS]
            + [f"at one slowest-moon period ({SLOWEST_PERIOD})", f"past the full period ({AFTER_FULL_PERIOD})",
               "final loss", "error after / before each moon's period", "moon of each head's key (share of its row)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seed in sorted(runs):
        for n_head, label in MODELS.items():
            r = runs[seed][n_head]
            assign = ""
            if "assignment" in r:
                a = r["assignment"]
                assign = ", ".join(f"{m} ({s:.2f})" for m, s in zip(a["moon"], a["share"]))
                assign += ": one head per moon" if a["one_head_per_moon"] else ""
            cells = ([str(seed), label] + [f"{r['error_at'][str(c)]:.3g}" for c in CONTEXT_POINTS]
                     + [f"{r['error_at_slowest_period']:.3f}", f"{r['error_after_full_period']:.3f}",
                        f"{r['final_loss']:.4f}", " / ".join(f"{d:.2f}" for d in r["period_drops"]), assign])
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Train 1 and 3 heads for every seed, evaluate on the held-out and a training triple, write JSON and figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/three_moons", help="folder for results.json, seed*/ and the PNG figures")
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104],
                   help="init and data seeds (the official script's is 100)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="mlx",
                   help="mlx: AdamW without bias correction, the official optimizer; torch: torch.optim.AdamW")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--eval-seqs", type=int, default=512)
    p.add_argument("--context-step", type=int, default=3, help="evaluate every this many context lengths (1 = all)")
    p.add_argument("--jobs", type=int, default=2, help="models trained at once, one process each")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    require_at_least_one(p, a, ("steps", "eval_seqs", "context_step", "jobs"))
    if len(set(a.seeds)) != len(a.seeds):
        p.error(f"--seeds must not repeat a seed, got {a.seeds}")
    out = Path(a.out)
    contexts = list(range(1, 775, a.context_step))
    threads = max(1, (os.cpu_count() or 1) // a.jobs)
    pairs = [(seed, n_head) for seed in a.seeds for n_head in MODELS]
    runs, models = {}, {}
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        futures = {pool.submit(run_pair, seed, n_head, out / f"seed{seed}", a.steps, a.eval_seqs, contexts,
                               a.optimizer, threads, not a.quiet and a.jobs == 1): (seed, n_head)
                   for seed, n_head in pairs}
        done = tqdm(futures, total=len(futures), desc="models", disable=a.quiet)
        for fut in done:
            seed, n_head = futures[fut]
            runs.setdefault(seed, {})[n_head], models[(seed, n_head)] = fut.result()
    results = {"optimizer": a.optimizer, "steps": a.steps, "contexts": contexts, "dt": DT,
               "context_points": list(CONTEXT_POINTS), "slowest_period": SLOWEST_PERIOD,
               "after_full_period": AFTER_FULL_PERIOD, "summary": summarize(runs),
               "runs": {str(s): {MODELS[n]: {k: v for k, v in r.items() if k not in ("loss", "error")}
                                 for n, r in runs[s].items()} for s in sorted(runs)}}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(seed_table(runs))
    if not a.quiet:
        for label, row in results["summary"].items():
            e = row["error_at_slowest_period"]
            print(f"{label}: held-out error at a context of one slowest-moon period ({SLOWEST_PERIOD} steps): "
                  f"median {e['median']:.3f} over seeds {row['seeds']} ({', '.join(f'{v:.3f}' for v in e['per_seed'])})")
    _figures(runs, models, contexts, out)
    print(f"wrote {out}/results.json and figures", file=sys.stderr)
    return 0


MOON_TICKS = ["moon 0\n(fastest)", "moon 1", "moon 2\n(slowest)"]


def _figures(runs: dict, models: dict, contexts: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(runs)
    colors = {1: "tab:blue", 3: "tab:orange"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, (name, periods) in zip(axes, EVAL_TRIPLES.items()):
        for n_head, label in MODELS.items():
            curves = np.array([runs[s][n_head]["error"][name] for s in seeds])
            for c in curves:
                ax.plot(contexts, c, color=colors[n_head], lw=0.6, alpha=0.35)
            ax.plot(contexts, np.median(curves, axis=0), color=colors[n_head], lw=2,
                    label=f"{label}: median of {len(seeds)} seeds (thin: each seed)")
        for per in periods:
            ax.axvline(per / DT, color="grey", lw=0.8, ls=":")
        ax.axvline(lcm_of(periods) / DT, color="red", lw=1, label="full period")
        ax.set(title=f"{name} triple", xlabel="context length (steps)", ylabel="mean |error|, 25 generated steps")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "error_by_context.png", dpi=120)
    plt.close(fig)
    for n_head, label in MODELS.items():
        fig, axes = plt.subplots(len(seeds), 3, figsize=(10, 2.9 * len(seeds)), squeeze=False)
        row_label = "head" if n_head == 3 else "output pair"
        for i, seed in enumerate(seeds):
            for j, name in enumerate(("W_k", "W_v", "W_z")):
                mag = np.array(runs[seed][n_head]["magnitudes"][name])
                ax = axes[i, j]
                ax.imshow(mag, cmap="viridis", vmin=0)
                for (r, c), val in np.ndenumerate(mag):
                    ax.text(c, r, f"{val:.2f}", ha="center", va="center", color="w" if val < mag.max() / 2 else "k",
                            fontsize=8)
                if name == "W_z":  # W_z maps the heads' outputs back to the moons
                    ax.set(xlabel=row_label, ylabel="output moon", xticks=range(3), yticks=range(3),
                           yticklabels=MOON_TICKS)
                else:
                    ax.set(xlabel="input moon", ylabel=row_label, xticks=range(3), yticks=range(3),
                           xticklabels=MOON_TICKS)
                ax.set_title(f"seed {seed}: |{name}|", fontsize=9)
        fig.suptitle(f"{label}: |a + ib| of each 2x2 block of the learned maps")
        fig.tight_layout()
        fig.savefig(out / f"magnitudes_{n_head}head.png", dpi=100)
        plt.close(fig)
    seq = observations(VAL_TRIPLE, np.array([1000]))[:, :-1]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    panels = [(models[(seeds[0], 1)], 0, "1 head")] + [(models[(seeds[0], 3)], h, f"3 heads: head {h}")
                                                       for h in range(3)]
    for ax, (model, h, title) in zip(axes, panels):
        with torch.no_grad():
            ax.imshow(model.attention(seq)[0, h], cmap="viridis", aspect="auto")
        ax.set(title=f"seed {seeds[0]}, {title}", xlabel="key position", ylabel="query position")
    fig.tight_layout()
    fig.savefig(out / "attention.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
