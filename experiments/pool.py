"""Run a list of training jobs as separate ``mosaic-train`` processes, several at once, with progress and
an estimate of the time left: how the sweeps (``lm_depth``, ``regbench``) and ``benchmarks/bench_parallel_runs``
fill one GPU with small models. Each job is a TrainConfig; its process reads it from ``job.json`` in the
run folder."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from mosaic_model.training import TrainConfig


@dataclass
class Job:
    """One training run: its config (``out_dir``, ``resume`` and ``time_limit`` are the pool's to set),
    its folder, whether to resume it, and extra ``mosaic-train`` flags that override the config."""

    config: TrainConfig
    out: Path
    resume: bool = False
    extra_argv: tuple = ()

    def argv(self, time_limit: float | None) -> list[str]:
        """The command of this job's process; writes ``job.json`` (the config) into its folder."""
        self.out.mkdir(parents=True, exist_ok=True)
        # A job that does not resume starts its run afresh: the sweep decided the folder holds nothing to keep.
        config = replace(self.config, out_dir=str(self.out), resume=self.resume, overwrite=not self.resume,
                         time_limit=time_limit)
        (self.out / "job.json").write_text(json.dumps(asdict(config), indent=1) + "\n")
        return [sys.executable, "-m", "mosaic_model.cli.train", "--config", str(self.out / "job.json"), *self.extra_argv]


def metrics(out: Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (training logs, evaluations, the final line); [] if none."""
    path = out / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def run_state(out: Path, finished_split: str = "final") -> str:
    """done (metrics.jsonl has its ``finished_split`` line: results outlive a machine that kept no
    checkpoint), partial (a checkpoint to resume from) or new."""
    if any(l["split"] == finished_split for l in metrics(out)):
        return "done"
    return "partial" if (out / "ckpt.pt").exists() else "new"


MIN_START_S = 30.0  # no run starts with less time left than this (CUDA start-up, first step, checkpoint)


def run_jobs(jobs: list, parallel: int, time_limit: float | None = None, poll_s: float = 5.0,
             on_exit: Callable[[Job, int], None] | None = None) -> int:
    """Start ``jobs`` in order, ``parallel`` at a time, each logging to ``out/train.log``. With
    ``time_limit`` (seconds, for the whole list) every process gets the time left as its own
    ``--time-limit`` and stops cleanly with a checkpoint; no job starts in the last ``MIN_START_S``
    seconds. ``on_exit(job, returncode)`` runs as each process ends (a sweep records a finished run at
    once, not only after the whole list). Prints one progress line per poll; returns the number of jobs
    that failed."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    todo, running = list(jobs), []
    t0, exited, failed = time.time(), 0, 0
    deadline = None if time_limit is None else t0 + time_limit
    while todo or running:
        if deadline is not None and todo and deadline - time.time() < MIN_START_S:
            # Too late to start another run: a process needs longer than this to start and save.
            print(f"time limit: {len(todo)} runs not started", flush=True)
            todo = []
        while todo and len(running) < parallel:
            job = todo.pop(0)
            argv = job.argv(None if deadline is None else max(1.0, deadline - time.time()))
            log = open(job.out / "train.log", "a")
            running.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), job, log))
        time.sleep(poll_s)
        for entry in list(running):
            proc, job, log = entry
            if proc.poll() is not None:
                running.remove(entry)
                log.close()
                exited += 1
                if proc.returncode != 0:
                    failed += 1
                    print(f"FAILED ({proc.returncode}): {job.out}; see {job.out / 'train.log'}", flush=True)
                if on_exit is not None:
                    on_exit(job, proc.returncode)
        elapsed = time.time() - t0
        rate = exited / elapsed if exited else 0
        eta = f"{(len(todo) + len(running)) / rate / 60:.1f} min" if rate else "?"
        print(f"[{elapsed:6.0f}s] exited {exited}, running {len(running)}, left {len(todo)}, eta {eta}", flush=True)
    return failed
