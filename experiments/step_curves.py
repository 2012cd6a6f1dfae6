"""Loss curves from step 1 of runs that log every step (``mosaic-train --log-every 1``), for runs stopped
early too: the training loss of every step (and a running mean) and the validation loss of every
evaluation, one colour per depth (or per learning rate or seed: ``--colour-by``), solid for the Memory
Mosaic, dotted for it with GPT2's output layer (``--output-layer gpt2``) and dashed for GPT2. Where the
runs differ in learning rate or seed, the legend names them, and the one the colours do not tell apart
gets a marker of its own on the validation points.

  python -m experiments.step_curves RUN_DIR... --out docs/figures/width_d768 [--smooth 10] [--colour-by depth]

Each RUN_DIR holds the ``metrics.jsonl`` and ``config.json`` that ``mosaic-train`` writes. Writes
``curves.png`` and ``curves.json`` (per run: model, depth, the last step, the validation losses by
step, and the training loss's running mean at steps 1, 50, 100 and the last), and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .pool import metrics

LABELS = {"mosaic": "Memory Mosaic", "gpt": "GPT2", "mosaic-v2": "Memory Mosaic v2", "llama": "llama-style"}


def read_run(folder: Path) -> dict:
    """{name, model, depth, lr, seed, output_layer, train: [(step, loss)], val: [(step, loss)]} of one run folder."""
    config = json.loads((folder / "config.json").read_text())
    records = metrics(folder)
    train, val = ([(r["step"], r["loss"]) for r in records if r["split"] == split] for split in ("train", "val"))
    return dict(name=folder.name, model=config["model"], depth=config["n_layer"], train=train, val=val,
                output_layer=config.get("output_layer", "library"), lr=config.get("lr"), seed=config.get("seed"))


def running_mean(values: list[float], window: int) -> list[float]:
    """The mean of each value and the window - 1 before it (fewer at the start)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def summary(run: dict, smooth: int) -> dict:
    """A run's numbers for curves.json: the validation losses and the smoothed training loss at a few steps."""
    steps = [s for s, _ in run["train"]]
    mean = running_mean([v for _, v in run["train"]], smooth)
    at = {s: round(m, 4) for s, m in zip(steps, mean) if s in (1, 50, 100) or s == steps[-1]}
    return dict(model=run["model"], depth=run["depth"], output_layer=run["output_layer"], lr=run["lr"], seed=run["seed"],
                last_step=steps[-1] if steps else 0,
                val={s: round(v, 4) for s, v in run["val"]}, train_running_mean=at)


def gpt2_head(run: dict) -> bool:
    """Whether the run is a Memory Mosaic with GPT2's output layer (``--output-layer gpt2``)."""
    return run["model"].startswith("mosaic") and run["output_layer"] == "gpt2"


def label(run: dict, varying: set[str]) -> str:
    """The legend entry of a run: model, output layer, depth, and the learning rate and seed where they vary."""
    text = LABELS.get(run["model"], run["model"]) + (" with GPT2's output layer" if gpt2_head(run) else "")
    text += f", {run['depth']} layer{'s' if run['depth'] > 1 else ''}"
    if "lr" in varying:
        text += f", lr {run['lr']:g}"
    if "seed" in varying:
        text += f", seed {run['seed']}"
    return text


def plot(runs: list[dict], path: Path, smooth: int, colour_by: str = "depth",
         ylim: tuple[float, float] | None = None) -> None:
    """Training loss (running mean) and validation loss against the step, one panel each; one colour per
    value of ``colour_by`` (a run's depth, lr or seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if colour_by not in ("depth", "lr", "seed"):
        raise ValueError(f"colour_by must be depth, lr or seed, got {colour_by!r}")
    values = sorted({r[colour_by] for r in runs})
    colours = {v: plt.cm.viridis(i / max(len(values) - 1, 1) * 0.85) for i, v in enumerate(values)}
    varying = {k for k in ("lr", "seed") if len({r[k] for r in runs}) > 1}
    # A varying lr or seed that the colours do not tell apart gets its own marker on the validation points.
    marked = next((k for k in ("seed", "lr") if k in varying and k != colour_by), None)
    markers = {v: "os^Dv"[i % 5] for i, v in enumerate(sorted({r[marked] for r in runs}))} if marked else {}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for r in sorted(runs, key=lambda r: (r["model"], r["output_layer"], r["depth"], r["lr"], r["seed"])):
        style = dict(color=colours[r[colour_by]], linestyle=":" if gpt2_head(r) else "-" if r["model"].startswith("mosaic")
                     else "--", label=label(r, varying))
        left.plot([s for s, _ in r["train"]], running_mean([v for _, v in r["train"]], smooth), **style)
        right.plot([s for s, _ in r["val"]], [v for _, v in r["val"]], marker=markers[r[marked]] if marked else "o",
                   **style)
    left.set_title(f"training loss (running mean of {smooth} steps)")
    right.set_title("validation loss")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    left.set_ylabel("loss (nats per token)")
    if ylim is not None:
        left.set_ylim(*ylim)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Read the runs, write curves.png and curves.json to --out, print the validation losses."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (each with metrics.jsonl and config.json)")
    p.add_argument("--out", type=Path, required=True, help="folder for curves.png and curves.json")
    p.add_argument("--smooth", type=int, default=10, help="steps in the training loss's running mean")
    p.add_argument("--colour-by", choices=("depth", "lr", "seed"), default="depth",
                   help="what the curves' colours tell apart (default: depth)")
    p.add_argument("--ylim", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="the loss axis's range (default: matplotlib's, which the first steps' loss of 10.8 stretches)")
    a = p.parse_args(argv)
    if a.smooth < 1:
        p.error(f"--smooth must be >= 1, got {a.smooth}")
    if a.ylim is not None and not a.ylim[0] < a.ylim[1]:
        p.error(f"--ylim must be LOW HIGH with LOW < HIGH, got {a.ylim[0]:g} {a.ylim[1]:g}")
    for folder in a.runs:
        if not (folder / "metrics.jsonl").is_file() or not (folder / "config.json").is_file():
            p.error(f"run folder {folder} must hold metrics.jsonl and config.json")
    runs = [read_run(f) for f in a.runs]
    a.out.mkdir(parents=True, exist_ok=True)
    table = {r["name"]: summary(r, a.smooth) for r in runs}
    (a.out / "curves.json").write_text(json.dumps(table, indent=1) + "\n")
    plot(runs, a.out / "curves.png", a.smooth, a.colour_by, a.ylim)
    for name, row in table.items():
        print(f"{name}: last step {row['last_step']}, val {row['val']}, train (running mean) {row['train_running_mean']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
