"""The analyses of ``mosaic-eval`` as library functions: loss by position within documents and the mean
last attention row, at the trained context length or past it."""
from __future__ import annotations

import numpy as np
import torch

from ..data.text import DataError, TokenCorpus
from ..models.gpt import GPT
from .metrics import loss_by_position, mean_last_row_attention


def allow_context(model: torch.nn.Module, T: int) -> int:
    """The context ``model`` can run ``T`` tokens at: a Memory Mosaic runs any length (its parameters do
    not depend on the block size, which is raised to T); a GPT keeps its trained length, which its
    learned positions fix, and that length is returned."""
    if isinstance(model, GPT):
        return min(T, model.config.block_size)
    if T > model.config.block_size:
        model.config.block_size = T
    return T


def position_losses(model: torch.nn.Module, corpus: TokenCorpus, T: int, batch_size: int, device: str,
                    dtype: torch.dtype, max_docs: int | None = None, full_length: bool = False) -> dict:
    """Mean token loss at each position 0..T-1 of the documents' first T tokens. A GPT asked for more
    than its trained length scores each position from the trained length of tokens before it (a
    sliding window). Returns the losses, the documents behind each position, T, the trained length,
    the window (None when none) and ``full_length`` (only documents reaching position T-1)."""
    trained = model.config.block_size
    window = trained if isinstance(model, GPT) and T > trained else None
    allow_context(model, T)
    x, y = corpus.document_windows(T, max_docs, full_length=full_length)
    if not len(x):
        raise DataError(f"{corpus.name}: no document has {T + 1} tokens or more (drop --full-length or lower --block-size)")
    loss, count = loss_by_position(model, x, y, batch_size, device, dtype, window=window)
    return {"loss": loss.tolist(), "documents": count.tolist(), "block_size": T, "trained_block_size": trained,
            "gpt_sliding_window": window, "full_length": full_length}


def attention_rows(model: torch.nn.Module, corpus: TokenCorpus, T: int, num_seqs: int, batch_size: int, seed: int,
                   device: str, dtype: torch.dtype) -> dict:
    """The last query row's attention, per layer and head, averaged over ``num_seqs`` random windows of
    T tokens (a GPT's windows stop at its trained length). Returns the row and the length used."""
    T = allow_context(model, T)
    x, _ = corpus.random_windows(np.random.default_rng(seed), num_seqs, T)
    att = mean_last_row_attention(model, x, batch_size, device, dtype)
    return {"block_size": T, "attention": att}
