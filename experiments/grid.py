"""Run the cells of a small-model grid in this process or in several spawned processes at once (small
models leave a GPU mostly idle), each cell a picklable function call; keep each cell's result in its own
file, so that an interrupted grid resumes; select each model's learning rate on validation."""
from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def run_grid(fn: Callable, cells: list[tuple], jobs: int, quiet: bool = False, desc: str = "runs") -> list:
    """``[fn(*cell, threads) for cell in cells]``, ``jobs`` processes at once (in this process with one job),
    in order; ``threads`` is each process's share of the CPU cores (torch's intra-op threads)."""
    from tqdm.auto import tqdm

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1:
        return [fn(*cell, os.cpu_count() or 1) for cell in tqdm(cells, desc=desc, disable=quiet)]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # spawn, not fork: a CUDA context does not survive a fork
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *cell, threads) for cell in cells]
        return [f.result() for f in tqdm(futures, desc=desc, disable=quiet)]


def run_file(out: Path, name: str, lr: float, seed: int) -> Path:
    """Where the result of one (model, learning rate, seed) cell is kept: ``out/runs/<name>-lr<lr>-s<seed>.json``."""
    return out / "runs" / f"{name}-lr{lr:g}-s{seed}.json"


def kept(path: Path) -> dict | None:
    """A cell's kept result, or None when it has not finished."""
    return json.loads(path.read_text()) if path.exists() else None


def keep(path: Path, result: dict) -> dict:
    """Write a finished cell's result (JSON) where :func:`kept` reads it; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def select_lr(results: list[dict], model: str, lrs: list[float], seeds: list[int]) -> tuple | None:
    """The learning rate of ``model`` whose runs have the highest mean ``final_val`` over ``seeds`` (only learning
    rates with every seed finished compete): (lr, {lr: mean}, that lr's runs sorted by seed), or None."""
    by_lr = {lr: sorted((r for r in results if r["model"] == model and r["lr"] == lr), key=lambda r: r["seed"])
             for lr in lrs}
    by_lr = {lr: runs for lr, runs in by_lr.items() if len(runs) == len(seeds)}
    if not by_lr:
        return None
    means = {lr: float(np.mean([r["final_val"] for r in runs])) for lr, runs in by_lr.items()}
    best = max(means, key=means.get)
    return best, means, by_lr[best]
