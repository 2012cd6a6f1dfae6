"""GPT2 baseline as the paper trained it (docs/MODEL.md 4; nanoGPT-style, SDPA attention)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig
from .generation import GenerateMixin, head_and_loss, is_static, layer_cache, write_at


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention (SDPA, attention dropout at the model's dropout), with the
    growing or static key-value cache of cached generation."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C): causal SDPA over the heads, then the output projection."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))

    def step(self, x_t: torch.Tensor, cache: dict) -> torch.Tensor:
        """One position (B, C) in eval mode with a key/value cache: the query reads positions <= t."""
        B, C = x_t.shape
        q, k, v = (t.view(B, self.n_head, 1, C // self.n_head) for t in self.c_attn(x_t).split(C, dim=1))
        future = None
        if is_static(cache):  # lm.static_cache: buffers of the block's length, the rows past pos masked
            pos, length = cache["pos"], cache["block_size"]
            cache["k"] = write_at(cache.get("k"), k[:, :, 0], pos, length)
            cache["v"] = write_at(cache.get("v"), v[:, :, 0], pos, length)
            future = torch.arange(length, device=pos.device) > pos
        else:
            cache["k"] = torch.cat([cache["k"], k], dim=2) if "k" in cache else k
            cache["v"] = torch.cat([cache["v"], v], dim=2) if "v" in cache else v
        # One query row as two small matmuls, not SDPA: the key length grows by one at every token, and
        # SDPA at a new shape each token was several times slower (BENCHMARKS.md "Cached generation").
        scores = (q @ cache["k"].transpose(-1, -2)).float() * (q.shape[-1] ** -0.5)
        if future is not None:
            scores = scores.masked_fill(future, float("-inf"))
        y = torch.softmax(scores, dim=-1).to(cache["v"].dtype) @ cache["v"]
        return self.c_proj(y.reshape(B, C))


class MLP(nn.Module):
    """GPT2's feed-forward block: d -> 4d, tanh GELU, 4d -> d, dropout."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C): c_proj(GELU(c_fc x)), GELU's tanh form as GPT-2's."""
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class GPTBlock(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then + MLP(LN(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C): x + attention(LN(x)), then + MLP(LN(x))."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def step(self, x_t: torch.Tensor, cache: dict) -> torch.Tensor:
        """One position (B, C) of :meth:`forward` in eval mode, reading and updating ``cache``."""
        x_t = x_t + self.attn.step(self.ln_1(x_t), cache)
        return x_t + self.mlp(self.ln_2(x_t))


class GPT(GenerateMixin, nn.Module):
    """GPT2 with learned absolute positions and a tied head; ``model(idx, targets) -> (logits, loss)``
    (``loss_chunk``: as the Memory Mosaic's)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():  # GPT-2 init: N(0, 0.02), c_proj / sqrt(2L)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * config.n_layer))
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_chunk: int | None = None) -> tuple:
        """Token ids (B, T) -> (logits (B, T, vocab), mean cross-entropy over ``targets`` (B, T) or None);
        ``loss_chunk=R`` with targets: the loss R positions at a time (``chunked_lm_loss``), logits None."""
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return head_and_loss(x, self._head, targets, loss_chunk)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and the tied head: (..., d) -> (..., vocab)."""
        return self.lm_head(self.ln_f(x))

    def decode_step(self, tokens: torch.Tensor, cache: dict, logits: bool = True) -> torch.Tensor | None:
        """Next-token logits (B, vocab) after feeding ``tokens`` (B,) at the next position of ``cache``;
        ``logits=False`` updates the cache only and returns None."""
        static = is_static(cache)
        pos = cache.get("pos", 0)
        if not static:
            cache["pos"] = pos + 1
        # A static cache's position is a device tensor: indexing with it as an integer would read it back
        # to the host, which a CUDA graph capture forbids; the embedding lookup stays on the device.
        x = self.wte(tokens) + (self.wpe(pos.view(1)) if static else self.wpe.weight[pos])
        for i, block in enumerate(self.blocks):
            x = block.step(x, layer_cache(cache, i))
        if static:
            pos.add_(1)  # in place: a captured graph advances it too
        return self._head(x) if logits else None

    def num_params(self) -> int:
        """Number of parameters, counting the tied embedding once."""
        return sum(p.numel() for p in self.parameters())
