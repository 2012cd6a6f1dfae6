"""Metrics of trained models: the in-context task's, token losses over a corpus, loss by position,
and mean attention rows. Each takes a model and data and returns numbers; nothing here reads a run
folder or prints."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.regbench import ICLSplit, icl_metrics
from ..data.text import TokenCorpus
from ..models.generation import IGNORE_INDEX
from ..runtime import autocast_for
from .probes import last_row_attention


@torch.no_grad()
def evaluate_icl(model: torch.nn.Module, split: ICLSplit, batch_size: int, device: torch.device | str,
                 dtype: torch.dtype = torch.float32,
                 max_batches: int | None = None, progress: bool = False) -> dict:
    """Loss, validity accuracy, L1 and TVD over an in-context split, in fixed order.

    Per-batch means are averaged with weights equal to the batch's number of sequences, as
    seq_icl's Lightning logging does. ``progress``: a bar when it takes more than two seconds.
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    totals: dict[str, float] = {}
    weight = 0
    starts = list(range(0, len(split), batch_size))[:max_batches]
    try:
        for start in tqdm(starts, desc="evaluating", unit="batch", delay=2, leave=False, disable=not progress):
            idx = list(range(start, min(start + batch_size, len(split))))
            x, y, _ = split.batch(idx, device)
            with autocast_for(device, dtype):
                logits, loss = model(x, y)
            m = icl_metrics(logits, y, split.legal(idx, device))
            m["loss"] = float(loss)
            for key in ("loss", "accuracy", "l1", "tvd", "chance_accuracy"):
                totals[key] = totals.get(key, 0.0) + m[key] * len(idx)
            weight += len(idx)
    finally:
        model.train(was_training)
    return {k: v / max(weight, 1) for k, v in totals.items()}


# Logits (in elements) one model call makes at once during evaluation: on the CPU 2^25 float32 values, 128 MiB
# (an evaluation batch of 50 x 256 tokens at GPT-2's vocabulary would make 2.6 GB, and the loss as much again);
# on a GPU 2^28, 1 GiB. At GPT-2's vocabulary and T=512 the CPU's budget is one row a model call: on 2026-12-05
# (H200, seven 768-wide training processes sharing the GPU) an evaluation of 20 batches of 32 windows, 640
# small eager calls, took 284 s against 8 s for the 100 training steps before it; the GPU's budget makes it 80.
EVAL_LOGITS = 2 ** 25
EVAL_LOGITS_GPU = 2 ** 28


def token_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | str,
                 dtype: torch.dtype) -> torch.Tensor:
    """Per-token cross-entropy (B, T) in float32; 0 where y is IGNORE_INDEX. The rows go through the
    model a few at a time, so that one call's logits stay under ``EVAL_LOGITS`` elements (``EVAL_LOGITS_GPU``
    off the CPU)."""
    budget = EVAL_LOGITS if torch.device(device).type == "cpu" else EVAL_LOGITS_GPU
    rows = max(1, budget // (x.shape[1] * model.config.vocab_size))
    out = []
    for start in range(0, x.shape[0], rows):
        with autocast_for(device, dtype):
            logits, _ = model(x[start:start + rows].to(device))
        target = y[start:start + rows].to(device)
        # (rows x T, V) with the classes last, as the training loss lays them out
        out.append(F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="none").view_as(target))
    return torch.cat(out)


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, corpus: TokenCorpus, block_size: int, batches: int, batch_size: int,
                  device: torch.device | str, dtype: torch.dtype = torch.float32,
                  seed: int = 0, progress: bool = False) -> float:
    """Mean token loss over ``batches`` batches of random windows drawn with ``seed`` (the same windows at
    every call, so that successive estimates during training are comparable)."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    total = 0.0
    try:
        for _ in tqdm(range(batches), desc=f"evaluating {corpus.name}", unit="batch", delay=2, leave=False,
                      disable=not progress):
            x, y = corpus.random_windows(rng, batch_size, block_size)
            total += float(token_losses(model, x, y, device, dtype).mean())
    finally:
        model.train(was_training)
    return total / batches


@torch.no_grad()
def corpus_loss(model: torch.nn.Module, corpus: TokenCorpus, block_size: int, batch_size: int, device: torch.device | str,
                dtype: torch.dtype = torch.float32,
                max_tokens: int | None = None, progress: bool = False) -> dict:
    """Mean token loss over consecutive non-overlapping windows covering the corpus (or its first
    ``max_tokens`` tokens): every token is predicted once, from up to ``block_size`` tokens of context."""
    n = len(corpus) - 1 if max_tokens is None else min(max_tokens, len(corpus) - 1)
    starts = list(range(0, n - block_size + 1, block_size))
    if not starts:
        corpus.check_window(block_size)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in tqdm(range(0, len(starts), batch_size), desc=f"evaluating {corpus.name}", unit="batch", delay=2,
                      leave=False, disable=not progress):
            rows = np.stack([corpus.tokens[s:s + block_size + 1] for s in starts[i:i + batch_size]]).astype(np.int64)
            t = torch.from_numpy(rows)
            losses = token_losses(model, t[:, :-1], t[:, 1:], device, dtype)
            total += float(losses.sum())
            count += losses.numel()
    finally:
        model.train(was_training)
    return {"loss": total / count, "tokens": count}


@torch.no_grad()
def loss_by_position(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device | str,
                     dtype: torch.dtype = torch.float32,
                     window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean loss, number of documents) at each position over document-aligned rows (x, y).

    With ``window`` (a GPT run past its trained length), a position p is predicted from the ``window``
    tokens ending at p: rows are scored in windows that advance by window // 2, each position once.
    """
    T = x.shape[1]
    sums, counts = torch.zeros(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        if window is None or window >= T:
            losses = token_losses(model, xb, yb, device, dtype).cpu()
        else:
            losses = sliding_losses(model, xb, yb, window, device, dtype)
        valid = (yb != IGNORE_INDEX).double()
        sums += (losses.double() * valid).sum(0)
        counts += valid.sum(0)
    return (sums / counts.clamp_min(1)).numpy(), counts.numpy()


def sliding_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, window: int, device: torch.device | str,
                   dtype: torch.dtype) -> torch.Tensor:
    """Per-token losses (B, T) of rows longer than the model's window: scored in windows of ``window``
    tokens that advance by ``window // 2``, each position once, from as much context as the window holds."""
    T, stride = x.shape[1], max(1, window // 2)
    out = torch.zeros(x.shape, dtype=torch.float32)
    scored_to = 0
    start = 0
    while scored_to < T:
        end = min(start + window, T)
        losses = token_losses(model, x[:, start:end], y[:, start:end], device, dtype).cpu()
        out[:, scored_to:end] = losses[:, scored_to - start:]
        scored_to = end
        start = min(start + stride, max(T - window, 0)) if end < T else start
    return out


@torch.no_grad()
def mean_last_row_attention(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device | str,
                            dtype: torch.dtype = torch.float32) -> np.ndarray:
    """(layers, heads, n) last-row attention averaged over the rows of ``x`` (see ``probes``)."""
    total = None
    for i in range(0, len(x), batch_size):
        with autocast_for(device, dtype):
            rows = last_row_attention(model, x[i:i + batch_size].to(device))
        batch = torch.stack([r.sum(0) for r in rows]).double().cpu()
        total = batch if total is None else total + batch
    return (total / len(x)).numpy()
