"""An induction head in one layer (the paper's claim that one Memory Mosaic layer does what a transformer
needs two for): a 1-layer Memory Mosaic against 1-, 2- and 3-layer GPT2 (learned positions) and 1- and 2-layer
llama-style transformers (rotary positions, SwiGLU, RMSNorm) of the same width and budget.

  python -m experiments.induction --out docs/figures/induction
  python -m experiments.induction --out runs/induction_control --models mosaic-1 gpt-2 gpt-3 \
      --lrs 1e-3 3e-3 1e-2 --steps 20000 --device cuda --jobs 12      (the positive control's grid)

Every (model, learning rate, seed) is one run, several at once with ``--jobs``; a finished run's result
(``runs/<model>-lr<lr>-s<seed>.json`` in ``--out``) is kept, so an interrupted grid resumes. Each model's
learning rate is selected on the mean final accuracy over the seeds on a validation batch; the
headline is the accuracy of that learning rate on a separate test batch (both held out, drawn from
their own seeds).

Task: T uniformly random tokens in which one segment of L tokens reappears later, at a random offset
and a random place (so that learned positions cannot copy by position). Inside the repeat, every token
after the first is determined by the token before it and the first occurrence: "find where the current
token occurred before, read what followed". Accuracy is measured on those L - 1 tokens only; every
other token is random and unpredictable (chance: 1 / vocabulary).

A Memory Mosaic layer has this mechanism built in: its key at t describes the recent tokens, its value
at j is a function of the token j + 1 (the peek-ahead), so a query that matches the earlier occurrence
reads the token that followed it. A transformer needs one layer to copy the previous token into each
position and a second to match on it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from mosaic_model.cli.common import require_at_least_one
from mosaic_model.models import GPT, GPTConfig, Llama, LlamaConfig, MemoryMosaic, MosaicConfig
from mosaic_model.models.config import KERNEL_CHOICES

from .grid import keep, kept, run_file, run_grid, select_lr

MODELS = {"mosaic-1": ("mosaic", 1), "gpt-1": ("gpt", 1), "gpt-2": ("gpt", 2), "gpt-3": ("gpt", 3),
          "llama-1": ("llama", 1), "llama-2": ("llama", 2)}
VAL_SEED, TEST_SEED = 10_000, 20_000  # the held-out batches of seed s are drawn from VAL_SEED + s and TEST_SEED + s


def make_batch(rng: np.random.Generator, batch: int, T: int, vocab: int, seg: int) -> tuple:
    """(x, y, scored): tokens, next tokens, and a mask of the targets only induction can predict."""
    seq = rng.integers(0, vocab, size=(batch, T + 1))
    scored = np.zeros((batch, T), dtype=bool)
    for b in range(batch):
        src = rng.integers(0, T + 1 - 2 * seg)  # first occurrence
        dst = rng.integers(src + seg, T + 1 - seg)  # the repeat starts after it ends
        seq[b, dst:dst + seg] = seq[b, src:src + seg]
        scored[b, dst:dst + seg - 1] = True  # the input at dst+i predicts seq[dst+i+1], i < seg - 1
    t = torch.from_numpy(seq)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous(), torch.from_numpy(scored)


def copy_rule_accuracy(x: torch.Tensor, y: torch.Tensor, scored: torch.Tensor, match: int = 1) -> float:
    """Accuracy on the scored targets of the rule a classic induction head implements: find the most recent
    earlier position whose last ``match`` tokens equal the current last ``match`` tokens, predict the token
    that followed it (no such position: no prediction, counted wrong). With a small vocabulary the current
    token has often occurred elsewhere too, so matching one token is ambiguous; a model that matches a
    longer context can do better."""
    hits = total = 0
    for b, t in scored.nonzero().tolist():
        row = x[b].tolist()
        recent = row[t - match + 1:t + 1]
        pred = next((row[j + 1] for j in range(t - 1, match - 2, -1) if row[j - match + 1:j + 1] == recent), None)
        hits += pred == int(y[b, t])
        total += 1
    return hits / max(total, 1)


def build(kind: str, depth: int, a: argparse.Namespace) -> torch.nn.Module:
    """A model of the experiment (dropout 0, the sizes of ``a``)."""
    common = dict(n_layer=depth, n_head=a.heads, n_embd=a.width, block_size=a.T, vocab_size=a.vocab, dropout=0.0)
    if kind == "mosaic":
        return MemoryMosaic(MosaicConfig(**common, kernels=a.kernels))
    return Llama(LlamaConfig(**common)) if kind == "llama" else GPT(GPTConfig(**common))


@torch.no_grad()
def induction_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                       scored: torch.Tensor) -> float:
    """Greedy accuracy on the scored targets."""
    model.eval()
    pred = model(x)[0].argmax(-1)
    model.train()
    return float((pred == y)[scored].float().mean())


def run(name: str, seed: int, lr: float, a: argparse.Namespace, progress: bool) -> dict:
    """Train one model with one seed and learning rate; returns its validation accuracy curve, its final
    validation and test accuracies, and (for the attention figure) the model and its validation batch."""
    from tqdm.auto import tqdm

    kind, depth = MODELS[name]
    torch.manual_seed(seed)
    device = torch.device(a.device)
    model = build(kind, depth, a).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(seed)
    val = [t.to(device) for t in make_batch(np.random.default_rng(VAL_SEED + seed), a.eval_batch, a.T, a.vocab, a.seg)]
    test = [t.to(device) for t in make_batch(np.random.default_rng(TEST_SEED + seed), a.eval_batch, a.T, a.vocab, a.seg)]
    curve = []
    for step in tqdm(range(1, a.steps + 1), desc=f"{name} lr {lr:g} seed {seed}", disable=not progress):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / a.warmup)
        x, y, _ = (t.to(device) for t in make_batch(rng, a.batch, a.T, a.vocab, a.seg))
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % a.eval_every == 0 or step == a.steps:
            curve.append((step, induction_accuracy(model, *val)))
    return {"model": name, "seed": seed, "lr": lr, "params": sum(p.numel() for p in model.parameters()),
            "curve": curve, "final_val": curve[-1][1], "final_test": induction_accuracy(model, *test),
            "model_obj": model.cpu(), "held": [t.cpu() for t in val]}


def run_and_keep(name: str, seed: int, lr: float, a: argparse.Namespace, progress: bool, threads: int) -> dict:
    """One run in its own process: trains it unless its result file exists, writes the result (and, for the
    Memory Mosaic, its attention figure); returns the result without the model."""
    path = run_file(Path(a.out), name, lr, seed)
    if (result := kept(path)) is not None:
        return result
    torch.set_num_threads(threads)
    r = run(name, seed, lr, a, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    if MODELS[name][0] == "mosaic":
        figure = path.with_suffix(".png")
        r["attention_example"] = {"figure": figure.name, **_attention_example(r, figure)}
    return keep(path, {k: v for k, v in r.items() if k not in ("model_obj", "held")})


def select(results: list[dict], models: list[str], lrs: list[float], seeds: list[int]) -> dict:
    """Per model: the learning rate of highest mean final validation accuracy over ``seeds`` (only learning
    rates with every seed finished compete), with that learning rate's test accuracies."""
    summary = {}
    for name in models:
        if (selected := select_lr(results, name, lrs, seeds)) is None:
            continue
        best, val_means, chosen = selected
        tests = [r["final_test"] for r in chosen]
        summary[name] = {"lr": best, "val_accuracy_by_lr": {f"{lr:g}": v for lr, v in sorted(val_means.items())},
                         "final_accuracy_mean": float(np.mean(tests)), "final_accuracy_std": float(np.std(tests)),
                         "finals": tests, "seeds": [r["seed"] for r in chosen], "params": chosen[0]["params"],
                         "curves": [r["curve"] for r in chosen],
                         "steps_to_half": [next((s for s, acc in r["curve"] if acc >= 0.5), None) for r in chosen]}
    return summary


