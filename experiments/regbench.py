"""In-context language learning on RegBench: Memory Mosaic against a transformer by number of training
languages (the paper's Figure 11), and the IID test of its Table 4.

  python -m experiments.regbench run    --out runs/regbench [--sizes 100 500 ...] [--parallel 4]
  python -m experiments.regbench report --out runs/regbench --figures docs/figures/regbench

``run`` trains the grid (size x model x depth x width x weight decay x learning rate, the same grid for
both models) with ``mosaic-train --preset regbench``, several runs at once as separate processes. A
finished run is skipped and an interrupted one resumes from its checkpoint, so a sweep spans several
GPU calls; every run writes ``result.json`` (its settings, its best validation loss and its test
metrics). ``--iid`` runs the same grid on the IID split (test sequences of the training languages).

``report`` selects, per size and model, the run of lowest validation loss (the test metrics are read
only after that choice), and also reports RegBench's own choice, the run of best test metric, which
selects on the test set. It writes ``summary.json``, a markdown table, every run of the search
(``regbench_runs.md``) and the plot of accuracy and "TVD" against the number of training languages,
with the paper's values beside ours. A size enters the plot only once both models have searched the same
grid points there (the table marks the others), and each size shows the epochs its runs trained under
``--step-cap``. ``regbench_curves.png`` draws every run's validation accuracy against step, unfinished
runs too.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

from mosaic_model.cli.common import require_at_least_one
from mosaic_model.models import MODEL_CHOICES
from mosaic_model.training import TrainConfig, preset
from mosaic_model.training.config import epoch_steps

from .pool import Job, metrics, run_jobs, run_state

SIZES = (100, 500, 1000, 2500, 10000, 40000)
MODELS = ("mosaic", "gpt")  # the paper's pair, the default grid; any model of the package can join
CURVES = (("mosaic", "tab:blue", "Memory Mosaic"), ("gpt", "tab:orange", "Transformer (GPT2)"),
          ("mosaic-v2", "tab:green", "Memory Mosaics v2"), ("llama", "tab:red", "Transformer (llama-style)"))
DEPTHS = (1, 2, 4)
WIDTHS = (64, 128, 256)
WEIGHT_DECAYS = (0.01, 0.1)
LRS = (2.5e-4, 5e-4, 1e-3)
HEAD_SIZE = 16  # the preset's 128 / 8 heads, kept at every width

# Figure 11 (read from the paper's plot, +-0.005) and Table 4: accuracy and RegBench's "TVD" (the L1 distance).
PAPER_FIG11 = {
    "mosaic": {"accuracy": {100: 0.925, 500: 0.929, 1000: 0.934, 2500: 0.940, 40000: 0.959},
               "l1": {100: 0.569, 500: 0.254, 1000: 0.215, 2500: 0.185, 40000: 0.122}},
    "gpt": {"accuracy": {100: 0.523, 500: 0.543, 1000: 0.53, 2500: 0.926, 40000: 0.952},
            "l1": {100: 0.685, 500: 0.64, 1000: 0.62, 2500: 0.231, 40000: 0.144}},
}
PAPER_TABLE4 = {"mosaic": {"accuracy": 0.959, "l1": 0.417}, "gpt": {"accuracy": 0.856, "l1": 0.308}}


def run_name(model: str, size: int, depth: int, width: int, wd: float, lr: float, iid: bool = False) -> str:
    """The folder of one grid point."""
    return f"{model}-N{size}-L{depth}-d{width}-wd{wd:g}-lr{lr:g}" + ("-iid" if iid else "")


def grid(a: argparse.Namespace) -> list[tuple]:
    """Every (model, size, depth, width, weight decay, lr) of the sweep, smallest size first and both
    models at each size before the next, so that a sweep cut short leaves whole sizes."""
    return [(model, size, *rest) for size in sorted(a.sizes) for model in a.models
            for rest in itertools.product(a.depths, a.widths, a.wds, a.lrs)]


def train_config(a: argparse.Namespace, model: str, size: int, depth: int, width: int, wd: float, lr: float) -> TrainConfig:
    """The training config of one grid point: the RegBench preset with this point's settings; with
    ``--patience-steps N`` the run ends once its validation loss has not improved for N steps, counted in
    whole evaluations (one an epoch: ceil(N / epoch length) of them)."""
    patience = None
    if a.patience_steps is not None:
        per_epoch, _ = epoch_steps(size, preset("regbench").batch_size, a.epochs, a.step_cap)
        patience = -(-a.patience_steps // per_epoch)
    return preset("regbench", model=model, num_train=size, n_layer=depth, n_embd=width, n_head=width // HEAD_SIZE,
                  pmem_size=int(3.5 * width), weight_decay=wd, lr=lr, epochs=a.epochs, step_cap=a.step_cap,
                  device=a.device, task_seed=a.task_seed, num_test=a.num_test, save_every=a.save_every, iid=a.iid,
                  patience=patience, quiet=True)


def read_result(out: Path) -> dict | None:
    """A finished run's record: best validation loss, the step training ended at (``steps_trained``; before the cap
    when mosaic-train's --patience ended it, ``early_stop`` then its count of evaluations without a better loss) and
    the test metrics (from the best weights)."""
    if run_state(out, "test") != "done":
        return None
    lines = metrics(out)
    vals = [l for l in lines if l["split"] == "val"]
    test = [l for l in lines if l["split"] == "test"][-1]
    best = min(vals, key=lambda l: l["loss"])
    return {"best_val_loss": best["loss"], "best_val_step": best["step"], "best_val_accuracy": best["accuracy"],
            "steps_trained": test["step"], "early_stop": test.get("early_stop"),
            "test": {k: test[k] for k in ("loss", "accuracy", "l1", "tvd", "chance_accuracy", "weights_step")}}


def _record(a: argparse.Namespace, point: tuple) -> bool:
    """Write ``result.json`` beside a finished run (its settings and :func:`read_result`); False if the
    run has not finished."""
    out = Path(a.out) / run_name(*point, iid=a.iid)
    result = read_result(out)
    if result is None:
        return False
    model, size, depth, width, wd, lr = point
    settings = dict(model=model, num_train=size, n_layer=depth, n_embd=width, weight_decay=wd, lr=lr,
                    iid=a.iid, epochs=a.epochs, step_cap=a.step_cap)
    (out / "result.json").write_text(json.dumps({**settings, **result}, indent=1))
    return True


def cmd_run(a: argparse.Namespace) -> None:
    """Train every grid point not yet finished; write result.json beside each run as it finishes."""
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    points = grid(a)
    jobs, point_of, not_started = [], {}, 0
    for point in points:
        out = root / run_name(*point, iid=a.iid)
        state = run_state(out, "test")
        if state == "new" and a.resume_only:
            not_started += 1
        elif state != "done":
            jobs.append(Job(train_config(a, *point), out, resume=state == "partial", extra_argv=tuple(a.train_args)))
            point_of[out] = point
    print(f"sweep: {len(points)} runs, {len(points) - len(jobs) - not_started} done, {len(jobs)} to run "
          f"({a.parallel} at a time)" + (f", {not_started} not started (--resume-only)" if not_started else ""),
          flush=True)
    failed = run_jobs(jobs, a.parallel, a.time_limit, on_exit=lambda job, _rc: _record(a, point_of[job.out]))
    # Runs recorded as they ended keep their record (the settings of the call that trained them); this
    # only records finished runs that have none yet (results of a call cut before its processes exited).
    done = sum((root / run_name(*point, iid=a.iid) / "result.json").exists() or _record(a, point) for point in points)
    print(f"status: {done}/{len(points)} runs finished" + (f", {failed} failed" if failed else ""), flush=True)


def collect(root: Path, iid: bool = False) -> list[dict]:
    """Every result.json under ``root`` (of the IID sweep or of the held-out one), less those whose test
    metrics do not come from the weights of their best validation loss (a run resumed without its best.pt
    before mosaic-train refused to score one: its test numbers are of other weights), each said on stderr."""
    results = []
    for path in sorted(root.glob("*/result.json")):
        r = json.loads(path.read_text())
        scored = r["test"].get("weights_step", r.get("best_val_step"))
        if scored != r.get("best_val_step"):
            print(f"regbench: left out {path.parent.name}: its test metrics are of step {scored}'s weights, not of "
                  f"the best validation step {r.get('best_val_step')} (train it again)", file=sys.stderr)
        elif r.get("iid", False) == iid:
            results.append({**r, "run": path.parent.name})
    return results


def select(results: list[dict]) -> dict:
    """{model: {size: choice}}: the run of lowest validation loss (our selection), and, for comparison,
    the runs of best test accuracy and of lowest test L1 (RegBench's notebook, which selects on the test
    set), with the number of runs searched."""
    chosen: dict = {}
    for r in results:
        chosen.setdefault(r["model"], {}).setdefault(r["num_train"], []).append(r)
    out = {}
    for model, by_size in chosen.items():
        out[model] = {}
        for size, runs in sorted(by_size.items()):
            on_val = min(runs, key=lambda r: r["best_val_loss"])
            best_acc = max(runs, key=lambda r: r["test"]["accuracy"])
            best_l1 = min(runs, key=lambda r: r["test"]["l1"])
            out[model][size] = {"runs_searched": len(runs), "searched": _settings(runs), "selected_on_val": on_val,
                                "test_selected_accuracy": best_acc["test"]["accuracy"],
                                "test_selected_l1": best_l1["test"]["l1"]}
    return out


def _settings(runs: list[dict]) -> list[list]:
    """The grid points a search covered, [depth, width, weight decay, lr] each, sorted."""
    keys = ("n_layer", "n_embd", "weight_decay", "lr")
    return sorted([r.get(k) for k in keys] for r in runs)


def same_search(chosen: dict) -> list[int]:
    """Sizes at which every model of ``select``'s answer searched the same grid points: only there do the
    two models compare on equal terms (a sweep cut short leaves sizes with one model ahead in runs)."""
    sizes = set.intersection(*(set(by_size) for by_size in chosen.values())) if len(chosen) >= len(MODELS) else set()
    return sorted(s for s in sizes if len({json.dumps(chosen[m][s]["searched"]) for m in chosen}) == 1)


def epochs_trained(size: int, epochs: int, step_cap: int | None) -> float:
    """Epochs a run of ``size`` training languages makes under the step cap (one sequence per language)."""
    per_epoch, steps = epoch_steps(size, preset("regbench").batch_size, epochs, step_cap)
    return steps / per_epoch


def run_epochs(result: dict) -> float:
    """Epochs a finished run trained: up to the step it ended at when recorded (``steps_trained``: before the
    cap when --patience ended it), else what the step cap allowed (records from before that field)."""
    per_epoch, capped = epoch_steps(result["num_train"], preset("regbench").batch_size, result["epochs"],
                                    result.get("step_cap"))
    steps = result.get("steps_trained")
    return (capped if steps is None else steps) / per_epoch


def cmd_report(a: argparse.Namespace) -> None:
    """Selection, summary.json, table and the Figure 11 analogue (see the module docstring)."""
    root, figs = Path(a.out), Path(a.figures)
    figs.mkdir(parents=True, exist_ok=True)
    summary = {"selection": "per size and model, the run of lowest validation loss; test metrics read after",
               "held_out": select(collect(root, iid=False)), "iid": select(collect(root, iid=True))}
    summary["same_search_sizes"] = same_search(summary["held_out"])
    (figs / "regbench_summary.json").write_text(json.dumps(summary, indent=1))
    lines = ["| training languages | model | runs | accuracy | paper | L1 (\"TVD\") | paper | TVD | "
             "accuracy, test-selected | L1, test-selected | epochs trained |", "|---" * 11 + "|"]
    for split, by_model in (("held-out", summary["held_out"]), ("IID", summary["iid"])):
        for model, by_size in by_model.items():
            for size, c in by_size.items():
                r = c["selected_on_val"]
                t = r["test"]
                if split == "IID":
                    p = PAPER_TABLE4.get(model, {}) if size == 100 else {}  # the paper's IID table is at 100
                    pa, pl, label = p.get("accuracy"), p.get("l1"), f"{size} (IID)"
                else:
                    paper = PAPER_FIG11.get(model, {})
                    pa, pl = paper.get("accuracy", {}).get(size), paper.get("l1", {}).get(size)
                    label = f"{size}" + ("" if size in summary["same_search_sizes"] else " (searches differ)")
                ep = run_epochs(r) if "epochs" in r else float("nan")
                lines.append(f"| {label} | {model} | {c['runs_searched']} | {t['accuracy']:.3f} | "
                             f"{'-' if pa is None else f'{pa:.3f}'} | {t['l1']:.3f} | {'-' if pl is None else f'{pl:.3f}'} | "
                             f"{t['tvd']:.3f} | {c['test_selected_accuracy']:.3f} | {c['test_selected_l1']:.3f} | {ep:.3g} |")
    table = "\n".join(lines)
    (figs / "regbench_table.md").write_text(table + "\n")
    (figs / "regbench_runs.md").write_text(_runs_table(collect(root, False) + collect(root, True)))
    print(table)
    _plot(summary["held_out"], summary["same_search_sizes"], figs / "regbench_fig11.png")
    _plot_lr_search(collect(root, False), figs / "regbench_lr_search.png")
    _plot_curves(root, figs / "regbench_curves.png")


def _plot_curves(root: Path, path: Path) -> None:
    """Validation accuracy against step for every held-out run folder under ``root``, finished or not (its
    evaluations so far), one panel per number of training languages: where a run turns, and whether it
    was still rising where it stopped. Colour: the model; line style: the depth; the legend says the rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[int, list] = {}
    for out in sorted(root.glob("*/config.json")):
        cfg = json.loads(out.read_text())
        if cfg.get("iid"):
            continue
        vals = [m for m in metrics(out.parent) if m.get("split") == "val"]
        if vals:
            runs.setdefault(cfg["num_train"], []).append((cfg, vals, (out.parent / "result.json").exists()))
    if not runs:
        return
    colors = {model: color for model, color, _ in CURVES}
    names = {model: label for model, _, label in CURVES}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for ax, size in zip(axes[0], sorted(runs)):
        depths = sorted({cfg["n_layer"] for cfg, _, _ in runs[size]})
        top_lr = max(cfg["lr"] for cfg, _, _ in runs[size])  # drawn opaque, the other rates lighter
        for cfg, vals, done in sorted(runs[size], key=lambda r: (r[0]["model"], r[0]["n_layer"], r[0]["lr"])):
            ax.plot([m["step"] for m in vals], [m["accuracy"] for m in vals], styles[depths.index(cfg["n_layer"]) % 4],
                    color=colors.get(cfg["model"], "gray"), alpha=1.0 if cfg["lr"] == top_lr else 0.55, lw=1.2,
                    label=f"{names.get(cfg['model'], cfg['model'])} L{cfg['n_layer']} lr {cfg['lr']:g}"
                          + ("" if done else " (unfinished)"))
        ax.set(title=f"{size:,} training languages", xlabel="step", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    axes[0][0].set_ylabel("validation accuracy (held-out languages)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _runs_table(results: list[dict]) -> str:
    """Every run of the search, by split, size and model: its settings, best validation loss and step, the step
    its training ended at (marked "early" when --patience ended it; records from before that column: "-"), and the
    test metrics of the best weights (so a reader sees what the selection chose from)."""
    lines = ["| split | training languages | model | depth | width | weight decay | lr | best val loss | at step | "
             "trained to | test accuracy | test L1 |", "|---" * 12 + "|"]
    key = lambda r: (r.get("iid", False), r["num_train"], r["model"], r["n_layer"], r["n_embd"],  # noqa: E731
                     r["weight_decay"], r["lr"])
    for r in sorted(results, key=key):
        t = r["test"]
        lines.append(f"| {'IID' if r.get('iid') else 'held-out'} | {r['num_train']} | {r['model']} | {r['n_layer']} | "
                     f"{r['n_embd']} | {r['weight_decay']:g} | {r['lr']:g} | {r['best_val_loss']:.4f} | "
                     f"{r['best_val_step']} | {_trained_to(r)} | {t['accuracy']:.3f} | {t['l1']:.3f} |")
    return "\n".join(lines) + "\n"


def _trained_to(result: dict) -> str:
    """The step a run's training ended at, "early" added when --patience ended it ("-": not recorded)."""
    steps = result.get("steps_trained")
    if steps is None:
        return "-"
    return f"{steps} (early)" if result.get("early_stop") else str(steps)


def _plot(held_out: dict, sizes: list[int], path: Path) -> None:
    """Accuracy and L1 ("TVD") against training languages, log scale, ours (lines, at the ``sizes`` where
    both models searched the same grid) and the paper's (x); each size's tick says the epochs the step cap
    allowed (a run --patience ended trained fewer: the table says how many)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not held_out:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for model, color, label in CURVES:
        for ax, metric in zip(axes, ("accuracy", "l1")):
            if model in held_out and sizes:
                ax.plot(sizes, [held_out[model][s]["selected_on_val"]["test"][metric] for s in sizes], "o-",
                        color=color, label=f"{label} (ours)")
                if metric == "l1":  # the true TVD, half the L1: what the paper's values match (REPRODUCTION.md)
                    ax.plot(sizes, [held_out[model][s]["selected_on_val"]["test"]["tvd"] for s in sizes], "s--",
                            color=color, mfc="none", label=f"{label} (ours, L1 / 2)")
            paper = PAPER_FIG11.get(model, {}).get(metric)
            if paper:
                ax.plot(sorted(paper), [paper[s] for s in sorted(paper)], "x:", color=color, alpha=0.6,
                        label=f"{label} (paper)")
    axes[0].set(xscale="log", xlabel="training languages (epochs allowed)", ylabel="validity accuracy (test languages)")
    axes[1].set(xscale="log", xlabel="training languages (epochs allowed)", ylabel='L1 to the true next-symbol law ("TVD")')
    def tick(s: int) -> str:
        r = next(iter(held_out.values()))[s]["selected_on_val"] if s in sizes else {}
        return f"{s:,}" + (f"\n{epochs_trained(s, r['epochs'], r.get('step_cap')):.3g} ep" if "epochs" in r else "")
    tick_sizes = sorted(set(sizes) | set(PAPER_FIG11["mosaic"]["accuracy"]))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.minorticks_off()
        ax.set_xticks(tick_sizes, [tick(s) for s in tick_sizes], fontsize=7)
    # One legend under both panels (the right panel's handles name every series): inside an axis it hid points.
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_lr_search(results: list[dict], path: Path) -> None:
    """Best validation loss against learning rate, one panel per number of training languages, both
    models (runs of other depth, width or weight decay as separate lines): where a model's best lies on
    an edge of the grid, the search has not bracketed it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["num_train"] for r in results})
    if not sizes:
        return
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes), 3.2), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        lines: dict = {}
        for r in results:
            if r["num_train"] == size:
                key = (r["model"], r["n_layer"], r["n_embd"], r["weight_decay"])
                lines.setdefault(key, []).append((r["lr"], r["best_val_loss"]))
        for (model, depth, width, wd), points in sorted(lines.items()):
            lrs, losses = zip(*sorted(points))
            label = f"{'Memory Mosaic' if model == 'mosaic' else 'Transformer'} L{depth} d{width} wd{wd:g}"
            ax.plot(lrs, losses, "o-", color="tab:blue" if model == "mosaic" else "tab:orange", label=label)
        ax.set(xscale="log", title=f"{size} training languages", xlabel="learning rate")
        grid_lrs = sorted({lr for points in lines.values() for lr, _ in points})
        ax.minorticks_off()
        ax.set_xticks(grid_lrs, [f"{lr:g}" for lr in grid_lrs], rotation=30, fontsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best validation loss")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the RegBench sweep."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("run", "report"), help="run: train the grid; report: select and plot")
    p.add_argument("--out", default="runs/regbench", help="the folder of the sweep's run folders")
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="numbers of training languages")
    p.add_argument("--models", nargs="+", choices=MODEL_CHOICES, default=list(MODELS),
                   help="the models of the grid (mosaic-v2 and llama beside the paper's two: Memory Mosaics v2)")
    p.add_argument("--depths", nargs="+", type=int, default=list(DEPTHS), help="the depths of the grid")
    p.add_argument("--widths", nargs="+", type=int, default=list(WIDTHS), help=f"multiples of {HEAD_SIZE}")
    p.add_argument("--wds", nargs="+", type=float, default=list(WEIGHT_DECAYS), help="weight decays")
    p.add_argument("--lrs", nargs="+", type=float, default=list(LRS), help="the learning rates of the grid")
    p.add_argument("--epochs", type=int, default=200, help="epochs of the training languages (the preset's 200)")
    p.add_argument("--step-cap", type=int, default=None, help="at most this many steps a run (same for both models)")
    p.add_argument("--patience-steps", type=int, default=None,
                   help="end a run once its validation loss has not improved for this many steps (rounded up to whole "
                        "epochs, the preset's evaluation interval), so that every size waits as long in steps")
    p.add_argument("--num-test", type=int, default=1000, help="held-out languages (half test, half validation)")
    p.add_argument("--task-seed", type=int, default=0, help="seed of the generated languages")
    p.add_argument("--iid", action="store_true", help="the IID split (paper Table 4)")
    p.add_argument("--save-every", type=int, default=500,
                   help="steps between checkpoints of a run (one is always written when it stops or ends); the "
                        "preset evaluates every epoch, and at 100 languages an epoch is 4 steps")
    # 4 runs at once filled the GPU best at the preset's size (BENCHMARKS.md, bench_parallel_runs).
    p.add_argument("--parallel", type=int, default=4, help="runs at once")
    p.add_argument("--time-limit", type=float, default=None, help="seconds; every process stops with a checkpoint")
    p.add_argument("--resume-only", action="store_true",
                   help="train only the runs that have a checkpoint to resume, start none: a call given some of the "
                        "sweep's checkpoints (all would not fit) leaves the others alone")
    p.add_argument("--device", default="cuda", help="cuda or cpu (mosaic-train's --device)")
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                   help="anything after this goes to every mosaic-train call unchanged")
    p.add_argument("--figures", default="docs/figures/regbench", help="report: where figures, tables and JSON go")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``run`` or ``report``."""
    p = build_parser()
    a = p.parse_args(argv)
    for name in ("sizes", "depths", "widths"):
        if any(v < 1 for v in getattr(a, name)):
            p.error(f"--{name} must all be >= 1, got {getattr(a, name)}")
    if any(w % HEAD_SIZE for w in a.widths):
        p.error(f"--widths must be multiples of {HEAD_SIZE} (heads of {HEAD_SIZE} dimensions), got {a.widths}")
    if any(not v > 0 for v in a.lrs) or any(v < 0 for v in a.wds):
        p.error(f"--lrs must be > 0 and --wds >= 0, got {a.lrs} and {a.wds}")
    require_at_least_one(p, a, ("parallel", "save_every", "patience_steps"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    (cmd_run if a.command == "run" else cmd_report)(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
