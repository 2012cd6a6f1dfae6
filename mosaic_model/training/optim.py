"""The optimizer and its schedule: AdamW over the Library's decay groups, warm-up then cosine."""
from __future__ import annotations

import math

import torch

from .config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """Library groups: decay tensors of dim >= 2 (weights, embedding, slots), not the rest; with
    ``decay_all`` one group that decays everything (seq_icl's recipe)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_all:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW (torch's, bias-corrected; fused on CUDA) over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, config.weight_decay, config.decay_all), lr=config.lr,
                             betas=(config.beta1, config.beta2), fused=device.type == "cuda")


def lr_at(step: int, config: TrainConfig) -> float:
    """The learning rate at ``step``: a linear warm-up from 0 over ``warmup`` steps, then a cosine from
    ``lr`` to ``lr * min_lr_ratio`` at step ``steps``. A function of (step, steps), so a run extended
    with a larger ``steps`` follows, from where it stopped, the schedule of the longer run.

    ``schedule="regbench"`` is timm's CosineLRScheduler as seq_icl configures it: warm-up from 1e-6 to
    ``lr`` over ``warmup`` steps, then ``floor + (lr - floor)(1 + cos(pi step / steps)) / 2``, the cosine
    measured from step 0 (warmup_prefix False), so it starts below ``lr`` when the warm-up ends."""
    c = config
    floor = c.lr * c.min_lr_ratio
    if c.schedule == "regbench":
        if step < c.warmup:
            return 1e-6 + step * (c.lr - 1e-6) / c.warmup
        return floor + 0.5 * (c.lr - floor) * (1 + math.cos(math.pi * min(step / c.steps, 1.0)))
    if step < c.warmup:
        return c.lr * step / c.warmup
    span = max(c.steps - c.warmup, 1)
    progress = min((step - c.warmup) / span, 1.0)
    return floor + 0.5 * (c.lr - floor) * (1 + math.cos(math.pi * progress))