def _attention_example(result: dict, path: Path) -> dict:
    """The 1-layer Memory Mosaic's C-mem attention on one held-out sequence, and where its scored rows look."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = result["model_obj"].eval()
    x, _, scored = (t[:1] for t in result["held"])
    captured = []
    hook = model.blocks[0].cmem.key.register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        model(x)
    hook.remove()
    k = captured[0][0].float()  # (H, T, hs)
    T = k.shape[1]
    logits = (k @ k.transpose(-1, -2)).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(-1), float("-inf"))
    att = torch.nan_to_num(torch.softmax(logits, -1), nan=0.0).mean(0)  # heads averaged
    rows = scored[0].nonzero()[:, 0]
    # Where the first occurrence of the current token is: the position whose value holds the answer.
    tokens = x[0]
    hits = []
    for t in rows.tolist():
        earlier = (tokens[:t] == tokens[t]).nonzero()[:, 0]
        if len(earlier):
            hits.append(int(att[t].argmax()) == int(earlier[-1]))
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(att, cmap="viridis", aspect="auto")
    ax.set(title="1-layer Memory Mosaic: C-mem attention (heads averaged)", xlabel="key position j", ylabel="query position t")
    for t in rows.tolist():
        ax.axhline(t, color="red", lw=0.3, alpha=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"scored_rows": rows.tolist(), "argmax_is_earlier_occurrence": float(np.mean(hits)) if hits else None}


def main(argv: list[str] | None = None) -> int:
    """Train every model with every learning rate and seed, select on validation, write results.json and the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/induction")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", default=["mosaic-1", "gpt-1", "gpt-2"], choices=list(MODELS))
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-3], help="the learning-rate grid, the same for every model")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--T", type=int, default=64, help="sequence length")
    p.add_argument("--vocab", type=int, default=32)
    p.add_argument("--seg", type=int, default=8, help="length of the repeated segment")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kernels", choices=KERNEL_CHOICES, default="fused",
                   help="the Memory Mosaic's ops (on a CPU both run the PyTorch references unless TRITON_INTERPRET=1)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, one process each")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    require_at_least_one(p, a, ("steps", "batch", "eval_batch", "eval_every", "T", "vocab", "seg", "width", "heads",
                                "warmup", "jobs"))
    if 2 * a.seg > a.T:
        p.error(f"--seg ({a.seg}) must be at most half of --T ({a.T}): the segment and its repeat must fit")
    if a.width % a.heads:
        p.error(f"--width ({a.width}) must be divisible by --heads ({a.heads})")
    if any(lr <= 0 for lr in a.lrs):
        p.error(f"--lrs must be positive, got {a.lrs}")
    if a.device not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda, got {a.device!r}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = [(name, seed, lr) for name in a.models for lr in a.lrs for seed in a.seeds]
    results = run_grid(run_and_keep, [(name, seed, lr, a, not a.quiet and a.jobs == 1) for name, seed, lr in grid],
                       a.jobs, a.quiet)
    summary = {"config": {k: v for k, v in vars(a).items() if k not in ("quiet", "jobs")}, "chance": 1 / a.vocab,
               "selection": "per model, the learning rate of highest mean final validation accuracy; accuracies "
                            "reported on a separate test batch", "models": select(results, a.models, a.lrs, a.seeds)}
    # What a classic induction head (one token matched) and a two-token match would score on the test batches.
    test = [make_batch(np.random.default_rng(TEST_SEED + s), a.eval_batch, a.T, a.vocab, a.seg) for s in a.seeds]
    summary["copy_rule_accuracy"] = {f"match {m}": float(np.mean([copy_rule_accuracy(*b, match=m) for b in test]))
                                     for m in (1, 2)}
    for name, r in summary["models"].items():
        print(f"{name}: lr {r['lr']:g}, induction accuracy {r['final_accuracy_mean']:.3f} +- {r['final_accuracy_std']:.3f} "
              f"over seeds {a.seeds} (chance {1 / a.vocab:.3f})")
    mosaic = summary["models"].get("mosaic-1")
    if mosaic:
        first = json.loads(run_file(out, "mosaic-1", mosaic["lr"], a.seeds[0]).read_text())
        summary["mosaic_attention_example"] = first["attention_example"]
        shutil.copyfile(run_file(out, "mosaic-1", mosaic["lr"], a.seeds[0]).with_suffix(".png"),
                        out / "mosaic_attention_example.png")
    _plot(summary, out / "accuracy.png")
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    return 0


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"mosaic-1": "C0", "gpt-1": "C1", "gpt-2": "C2", "gpt-3": "C3", "llama-1": "C4", "llama-2": "C5"}
    for name, r in summary["models"].items():
        for i, curve in enumerate(r["curves"]):
            steps, acc = zip(*curve)
            ax.plot(steps, acc, color=colors.get(name), alpha=0.8, lw=1.2,
                    label=f"{name} (lr {r['lr']:g})" if i == 0 else None)
    ax.axhline(summary["chance"], color="grey", ls=":", label="chance")
    if "copy_rule_accuracy" in summary:
        ax.axhline(summary["copy_rule_accuracy"]["match 1"], color="k", ls="--", lw=0.8,
                   label="classic induction head (one-token copy rule)")
    ax.set(xlabel="training step", ylabel="accuracy on the repeated tokens",
           title="induction: validation accuracy by step, one curve per seed", ylim=(0, 1.02))
    ax.set_xscale("log")
    # Plain labels at 1-2-5 steps (the log axis's own minor labels overlap past a decade).
    lo, hi = ax.get_xlim()
    ticks = [m * 10 ** e for e in range(1, 7) for m in (1, 2, 5) if lo <= m * 10 ** e <= hi]
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
