"""Where a RegBench training step's GPU time goes: torch.profiler over eager steps of the preset's models
(``mosaic-train --preset regbench``: float32, width 128, 8 heads, 448 P-mem slots, batch 32), one model at
a time alone on the GPU, on one real batch of the task (its own length, not padded to the block).

Prints, per model and depth, the GPU kernels by time and by kind of work (profile_step's table). This is
how the P-mem's SDPA backward on folded rows was found to take 60% of the Memory Mosaic's step in float32
(BENCHMARKS.md "The SDPA retrieval in float32").

Usage: python -m benchmarks.tools.profile_regbench [--models mosaic gpt] [--depths 2 4] [--languages 2500]
       [--pmem-kernel sdpa] [--steps 5]
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.tools.profile_step import print_profile
from mosaic_model.cli.common import require_at_least_one
from mosaic_model.models.build import build_model
from mosaic_model.training import preset
from mosaic_model.training.optim import make_optimizer
from mosaic_model.training.tasks import make_task


def main() -> None:
    """Profile eager training steps of each requested RegBench model and depth."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=("mosaic", "gpt"), default=["mosaic", "gpt"])
    p.add_argument("--depths", nargs="+", type=int, default=[2, 4])
    p.add_argument("--languages", type=int, default=2500, help="training languages of the task")
    p.add_argument("--pmem-kernel", choices=("sdpa", "triton"), default="sdpa", help="the Memory Mosaic's P-mem")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=14)
    a = p.parse_args()
    require_at_least_one(p, a, ("languages", "steps", "rows"))
    if any(d < 1 for d in a.depths):
        p.error(f"--depths must all be >= 1, got {a.depths}")
    device = torch.device("cuda")
    # The languages and the batch depend on the task's settings only, not on the model: drawn once.
    task_cfg = preset("regbench", num_train=a.languages, device="cuda", quiet=True).resolved()
    task = make_task(task_cfg, progress=False, world=1)
    x, y = task.batch(0, task_cfg.batch_size, device)
    for model_name in a.models:
        for depth in a.depths:
            extra = {"pmem_kernel": a.pmem_kernel} if model_name == "mosaic" else {}
            cfg = preset("regbench", model=model_name, n_layer=depth, num_train=a.languages, device="cuda",
                         quiet=True, **extra).resolved()
            torch.manual_seed(0)
            model = build_model(cfg.model, cfg.model_config(task.block_size, task.vocab_size)).to(device)
            opt = make_optimizer(model, cfg, device)  # the trainer's: its parameter groups, fused on CUDA

            def step():
                _, loss = model(x, y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            print_profile(step, a.steps, a.rows, f"{model_name} L{depth} {tuple(x.shape)} float32"
                          + (f" pmem_kernel={a.pmem_kernel}" if extra else ""))


if __name__ == "__main__":
    main()
