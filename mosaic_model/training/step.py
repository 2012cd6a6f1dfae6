"""One optimizer step of ``mosaic-train``, run eagerly or replayed as a CUDA graph.

The models of the small experiments (RegBench's 0.4M parameters, three moons, the induction head) do
a few milliseconds of GPU work per step but launch hundreds of kernels, so their steps are bound by
the host. ``CudaGraphStep`` records the whole step (forward, backward, clipping, AdamW) once per batch
shape and replays it: one launch per step. It computes what :func:`optimizer_step` computes eagerly,
with three differences that change no result's distribution:
- dropout masks come from the same generator but in another order of draws, so they are other masks;
- in-context batches are padded to the block size (``fixed_length``), since a graph replays fixed
  shapes: the extra positions are PAD inputs whose labels the loss ignores, and the models are causal;
- the first ``WARMUP`` steps of each batch shape run eagerly (on a side stream), to initialise what a
  recording cannot (the optimizer's state, cuBLAS, Triton's compiled kernels).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable

import torch

from ..runtime import autocast_for
from .config import TrainConfig
from .optim import lr_at

Batch = tuple[torch.Tensor, torch.Tensor]


def optimizer_step(net: torch.nn.Module, params: list[torch.Tensor], opt: torch.optim.Optimizer,
                   batches: Iterable[Batch], micro_steps: int, grad_clip: float, device: torch.device,
                   dtype: torch.dtype, world: int = 1, autocast_cache: bool = True,
                   loss_chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward on each of the ``micro_steps`` batches (gradients averaged), the global
    norm clipped to ``grad_clip`` (0: no clipping), one optimizer step. Returns the mean loss over the
    micro-steps and the gradient norm before clipping, as tensors (reading them waits for the GPU).
    With ``world > 1`` (DDP), gradients are all-reduced on the last micro-step only. ``loss_chunk`` > 0:
    the loss's head and cross-entropy run that many positions at a time (the models' ``loss_chunk``)."""
    loss_sum = torch.zeros((), device=device)
    for micro, (x, y) in enumerate(batches):
        last = micro == micro_steps - 1
        with (net.no_sync() if world > 1 and not last else contextlib.nullcontext()):
            with autocast_for(device, dtype, cache=autocast_cache):
                _, loss = net(x, y, loss_chunk=loss_chunk) if loss_chunk else net(x, y)
            (loss / micro_steps).backward()
        loss_sum = loss_sum + loss.detach() / micro_steps
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    opt.step()
    return loss_sum, grad_norm


class CudaGraphStep:
    """``step(batches)``: ``step_fn(batches)`` recorded as a CUDA graph per batch shape and replayed.

    ``step_fn`` must take a list of (x, y) CUDA tensors and run one optimizer step on them (see
    :func:`optimizer_step`, with ``autocast_cache=False``); ``opt`` must have ``capturable=True`` and a
    tensor learning rate (:func:`make_capturable`). The gradients stay in the graphs' memory: never
    set them to None between steps. The first ``WARMUP`` calls of each shape run ``step_fn`` eagerly.
    """

    WARMUP = 3

    def __init__(self, step_fn: Callable[[list[Batch]], tuple[torch.Tensor, torch.Tensor]], opt: torch.optim.Optimizer):
        self.step_fn, self.opt = step_fn, opt
        self.side = torch.cuda.Stream()
        self.seen: dict[tuple, int] = {}  # eager calls per batch shape
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[Batch], tuple]] = {}

    def __call__(self, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        key = tuple((tuple(x.shape), tuple(y.shape)) for x, y in batches)
        if key in self.graphs:
            graph, static, out = self.graphs[key]
            for (sx, sy), (x, y) in zip(static, batches):
                sx.copy_(x)
                sy.copy_(y)
            graph.replay()
            return out
        if self.seen.get(key, 0) < self.WARMUP:
            self.seen[key] = self.seen.get(key, 0) + 1
            # Gradients left by a recorded graph live in its memory: an eager backward would add to them.
            self.opt.zero_grad(set_to_none=True)
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                out = self.step_fn(batches)
                self.opt.zero_grad(set_to_none=True)  # and the next recording allocates its own
            torch.cuda.current_stream().wait_stream(self.side)
            return out
        # Record this step (recording runs nothing), then replay it: the step happens once.
        static = [(x.clone(), y.clone()) for x, y in batches]
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.step_fn(static)
        self.graphs[key] = (graph, static, out)
        graph.replay()
        return out


def make_capturable(opt: torch.optim.Optimizer, lr: float) -> None:
    """Make an AdamW (fused, on CUDA) recordable in a CUDA graph: ``capturable`` on and the learning rate
    a device tensor that :func:`set_lr` updates in place. Also after ``load_state_dict``, which
    restores the saved flags and a float learning rate."""
    for group in opt.param_groups:
        device = group["params"][0].device
        group["capturable"] = True
        group["lr"] = torch.tensor(float(lr), device=device)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """The learning rate of every group: in place where it is a tensor (read by a recorded graph)."""
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


# Logits (in elements) the training loss makes at once on the CPU when ``loss_chunk`` is left to the trainer:
# 2^25 float32 values are 128 MiB, where a batch of 32 x 256 tokens at GPT-2's vocabulary makes 1.6 GiB.
CPU_LOSS_LOGITS = 2 ** 25


def loss_rows(config: TrainConfig, vocab_size: int, device: torch.device) -> int:
    """Positions per chunk of the training loss (0: all at once). ``config.loss_chunk`` when given;
    otherwise all at once on CUDA, and on the CPU chunks of ``CPU_LOSS_LOGITS`` logits when a
    micro-batch's logits are larger than that."""
    if config.loss_chunk is not None:
        return config.loss_chunk
    rows = max(1, CPU_LOSS_LOGITS // vocab_size)
    positions = config.batch_size * config.block_size if config.task == "lm" else 0
    return rows if device.type == "cpu" and positions > rows else 0


def make_step(model: torch.nn.Module, opt: torch.optim.Optimizer, config: TrainConfig, device: torch.device,
              dtype: torch.dtype, world: int, start: int, fixed_shape: Callable[[torch.Tensor, torch.Tensor], Batch]
              ) -> Callable[[list[Batch]], tuple[torch.Tensor, torch.Tensor]]:
    """The trainer's ``step(batches) -> (mean loss, gradient norm)``: :func:`optimizer_step` on the model
    (compiled with ``config.compile``, wrapped in DDP with several processes) with the gradients freed
    after each step, or with ``config.cuda_graph`` the same step replayed as a CUDA graph on batches
    brought to one shape by ``fixed_shape``. ``start`` is the first step (the graphed optimizer's
    learning rate becomes a device tensor holding that step's value)."""
    chunk = loss_rows(config, model.config.vocab_size, device)
    net = torch.compile(model) if config.compile else model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    params = list(model.parameters())

    def eager(batches: list[Batch], autocast_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        return optimizer_step(net, params, opt, batches, config.grad_accum, config.grad_clip, device, dtype, world,
                              autocast_cache=autocast_cache, loss_chunk=chunk)

    if config.cuda_graph:
        make_capturable(opt, lr_at(start, config))
        graphed = CudaGraphStep(lambda batches: eager(batches, autocast_cache=False), opt)
        return lambda batches: graphed([fixed_shape(x, y) for x, y in batches])

    def step(batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        out = eager(batches)
        opt.zero_grad(set_to_none=True)
        return out
    return step
