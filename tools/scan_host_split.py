"""Where the host time of an eager leaky-average call goes: each launch issued directly from the main
thread, beside the same work through autograd (whose backward runs on its device thread), each with
Triton's launches live and stubbed out, and an empty ``autograd.Function`` on the same inputs (the floor
of any eager op).

``benchmarks.host_cost`` splits a whole eager call into our wrapper and Triton's launcher; on the H200
machine the launcher part of the scan's forward+backward came to 385 us for two launches, against 47 us
for the forward's one. This tool tells whether that is the backward launch itself or running it from
autograd's thread.

Usage: python -m tools.scan_host_split [--shape 16,12,512,64]
Prints host microseconds per call (median of groups of calls issued back to back between two syncs).
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.host_cost import _shape, issue_us, stubbed_launches


class _Empty(torch.autograd.Function):
    """The floor: an autograd node that returns its input and passes the gradient through."""

    @staticmethod
    def forward(ctx, x, a, s):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g, None, None


def rows(shape: tuple[int, int, int, int], device: str = "cuda") -> list[tuple[str, bool, object]]:
    """(label, needs autograd, no-argument call) for each measured path, inputs built once with the model's
    settings (bf16 on CUDA; the CPU, under Triton's interpreter, is for tests and runs float32)."""
    from mosaic_kernels import leaky_average
    from mosaic_kernels.leaky_average import function as fn

    B, H, T, D = shape
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.randn(B, T, H, D, device=device, dtype=dtype).transpose(1, 2).requires_grad_()
    a = torch.full((H,), 0.9, device=device, requires_grad=True)
    s = torch.full((H,), 2.0, device=device, requires_grad=True)
    gy = torch.ones(B, H, T, D, device=device, dtype=dtype)
    with torch.no_grad():
        y, norm = fn._launch_forward(x, a, s, True, 1e-12, 0, False)

    def autograd_call(op):
        return lambda: torch.autograd.grad(op(), (x, a, s), gy, allow_unused=True)

    return [
        ("forward launch, main thread", False, lambda: fn._launch_forward(x, a, s, True, 1e-12, 0, False)),
        ("backward launch, main thread", False, lambda: fn._launch_backward(gy, y, norm, a, s, True, 1e-12, 0, True)),
        ("fwd+bwd through autograd", True, autograd_call(lambda: leaky_average(x, a, normalize=True, scale=s))),
        ("empty autograd.Function fwd+bwd", True, autograd_call(lambda: _Empty.apply(x, a, s))),
    ]


def main(argv: list[str] | None = None) -> None:
    """Print one line per path: host us with Triton's launches live, with them stubbed, and the difference."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=_shape, default=(16, 12, 512, 64), help="B,H,T,D")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("--shape: this tool times CUDA launches and needs a GPU")
    print(torch.__version__, torch.cuda.get_device_name(), "shape", a.shape)
    for label, needs_grad, call in rows(a.shape):
        with torch.enable_grad() if needs_grad else torch.no_grad():
            live = issue_us(call, calls=20, reps=15)
            with stubbed_launches():
                stub = issue_us(call, calls=20, reps=15)
        print(f"{label:<34} live {live:7.1f} us | launches stubbed {stub:7.1f} us | launches {live - stub:7.1f} us",
              flush=True)


if __name__ == "__main__":
    main()
