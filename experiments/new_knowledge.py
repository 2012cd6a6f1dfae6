"""New-knowledge storage (Memory Mosaics v2's claim, at our scale): facts given in a long context, asked at its end.

  python -m experiments.new_knowledge --out runs/new_knowledge --device cuda --jobs 8
      [--models mosaic mosaic-v2 llama] [--lrs 1e-3 3e-3] [--seeds 0 1 2] [--steps 4000]

Task (synthetic, multi-key retrieval in filler text, in the spirit of RULER's multi-key needles and of
multi-query associative recall): a sequence of T random filler tokens holds F facts, each the three
tokens (FACT, key, value), at random places, with distinct keys and random values; its last 3Q tokens
are Q queries (QUERY, key, value) about Q of the facts. Scored: the prediction of each query's value
from its key (chance 1/NUM_VALUES); nothing else is predictable. Every model trains on short contexts
(``--train-T``, ``--train-facts``) and is tested on contexts up to ``--test-T`` long with ``--test-facts``
facts, without any fine-tuning. Memory Mosaics v2 is also tested with its long-term memory removed
(its delay set past the context, so that band is empty): the paper's ablation. ``mosaic-v2-fixed-bandwidth``
is v2 with one learned bandwidth per head instead of ``beta(n)``: does the bandwidth that grows with the
number of visible keys matter for retrieval far past the training length?

Every (model, learning rate, seed) is one run, ``--jobs`` at once; a finished run's result file
(``runs/<model>-lr<lr>-s<seed>.json`` in ``--out``) is kept, so an interrupted grid resumes. A run also
saves a checkpoint every ``--save-every`` steps and when ``--time-limit`` (seconds of training in this
call) or ``--max-steps-this-run`` stops it (``runs/<model>-lr<lr>-s<seed>.ckpt.pt``: model, optimizer,
the batch generator's and torch's random states, the curve so far); the next call with the same settings
continues it exactly where it stopped, so a long budget spans several short GPU calls. Each model's
learning rate is selected on the mean accuracy over seeds on validation batches at the training length;
the headline table is that learning rate's accuracy on test batches (their own seeds) at every length.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mosaic_model.cli.common import require_at_least_one
from mosaic_model.models.build import build_model

from .grid import keep, kept, run_file, run_grid, select_lr

NUM_FILLER, NUM_KEYS, NUM_VALUES = 64, 64, 64
KEY0, VALUE0 = NUM_FILLER, NUM_FILLER + NUM_KEYS
FACT, QUERY = VALUE0 + NUM_VALUES, VALUE0 + NUM_VALUES + 1
VOCAB = QUERY + 1
MODELS = ("mosaic", "mosaic-v2", "mosaic-v2-fixed-bandwidth", "llama")
VAL_SEED, TEST_SEED = 10_000, 20_000


def make_batch(rng: np.random.Generator, batch: int, T: int, facts: int, queries: int) -> tuple:
    """(x, y, scored) of shape (batch, T): inputs, next tokens, and the positions whose next token is a
    queried value (the query's key token). The facts sit at random non-overlapping places before the
    queries; the queried facts are distinct and drawn among all of them."""
    if 3 * (facts + queries) > T:
        raise ValueError(f"T ({T}) is too short for {facts} facts and {queries} queries (3 tokens each)")
    if facts > NUM_KEYS or queries > facts:
        raise ValueError(f"need queries <= facts <= {NUM_KEYS}, got {queries} queries and {facts} facts")
    seq = rng.integers(0, NUM_FILLER, size=(batch, T + 1))
    scored = np.zeros((batch, T), dtype=bool)
    body = T + 1 - 3 * queries                       # the facts live in seq[:, :body]
    for b in range(batch):
        keys = rng.choice(NUM_KEYS, size=facts, replace=False)
        values = rng.integers(0, NUM_VALUES, size=facts)
        # starts s_i = c_i + 2i from distinct sorted c_i < body - 2F: s_{i+1} >= s_i + 3 and s_{F-1} <= body - 3,
        # so the triples never overlap and every placement is possible
        slots = np.sort(rng.choice(body - 2 * facts, size=facts, replace=False)) + 2 * np.arange(facts)
        for s, k, v in zip(slots, keys, values):
            seq[b, s:s + 3] = (FACT, KEY0 + k, VALUE0 + v)
        for i, f in enumerate(rng.choice(facts, size=queries, replace=False)):
            q = body + 3 * i
            seq[b, q:q + 3] = (QUERY, KEY0 + keys[f], VALUE0 + values[f])
            scored[b, q + 1] = True                  # the input at the key predicts the value
    t = torch.from_numpy(seq)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous(), torch.from_numpy(scored)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, scored: torch.Tensor, chunk: int,
             **forward) -> float:
    """Greedy accuracy on the scored positions, ``chunk`` sequences at a time (eval mode)."""
    model.eval()
    hits = []
    for i in range(0, x.shape[0], chunk):
        pred = model(x[i:i + chunk], **forward)[0].argmax(-1)
        hits.append((pred == y[i:i + chunk])[scored[i:i + chunk]])
    model.train()
    return float(torch.cat(hits).float().mean())


def build(name: str, a: argparse.Namespace) -> torch.nn.Module:
    """A model of the experiment: the same width, depth and heads for all; no dropout."""
    common = dict(n_layer=a.depth, n_head=a.heads, n_embd=a.width, block_size=a.train_T, vocab_size=VOCAB,
                  dropout=0.0)
    if name == "mosaic":
        common.update(block_size=max(a.test_T), kernels=a.kernels)  # v1 runs at any T up to its block size
    elif name.startswith("mosaic-v2"):
        # the fixed-bandwidth arm: v2 with one learned bandwidth per head instead of beta(n) (an ablation)
        common.update(kernels=a.kernels, window=a.window, delay_min=a.delay_min, delay_max=a.delay_max,
                      delay_eval=a.delay_min, adaptive_bandwidth=name != "mosaic-v2-fixed-bandwidth")
    return build_model("mosaic-v2" if name.startswith("mosaic-v2") else name, common)


def evaluations(name: str) -> dict:
    """The forward keyword arguments of each evaluation of a model: its own, and for v2 also without the
    long-term memory (a delay past any context: that band sees no key)."""
    return {"": {}, "no long-term memory": {"delay": 10**9}} if name.startswith("mosaic-v2") else {"": {}}


# The settings a checkpoint must share with the call that resumes it: they fix the model, the data and the
# schedule (a larger --steps extends a run: the learning rate is constant after the warm-up).
RUN_FIELDS = ("warmup", "batch", "train_T", "train_facts", "queries", "eval_seqs", "eval_every", "width", "depth",
              "heads", "window", "delay_min", "delay_max", "kernels", "device")


class CheckpointMismatch(ValueError):
    """A run's checkpoint that the settings of this call cannot continue."""


def checkpoint_file(path: Path) -> Path:
    """The checkpoint beside a run's result file: ``<model>-lr<lr>-s<seed>.ckpt.pt``."""
    return path.with_suffix(".ckpt.pt")


def _save(ckpt: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, rng: np.random.Generator,
          curve: list, a: argparse.Namespace) -> None:
    """Everything a resumed run needs to continue bit for bit (written to a temporary file, then renamed)."""
    state = {"step": step, "model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
             "torch_rng": torch.get_rng_state(), "curve": curve, "settings": {f: getattr(a, f) for f in RUN_FIELDS}}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    tmp = ckpt.with_suffix(".tmp")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp)
    tmp.replace(ckpt)


