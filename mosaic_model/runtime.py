"""Runtime helpers shared by training, evaluation and the experiments."""
from __future__ import annotations

import contextlib

import torch


def autocast_for(device: torch.device | str, dtype: torch.dtype, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA; nothing for float32 or on CPU. ``cache=False`` for code recorded in a
    CUDA graph (autocast's cache of cast weights must not outlive the recording)."""
    device = torch.device(device)
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=dtype, cache_enabled=cache)
    return contextlib.nullcontext()
