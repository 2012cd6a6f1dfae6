"""The Memory Mosaic language model (docs/MODEL.md 3, Library semantics by default)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import MosaicConfig
from .generation import GenerateMixin, head_and_loss, is_static, layer_cache
from .memory import ContextMemory, HeadScalars, PersistentMemory, head_scalars


class MosaicBlock(nn.Module):
    """Pre-LN block: x + Cmem(LN(x)), then + Pmem(LN(x))."""

    def __init__(self, config: MosaicConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.cmem = ContextMemory(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.pmem = PersistentMemory(config)

    def forward(self, x: torch.Tensor, scalars: tuple[HeadScalars, HeadScalars] | None = None) -> torch.Tensor:
        """(B, T, d) -> (B, T, d): x + C-mem(LN(x)), then + P-mem(LN(x)). ``scalars``: the C-mem's and the P-mem's
        per-head scalars when the caller computed them (:func:`head_scalars`), else each unit computes its own."""
        c_scalars, p_scalars = (None, None) if scalars is None else scalars
        x = x + self.cmem(self.ln_1(x), c_scalars)
        return x + self.pmem(self.ln_2(x), p_scalars)

    def step(self, x_t: torch.Tensor, cache: dict) -> torch.Tensor:
        """One position (B, d) of :meth:`forward` in eval mode, reading and updating ``cache``."""
        x_t = x_t + self.cmem.step(self.ln_1(x_t), layer_cache(cache, "cmem"))
        return x_t + self.pmem.step(self.ln_2(x_t), layer_cache(cache, "pmem"))


class MemoryMosaic(GenerateMixin, nn.Module):
    """Memory Mosaic LM: token embedding (no position encoding), blocks, final LN, tied head.

    ``model(idx, targets=None) -> (logits, loss)``: logits (B, T, vocab) for every position
    (scaled by 1/sqrt(n_embd) when ``config.logit_scale``); loss is the mean cross-entropy over
    targets that are not -100, or None without targets. ``loss_chunk=R`` (with targets) computes the
    loss ``R`` rows at a time without keeping the logits (``chunked_lm_loss``) and returns None for them.
    """

    def __init__(self, config: MosaicConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(MosaicBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self._init_library()

    def _init_library(self):
        # Library init (docs/MODEL.md 3): Linear N(0, 1/sqrt(fan_in)), c_proj additionally / sqrt(L);
        # the tied embedding ends at N(0, 1/sqrt(d)) because the head is initialised after it.
        L = self.config.n_layer
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Linear):
                std = 1.0 / math.sqrt(mod.in_features)
                if name.endswith("c_proj"):
                    std /= math.sqrt(L)
                nn.init.normal_(mod.weight, 0.0, std)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        if self.config.embed_std is not None:
            nn.init.normal_(self.wte.weight, 0.0, self.config.embed_std)  # tied: the head's init too

    def set_kernels(self, kernels: str) -> None:
        """Switch every memory unit between "fused" and "reference" ops (same weights)."""
        cfg = MosaicConfig(**{**self.config.to_dict(), "kernels": kernels})
        self.config.kernels = cfg.kernels

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_chunk: int | None = None) -> tuple:
        """Token ids (B, T) -> (logits (B, T, vocab), mean cross-entropy over ``targets`` (B, T) or None);
        ``loss_chunk=R`` with targets: the loss R positions at a time (``chunked_lm_loss``), logits None."""
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        if idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds block_size {self.config.block_size}")
        x = self.wte(idx)
        # Every block's per-head scalars (decays, bandwidths, scales) in one pass: launched per unit they were
        # nearly a third of an eager step's kernels (BENCHMARKS.md "The per-head scalars in one pass").
        c_scalars, p_scalars = head_scalars([b.cmem for b in self.blocks], [b.pmem for b in self.blocks])
        for block, scalars in zip(self.blocks, zip(c_scalars, p_scalars)):
            x = block(x, scalars)
        return head_and_loss(x, self._head, targets, loss_chunk)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm, the Library's 1/sqrt(d) logit scale, tied head: (..., d) -> (..., vocab)."""
        h = self.ln_f(x)
        if self.config.logit_scale:
            # Scaling the (B, T, d) input of the bias-free head equals scaling its (B, T, vocab) output,
            # at 1/65 of the memory traffic for GPT2's vocabulary.
            h = h * (1.0 / math.sqrt(self.config.n_embd))
        return self.lm_head(h)

    def decode_step(self, tokens: torch.Tensor, cache: dict, logits: bool = True) -> torch.Tensor | None:
        """Next-token logits (B, vocab) after feeding ``tokens`` (B,) at the next position of ``cache``
        (a dict that starts empty): O(1) key updates and one attention row per layer. ``logits=False``
        updates the cache only and returns None (a prompt's tokens before its last: no output layer)."""
        x = self.wte(tokens)
        for i, block in enumerate(self.blocks):
            x = block.step(x, layer_cache(cache, i))
        if is_static(cache):
            cache["pos"].add_(1)  # in place: a captured graph advances it too
        return self._head(x) if logits else None

    def num_params(self) -> int:
        """Number of parameters, counting the tied embedding once."""
        return sum(p.numel() for p in self.parameters())