def _resume(ckpt: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, rng: np.random.Generator,
            a: argparse.Namespace) -> tuple[int, list]:
    """Load a checkpoint into model, opt and rng; returns (its step, its curve). CheckpointMismatch when it was
    made with other settings or is past ``--steps``."""
    # On the CPU, as the trainer's read_checkpoint loads: load_state_dict moves the weights and the optimizer's state
    # to the parameters' device, and the generators take their states as CPU byte tensors.
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    made = state["settings"]
    diff = [f for f in RUN_FIELDS if made.get(f) != getattr(a, f)]
    if diff:
        was = ", ".join(f"{f}={made.get(f)!r}" for f in diff)
        raise CheckpointMismatch(f"{ckpt} was made with other {', '.join(diff)} ({was}); give the same settings or another --out")
    if state["step"] > a.steps:
        raise CheckpointMismatch(f"{ckpt} is at step {state['step']}, past --steps {a.steps}")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], [tuple(c) for c in state["curve"]]


def run(name: str, seed: int, lr: float, a: argparse.Namespace, progress: bool, threads: int) -> dict | None:
    """Train one run (unless its result file exists; from its checkpoint when there is one) and test it at
    every length and fact count. None when ``--time-limit`` or ``--max-steps-this-run`` stopped it first
    (its checkpoint saved)."""
    from tqdm.auto import tqdm

    path = run_file(Path(a.out), name, lr, seed)
    if (result := kept(path)) is not None:
        return result
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = torch.device(a.device)
    model = build(name, a).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(seed)
    batch = lambda r, n, T, f: [t.to(device) for t in make_batch(r, n, T, f, a.queries)]  # noqa: E731
    val = batch(np.random.default_rng(VAL_SEED + seed), a.eval_seqs, a.train_T, a.train_facts)
    ckpt = checkpoint_file(path)
    done, curve = _resume(ckpt, model, opt, rng, a) if ckpt.exists() else (0, [])
    start, this_run = time.perf_counter(), 0
    for step in tqdm(range(done + 1, a.steps + 1), desc=f"{name} lr {lr:g} seed {seed}", disable=not progress,
                     initial=done, total=a.steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / a.warmup)
        x, y, _ = batch(rng, a.batch, a.train_T, a.train_facts)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % a.eval_every == 0 or step == a.steps:
            curve.append((step, accuracy(model, *val, a.eval_chunk)))
        this_run += 1
        stop = step < a.steps and ((a.time_limit is not None and time.perf_counter() - start >= a.time_limit)
                                   or (a.max_steps_this_run is not None and this_run >= a.max_steps_this_run))
        if stop or (step < a.steps and step % a.save_every == 0):
            _save(ckpt, step, model, opt, rng, curve, a)
        if stop:
            return None
    test = {}
    for label, forward in evaluations(name).items():
        for facts in a.test_facts:
            for T in a.test_T:
                if 3 * (facts + a.queries) > T:
                    continue
                r = np.random.default_rng([TEST_SEED + seed, T, facts])
                n = max(a.queries, a.eval_tokens // T)  # fewer sequences at long T, the same tokens
                key = f"{label}|facts={facts}|T={T}" if label else f"facts={facts}|T={T}"
                test[key] = accuracy(model, *batch(r, n, T, facts), max(1, a.eval_chunk * a.train_T // T), **forward)
    result = keep(path, {"model": name, "seed": seed, "lr": lr, "params": sum(p.numel() for p in model.parameters()),
                         "steps": a.steps, "curve": curve, "final_val": curve[-1][1], "test": test})
    ckpt.unlink(missing_ok=True)
    return result


def select(results: list[dict], models: list[str], lrs: list[float], seeds: list[int]) -> dict:
    """Per model: the learning rate of highest mean final validation accuracy over ``seeds`` (only learning
    rates with every seed finished compete), with that learning rate's test accuracies (mean, std, per seed)."""
    summary = {}
    for name in models:
        if (selected := select_lr(results, name, lrs, seeds)) is None:
            continue
        best, val, chosen = selected
        summary[name] = {"lr": best, "val_accuracy_by_lr": {f"{lr:g}": v for lr, v in sorted(val.items())},
                         "seeds": [r["seed"] for r in chosen], "params": chosen[0]["params"],
                         "test": {k: {"mean": float(np.mean([r["test"][k] for r in chosen])),
                                      "std": float(np.std([r["test"][k] for r in chosen])),
                                      "per_seed": [r["test"][k] for r in chosen]} for k in chosen[0]["test"]}}
    return summary


def main(argv: list[str] | None = None) -> int:
    """Train the grid, select on validation, write results.json and accuracy.png."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/new_knowledge")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3], help="the same grid for every model")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--train-T", type=int, default=256, help="training context length")
    p.add_argument("--train-facts", type=int, default=8)
    p.add_argument("--queries", type=int, default=4, help="queries at the end of every sequence")
    p.add_argument("--test-T", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    p.add_argument("--test-facts", type=int, nargs="+", default=[8, 32])
    p.add_argument("--eval-seqs", type=int, default=256, help="validation sequences (at the training length)")
    p.add_argument("--eval-tokens", type=int, default=262144, help="test tokens per (length, facts) cell")
    p.add_argument("--eval-chunk", type=int, default=64, help="sequences per forward at the training length")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--window", type=int, default=64, help="mosaic-v2's short-term window (scaled with --train-T)")
    p.add_argument("--delay-min", type=int, default=16, help="mosaic-v2's delays in training, and at inference")
    p.add_argument("--delay-max", type=int, default=64)
    p.add_argument("--kernels", choices=("fused", "reference"), default="fused")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, one process each")
    p.add_argument("--save-every", type=int, default=1000, help="steps between a run's checkpoints")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds of training per run in this call; a run stopped by it keeps a checkpoint to resume")
    p.add_argument("--max-steps-this-run", type=int, default=None,
                   help="steps per run in this call; a run stopped by it keeps a checkpoint to resume")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    require_at_least_one(p, a, ("steps", "warmup", "batch", "train_T", "train_facts", "queries", "eval_seqs",
                                "eval_tokens", "eval_chunk", "eval_every", "width", "depth", "heads", "window",
                                "delay_min", "jobs", "save_every", "max_steps_this_run"))
    if a.time_limit is not None and not a.time_limit > 0:
        p.error(f"--time-limit must be a positive number of seconds, got {a.time_limit}")
    if 3 * (a.train_facts + a.queries) > a.train_T:
        p.error(f"--train-T ({a.train_T}) is too short for --train-facts {a.train_facts} and --queries {a.queries}")
    if not a.queries <= a.train_facts <= NUM_KEYS or any(not a.queries <= f <= NUM_KEYS for f in a.test_facts):
        p.error(f"--queries <= --train-facts and every --test-facts must hold, all <= {NUM_KEYS}")
    if a.delay_max < a.delay_min:
        p.error(f"--delay-max ({a.delay_max}) must be >= --delay-min ({a.delay_min})")
    if any(lr <= 0 for lr in a.lrs):
        p.error(f"--lrs must be positive, got {a.lrs}")
    if a.device not in ("cpu", "cuda") or (a.device == "cuda" and not torch.cuda.is_available()):
        p.error(f"--device must be cpu or an available cuda, got {a.device!r}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = [(name, seed, lr, a, not a.quiet and a.jobs == 1) for name in a.models for lr in a.lrs for seed in a.seeds]
    try:
        results = run_grid(run, cells, a.jobs, a.quiet)
    except CheckpointMismatch as e:
        p.error(str(e))
    if unfinished := sum(r is None for r in results):
        print(f"{unfinished} of {len(results)} runs stopped early with a checkpoint: the same command continues them")
    results = [r for r in results if r is not None]
    calls = ("quiet", "jobs", "save_every", "time_limit", "max_steps_this_run")   # how this call ran, not the study
    summary = {"config": {k: v for k, v in vars(a).items() if k not in calls}, "chance": 1 / NUM_VALUES,
               "selection": "per model, the learning rate of highest mean final validation accuracy (training "
                            "length); accuracies on test batches of their own seeds",
               "models": select(results, a.models, a.lrs, a.seeds)}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    for name, r in summary["models"].items():
        cells = ", ".join(f"{k}: {v['mean']:.2f}" for k, v in r["test"].items())
        print(f"{name} (lr {r['lr']:g}, seeds {r['seeds']}): {cells}")
    _plot(summary, out / "accuracy.png")
    return 0


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    facts = summary["config"]["test_facts"]
    fig, axes = plt.subplots(1, len(facts), figsize=(5.5 * len(facts), 4), sharey=True, squeeze=False)
    for ax, f in zip(axes[0], facts):
        for name, r in summary["models"].items():
            for label in {k.split("|")[0] for k in r["test"] if k.count("|") == 2} | {""}:
                prefix = f"{label}|" if label else ""
                cells = sorted((int(k.split("T=")[1]), v) for k, v in r["test"].items()
                               if k.startswith(f"{prefix}facts={f}|"))
                if cells:
                    T, v = zip(*cells)
                    ax.errorbar(T, [c["mean"] for c in v], yerr=[c["std"] for c in v], marker="o", capsize=3,
                                ls="--" if label else "-", label=f"{name}{' (' + label + ')' if label else ''}")
        ax.axvline(summary["config"]["train_T"], color="grey", lw=0.8, ls=":", label="training length")
        ax.axhline(summary["chance"], color="grey", lw=0.8, label="chance")
        ax.set(xscale="log", xlabel="context length T (tokens)", ylabel="accuracy on the queried values",
               title=f"{f} facts in the context", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
