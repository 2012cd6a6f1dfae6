"""What the Memory Mosaic and the GPT2 baseline share as language models: the training loss, and
sampling with or without a decoding cache."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets that do not count (padding, RegBench's separators)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Mean cross-entropy over targets that are not IGNORE_INDEX (in float32), or None without targets."""
    if targets is None:
        return None
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)


class GenerateMixin:
    """Adds :meth:`generate` to a model with ``forward(idx) -> (logits, loss)`` and
    ``decode_step(tokens, cache) -> logits`` (one position at a time, eval mode)."""

    def _prefill(self, context: torch.Tensor):
        cache: dict = {}
        for t in range(context.shape[1]):
            logits = self.decode_step(context[:, t], cache)
        return logits, cache

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, stop_token: int | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after ``idx`` (B, T).

        Args:
            temperature: > 0 divides the logits; 0 picks the argmax (greedy).
            top_k: keep only the k most likely tokens before sampling.
            stop_token: a sequence that has produced it keeps producing it (as padding), and
                generation ends early once every sequence has.
            generator: a torch.Generator for reproducible sampling.
            use_cache: decode with a cache (the Memory Mosaic keeps its keys, values and the key
                scans' states, so a new token costs one attention row and an O(1) key update; GPT a
                key/value cache). Off, every step re-runs the model on the last ``block_size`` tokens.
                Both see the same context: once the sequence is longer than ``block_size``, the cache
                is rebuilt from the last ``block_size`` tokens at every step, as the uncached path crops.

        Returns:
            ``(B, T + n)`` tokens, ``n <= max_new_tokens``.
        """
        if idx.dim() != 2 or idx.shape[1] < 1:
            raise ValueError(f"idx must have shape (B, T) with T >= 1, got {tuple(idx.shape)}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        was_training = self.training
        self.eval()
        block = self.config.block_size
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        cache = None
        try:
            for _ in range(max_new_tokens):
                if not use_cache:
                    logits = self(idx[:, -block:])[0][:, -1, :]
                elif cache is None or idx.shape[1] > block:
                    logits, cache = self._prefill(idx[:, -block:])
                logits = logits.float()
                if temperature == 0:
                    nxt = logits.argmax(dim=-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k is not None:
                        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
                if stop_token is not None:
                    nxt = torch.where(done[:, None], torch.full_like(nxt, stop_token), nxt)
                    done = done | (nxt[:, 0] == stop_token)
                idx = torch.cat([idx, nxt], dim=1)
                if stop_token is not None and bool(done.all()):
                    break
                if use_cache and idx.shape[1] <= block:
                    logits = self.decode_step(nxt[:, 0], cache)
        finally:
            self.train(was_training)
        return idx
