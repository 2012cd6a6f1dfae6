"""How many training runs at once fill one GPU: aggregate throughput of N identical `mosaic-train`
processes, for several N.

  python -m benchmarks.bench_parallel_runs [--counts 1 2 4 8] [--steps 300] -- MOSAIC_TRAIN_ARGS...

Every process trains the same configuration (the arguments after ``--``; default: the embedded
in-context task at the RegBench preset's model size) for ``--steps`` steps without evaluations or
checkpoints in between. Throughput is read from each run's own ``tokens_per_s`` log lines, the median of
the second half of the run (start-up and compilation excluded), and summed over the processes. Small
models leave a GPU mostly idle in one process, and several processes share it by time-slicing unless
CUDA MPS runs, so the sum does not grow linearly: this finds where it stops growing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from experiments.pool import Job, metrics, run_jobs
from mosaic_model.cli.train import parse_args

DEFAULT_RUN = ["--preset", "regbench", "--num-train", "1000", "--epochs", "1000"]


def steady_tokens_per_s(run: Path) -> float:
    """Median tokens/s over the second half of a run's training log lines."""
    lines = metrics(run)
    tps = [l["tokens_per_s"] for l in lines if l["split"] == "train"]
    if not tps:
        raise RuntimeError(f"{run}: no training log lines (see {run / 'train.log'})")
    return statistics.median(tps[len(tps) // 2:])


def measure(count: int, steps: int, train_args: list, device: str, root: Path) -> dict:
    """Run ``count`` identical processes and return their summed steady tokens/s and the wall time."""
    by_epochs = "--epochs" in train_args or "regbench" in train_args  # the regbench preset counts epochs
    argv = [*train_args, "--step-cap" if by_epochs else "--steps", str(steps),
            "--eval-every", str(steps), "--save-every", str(steps), "--no-best", "--final-from", "last",
            "--device", device, "--quiet"]
    config = parse_args(argv)
    jobs = [Job(config, root / f"n{count}-{i}") for i in range(count)]
    t0 = time.time()
    failed = run_jobs(jobs, parallel=count, poll_s=1.0)
    wall = time.time() - t0
    if failed:
        raise RuntimeError(f"{failed} of {count} runs failed; see their train.log under {root}")
    per_run = [steady_tokens_per_s(j.out) for j in jobs]
    return {"processes": count, "tokens_per_s_total": sum(per_run), "tokens_per_s_each": per_run, "wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    """Print one line per process count and write the results as JSON (``--out``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=None, help="JSON file for the results")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: the mosaic-train arguments of every run")
    a = p.parse_args(argv)
    if any(c < 1 for c in a.counts) or a.steps < 2:
        p.error(f"--counts must be >= 1 and --steps >= 2, got {a.counts} and {a.steps}")
    train_args = [x for x in a.train_args if x != "--"] or DEFAULT_RUN
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in a.counts:
            r = measure(count, a.steps, train_args, a.device, Path(tmp))
            results.append(r)
            base = results[0]["tokens_per_s_total"] / results[0]["processes"]
            print(f"{count:3d} processes: {r['tokens_per_s_total']:,.0f} tokens/s in all "
                  f"({r['tokens_per_s_total'] / base:.2f}x one process), wall {r['wall_s']:.0f} s", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"train_args": train_args, "steps": a.steps, "results": results}, indent=1))


if __name__ == "__main__":
    main()
