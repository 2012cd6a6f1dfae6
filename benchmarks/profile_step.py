"""Where a training step's time goes: torch.profiler over a few steps of one bench_training model.

Prints the GPU kernels by total time, and compares the sum of GPU kernel time with the wall time of
a step (the difference is time the GPU waits for the host).

Usage: python -m benchmarks.profile_step [--model mosaic_fused] [--layers 12] [--T 512] [--compile]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_training import MODELS, build, make_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="mosaic_fused")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--T", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--rows", type=int, default=30)
    a = p.parse_args()
    torch.manual_seed(0)
    model = build(a.model, a.layers, a.T).cuda()
    step, _ = make_step(model, a.T, a.compile)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / a.steps * 1e3
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events) / a.steps
    print(events.table(sort_by="self_device_time_total", row_limit=a.rows))
    print(f"{a.model} layers={a.layers} T={a.T} compile={a.compile}: wall {wall:.2f} ms/step (profiled), "
          f"GPU kernels {gpu_us / 1e3:.2f} ms/step")


if __name__ == "__main__":
    main()
