"""Evaluation of a language model on the in-context task."""
from __future__ import annotations

import contextlib

import torch

from .data.regbench import ICLSplit, icl_metrics


def autocast_for(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast on CUDA; nothing for float32 or on CPU."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_icl(model, split: ICLSplit, batch_size: int, device, dtype=torch.float32,
                 max_batches: int | None = None) -> dict:
    """Loss, validity accuracy, L1 and TVD over a split, in fixed order.

    Per-batch means are averaged with weights equal to the batch's number of sequences, as
    seq_icl's Lightning logging does (SPEC.md 7.3).
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    totals: dict[str, float] = {}
    weight = 0
    try:
        for n, start in enumerate(range(0, len(split), batch_size)):
            if max_batches is not None and n >= max_batches:
                break
            idx = list(range(start, min(start + batch_size, len(split))))
            x, y, dfas = split.batch(idx, device)
            with autocast_for(device, dtype):
                logits, loss = model(x, y)
            m = icl_metrics(logits, x, y, dfas)
            m["loss"] = float(loss)
            for key in ("loss", "accuracy", "l1", "tvd", "chance_accuracy"):
                totals[key] = totals.get(key, 0.0) + m[key] * len(idx)
            weight += len(idx)
    finally:
        model.train(was_training)
    return {k: v / max(weight, 1) for k, v in totals.items()}
