"""Memory Mosaic against GPT2 on text, by depth (the paper's Figures 9, 10, 12, 13 and Table 1, scaled down).

  python -m experiments.lm_depth run    --data BOOKS --out runs/lm_depth [--time-limit S]
  python -m experiments.lm_depth report --out runs/lm_depth --ood SIMPLEWIKI [MORE] --figures DIR
  python -m experiments.lm_depth claims --figures DIR   (the numbers behind each claim)
  python -m experiments.lm_depth compare --depths 8 --summaries bf16=DIR float32=DIR2 --figures DIR3

``run`` trains the grid (model x depth x learning rate; same width, tokens, batches and schedule for
both models) as separate processes on one GPU, several at once. A run that has finished is skipped and
an interrupted one resumes from its checkpoint, so the grid can span several short GPU calls
(``--time-limit`` stops every process cleanly with a checkpoint). It prints runs done, running and
left, with an estimate of the time left.

``report`` selects, for each model and depth, the learning rate of lowest final validation loss (never
a test metric), then writes ``summary.json`` and the figures: training and validation curves by depth,
out-of-distribution loss by position at equal depth, last-row attention of the one-layer models, the
same at three times the training length, and the 24 prompts.

Seeds: ``run --seeds 1 2`` trains the same grid points again with other seeds (model initialisation
and batch draws; folders ``...-s1``). The selection uses seed 0; ``report --seeds 0 1 2`` adds, per
depth, each model's validation loss at its selected learning rate for every seed, and the gap between
the two models with its spread across seeds.

Precision: ``run --dtype float32`` trains without bf16 autocast (into its own ``--out``); ``report``
compares every ``*-reference`` run with its fused twin, and, over seeds, their means
(``fused_vs_reference_seeds``); ``compare`` puts several reports' final losses side by side, a dot per
seed.

Evaluations need weights, and a GPU call that only brings back metrics leaves none: ``run
--rerun-selected 1 2`` trains the selected runs of those depths again, same seed, into ``...-eval``
folders, which ``report`` evaluates; the selection keeps reading the grid's runs.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from mosaic_model.cli.common import DefaultsHelpFormatter
from mosaic_model.models import MODEL_CHOICES
from mosaic_model.models.config import KERNEL_CHOICES, REFERENCE_OP_CHOICES
from mosaic_model.training import TrainConfig, preset

from .pool import Job, metrics, run_jobs, run_state

DEPTHS = (1, 2, 4, 8)
MODELS = ("mosaic", "gpt")
# Around the paper's 5e-3. The study started both models on {2e-3, 5e-3, 1e-2} and grew the grid by one
# point (x2 or /2) past an edge that a model's best lay on, the same rule for both (REPRODUCTION.md);
# report reads whichever of these runs exist.
LRS = (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 4e-2, 8e-2)


TRAIN_SEED = 1337  # mosaic-train's default: seed 0 of the study is the runs made before seeds existed


def run_name(model: str, depth: int, lr: float, kernels: str = "fused", seed: int = 0) -> str:
    """The folder of one grid point (``-s{seed}`` for seeds other than 0; a Memory Mosaic on the
    reference ops gets a ``-reference`` suffix)."""
    return (f"{model}-L{depth}-lr{lr:g}" + (f"-s{seed}" if seed else "")
            + ("-reference" if kernels == "reference" and model == "mosaic" else ""))


def train_config(a: argparse.Namespace, model: str, depth: int, lr: float, seed: int = 0) -> TrainConfig:
    """The training config of one grid point: the paper's recipe (``preset("paper")``) scaled down as
    REPRODUCTION.md states: the study's width (heads of 64 dimensions), depth, block, batch (one
    micro-step a step) and steps, a tenth of them warming up (or ``--warmup``), an evaluation every
    ``--eval-every``, the training loss logged every ``--log-every`` steps."""
    # The selection is on the final validation loss and the evaluations read the final weights, so no best.pt,
    # and a checkpoint only when a run stops or ends: 9 runs writing 230 MB at each evaluation left the
    # GPU machine waiting on its disk (a 300-step run took as long as a 1,200-step one).
    fields = dict(data=a.data, doc_split=a.doc_split, val_fraction=a.val_fraction, model=model, n_layer=depth,
                  n_embd=a.width, n_head=a.width // 64, block_size=a.block_size, batch_size=a.batch_size, grad_accum=1,
                  steps=a.steps, lr=lr, warmup=a.steps // 10 if a.warmup is None else a.warmup,
                  eval_every=a.eval_every, eval_batch_size=a.batch_size, log_every=a.log_every,
                  device=a.device, quiet=True, no_best=True, save_every=a.steps, seed=TRAIN_SEED + seed,
                  cuda_graph=a.cuda_graph, dtype=a.dtype)
    if model == "mosaic":
        fields.update(kernels=a.kernels, reference_ops=tuple(a.reference_ops))
    elif model == "mosaic-v2":
        fields.update(kernels=a.kernels)
    return preset("paper", **fields)


def cmd_run(a: argparse.Namespace) -> None:
    """Train every grid point not yet finished, ``--parallel`` at a time."""
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    grid = list(itertools.product(a.models, a.depths, a.lrs, a.seeds))
    todo = _plan(a, root, grid)
    print(f"grid: {len(grid)} runs, {len(grid) - len(todo)} done, {len(todo)} to run ({a.parallel} at a time)", flush=True)
    jobs = [Job(train_config(a, model, depth, lr, seed), out, resume=state == "partial", extra_argv=tuple(a.train_args))
            for model, depth, lr, seed, out, state in todo]
    run_jobs(jobs, a.parallel, a.time_limit)
    finished = sum(run_state(root / run_name(m, d, lr, a.kernels, seed)) == "done" for m, d, lr, seed in grid)
    print(f"status: {finished}/{len(grid)} runs finished", flush=True)


def _plan(a: argparse.Namespace, root: Path, grid: list) -> list:
    """The runs to start, as (model, depth, lr, seed, folder, state): the selected runs to train again
    for the evaluations first (they wait for them), then every grid point not finished. A run cut short
    whose checkpoint is gone starts from scratch, its old folder set aside, so that its new metrics do
    not follow the old ones in one file."""
    todo = []
    for model, depth, lr, seed in grid:
        out = root / run_name(model, depth, lr, a.kernels, seed)
        state = run_state(out)
        if state == "new" and (out / "metrics.jsonl").exists():
            _set_aside(out)
        if state != "done":
            todo.append((model, depth, lr, seed, out, state))
    return _rerun_for_evals(a, root) + todo


def _set_aside(out: Path) -> None:
    """Rename a run folder to ``.prior`` (``.prior2``... when an earlier call already kept one)."""
    prior, n = out.with_name(out.name + ".prior"), 2
    while prior.exists():
        prior, n = out.with_name(f"{out.name}.prior{n}"), n + 1
    out.rename(prior)


def _has_weights(out: Path) -> bool:
    return any((out / f).exists() for f in ("best.pt", "ckpt.pt"))


EVAL_COPY = "-eval"  # suffix of a selected run trained again for the evaluations (not part of the selection)


def _eval_copy(run: Path) -> Path:
    return run.with_name(run.name + EVAL_COPY)


def eval_folder(run: Path) -> Path | None:
    """The folder whose weights the evaluations of a selected run read: the run itself while it has its
    checkpoint, else its finished copy trained again for them (``EVAL_COPY``), else None."""
    if _has_weights(run):
        return run
    copy = _eval_copy(run)
    return copy if run_state(copy) == "done" and _has_weights(copy) else None


def _rerun_for_evals(a: argparse.Namespace, root: Path) -> list:
    """Runs to train again so that the evaluations have weights: at each ``--rerun-selected`` depth, the
    selected (lowest validation loss) finished run of each model whose checkpoint is gone, as when its
    results came back from an earlier GPU call without checkpoints. The copy trains, same seed, into its
    own folder (``EVAL_COPY``), so the selection keeps reading the grid's run: GPU training is not
    bit-reproducible, and a copy written over its run could move the selection onto a near tie whose
    weights are gone (the TinyStories depth-1 GPT2 did, 4.2565 -> 4.2635 against 4.2627). A copy cut
    short resumes from its checkpoint; one without (finished or not) is set aside (``_set_aside``). A run
    of the grid still to train can only win by a lower loss, and then it has weights. The selection looks
    at every learning rate of the default grid as well as ``--lrs``, so that a call which only extends
    the grid still finds the runs of the earlier ones."""
    todo = []
    for key, r in select(root, a.models, a.rerun_selected, sorted(set(a.lrs) | set(LRS)), a.kernels).items():
        out = Path(r["run"])
        if eval_folder(out) is not None:
            continue
        copy = _eval_copy(out)
        state = run_state(copy)
        if state != "partial":  # finished or cut short, its weights gone: start again beside the old one
            if copy.exists():
                _set_aside(copy)
            state = "new"
        model, depth = key.split("-L")
        todo.append((model, int(depth), r["lr"], 0, copy, state))
    return todo


def _curves(out: Path) -> dict:
    lines = metrics(out)
    val = [l for l in lines if l["split"] == "val"]
    return {"step": [l["step"] for l in val], "val": [l["loss"] for l in val], "train": [l["train_loss"] for l in val]}


def depth_runs(root: Path, models: list[str], depth: int, lrs: list[float], kernels: str = "fused") -> tuple[dict, int | None]:
    """The runs of one depth with at least one evaluation, finished or stopped early, as
    {(model, lr): (folder, curves)}, and the last evaluation step that all of them reached (None if none)."""
    runs = {}
    for model, lr in itertools.product(models, lrs):
        out = root / run_name(model, depth, lr, kernels)
        if (out / "metrics.jsonl").exists():
            c = _curves(out)
            if c["step"]:
                runs[(model, lr)] = (out, c)
    if not runs:
        return {}, None
    step = min(c["step"][-1] for _, c in runs.values())
    return {k: r for k, r in runs.items() if step in r[1]["step"]}, step


def select(root: Path, models: list[str], depths: list[int], lrs: list[float], kernels: str = "fused") -> dict:
    """{"model-Ldepth": summary}: for each model and depth, the learning rate of lowest validation loss at
    ``step``, the last evaluation that every run of that depth (both models) reached; it is the final one
    when every run finished, and an equal step of the same schedule when a GPU call cut some short.
    The summary holds that lr, its folder, curves and state, and every lr's loss at that step."""
    chosen = {}
    for depth in depths:
        runs, step = depth_runs(root, models, depth, lrs, kernels)
        for model in models:
            mine = {lr: r for (m, lr), r in runs.items() if m == model}
            if not mine:
                continue
            at = {lr: c["val"][c["step"].index(step)] for lr, (_, c) in mine.items()}
            lr = min(at, key=at.get)
            out, c = mine[lr]
            chosen[f"{model}-L{depth}"] = {"lr": lr, "run": str(out), "step": step, "val_loss": at[lr],
                                           "finished": run_state(out) == "done", "final_val_loss": c["val"][-1],
                                           "final_train_loss": c["train"][-1], "curves": c,
                                           "all_lrs": {f"{l:g}": v for l, v in sorted(at.items())}}
    return chosen


