"""How much the fused attention's 16-bit roundings inside the op add to its error, in float64.

The kernel rounds the probabilities P to the input dtype before ``P V`` and ``P^T dy``, and the score
gradients dS before ``dS K`` (as flash attention does); the PyTorch reference keeps them in float32
and rounds only its outputs. This tool runs the op's forward and backward written out in float64 on
16-bit-representable inputs, once exactly and once with those roundings emulated (round to bf16 and
back), and prints the relative error of y, dk and dv beside the error of rounding the exact results
to bf16 (what every path stores). Keys follow the model: a random walk over time, L2-normalised and
scaled by the bandwidth ``--betas``.

Usage: python -m tools.attention_rounding [--shape 2 4 512 64] [--betas 2.7 5 10] [--seed 0]
"""
from __future__ import annotations

import argparse

import torch


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype)


def attention_with_grads(k: torch.Tensor, v: torch.Tensor, dy: torch.Tensor,
                         round_probs: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, dk, dv) of ``y_t = sum_{s<t} softmax_s(k_t . k_s) v_s`` (y_0 = 0) for the upstream gradient
    dy, in the inputs' dtype, written out as the kernel computes it; ``round_probs`` rounds P and dS to
    bf16 where the kernel rounds them to a 16-bit input dtype. The keys are the queries, so dk collects
    both roles: ``dS K + dS^T K``."""
    T = k.shape[-2]
    s = k @ k.transpose(-1, -2)
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=k.device).tril(-1), float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # row 0 has no key
    w = torch.exp(s - m)
    p = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(k.dtype).tiny)
    p_used = _bf16(p) if round_probs else p
    y = p_used @ v
    dv = p_used.transpose(-1, -2) @ dy
    dp = dy @ v.transpose(-1, -2)
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    ds_used = _bf16(ds) if round_probs else ds
    dk = ds_used @ k + ds_used.transpose(-1, -2) @ k
    return y, dk, dv


def main(argv: list[str] | None = None) -> None:
    """Print one line per bandwidth."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=4, default=[2, 4, 512, 64], metavar=("B", "H", "T", "D"))
    p.add_argument("--betas", type=float, nargs="+", default=[2.7, 5.0, 10.0], help="key norms (the bandwidth)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if min(a.shape) < 1 or min(a.betas) <= 0:
        p.error(f"--shape must be positive and --betas > 0, got {a.shape} and {a.betas}")
    g = torch.Generator().manual_seed(a.seed)
    rel = lambda x, ref: ((x - ref).norm() / ref.norm()).item()  # noqa: E731
    for beta in a.betas:
        walk = torch.randn(*a.shape, generator=g, dtype=torch.float64).cumsum(-2)
        k = _bf16(torch.nn.functional.normalize(walk, dim=-1) * beta)
        v = _bf16(torch.nn.functional.normalize(torch.randn(*a.shape, generator=g, dtype=torch.float64), dim=-1))
        dy = _bf16(1e-2 * torch.randn(*a.shape, generator=g, dtype=torch.float64))
        exact = attention_with_grads(k, v, dy)
        rounded = attention_with_grads(k, v, dy, round_probs=True)
        inside = " ".join(f"{n} {rel(r, e):.2e}" for n, r, e in zip(("y", "dk", "dv"), rounded, exact))
        stored = " ".join(f"{n} {rel(_bf16(e), e):.2e}" for n, e in zip(("y", "dk", "dv"), exact))
        print(f"beta {beta:g}: P and dS rounded to bf16: {inside} | exact results stored in bf16: {stored}")


if __name__ == "__main__":
    main()
