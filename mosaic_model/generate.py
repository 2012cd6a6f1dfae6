"""Sampling shared by the Memory Mosaic and the GPT2 baseline."""
from __future__ import annotations

import torch


class GenerateMixin:
    """Adds :meth:`generate` to a model whose ``forward(idx)`` returns ``(logits, loss)``."""

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, stop_token: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after ``idx`` (B, T), recomputing the context each step.

        Args:
            temperature: > 0 divides the logits; 0 picks the argmax (greedy).
            top_k: keep only the k most likely tokens before sampling.
            stop_token: a sequence that has produced it keeps producing it (as padding), and
                generation ends early once every sequence has.
            generator: a torch.Generator for reproducible sampling.

        Returns:
            ``(B, T + n)`` tokens, ``n <= max_new_tokens``.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        block = self.config.block_size
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -block:])
            logits = logits[:, -1, :].float()
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = torch.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            if stop_token is not None:
                nxt = torch.where(done[:, None], torch.full_like(nxt, stop_token), nxt)
                done = done | (nxt[:, 0] == stop_token)
            idx = torch.cat([idx, nxt], dim=1)
            if stop_token is not None and bool(done.all()):
                break
        return idx
