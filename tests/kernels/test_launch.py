"""``_triton_common.launch``: a config that needs more shared memory than the GPU has is retried with
fewer pipeline stages, remembered, and gives the same results bitwise."""
from __future__ import annotations

import pytest
import torch
from triton.runtime.errors import OutOfResources

from mosaic_kernels import _triton_common
from mosaic_kernels._triton_common import launch


class _FakeKernel:
    """Stands for a Triton kernel whose configs need ``per_stage`` bytes of shared memory a stage, on a
    GPU of ``limit`` bytes; records the settings of every launch tried."""

    def __init__(self, per_stage: int, limit: int, resource: str = "shared memory"):
        self.per_stage, self.limit, self.resource, self.tries = per_stage, limit, resource, []

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.tries.append(meta["num_stages"])
            if meta["num_stages"] * self.per_stage > self.limit:
                raise OutOfResources(meta["num_stages"] * self.per_stage, self.limit, self.resource)
        return run


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    monkeypatch.setattr(_triton_common, "_FITTED_STAGES", {})


def test_fewer_stages_until_it_fits_then_remembered():
    kernel = _FakeKernel(per_stage=64, limit=150)
    launch(kernel, (1,), BLOCK=64, num_stages=4)
    assert kernel.tries == [4, 3, 2]
    launch(kernel, (1,), BLOCK=64, num_stages=4)  # the fitted depth directly: no failing try again
    assert kernel.tries == [4, 3, 2, 2]
    launch(kernel, (1,), BLOCK=32, num_stages=2)  # another config is its own entry, and fits as tuned
    assert kernel.tries == [4, 3, 2, 2, 2]


def test_a_config_that_fits_is_launched_as_tuned():
    kernel = _FakeKernel(per_stage=10, limit=150)
    launch(kernel, (1,), num_stages=3)
    assert kernel.tries == [3] and not _triton_common._FITTED_STAGES


def test_other_resources_and_one_stage_too_many_raise():
    with pytest.raises(OutOfResources):  # one stage does not fit either: the error reaches the caller
        launch(_FakeKernel(per_stage=200, limit=150), (1,), num_stages=3)
    registers = _FakeKernel(per_stage=64, limit=100, resource="registers")
    with pytest.raises(OutOfResources):  # fewer stages would not cure it: not retried
        launch(registers, (1,), num_stages=4)
    assert registers.tries == [4]


@pytest.mark.gpu
def test_gpu_stages_do_not_change_results():
    """A forward tile of 8 stages at D = 128 (8 x 64 keys x 128 x 2 bytes for keys and values, 256 KiB)
    cannot fit an H200's 227 KiB: it runs with fewer, and equals the 1-stage run bitwise, since the
    stages pipeline the loads and change neither the tiles nor the order of any sum."""
    from mosaic_kernels.attention.function import attention_forward

    k = torch.randn(2, 3, 1000, 128, device="cuda", dtype=torch.bfloat16) * 0.3
    v = torch.randn_like(k)
    scale = torch.full((3,), 0.5, device="cuda")
    tile = dict(BLOCK_M=64, BLOCK_N=64, num_warps=4)
    y8, lse8 = attention_forward(k, v, scale, dict(tile, num_stages=8))
    fitted = list(_triton_common._FITTED_STAGES.values())
    assert fitted and fitted[0] < 8, "8 stages fitted: the test needs a config that does not"
    y1, lse1 = attention_forward(k, v, scale, dict(tile, num_stages=1))
    assert torch.equal(y8, y1) and torch.equal(lse8, lse1)
