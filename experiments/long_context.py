"""Length extrapolation (Memory Mosaics v2's claim, at our scale): trained at T, run at 16-32 T without fine-tuning.

  bash experiments/long_context_gpu.sh TRAIN_SECONDS ARM...        (training and evaluation, one GPU call)
  python -m experiments.long_context report --out DIR --figures docs/figures/long_context

Arms, all at the same width, depth, tokens, batches and learning-rate grid (``lm_depth run`` into
``DIR/<arm>``; the script's header has the sizes):
  mosaic                      Memory Mosaic v1 (no position encoding, full causal memory)
  mosaic-v2                   v2 with its randomised delay (m uniform in [64, 256] in training, 64 at inference)
  mosaic-v2-fixed-delay       v2 trained with m = 64 throughout (the paper's ablation of the randomisation)
  mosaic-v2-fixed-bandwidth   v2 with one bandwidth per head instead of beta(n)
  mosaic-v2-v1-keys           v2 with v1's keys (constant decay, no gate)
  llama                       the llama-style transformer (rotary positions)
Each run is evaluated on held-out books (whole books the training never saw) with ``mosaic-eval
per-position --full-length`` at each evaluation length, into ``DIR/evals/<arm>_T<length>.json`` (a later
call's new runs into ``<arm>_T<length>_<tag>.json``: the report merges them).

``report`` selects, per arm, the learning rate of lowest mean final validation loss over its seeds (the
training text's own held-out split; never the evaluation books; ``--unfinished``: runs a time limit stopped
compete on their last validation loss), then writes ``summary.json`` (the mean loss per position band and
per bin of ``--bin`` positions, per arm, over the selected runs' seeds; the bands of every evaluated run)
and ``loss_by_position.png``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from .pool import metrics

ARMS = ("mosaic", "mosaic-v2", "mosaic-v2-fixed-delay", "mosaic-v2-fixed-bandwidth", "mosaic-v2-v1-keys", "llama")
RUN = re.compile(r".*-L(?P<depth>\d+)-lr(?P<lr>[^-]+)(-s(?P<seed>\d+))?$")


def final_val_loss(records: list[dict], unfinished: bool = False) -> float | None:
    """A run's final validation loss (its ``final`` record) from its metrics records, or None when it did
    not finish; with ``unfinished``, a run stopped early (a time limit) gives its last validation loss."""
    finals = [r["loss"] for r in records if r.get("split") == "final"]
    if finals or not unfinished:
        return finals[-1] if finals else None
    vals = [r["loss"] for r in records if r.get("split") == "val"]
    return vals[-1] if vals else None


def last_step(records: list[dict]) -> int | None:
    """The step of a run's last record (where a stopped run stopped)."""
    steps = [r["step"] for r in records if "step" in r]
    return max(steps) if steps else None


def run_seed(name: str) -> int:
    """The seed index of a run folder's name (``-s<k>``; none is seed 0)."""
    seed = RUN.match(name)["seed"]
    return int(seed) if seed is not None else 0


def select_runs(arm_dir: Path, unfinished: bool = False, select_seed: int | None = None) -> dict | None:
    """The learning rate of lowest mean final validation loss over its finished seeds (only learning rates
    whose every seed finished compete; with ``unfinished``, runs stopped early compete on their last
    validation loss): {"lr", "runs", "val_loss_by_lr", "steps"}; None when no run qualifies.

    ``select_seed``: the rates compete on that seed's runs alone, and every finished seed of the chosen rate is
    kept: the protocol of a search on one seed followed by more seeds of the selected rate only (a mean over
    two seeds at one rate against one seed at the others would favour or penalise that rate by seed luck)."""
    by_lr: dict[str, list[tuple[Path, float | None]]] = {}
    steps = {}
    for run in sorted(p for p in arm_dir.iterdir() if p.is_dir() and RUN.match(p.name)):
        records = metrics(run)
        by_lr.setdefault(RUN.match(run.name)["lr"], []).append((run, final_val_loss(records, unfinished)))
        steps[run.name] = last_step(records)
    if select_seed is None:
        compete = by_lr
    else:
        compete = {lr: [(r, v) for r, v in runs if run_seed(r.name) == select_seed] for lr, runs in by_lr.items()}
        compete = {lr: runs for lr, runs in compete.items() if runs}
    done = {lr: runs for lr, runs in compete.items() if all(v is not None for _, v in runs)}
    if not done:
        return None
    means = {lr: float(np.mean([v for _, v in runs])) for lr, runs in done.items()}
    best = min(means, key=means.get)
    kept = [str(r) for r, v in by_lr[best] if v is not None]
    return {"lr": best, "runs": kept, "val_loss_by_lr": means,
            "steps": {r.name: steps[r.name] for runs in by_lr.values() for r, v in runs if v is not None}}


def binned(loss: np.ndarray, count: np.ndarray, width: int) -> list[float]:
    """Mean loss over consecutive bins of ``width`` positions, each position weighted by its documents."""
    return band_means(loss, count, [(lo, min(lo + width, len(loss))) for lo in range(0, len(loss), width)])


def bands(T_train: int, length: int) -> list[tuple[int, int]]:
    """Position bands: [0, T_train), then doublings of T_train up to ``length``."""
    edges = [0, T_train]
    while edges[-1] < length:
        edges.append(min(2 * edges[-1], length))
    return list(zip(edges[:-1], edges[1:]))


