"""Attention probes: the last query row's attention weights of every layer, for every model.

Memory Mosaic C-mem: the row of the last position t = T-1 over the earlier keys j < T-1,
``softmax_j(<k_t, k_j>)`` with the keys as the layer computes them (leaky average, normalised, times
the head's bandwidth). GPT: ``softmax_j(<q_t, k_j> / sqrt(hs))`` over j <= t, from its c_attn output.
Memory Mosaics v2: two rows per block, its short-term then its long-term memory (eval mode: delay
``delay_eval``), each over the keys j < T-1 with ``beta(n) <k_t, k_j>`` inside the memory's band and
weight 0 outside it. Llama: GPT's row with q and k rotated to their positions. All are read through
forward hooks, so the models keep their fused kernels.
"""
from __future__ import annotations

import math

import torch

from ..models.gpt import GPT
from ..models.llama import Llama, rotary
from ..models.mosaic import MemoryMosaic
from ..models.mosaic_v2 import MemoryMosaicV2


@torch.no_grad()
def last_row_attention(model: torch.nn.Module, idx: torch.Tensor) -> list[torch.Tensor]:
    """One ``(B, H, n)`` float32 tensor per layer: the last query's attention weights over the n
    positions it can see (T-1 for the Memory Mosaic, whose mask is strict; T for GPT)."""
    captured: list[torch.Tensor] = []
    if isinstance(model, MemoryMosaic):
        modules = [b.cmem.key for b in model.blocks]
    elif isinstance(model, MemoryMosaicV2):
        # A block runs both memories as one of 2H heads: capture its LN output and ask each memory's own key
        # extractor for its keys afterwards.
        memories = [m for b in model.blocks for m in (b.short, b.long)]
        modules = [b.ln_1 for b in model.blocks]
    elif isinstance(model, (GPT, Llama)):
        modules = [b.attn.c_attn if isinstance(model, GPT) else b.attn.W_qkv for b in model.blocks]
    else:
        raise ValueError(f"no attention probe for {type(model).__name__}")
    hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in modules]
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    if isinstance(model, MemoryMosaicV2):
        captured = [m.key(h) for h, pair in zip(captured, zip(memories[::2], memories[1::2])) for m in pair]
    rows = []
    for i, out in enumerate(captured):
        if isinstance(model, MemoryMosaic):
            k = out.float()  # (B, H, T, hs)
            logits = torch.einsum("bhd,bhjd->bhj", k[:, :, -1], k[:, :, :-1])
        elif isinstance(model, MemoryMosaicV2):
            logits = _band_row(memories[i], out.float())
        else:
            B, T, three_d = out.shape
            H = model.config.n_head
            q, k, _ = out.float().split(three_d // 3, dim=2)
            q = q[:, -1].view(B, 1, H, -1).transpose(1, 2)                   # (B, H, 1, hs)
            k = k.view(B, T, H, -1).transpose(1, 2)                          # (B, H, T, hs)
            if isinstance(model, Llama):
                positions = torch.arange(T, device=k.device)
                q, k = rotary(q, positions[-1:], model.config.rope_theta), rotary(k, positions, model.config.rope_theta)
            logits = torch.einsum("bhd,bhjd->bhj", q[:, :, 0], k) / math.sqrt(k.shape[-1])
        rows.append(torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0))  # an empty band: a row of zeros
    return rows


def _band_row(memory: torch.nn.Module, k: torch.Tensor) -> torch.Tensor:
    """Logits (B, H, T-1) of a v2 memory's last row t = T-1 over the keys j < t: ``beta(n) <k_t, k_j>`` inside
    its band (short-term: t - window .. t - 1; long-term: 0 .. t - delay_eval), -inf outside."""
    t = k.shape[2] - 1
    lo, hi = memory.row_band(t, memory.config.delay_eval)
    beta = memory.bandwidth.of_count(max(hi - lo + 1, 0)).float().reshape(1, -1, 1)
    logits = beta * torch.einsum("bhd,bhjd->bhj", k[:, :, -1], k[:, :, :-1])
    j = torch.arange(t, device=k.device)
    return logits.masked_fill(~((j >= lo) & (j <= hi)), float("-inf"))