def seed_spread(root: Path, chosen: dict, depths: list[int], seeds: list[int], kernels: str = "fused") -> dict:
    """{depth: table} for depths where a model has runs at two or more seeds: per model, the learning
    rate of its grid with the most seeds run (its selected one on a tie: seeds may have been trained
    before a later grid point won the selection, and a table at the selected rate would then hold one
    seed), the step every one of those runs reached, each model's validation losses there (one per seed
    found), their means, and, where both models have runs, the gap (GPT2 minus Memory Mosaic, positive
    when the Memory Mosaic is ahead) of the means, with the smallest and largest gap over seed pairs."""
    out = {}
    for depth in depths:
        runs, lrs = {}, {}
        for model in MODELS:
            r = chosen.get(f"{model}-L{depth}")
            if r is None:
                continue
            found = {}
            for lr in sorted({r["lr"], *(float(l) for l in r["all_lrs"])}, key=lambda l: l != r["lr"]):
                curves = {}
                for seed in seeds:
                    folder = root / run_name(model, depth, lr, kernels, seed)
                    c = _curves(folder) if (folder / "metrics.jsonl").exists() else {"step": []}
                    if c["step"]:
                        curves[seed] = c
                found[lr] = curves
            lrs[model] = max(found, key=lambda l: len(found[l]))  # the selected rate comes first: ties keep it
            runs.update({(model, seed): c for seed, c in found[lrs[model]].items()})
        if max((sum(m == model for m, _ in runs) for model in MODELS), default=0) < 2:
            continue  # no model has two seeds
        step = min(c["step"][-1] for c in runs.values())
        at = {k: c["val"][c["step"].index(step)] for k, c in runs.items() if step in c["step"]}
        loss = {m: {s: v for (mm, s), v in at.items() if mm == m} for m in MODELS}
        loss = {m: v for m, v in loss.items() if v}
        mean = {m: sum(v.values()) / len(v) for m, v in loss.items()}
        out[depth] = {"step": step, "lr": lrs, "val_loss": {m: {str(s): v for s, v in loss[m].items()} for m in loss},
                      "mean": mean}
        if len(mean) == 2:  # a study of one model (the reference-ops runs) has no gap
            gaps = [g - m for g in loss["gpt"].values() for m in loss["mosaic"].values()]
            out[depth].update(gap_of_means=mean["gpt"] - mean["mosaic"], gap_min=min(gaps), gap_max=max(gaps))
    return out


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (the device machines have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cmd_report(a: argparse.Namespace) -> None:
    """Select on validation, then evaluate and plot (see the module docstring)."""
    from mosaic_model.cli import eval as ev

    plt = _pyplot()

    root, figs = Path(a.out), Path(a.figures)
    figs.mkdir(parents=True, exist_ok=True)
    summary = {"selection": "per model and depth, the learning rate of lowest validation loss at the last "
                            "evaluation every run of that depth reached (the final one when all finished)",
               "grid_lrs": list(a.lrs), "eval_depth": a.eval_depth, "runs": select(root, a.models, a.depths, a.lrs, a.kernels)}
    # Figure 9 analogue: curves by depth.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = plt.cm.viridis([0.0, 0.3, 0.6, 0.85])
    for ax, kind in zip(axes, ("train", "val")):
        for (model, ls), (i, depth) in itertools.product((("mosaic", "-"), ("gpt", "--")), enumerate(a.depths)):
            key = f"{model}-L{depth}"
            if key in summary["runs"]:
                c = summary["runs"][key]["curves"]
                name = "Memory Mosaic" if model == "mosaic" else "GPT2"
                ax.plot(c["step"], c[kind], ls=ls, color=colors[i % 4], label=f"{name} L{depth}")
        ax.set(title=f"{kind} loss", xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(top=min(axes[0].get_ylim()[1], 6.5))
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(figs / "lm_depth_curves.png", dpi=120)
    plt.close(fig)
    summary["fused_vs_reference"] = _compare_kernels(root, figs, plt)
    summary["fused_vs_reference_seeds"] = kernel_seed_means(summary["fused_vs_reference"])
    for point, t in summary["fused_vs_reference_seeds"].items():
        print(f"{point}, step {t['step']}, {len(t['seeds'])} seeds: mean val fused {t['mean_fused']:.4f}, "
              f"reference {t['mean_reference']:.4f}; reference - fused by seed "
              f"{', '.join(f'{d:+.4f}' for d in t['reference_minus_fused'])}")
    if len(a.seeds) > 1:
        summary["seeds"] = seed_spread(root, summary["runs"], a.depths, a.seeds, a.kernels)
        for depth, t in summary["seeds"].items():
            print(f"depth {depth}, step {t['step']}: mean val "
                  + ", ".join(f"{'Memory Mosaic' if m == 'mosaic' else 'GPT2'} {t['mean'][m]:.4f} "
                              f"({len(t['val_loss'][m])} seeds, lr {t['lr'][m]:g})" for m in t["mean"])
                  + (f"; gap {t['gap_of_means']:+.4f} (seed pairs {t['gap_min']:+.4f} to {t['gap_max']:+.4f})"
                     if "gap_of_means" in t else ""))
    _lr_sweep_plot(summary["runs"], a.depths, figs, plt)
    if not a.no_evals and a.eval_depth in a.depths:
        _evaluate(a, summary["runs"], figs, ev)
        cmd_claims(a)
    (figs / "lm_depth_summary.json").write_text(json.dumps(summary, indent=1))
    for key, r in sorted(summary["runs"].items()):
        state = "finished" if r["finished"] else "stopped early"
        print(f"{key}: lr {r['lr']:g}, val {r['val_loss']:.4f} at step {r['step']} ({state}), "
              f"by lr {{{', '.join(f'{l}: {v:.4f}' for l, v in r['all_lrs'].items())}}}")


def _lr_sweep_plot(chosen: dict, depths, figs: Path, plt) -> None:
    """Validation loss against learning rate, one panel per depth, both models, at the selection step."""
    depths = [d for d in depths if any(f"{m}-L{d}" in chosen for m in MODELS)]
    if not depths:
        return
    fig, axes = plt.subplots(1, len(depths), figsize=(3.2 * len(depths), 3.4), sharey=True, squeeze=False)
    for ax, depth in zip(axes[0], depths):
        for model, style in (("mosaic", "o-"), ("gpt", "s--")):
            r = chosen.get(f"{model}-L{depth}")
            if r:
                lrs = sorted(r["all_lrs"], key=float)
                ax.plot([float(l) for l in lrs], [r["all_lrs"][l] for l in lrs], style,
                        label="Memory Mosaic" if model == "mosaic" else "GPT2")
                step = r["step"]
        ax.set(xscale="log", title=f"depth {depth} (val loss, step {step})", xlabel="learning rate")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation loss")
    axes[0][0].set_ylim(top=min(axes[0][0].get_ylim()[1], 6.0))
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figs / "lm_depth_lr_sweep.png", dpi=120)
    plt.close(fig)


def _compare_kernels(root: Path, figs: Path, plt) -> dict:
    """Each ``*-reference`` run against its fused twin (same seed, data and schedule): validation curves
    on one plot and the largest gap over the evaluations both have (the reference run may have been
    stopped early: it is several times slower). Both paths compute the same function, so the gap is what
    bf16 rounding and a different summation order do to a whole run."""
    pairs = {}
    for ref in sorted(root.glob("*-reference")):
        fused = root / ref.name[: -len("-reference")]
        if not ((ref / "metrics.jsonl").exists() and run_state(fused) == "done"):
            continue
        cr, cf = _curves(ref), _curves(fused)
        common = sorted(set(cr["step"]) & set(cf["step"]))
        if not common:
            continue
        at = lambda c, s: c["val"][c["step"].index(s)]  # noqa: E731
        gaps = [abs(at(cr, s) - at(cf, s)) for s in common]
        pairs[fused.name] = {"steps_compared": common, "fused_val": [at(cf, s) for s in common],
                             "reference_val": [at(cr, s) for s in common], "max_abs_val_gap": max(gaps),
                             "reference_finished": run_state(ref) == "done", "curves": {"fused": cf, "reference": cr}}
    if pairs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, r in pairs.items():
            line, = ax.plot(r["curves"]["fused"]["step"], r["curves"]["fused"]["val"], label=f"{name} fused")
            ax.plot(r["curves"]["reference"]["step"], r["curves"]["reference"]["val"], "--", color=line.get_color(),
                    label=f"{name} reference")
        ax.set(title="Memory Mosaic: fused kernels against the PyTorch reference", xlabel="step", ylabel="validation loss")
        ax.set_ylim(top=min(ax.get_ylim()[1], 6.5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(figs / "fused_vs_reference.png", dpi=120)
        plt.close(fig)
    return pairs


def split_seed(name: str) -> tuple[str, int]:
    """(grid point, seed) of a fused run's folder name: the inverse of ``run_name``'s ``-s{seed}``."""
    point, seed = re.fullmatch(r"(.*?)(?:-s(\d+))?", name).groups()
    return point, int(seed or 0)


def kernel_seed_means(pairs: dict) -> dict:
    """{grid point: table} for grid points whose fused/reference pairs (``_compare_kernels``) exist at two
    or more seeds: the last step every pair reached, the seeds, the mean validation loss of each path
    there and each seed's reference-minus-fused difference (negative where the reference trained lower).
    One pair shows a difference; the seeds say whether it is larger than a run's spread."""
    groups: dict = {}
    for name, r in pairs.items():
        point, seed = split_seed(name)
        groups.setdefault(point, {})[seed] = r
    out = {}
    for point, by_seed in groups.items():
        if len(by_seed) < 2:
            continue
        step = min(r["steps_compared"][-1] for r in by_seed.values())
        if not all(step in r["steps_compared"] for r in by_seed.values()):
            continue
        seeds = sorted(by_seed)
        at = {s: by_seed[s]["steps_compared"].index(step) for s in seeds}
        fused = [by_seed[s]["fused_val"][at[s]] for s in seeds]
        ref = [by_seed[s]["reference_val"][at[s]] for s in seeds]
        out[point] = {"step": step, "seeds": seeds, "mean_fused": sum(fused) / len(fused),
                      "mean_reference": sum(ref) / len(ref),
                      "reference_minus_fused": [r - f for r, f in zip(ref, fused)]}
    return out


def _gap_plot(figs: Path, smooth: int = 16) -> None:
    """``ood_gap_by_position.png``: the Memory Mosaic's loss minus GPT2's at each position (the same
    documents for both), a moving average over ``smooth`` positions, one line per out-of-distribution
    text (each ``ood_loss_by_position*.json`` in ``figs``). Below zero the Memory Mosaic is ahead; a line
    falling with position is the paper's Fig 10 claim."""
    lines = []
    for f in sorted(figs.glob("ood_loss_by_position*.json")):
        record = json.loads(f.read_text())
        by_model = {_model_of(run): np.asarray(r["loss"], dtype=np.float64) for run, r in record["results"].items()}
        if {"mosaic", "gpt"} <= set(by_model) and by_model["mosaic"].size >= smooth:
            gap = by_model["mosaic"] - by_model["gpt"]
            lines.append((np.convolve(gap, np.ones(smooth) / smooth, mode="valid"),
                          Path(record["data"]).name.split(".")[0] if "data" in record else f.stem))
    if not lines:  # no pair of models evaluated: no figure
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for mean, label in lines:
        ax.plot(np.arange(smooth - 1, smooth - 1 + mean.size), mean, label=label)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(title=f"Memory Mosaic - GPT2, loss by position ({smooth}-position mean)", xlabel="position in document",
           ylabel="loss difference (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figs / "ood_gap_by_position.png", dpi=120)
    plt.close(fig)


def _evaluate(a: argparse.Namespace, chosen: dict, figs: Path, ev) -> None:
    """The evaluations at equal depth (Fig 10, Table 1) and of the one-layer models (Fig 12, 13)."""
    def ev_main(argv: list[str]) -> None:
        code = ev.main(argv + ["--device", a.device, "--quiet"])
        if code:
            raise SystemExit(f"mosaic-eval {argv[0]} failed with code {code}")

    def with_weights(depth: int) -> list[str]:
        found = []
        for r in (chosen[k] for k in (f"{m}-L{depth}" for m in MODELS) if k in chosen):
            run = Path(r["run"])
            folder = eval_folder(run)
            if folder is None:
                print(f"report: {run} has no weights (run again with --rerun-selected {depth}); its evaluations are skipped")
                continue
            if folder != run:
                print(f"report: {run.name} is evaluated on its copy {folder.name} (final val "
                      f"{_curves(folder)['val'][-1]:.4f}, the grid's run {r['final_val_loss']:.4f})")
            found.append(str(folder))
        return found

    pair, one = with_weights(a.eval_depth), with_weights(1)
    for i, source in enumerate(a.ood if pair else []):
        # The first source is the paper's (ood_loss_by_position.*); each other one is named after its file.
        # Only documents that reach the last position: every position then averages the same documents.
        stem = "ood_loss_by_position" + ("" if i == 0 else "_" + Path(source).name.split(".")[0])
        ev_main(["per-position", *pair, "--data", source, "--out", str(figs / stem), "--batch-size", "16",
                 "--full-length"])
    text = a.ood[0] if a.ood else a.data
    if one:
        # The paper's Fig 12 averages windows of its training text; Fig 13 runs past the training length,
        # which needs documents of 3x that length (the first out-of-distribution text has them).
        ev_main(["attention", *one, "--data", a.data, "--doc-split", a.doc_split, "--num-seqs", str(a.num_seqs),
                 "--out", str(figs / "attention_1layer")])
        ev_main(["long-context", *one, "--data", text, "--num-seqs", str(a.num_seqs),
                 "--out", str(figs / "long_context_1layer"), "--batch-size", "8", "--full-length"])
    if pair:
        ev_main(["generate", *pair, "--out", str(figs / "prompts"), "--max-new-tokens", "40"])


# Position bands of the paper's Fig 10 claim (early context, about 50 tokens, the transformer's plateau
# from 100-150, the end of the window), and of Fig 13 (inside the training length, then beyond it).
OOD_BANDS = ((0, 10), (40, 60), (100, 150), (200, 300), (400, 512))
LONG_BANDS = ((256, 512), (512, 1024), (1024, 1536))


def _bands(loss: list, bands) -> dict:
    """{"lo-(hi-1)": mean loss over those positions} (each position already averaged over its documents),
    for the bands that start inside the evaluated length; positions no document reached (NaN) are left out."""
    loss = np.asarray(loss, dtype=np.float64)
    return {f"{lo}-{hi - 1}": float(np.nanmean(loss[lo:hi])) for lo, hi in bands
            if lo < loss.size and not np.isnan(loss[lo:hi]).all()}


def _model_of(run: str) -> str:
    return "mosaic" if Path(run).name.startswith("mosaic") else "gpt"


SINK_KEYS = 8  # an attention sink is looked for among the first keys of the window, not at key 0 alone


def _last_row(att: list) -> dict:
    """Flatness, recency and sinks of one model's mean last-row attention (layers x heads x keys).

    Averaged over layers and heads: the weight on the last 10 keys and on key 0, each beside its value
    under uniform attention, and the entropy as a fraction of the uniform one (1: flat). Per layer and
    head (``sink``): the largest weight among the first ``SINK_KEYS`` keys over the uniform weight, and
    which key holds it; ``sink_max`` is the largest of those ratios (a head with a sink: well above 1)."""
    per_head = np.asarray(att, dtype=np.float64)
    row = per_head.mean(axis=(0, 1))
    row = row / row.sum()
    per_head = per_head / per_head.sum(axis=-1, keepdims=True)
    n = row.size
    entropy = float(-(row * np.log(np.clip(row, 1e-30, None))).sum())
    thirds = [float(t.sum()) for t in np.array_split(row, 3)]
    first = per_head[..., :SINK_KEYS]
    sink = {"over_uniform": (first.max(axis=-1) * n).tolist(), "key": first.argmax(axis=-1).tolist()}
    return {"keys": n, "last_10": float(row[-10:].sum()), "last_10_uniform": 10 / n, "key_0": float(row[0]),
            "key_0_uniform": 1 / n, "entropy_over_uniform": entropy / float(np.log(n)), "thirds": thirds,
            "sink": sink, "sink_max": float(first.max() * n)}


def claim_numbers(figs: Path) -> dict:
    """The numbers behind each claim of the paper that the evaluations test, read from the JSON that
    ``report`` wrote into ``figs`` (whichever exist), by model: the out-of-distribution loss in the
    ``OOD_BANDS`` with ``gain_after_50`` (band 40-59 minus band 400-511: positive while loss still falls
    past about 50 tokens) and ``gain_after_150`` (band 100-149 minus 400-511: about 0 on a plateau), and
    the two models' difference by band (``mosaic_minus_gpt``: falling with position if the Memory Mosaic
    keeps improving where the transformer does not); the one-layer models' last-row attention
    (``_last_row``); the long-context loss in ``LONG_BANDS`` and attention thirds."""
    out: dict = {}
    for f in sorted(figs.glob("ood_loss_by_position*.json")):
        res = json.loads(f.read_text())["results"]
        out[f.stem] = {}
        for run, r in res.items():
            bands = _bands(r["loss"], OOD_BANDS)
            gains = {f"gain_after_{k}": bands[b] - bands["400-511"]
                     for k, b in (("50", "40-59"), ("150", "100-149")) if b in bands and "400-511" in bands}
            out[f.stem][_model_of(run)] = {"run": Path(run).name, "bands": bands, **gains}
        if {"mosaic", "gpt"} <= set(out[f.stem]):
            # Without --full-length, later positions average over fewer, longer documents (those that reach
            # them), so a band's level mixes position with document; the two models' difference does not.
            m, g = out[f.stem]["mosaic"]["bands"], out[f.stem]["gpt"]["bands"]
            out[f.stem]["mosaic_minus_gpt"] = {k: m[k] - g[k] for k in m}
    f = figs / "attention_1layer.json"
    if f.exists():
        out["attention_1layer"] = {_model_of(run): {"run": Path(run).name, **_last_row(r["attention"])}
                                   for run, r in json.loads(f.read_text())["results"].items()}
    f = figs / "long_context_1layer.json"
    if f.exists():
        res = json.loads(f.read_text())["results"]
        out["long_context_1layer"] = {
            _model_of(run): {"run": Path(run).name, "window": r["gpt_sliding_window"],
                             "bands": _bands(r["loss"], LONG_BANDS),
                             "attention": _last_row(res["attention"][run]["attention"])}
            for run, r in res["loss_by_position"].items()}
    return out


def cmd_claims(a: argparse.Namespace) -> None:
    """Write ``claims.json`` and ``ood_gap_by_position.png`` beside the evaluations in ``--figures``, and
    print the numbers."""
    figs = Path(a.figures)
    numbers = claim_numbers(figs)
    _gap_plot(figs)
    (figs / "claims.json").write_text(json.dumps(numbers, indent=1))
    for name, by_model in numbers.items():
        for model, r in by_model.items():
            if model == "mosaic_minus_gpt":
                detail = " ".join(f"{k}: {v:+.3f}" for k, v in r.items())
                print(f"{name} Memory Mosaic - GPT2: {detail}")
                continue
            if "attention" not in r and "bands" in r:
                detail = " ".join(f"{k}: {v:.3f}" for k, v in r["bands"].items()) + "".join(
                    f" | {k.replace('_', ' ')}: {r[k]:+.3f}" for k in ("gain_after_50", "gain_after_150") if k in r)
            elif "bands" in r:
                detail = (" ".join(f"{k}: {v:.3f}" for k, v in r["bands"].items())
                          + " | attention thirds " + " / ".join(f"{t:.2f}" for t in r["attention"]["thirds"]))
            else:
                detail = (f"last 10 keys {r['last_10']:.3f} (uniform {r['last_10_uniform']:.3f}), key 0 {r['key_0']:.4f} "
                          f"(uniform {r['key_0_uniform']:.4f}), entropy/uniform {r['entropy_over_uniform']:.3f}, "
                          f"largest of the first {SINK_KEYS} keys per head / uniform: "
                          + ", ".join(f"{v:.1f} (key {k})" for v, k in zip(np.ravel(r["sink"]["over_uniform"]),
                                                                          np.ravel(r["sink"]["key"]))))
            print(f"{name} {model} ({r['run']}): {detail}")


# The "mosaic" path is whatever the report's runs trained (fused by default; an ablation report's runs
# have some ops on the reference), so its label names the model only; the report's label says the rest.
PATHS = (("mosaic", "Memory Mosaic"), ("reference", "Memory Mosaic reference ops"), ("gpt", "GPT2"))


def compare_numbers(summaries: dict, depth: int) -> dict:
    """{label: {path: {"step", "val_loss": {seed: loss}, "mean"}}} at one depth, from report summaries
    (``lm_depth_summary.json``) of runs that differ in one setting, such as the precision: each model's
    seeds from the seed table, and the reference path's from the fused/reference pairs at the same step."""
    out = {}
    for label, summary in summaries.items():
        table = summary.get("seeds", {}).get(str(depth))
        if table is None:
            raise ValueError(f"--summaries: {label} has no seed table at depth {depth} (report --seeds 0 1 2)")
        step, losses = table["step"], {m: dict(table["val_loss"].get(m, {})) for m in MODELS}
        losses["reference"] = {}
        fused_point = run_name("mosaic", depth, table["lr"]["mosaic"]) if "mosaic" in table["lr"] else None
        for name, r in summary.get("fused_vs_reference", {}).items():
            point, seed = split_seed(name)
            if point == fused_point and step in r["steps_compared"]:
                losses["reference"][str(seed)] = r["reference_val"][r["steps_compared"].index(step)]
        out[label] = {path: {"step": step, "val_loss": losses[path], "mean": sum(losses[path].values()) / len(losses[path])}
                      for path, _ in PATHS if losses[path]}
    return out


def cmd_compare(a: argparse.Namespace) -> None:
    """``compare.json`` and ``compare.png`` in ``--figures``: the final validation loss of each model and
    path at ``--depths`` (one), one dot per seed and a bar at the mean, for each report of ``--summaries``."""
    summaries = {label: json.loads((Path(folder) / "lm_depth_summary.json").read_text())
                 for label, _, folder in (item.partition("=") for item in a.summaries)}
    numbers = compare_numbers(summaries, a.depths[0])
    figs = Path(a.figures)
    figs.mkdir(parents=True, exist_ok=True)
    (figs / "compare.json").write_text(json.dumps(numbers, indent=1))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.3 * sum(len(v) for v in numbers.values()) + 1, 3.8))
    ticks, x = [], 0
    for label, by_path in numbers.items():
        for i, (path, name) in enumerate(PATHS):
            if path not in by_path:
                continue
            r = by_path[path]
            ax.plot([x] * len(r["val_loss"]), list(r["val_loss"].values()), "o", color=f"C{i}", alpha=0.7)
            ax.hlines(r["mean"], x - 0.3, x + 0.3, color=f"C{i}")
            ticks.append((x, f"{label}\n{name.replace('Memory Mosaic', 'MM')}"))
            print(f"{label} {name}: mean {r['mean']:.4f} over seeds "
                  + ", ".join(f"{s}: {v:.4f}" for s, v in r["val_loss"].items()) + f" (step {r['step']})")
            x += 1
        x += 0.5
    ax.set_xticks([t for t, _ in ticks], [n for _, n in ticks], fontsize=7)
    ax.set(ylabel="validation loss", title=f"depth {a.depths[0]}: final validation loss, a dot per seed, a bar at the mean")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(figs / "compare.png", dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the depth study."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    p.add_argument("command", choices=("run", "report", "claims", "compare"),
                   help="claims: the numbers of each claim, from the evaluation JSON that report wrote (--figures); "
                        "compare: the final losses of several reports' seeds side by side (--summaries, one --depths)")
    p.add_argument("--data", help="training text (a folder of books: --doc-split file); run needs it, and report "
                                  "unless --no-evals")
    p.add_argument("--doc-split", default="file", help="how --data's .txt files are cut into documents (mosaic-train's)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="documents of --data held out for validation")
    p.add_argument("--out", default="runs/lm_depth", help="the folder of the grid's run folders")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODEL_CHOICES,
                   help="the models of the grid (report and claims compare mosaic and gpt; run trains any of them)")
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                   help="run: mosaic-train flags given to every run (e.g. --delay-min 64 --delay-max 64), last on the line")
    p.add_argument("--depths", nargs="+", type=int, default=list(DEPTHS), help="the depths of the grid")
    p.add_argument("--lrs", nargs="+", type=float, default=list(LRS), help="the learning rates of the grid")
    p.add_argument("--width", type=int, default=256, help="d of every model (heads of 64 dimensions)")
    p.add_argument("--block-size", type=int, default=512, help="context length T of training")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (one micro-step)")
    p.add_argument("--steps", type=int, default=1200, help="optimizer steps of every run (a tenth warming up)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    p.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (default: a tenth of --steps)")
    p.add_argument("--log-every", type=int, default=10, help="steps between training-loss records")
    p.add_argument("--parallel", type=int, default=16, help="runs at once (separate processes on one GPU)")
    p.add_argument("--time-limit", type=float, default=None, help="seconds; every process stops with a checkpoint")
    p.add_argument("--device", default="cuda", help="cuda or cpu (mosaic-train's --device)")
    p.add_argument("--cuda-graph", action="store_true", help="every run replays its steps as CUDA graphs (mosaic-train)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="run: mosaic-train's --dtype (auto = bf16 autocast on CUDA); give float32 runs their own --out, "
                        "as folder names do not carry it")
    p.add_argument("--kernels", choices=KERNEL_CHOICES, default="fused",
                   help="the Memory Mosaic's ops; reference runs are named *-reference and compared by report")
    p.add_argument("--reference-ops", nargs="+", choices=REFERENCE_OP_CHOICES, default=[], metavar="OP",
                   help="run: these C-mem ops of the fused Memory Mosaic run their PyTorch reference (mosaic-train's "
                        "--reference-ops); give such runs their own --out")
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="run: train every grid point with each seed; report: the seed table over these seeds")
    p.add_argument("--rerun-selected", nargs="*", type=int, default=[],
                   help="run: depths whose selected runs are trained again if their checkpoint is gone (for evals)")
    p.add_argument("--ood", nargs="+", default=[],
                   help="out-of-distribution texts for the loss by position (the first also feeds the long-context "
                        "evaluation; each further one gets ood_loss_by_position_NAME); the attention maps read --data")
    p.add_argument("--eval-depth", type=int, default=2, help="the equal depth of Fig 10 and Table 1 analogues")
    p.add_argument("--num-seqs", type=int, default=512, help="report: random windows averaged by the attention maps")
    p.add_argument("--figures", default="docs/figures", help="report, claims, compare: where figures and JSON go")
    p.add_argument("--no-evals", action="store_true", help="report: selection and curves only (no checkpoints needed)")
    p.add_argument("--summaries", nargs="+", default=[], metavar="LABEL=FOLDER",
                   help="compare: report folders (each with lm_depth_summary.json) and their labels")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``run``, ``report``, ``claims`` or ``compare``."""
    p = build_parser()
    a = p.parse_args(argv)
    if (a.command == "run" or (a.command == "report" and not a.no_evals)) and not a.data:
        p.error(f"--data: {a.command} needs the training text"
                + (" (report --no-evals does not)" if a.command == "report" else ""))
    if a.width % 64:
        p.error(f"--width must be a multiple of 64 (heads of 64 dimensions, as GPT2-small), got {a.width}")
    if any(s < 0 for s in a.seeds):
        p.error(f"--seeds must be >= 0, got {a.seeds}")
    if a.command == "compare":
        if len(a.depths) != 1:
            p.error(f"--depths: compare takes one depth, got {a.depths}")
        bad = [i for i in a.summaries if "=" not in i or not (Path(i.partition("=")[2]) / "lm_depth_summary.json").exists()]
        if not a.summaries or bad:
            p.error("--summaries: expected LABEL=FOLDER, each folder holding a report's lm_depth_summary.json, "
                    f"got {bad or 'none'}")
    if a.command == "report" and not select(Path(a.out), a.models, a.depths, a.lrs, a.kernels):
        p.error(f"--out: no seed-0 run of the grid (models {a.models}, depths {a.depths}, lrs {a.lrs}, "
                f"kernels {a.kernels}) under {a.out}; the selection reads seed 0, other seeds join it through --seeds")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        {"run": cmd_run, "report": cmd_report, "claims": cmd_claims, "compare": cmd_compare}[a.command](a)
    except ValueError as e:
        if a.command != "compare":
            raise
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
