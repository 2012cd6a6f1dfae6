"""The persistent memory's dropout generator (_triton_common._hash_uniforms): the kernels' mask is the
documented hash, bit for bit, and that hash is uniform and shows no dependence between neighbouring
slots, rows, heads and seeds.

The statistics run on a NumPy copy of the hash (fast on any CPU), which the first test ties to the
Triton code. Each bound is a multiple of the statistic's standard deviation under independence, so a
correct generator fails with negligible probability and a biased one of the size that matters fails.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mosaic_kernels import persistent_memory
from mosaic_kernels._common import check_hash_counters
from mosaic_kernels._triton_common import dropout_keep_mask, dropout_threshold
from tests.conftest import kernel_devices

_M = np.uint32(0x61C88647)


def _hash32(x):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x21F0AAAD)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x735A2D97)
    return x ^ (x >> np.uint32(15))


def _key(seed: int) -> np.uint32:
    lo, hi = np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32)
    return _hash32(lo ^ _hash32(hi + np.uint32(0x2545F491)))


def uniforms(seed: int, T: int, P: int) -> np.ndarray:
    """(T, P) 16-bit uniforms of one (b, h) stream whose int64 seed is ``seed`` (= drawn seed + b*H + h)."""
    with np.errstate(over="ignore"):
        t = np.arange(T, dtype=np.uint32)[:, None]
        j = np.arange(P, dtype=np.uint32)[None, :]
        x = ((t * (np.uint32(P) * _M) + j * _M) ^ _key(seed)) * np.uint32(0x21F0AAAD)
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x735A2D97)
    return x >> np.uint32(16)


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_mask_is_the_documented_hash(device):
    B, H, T, P, p = 2, 3, 37, 70, 0.3
    seed = 0x1234_5678_9ABC
    keep = dropout_keep_mask(torch.tensor([seed], dtype=torch.int64, device=device), B, H, T, P, p, "hash").cpu()
    want = np.stack([uniforms(seed + bh, T, P) for bh in range(B * H)]).reshape(B, H, T, P)
    assert torch.equal(keep, torch.from_numpy(want >= dropout_threshold(p)))


@pytest.fixture(scope="module")
def streams():
    """8 streams (b*H + h = 0..7) of the model's shape (T = 512, P = 2688): 11 million uniforms, uint32."""
    seed = 0x0F1E_2D3C_4B5A
    return seed, np.stack([uniforms(seed + bh, 512, 2688) for bh in range(8)])


def test_hash_is_uniform(streams):
    _, u = streams
    n = u.size
    # chi-square over 256 bins of the top 8 bits: 255 degrees of freedom, sd sqrt(510) = 22.6; 6 sd.
    counts = np.bincount((u >> 8).ravel(), minlength=256)
    chi2 = ((counts - n / 256) ** 2 / (n / 256)).sum()
    assert chi2 < 255 + 6 * 22.6, chi2
    # The rate at the model's p = 0.05 (threshold 3277/65536): binomial sd sqrt(q (1 - q) / n).
    q = dropout_threshold(0.05) / 2 ** 16
    rate = (u < dropout_threshold(0.05)).mean()
    assert abs(rate - q) < 6 * (q * (1 - q) / n) ** 0.5, rate


def _pairs(u, other):
    """Pairs that one (b, h) row, slot grid and seed can put side by side."""
    return {"slot j+1": (u[..., :-1], u[..., 1:]), "slot j+8": (u[..., :-8], u[..., 8:]),
            "row t+1": (u[:, :-1], u[:, 1:]), "head bh+1": (u[:-1], u[1:]),
            "row t+1, slot j-1": (u[:, :-1, 1:], u[:, 1:, :-1]), "seed+1": (u, other)}


def test_hash_neighbours_independent(streams):
    seed, u = streams
    # Another seed far from this one (stream keys are seed + b*H + h, so seed + 1 is the next head).
    other = np.stack([uniforms(seed + 1_000_003 + bh, 512, 2688) for bh in range(8)])
    thr = dropout_threshold(0.05)
    q = thr / 2 ** 16
    for name, (a, b) in _pairs(u, other).items():
        n = a.size
        # Both dropped at p = 0.05 should happen at rate q^2: binomial sd; 6 sd (about 4% of q^2 here).
        both = ((a < thr) & (b < thr)).mean()
        assert abs(both - q * q) < 6 * (q * q * (1 - q * q) / n) ** 0.5, (name, both / q ** 2)
        # Pearson correlation of two independent uniforms: sd 1/sqrt(n); 6 sd.
        a = a.ravel().astype(np.float64) - 32767.5
        b = b.ravel().astype(np.float64) - 32767.5
        r = (a @ b) / np.sqrt((a @ a) * (b @ b))
        assert abs(r) < 6 / n ** 0.5, (name, r)


def test_hash_counter_limit():
    check_hash_counters(2 ** 16, 2 ** 16, 0.1)  # t * P + j < 2^32: every counter distinct
    check_hash_counters(2 ** 30, 2 ** 10, 0.0)  # no dropout, no counters
    with pytest.raises(ValueError, match=r"T \* slots <= 2\^32"):
        check_hash_counters(2 ** 22, 1025, 0.1)


@pytest.mark.parametrize("device", kernel_devices())
def test_op_rejects_too_many_counters(device):
    q = torch.zeros(1, 1, 1, 16, device=device).expand(1, 1, 2 ** 22, 16)  # a view: nothing allocated
    slots = torch.zeros(1, 1025, 16, device=device)
    with pytest.raises(ValueError, match=r"T \* slots <= 2\^32"):
        persistent_memory(q, slots, slots, dropout_p=0.1)
