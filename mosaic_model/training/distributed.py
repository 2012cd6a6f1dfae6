"""Several processes under ``torchrun``: the process group, each rank's device, and the end of a run."""
from __future__ import annotations

import os

import torch


def init_distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, this rank's device); starts the process group when launched by torchrun with
    several processes. CUDA ranks use NCCL on ``cuda:LOCAL_RANK``; CPU ranks use gloo (the tests)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.device(device).type == "cuda":
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


def wait_for_all(world: int) -> None:
    """A barrier with several processes (rank 0's final evaluation is done before anyone leaves)."""
    if world > 1:
        torch.distributed.barrier()


def close_distributed() -> None:
    """Destroy the process group if one was started. Call it after the DDP wrapper is gone: destroying
    the group under a live DDP object aborted a gloo process at exit."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
