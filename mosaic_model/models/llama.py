"""A llama-style transformer, the baseline Memory Mosaics v2 is compared with (docs/MODEL.md 9).

Shapes: x is (B, T, d); q, k, v are (B, H, T, hs). One block:

    x = x + W_o SDPA(rope(W_q h), rope(W_k h), W_v h),   h = RMSNorm(x), causal (diagonal included)
    x = x + W₂ (silu(W₁ h) ⊙ W₃ h),                       h = RMSNorm(x)

Rotary positions (base ``rope_theta``) rotate each pair (i, i + hs/2) of q and k by the angle
t * theta^(-2i/hs), so the logits depend on positions only through their difference; nothing else in
the model knows where a token is. No biases, tied head, no dropout by default.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import LlamaConfig
from .generation import GenerateMixin, head_and_loss, is_static, layer_cache
from .mosaic_v2 import SwiGLU


def rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x (B, H, T, hs) rotated pairwise (i, i + hs/2) by positions (T,) * theta^(-2i/hs), in float32."""
    half = x.shape[-1] // 2
    freq = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)     # (hs/2,)
    angle = positions.float()[:, None] * freq[None, :]                                       # (T, hs/2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class RotaryAttention(nn.Module):
    """Causal multi-head attention with rotary positions (SDPA), and the growing key-value cache of
    cached generation."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        d = config.n_embd
        self.W_qkv = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _heads(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        B, T, d = x.shape
        q, k, v = (t.view(B, T, self.config.n_head, -1).transpose(1, 2) for t in self.W_qkv(x).split(d, dim=2))
        theta = self.config.rope_theta
        return rotary(q, positions, theta), rotary(k, positions, theta), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, T, d): causal SDPA on rotary-embedded queries and keys, then the output projection."""
        B, T, d = x.shape
        q, k, v = self._heads(x, torch.arange(T, device=x.device))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.config.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, d)))

    def step(self, x_t: torch.Tensor, cache: dict) -> torch.Tensor:
        """One position (B, d) in eval mode: its key and value join the cache, its query reads them all."""
        pos = cache.get("length", 0)
        q, k, v = self._heads(x_t[:, None], torch.tensor([pos], device=x_t.device))
        cache["k"] = torch.cat([cache["k"], k], dim=2) if "k" in cache else k
        cache["v"] = torch.cat([cache["v"], v], dim=2) if "v" in cache else v
        cache["length"] = pos + 1
        scores = (q @ cache["k"].transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
        y = torch.softmax(scores, dim=-1).to(cache["v"].dtype) @ cache["v"]
        return self.c_proj(y.reshape(x_t.shape[0], -1))


class LlamaBlock(nn.Module):
    """Pre-norm block: x + attention(RMSNorm(x)), then + SwiGLU(RMSNorm(x))."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.norm_1 = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.attn = RotaryAttention(config)
        self.norm_2 = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, T, d): x + attention(RMSNorm(x)), then + SwiGLU(RMSNorm(x))."""
        x = x + self.attn(self.norm_1(x))
        return x + self.mlp(self.norm_2(x))

    def step(self, x_t: torch.Tensor, cache: dict) -> torch.Tensor:
        """One position (B, d) of :meth:`forward` in eval mode."""
        x_t = x_t + self.attn.step(self.norm_1(x_t), cache)
        return x_t + self.mlp(self.norm_2(x_t))


class Llama(GenerateMixin, nn.Module):
    """Llama-style LM: token embedding, blocks, final RMSNorm, tied head. ``model(idx, targets=None) ->
    (logits, loss)``. Linear layers and the embedding start at N(0, 0.02), the projections into the
    residual stream at N(0, 0.02 / sqrt(2 n_layer))."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(LlamaBlock(config) for _ in range(config.n_layer))
        self.norm_f = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, mod in self.named_modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith("c_proj") else 0.02
                nn.init.normal_(mod.weight, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_chunk: int | None = None) -> tuple:
        """(logits (B, T, vocab), loss or None); ``loss_chunk=R`` with targets: the loss R positions at a time
        (``chunked_lm_loss``), logits None, as the Memory Mosaic's."""
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x)
        return head_and_loss(x, self._head, targets, loss_chunk)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Final RMSNorm and the tied head: (..., d) -> (..., vocab)."""
        return self.lm_head(self.norm_f(x))

    def decode_step(self, tokens: torch.Tensor, cache: dict, logits: bool = True) -> torch.Tensor | None:
        """Next-token logits (B, vocab) after feeding ``tokens`` (B,) at the next position of ``cache``;
        ``logits=False`` updates the cache only and returns None."""
        if is_static(cache):
            raise ValueError("llama has no static decoding cache: generate without cuda_graph")
        x = self.wte(tokens)
        for i, block in enumerate(self.blocks):
            x = block.step(x, layer_cache(cache, i))
        return self._head(x) if logits else None

    def num_params(self) -> int:
        """Number of parameters, counting the tied embedding once."""
        return sum(p.numel() for p in self.parameters())
