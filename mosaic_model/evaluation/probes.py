"""Attention probes: the last query row's attention weights of every layer, for both models.

Memory Mosaic C-mem: the row of the last position t = T-1 over the earlier keys j < T-1,
``softmax_j(<k_t, k_j>)`` with the keys as the layer computes them (leaky average, normalised, times
the head's bandwidth). GPT: ``softmax_j(<q_t, k_j> / sqrt(hs))`` over j <= t, from its c_attn output.
Both are read through forward hooks, so the models keep their fused kernels.
"""
from __future__ import annotations

import math

import torch

from ..models.gpt import GPT
from ..models.mosaic import MemoryMosaic


@torch.no_grad()
def last_row_attention(model: torch.nn.Module, idx: torch.Tensor) -> list[torch.Tensor]:
    """One ``(B, H, n)`` float32 tensor per layer: the last query's attention weights over the n
    positions it can see (T-1 for the Memory Mosaic, whose mask is strict; T for GPT)."""
    captured: list[torch.Tensor] = []
    if isinstance(model, MemoryMosaic):
        modules = [b.cmem.key for b in model.blocks]
    elif isinstance(model, GPT):
        modules = [b.attn.c_attn for b in model.blocks]
    else:
        raise ValueError(f"no attention probe for {type(model).__name__}")
    hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in modules]
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for out in captured:
        if isinstance(model, MemoryMosaic):
            k = out.float()  # (B, H, T, hs)
            logits = torch.einsum("bhd,bhjd->bhj", k[:, :, -1], k[:, :, :-1])
        else:
            B, T, three_d = out.shape
            H = model.config.n_head
            q, k, _ = out.float().split(three_d // 3, dim=2)
            q = q[:, -1].view(B, H, -1)
            k = k.view(B, T, H, -1).transpose(1, 2)
            logits = torch.einsum("bhd,bhjd->bhj", q, k) / math.sqrt(k.shape[-1])
        rows.append(torch.softmax(logits, dim=-1))
    return rows