def band_means(loss: list[float], count: list[float], edges: list[tuple[int, int]]) -> list[float]:
    """Mean loss per band, each position weighted by its number of documents."""
    loss, count = np.asarray(loss, dtype=float), np.asarray(count, dtype=float)
    out = []
    for lo, hi in edges:
        c = count[lo:hi]
        out.append(float(np.sum(loss[lo:hi] * c) / np.sum(c)) if np.sum(c) else float("nan"))
    return out


EVAL_FILE = re.compile(r"^(?P<arm>.+)_T(?P<length>\d+)(_(?P<tag>[^_]+))?$")


def evaluations(evals: Path, arm: str) -> dict[int, dict]:
    """{length: {run folder name: its per-position result}} from every ``<arm>_T<length>[_<tag>].json`` in
    ``evals`` (a later call scores only the runs an earlier one had not, into a tagged file: EVAL=new in
    long_context_gpu.sh). Runs are matched by folder name, so that a study's folder can move; a run scored in
    two files keeps the later file's result (files in name order)."""
    out: dict[int, dict] = {}
    for path in sorted(evals.glob(f"{arm}_T*.json")):
        m = EVAL_FILE.match(path.stem)
        if not m or m["arm"] != arm:
            continue
        results = json.loads(path.read_text())["results"]
        out.setdefault(int(m["length"]), {}).update({Path(r).name: v for r, v in results.items()})
    return out


def cmd_report(a: argparse.Namespace) -> int:
    """Select, average over seeds, write summary.json and the figure."""
    root, figs = Path(a.out), Path(a.figures)
    figs.mkdir(parents=True, exist_ok=True)
    summary = {"train_T": a.train_T, "selected_on": ("last validation loss (runs stopped early)" if a.unfinished
                                                     else "final validation loss")
               + ("" if a.select_seed is None else f", seed {a.select_seed}'s runs only"), "bin": a.bin, "arms": {}}
    curves = {}
    for arm in ARMS:
        chosen = select_runs(root / arm, a.unfinished, a.select_seed) if (root / arm).is_dir() else None
        if chosen is None:
            continue
        entry = {**chosen, "by_length": {}, "every_run": {}}
        picked = {Path(r).name for r in chosen["runs"]}
        for length, results in sorted(evaluations(root / "evals", arm).items()):
            edges = bands(a.train_T, length)
            for name, r in results.items():  # every evaluated run, selected or not (same-rate comparisons)
                entry["every_run"].setdefault(name, {})[str(length)] = band_means(r["loss"], r["documents"], edges)
            rows = [results[n] for n in sorted(picked) if n in results]
            if not rows:
                continue
            loss = np.mean([r["loss"] for r in rows], axis=0)
            count = np.asarray(rows[0]["documents"], dtype=float)
            entry["by_length"][str(length)] = {"bands": edges, "mean_loss": band_means(loss, count, edges),
                                               "per_seed": [band_means(r["loss"], r["documents"], edges) for r in rows],
                                               "documents": int(count[-1]), "binned_loss": binned(loss, count, a.bin)}
            seeds = f", mean of {len(rows)} seeds" if len(rows) > 1 else ""
            curves.setdefault(length, {})[f"{arm} (lr {chosen['lr']}{seeds})"] = loss
        summary["arms"][arm] = entry
    (figs / "summary.json").write_text(json.dumps(summary, indent=1))
    _plot(curves, a.train_T, figs / "loss_by_position.png")
    for arm, e in summary["arms"].items():
        for length, r in e["by_length"].items():
            cells = ", ".join(f"{lo}-{hi}: {m:.3f}" for (lo, hi), m in zip(r["bands"], r["mean_loss"]))
            print(f"{arm} (lr {e['lr']}, {len(e['runs'])} seeds) at {length}: {cells}")
    return 0


def _plot(curves: dict, T_train: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (length, arms) in zip(axes[0], sorted(curves.items())):
        for arm, loss in arms.items():
            # A running mean over a window that grows with the position, so that the log axis reads evenly.
            pos = np.arange(1, len(loss) + 1)
            cum = np.concatenate([[0.0], np.cumsum(loss)])
            lo = np.maximum(0, (pos * 0.8).astype(int) - 1)
            ax.plot(pos, (cum[pos] - cum[lo]) / (pos - lo), label=arm, lw=1.2)
        ax.axvline(T_train, color="grey", ls=":", lw=0.8, label="training length")
        ax.set(xscale="log", xlabel="position in the held-out book", ylabel="token loss (running mean)",
               title=f"run at {length} tokens, trained at {T_train}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``report``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("report",))
    p.add_argument("--out", required=True, help="the study's folder (DIR/<arm>/ runs, DIR/evals/)")
    p.add_argument("--figures", default="docs/figures/long_context", help="where summary.json and the figure go")
    p.add_argument("--train-T", type=int, default=1024, help="the training context length")
    p.add_argument("--unfinished", action="store_true",
                   help="runs stopped early by a time limit compete on their last validation loss")
    p.add_argument("--select-seed", type=int, default=None,
                   help="the learning rates compete on this seed's runs alone; every seed of the chosen rate is kept "
                        "(a search on one seed, then more seeds of the selected rate)")
    p.add_argument("--bin", type=int, default=256, help="positions per bin of the summary's binned curves")
    a = p.parse_args(argv)
    if a.train_T < 1:
        p.error(f"--train-T must be >= 1, got {a.train_T}")
    if a.bin < 1:
        p.error(f"--bin must be >= 1, got {a.bin}")
    if a.select_seed is not None and a.select_seed < 0:
        p.error(f"--select-seed must be >= 0, got {a.select_seed}")
    if not Path(a.out).is_dir():
        p.error(f"--out {a.out}: no such folder")
    return cmd_report(a)


if __name__ == "__main__":
    sys.exit(main())
