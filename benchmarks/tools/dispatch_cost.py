"""Host time of one op call: through the registered custom op (what torch.compile's code calls) and
through the direct launches (what the eager autograd.Function calls). 200 calls without a sync, no
grad, (2, 12, 8192, 64) bf16 on CUDA; prints microseconds per call.

Usage: python -m benchmarks.tools.dispatch_cost

(The host cost of a whole eager call, forward and backward, split into our wrapper and Triton's
launcher, is `python -m benchmarks.host_cost`.)
"""
from __future__ import annotations

import torch

from benchmarks.host_cost import issue_us
from mosaic_kernels.attention import function as attention_fn
from mosaic_kernels.leaky_average import function as leaky_fn


def main() -> None:
    """Print the host microseconds per call of each row."""
    x = torch.randn(2, 8192, 12, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)  # a head split
    a, s = torch.rand(12, device="cuda"), torch.rand(12, device="cuda") + 1
    k, v = x.contiguous(), torch.randn(2, 12, 8192, 64, device="cuda", dtype=torch.bfloat16)
    rows = [
        ("leaky_average fwd, custom op", lambda: leaky_fn.leaky_average_fwd(x, a, s, True, 1e-12, 0, True, None)),
        ("leaky_average fwd, direct", lambda: leaky_fn._launch_forward(x, a, s, True, 1e-12, 0, True)),
        ("mosaic_attention fwd, custom op", lambda: attention_fn.attention_fwd(k, v, s, True, s, 0, -1, 1, None, 0)),
        ("mosaic_attention fwd, direct", lambda: attention_fn.attention_forward(k, v, s, heads_last=True)),
        ("two torch.empty", lambda: (torch.empty(2, 12, 8192, 64, device="cuda"), torch.empty(24, device="cuda"))),
    ]
    with torch.no_grad():
        for name, fn in rows:
            print(f"{name:<34} {issue_us(fn, calls=200, reps=1, warmup=5):8.1f} us")


if __name__ == "__main__":
    main()
