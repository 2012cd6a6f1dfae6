"""Runtime helpers shared by training, evaluation and the experiments."""
from __future__ import annotations

import argparse
import contextlib

import torch


def autocast_for(device: torch.device | str, dtype: torch.dtype, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA; nothing for float32 or on CPU. ``cache=False`` for code recorded in a
    CUDA graph (autocast's cache of cast weights must not outlive the recording)."""
    device = torch.device(device)
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=dtype, cache_enabled=cache)
    return contextlib.nullcontext()


def require_at_least_one(p: argparse.ArgumentParser, a: argparse.Namespace, names: tuple[str, ...]) -> None:
    """A one-line CLI error (exit 2) for the first option of ``names`` (attribute names) that is below 1;
    options that are None or absent (optional, or another subcommand's) pass."""
    for name in names:
        v = getattr(a, name, None)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
