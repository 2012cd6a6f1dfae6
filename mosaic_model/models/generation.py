"""What the Memory Mosaic and the GPT2 baseline share as language models: the training loss, and
sampling with or without a decoding cache."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # targets that do not count (padding, RegBench's separators)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Mean cross-entropy over targets that are not IGNORE_INDEX (in float32), or None without targets."""
    if targets is None:
        return None
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def _chunk_loss_sum(x: torch.Tensor, targets: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(head(x).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_lm_loss(x: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor,
                    rows: int) -> torch.Tensor:
    """:func:`lm_loss` of ``head(x)`` without the whole (B, T, vocab) logits: ``rows`` rows of the (B*T, d)
    hidden states at a time go through the head and the cross-entropy, and each chunk's logits are
    recomputed in the backward (activation checkpointing) instead of being kept. The same function as
    ``lm_loss(head(x), targets)``, sums taken chunk by chunk; the head's work is done twice forward.
    At GPT-2's vocabulary the logits of a CPU batch of 32 x 256 tokens are 1.6 GB in float32, and the
    loss and its backward hold three more of their size."""
    flat, t = x.reshape(-1, x.shape[-1]), targets.reshape(-1)
    total = x.new_zeros((), dtype=torch.float32)
    for start in range(0, flat.shape[0], rows):
        total = total + checkpoint(_chunk_loss_sum, flat[start:start + rows], t[start:start + rows], head,
                                   use_reentrant=False, preserve_rng_state=False)
    return total / (t != IGNORE_INDEX).sum()


def head_and_loss(x: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor | None,
                  loss_chunk: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A language model's ``(logits, loss)`` from its last hidden states ``x``: ``(head(x), lm_loss)``, or with
    ``loss_chunk`` and targets ``(None, chunked_lm_loss)`` (the loss ``loss_chunk`` positions at a time, the
    whole logits never kept). Every model's forward ends here, so that each takes ``loss_chunk`` alike."""
    if loss_chunk and targets is not None:
        return None, chunked_lm_loss(x, head, targets, loss_chunk)
    logits = head(x)
    return logits, lm_loss(logits, targets)


def static_cache(block_size: int, device: torch.device | str) -> dict:
    """An empty decoding cache of fixed shapes: every buffer is allocated once, at the size of the
    block, on the first token, and the position is a device tensor that the steps update in place.
    Every step then launches the same kernels on the same memory, which a CUDA graph can replay."""
    return {"pos": torch.zeros((), dtype=torch.long, device=device), "block_size": block_size}


def is_static(cache: dict) -> bool:
    """Whether a decoding cache (or one layer's part of it) is a static one (``static_cache``)."""
    return isinstance(cache.get("pos"), torch.Tensor)


def layer_cache(cache: dict, key: object) -> dict:
    """The part of ``cache`` that one layer or unit keeps under ``key``: an empty dict for a growing
    cache; for a static one, a dict sharing its position tensor and block size."""
    if key not in cache:
        cache[key] = {"pos": cache["pos"], "block_size": cache["block_size"]} if is_static(cache) else {}
    return cache[key]


def write_at(buffer: torch.Tensor | None, row: torch.Tensor, pos: torch.Tensor, length: int) -> torch.Tensor:
    """Write ``row`` (B, H, D) at position ``pos`` of a static (B, H, length, D) buffer, allocated
    (zeros, ``row``'s dtype) on the first call; returns the buffer."""
    if buffer is None:
        B, H, D = row.shape
        buffer = row.new_zeros(B, H, length, D)
    buffer.index_copy_(2, pos.view(1), row[:, :, None])
    return buffer


class _GraphedStep:
    """``model.decode_step(tokens, cache)`` on a static cache, captured once as a CUDA graph and then
    replayed: the tokens are copied into the captured input, and the replay writes the captured output.
    The cache's buffers were allocated by the eager prefill, which also warmed up the kernels."""

    def __init__(self, model, cache: dict):
        self.model, self.cache, self.graph = model, cache, None

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            self.tokens = tokens.clone()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # records, does not run: the replay below runs it
                self.logits = self.model.decode_step(self.tokens, self.cache)
        else:
            self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits


def feed(model: torch.nn.Module, tokens: torch.Tensor, cache: dict) -> torch.Tensor:
    """Feed ``tokens`` (B, T), T >= 1, to ``model``'s decoding ``cache`` one position at a time and return the
    logits after the last (B, vocab): the output layer runs for that one only (at a vocabulary of 50k it is most
    of a small model's step)."""
    T = tokens.shape[1]
    for t in range(T):
        logits = model.decode_step(tokens[:, t], cache, logits=t == T - 1)
    return logits


class GenerateMixin:
    """Adds :meth:`generate` to a model with ``forward(idx) -> (logits, loss)`` and
    ``decode_step(tokens, cache, logits=True) -> logits`` (one position at a time, eval mode; None without
    ``logits``). The decoding cache
    is a dict that grows (the default) or a static one (``static_cache``, used by ``cuda_graph``)."""

    _static_decoding = False  # tests set it to run the static cache without a graph (on the CPU too)

    def _prefill(self, context: torch.Tensor, static: bool = False) -> tuple[torch.Tensor, dict]:
        """A cache holding ``context`` (B, T) (:func:`feed`) and the logits after its last token."""
        cache = static_cache(self.config.block_size, context.device) if static else {}
        return feed(self, context, cache), cache

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, stop_token: int | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 cuda_graph: bool = False) -> torch.Tensor:
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
            cuda_graph: on CUDA, decode with a static cache (buffers of the block's length, the
                position a device tensor) and replay each step as one CUDA graph, captured after the
                prompt: at batch 1 a step is otherwise bound by kernel launches. Needs ``use_cache``.
                Past ``block_size`` tokens it falls back to rebuilding the cache, as above.

        Returns:
            ``(B, T + n)`` tokens, ``n <= max_new_tokens``.
        """
        if idx.dim() != 2 or idx.shape[1] < 1:
            raise ValueError(f"idx must have shape (B, T) with T >= 1, got {tuple(idx.shape)}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if cuda_graph and not (use_cache and idx.is_cuda):
            raise ValueError("cuda_graph needs use_cache=True and idx on a CUDA device")
        was_training = self.training
        self.eval()
        block = self.config.block_size
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        cache, graph = None, None
        try:
            for _ in range(max_new_tokens):
                if not use_cache:
                    logits = self(idx[:, -block:])[0][:, -1, :]
                elif cache is None or idx.shape[1] > block:
                    static = (cuda_graph or self._static_decoding) and idx.shape[1] <= block
                    logits, cache = self._prefill(idx[:, -block:], static=static)
                    graph = _GraphedStep(self, cache) if static and cuda_graph else None
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
                    logits = graph(nxt[:, 0]) if graph is not None else self.decode_step(nxt[:, 0], cache)
        finally:
            self.train(was_training)
        return idx
