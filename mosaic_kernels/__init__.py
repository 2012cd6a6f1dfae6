"""mosaic_kernels: fused Triton ops for Memory Mosaics, with exact PyTorch references.

Public API:
    mosaic_attention(k, v, scale=None, *, window=None, delay=1, dropout_p=0.0, generator=None, heads_last=False)
        scale None, float, (H,) or per row (H, T) / (B, H, T); keys t - window <= j <= t - delay
    leaky_average(x, decay, *, normalize=False, scale=None, eps=1e-12, gate=None, heads_last=False)
        decay (H,), (B, H, T) or (B, H, T, D); gate None or (B, H, T)
    peek_ahead_value(x, mix, *, scale=None, eps=1e-12)
    persistent_memory(q, slot_keys, slot_values, *, out_scale=None, dropout_p=0.0, generator=None)
    reference: the same functions, always the PyTorch reference (no heads_last: contiguous outputs).

Helpers of Memory Mosaics v2, in the ops' packages: ``attention.row_bandwidth`` (the per-row scale
beta(n) = beta1 n^alpha + beta0 of a band), ``attention.band_table`` (one band per sequence and head, for
heads of different bands in one call) and ``leaky_average.stable_gate_and_decay`` (gates beyond float32's
range for the scan; v2's decays exp(-|r + b|) formed in its kernel with ``rate_bias``).

``heads_last=True`` returns a (B, H, T, D) view of (B, T, H, D) memory, so that merging the heads
before a projection is a view. The maths of each op is in its folder's README.md; the model they
serve is in docs/MODEL.md.
"""
from . import reference
from .attention import mosaic_attention
from .leaky_average import leaky_average
from .peek_ahead import peek_ahead_value
from .persistent_memory import persistent_memory

__all__ = ["mosaic_attention", "leaky_average", "peek_ahead_value", "persistent_memory", "reference"]
__version__ = "0.1.0"
