"""One registration path for the fused ops: from a forward launch and a backward launch, the
``torch.library`` custom ops (what ``torch.compile`` traces), their fake implementations, their
registered autograd, and the eager ``autograd.Function`` around the same launches.

Why two paths: eager calls skip the custom-op dispatch, tens of microseconds of host time a call
(BENCHMARKS.md "Host cost of an eager call"), and compiled graphs need the registered ops. Both run
the same launches, save the same tensors and return the same gradients, because both are built here
from the same four op-specific pieces:

    forward(*inputs) -> outputs           the launches; outputs[0] is what the caller gets
    save(ctx, inputs, outputs)            what the backward needs: ctx.save_for_backward + attributes
    backward_args(ctx, grad) -> args      the backward launch's arguments from the saved state
    input_grads(ctx, result) -> grads     the backward's results as one gradient (or None) per input

The forward and the backward must carry type annotations (``torch.library.custom_op`` reads the
schema from them); each needs a fake that returns empty tensors of the outputs' shapes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.autograd.function import FunctionCtx


@dataclass
class FusedOp:
    """A registered op: ``fwd`` and ``bwd`` are the custom ops (for opcheck and tracing), ``apply``
    runs the op with autograd on either path and returns the forward's first output."""

    fwd: torch.library.CustomOpDef
    bwd: torch.library.CustomOpDef
    apply: Callable


def _first(outputs: object) -> torch.Tensor:
    return outputs[0] if isinstance(outputs, tuple) else outputs


def fused_op(name: str, *, forward: Callable, fake_forward: Callable, backward: Callable, fake_backward: Callable,
             save: Callable, backward_args: Callable, input_grads: Callable) -> FusedOp:
    """Register ``mosaic::{name}_fwd`` and ``mosaic::{name}_bwd`` and build the eager path (see the
    module docstring for the four op-specific pieces)."""
    fwd_op = torch.library.custom_op(f"mosaic::{name}_fwd", forward, mutates_args=())
    fwd_op.register_fake(fake_forward)
    bwd_op = torch.library.custom_op(f"mosaic::{name}_bwd", backward, mutates_args=())
    bwd_op.register_fake(fake_backward)
    # Gradients of outputs after the first (saved statistics) are never used: they are not differentiable.
    fwd_op.register_autograd(lambda ctx, grad, *_rest: input_grads(ctx, bwd_op(*backward_args(ctx, grad))),
                             setup_context=lambda ctx, inputs, output: save(ctx, inputs, output))

    class _Eager(torch.autograd.Function):
        """The eager path: the same launches as the custom ops, without their dispatch cost."""

        @staticmethod
        def forward(ctx: FunctionCtx, *inputs: object) -> torch.Tensor:
            outputs = forward(*inputs)
            save(ctx, inputs, outputs)
            return _first(outputs)

        @staticmethod
        def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple:
            return input_grads(ctx, backward(*backward_args(ctx, grad)))

    _Eager.__name__ = _Eager.__qualname__ = f"_{name.title().replace('_', '')}"

    def apply(*inputs: object) -> torch.Tensor:
        if torch.compiler.is_compiling():  # torch.compile traces the registered op
            return _first(fwd_op(*inputs))
        return _Eager.apply(*inputs)

    return FusedOp(fwd_op, bwd_op, apply)
