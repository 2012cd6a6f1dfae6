"""Where a training step's time goes: torch.profiler over a few steps of one bench_training model.

Prints the GPU kernels by total time, then the same time summed by kind of work (see CATEGORIES),
and compares the sum of GPU kernel time with the unprofiled wall time of a step (the difference is
time the GPU waits for the host).

Usage: python -m benchmarks.tools.profile_step [--model mosaic_fused] [--layers 12] [--T 512] [--compile]
       (--model mosaic_v2 or llama: Memory Mosaics v2 and its baseline, as bench_training builds them)
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_training import MODELS, V2_MODELS, build, make_step

# Kind of work, by kernel name (first match wins; matched case-insensitively).
CATEGORIES = [
    ("inductor fused elementwise / reductions", ("triton_",)),
    ("SDPA (cuDNN / flash): Mosaic P-mem, GPT2 and llama attention", ("sdpa", "flash", "fmha", "cudnn")),
    ("mosaic_attention (ours)", ("_attn_",)),
    ("row delta (ours: attention and P-mem backward)", ("_row_delta",)),
    ("leaky_average (ours)", ("_leaky_",)),
    ("peek_ahead_value (ours)", ("_value_",)),
    ("persistent_memory (ours)", ("_slots_", "_keep_mask")),
    ("GEMM (cuBLAS)", ("nvjet", "gemm", "cublas", "cutlass", "sm90_xmma")),
    ("optimizer", ("multi_tensor_apply",)),
    ("eager elementwise / reductions / copies", ("elementwise", "reduce_kernel", "copy", "fill", "cat", "index",
                                                  "softmax", "nll", "layer_norm", "dropout", "gelu")),
]


def category(name: str) -> str:
    """The group a kernel name belongs to in the profile table."""
    low = name.lower()
    for label, keys in CATEGORIES:
        if any(k in low for k in keys):
            return label
    return "other"


def main() -> None:
    """Profile training steps of the chosen model and print the kernel time by category."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS + V2_MODELS, default="mosaic_fused")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--T", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--rows", type=int, default=30)
    a = p.parse_args()
    torch.manual_seed(0)
    model = build(a.model, a.layers, a.T).cuda()
    step, _ = make_step(model, a.T, a.compile)
    print_profile(step, a.steps, a.rows, f"{a.model} layers={a.layers} T={a.T} compile={a.compile}")


def print_profile(step, steps: int, rows: int, title: str) -> None:
    """After 3 warm-up calls of ``step``, time ``steps`` calls unprofiled, profile ``steps`` more and print the
    GPU kernels by time, the time by kind of work (CATEGORIES), then ``title`` with the wall time of a step
    against its GPU kernel time (the difference: time the GPU waits for the host)."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) / steps * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    # Only the GPU-side events: operator rows repeat their kernels' time as "self device time".
    # The optimizer's record_function range also shows up as a GPU row: it would count its kernels twice.
    kernels = sorted((e for e in prof.key_averages()
                      if e.device_type == DeviceType.CUDA and not e.key.startswith("Optimizer.")),
                     key=lambda e: -e.self_device_time_total)
    gpu_ms = sum(e.self_device_time_total for e in kernels) / steps / 1e3
    print(f"{'GPU kernel':<90} {'ms/step':>8} {'calls/step':>10}")
    for e in kernels[:rows]:
        print(f"{e.key[:90]:<90} {e.self_device_time_total / steps / 1e3:8.3f} {e.count / steps:10.1f}")
    by_kind: dict[str, float] = {}
    for e in kernels:
        by_kind[category(e.key)] = by_kind.get(category(e.key), 0.0) + e.self_device_time_total / steps / 1e3
    print(f"\n{'kind of work':<60} {'ms/step':>8}")
    for label, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"{label:<60} {ms:8.3f}")
    print(f"{title}: wall {wall_ms:.2f} ms/step (unprofiled), GPU kernels {gpu_ms:.2f} ms/step "
          f"({100 * gpu_ms / wall_ms:.0f}% busy)")


if __name__ == "__main__":
    main()
