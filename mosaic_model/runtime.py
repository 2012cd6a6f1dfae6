"""Where and in what precision code runs: the device and dtype choices shared by the models' users
(training, evaluation, the command lines). Imports nothing of this package."""
from __future__ import annotations

import contextlib

import torch

DTYPE_CHOICES = ("auto", "float32", "bfloat16")


def autocast_for(device: torch.device | str, dtype: torch.dtype, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA; nothing for float32 or on CPU. ``cache=False`` for code recorded in a
    CUDA graph (autocast's cache of cast weights must not outlive the recording)."""
    device = torch.device(device)
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=dtype, cache_enabled=cache)
    return contextlib.nullcontext()


def to_device(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """``t.to(device)`` without making the host wait: a CPU tensor bound for a CUDA device goes through pinned
    memory with ``non_blocking=True``. A plain copy from pageable memory waits until every kernel already
    queued on the stream has run, so a training loop that copies each batch that way cannot issue step n + 1
    while the GPU runs step n. The copy is ordered on the current stream before the kernels that read it, and
    the caching host allocator keeps the pinned buffer until the copy has run. ``device`` None: ``t``."""
    if device is None:
        return t
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def resolve_device(device: str) -> str:
    """``"auto"`` as ``"cuda"`` when a GPU is visible, else ``"cpu"``; other names unchanged. ValueError
    for a name torch does not parse, a device type other than cpu or cuda, or cuda without a GPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"must be cpu or cuda, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{device} was asked for but no CUDA device is available")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``"auto"`` as bf16 (autocast) on CUDA and float32 on the CPU; ValueError for bf16 on the CPU."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"must be one of {DTYPE_CHOICES}, got {dtype!r}")
    cuda = torch.device(device).type == "cuda"
    if dtype == "auto":
        return "bfloat16" if cuda else "float32"
    if dtype == "bfloat16" and not cuda:
        raise ValueError("bfloat16 runs as CUDA autocast; on CPU use float32")
    return dtype
