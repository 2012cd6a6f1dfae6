"""Run the cells of a small-model grid in this process or in several spawned processes at once (small
models leave a GPU mostly idle), each cell a picklable function call; the experiments keep each cell's
result in its own file, so that an interrupted grid resumes."""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor


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
