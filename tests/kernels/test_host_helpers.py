"""The host-side integer helpers that stand in for ``triton.cdiv`` and ``triton.next_power_of_2`` (whose
calls cost microseconds of host time in recent Triton) give Triton's results."""
from __future__ import annotations

import triton

from mosaic_kernels._common import cdiv, next_power_of_2


def test_cdiv_and_next_power_of_2_match_triton():
    for n in range(1, 2 ** 12 + 3):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 2, 3, 8, 16, 64, 127, 128):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)
    assert next_power_of_2(2 ** 20 + 1) == 2 ** 21 and cdiv(2 ** 31, 8) == 2 ** 28
