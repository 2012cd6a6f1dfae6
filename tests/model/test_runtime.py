"""mosaic_model.runtime.to_device: a batch's copy to the GPU that does not make the host wait."""
from __future__ import annotations

import pytest
import torch

from mosaic_model.runtime import to_device


def test_no_device_or_the_same_device_returns_the_tensor_itself():
    t = torch.arange(6).view(2, 3)
    assert to_device(t, None) is t
    assert to_device(t, "cpu") is t and to_device(t, torch.device("cpu")) is t


@pytest.mark.gpu
def test_a_cpu_batch_reaches_the_gpu_intact_behind_queued_work():
    # The copy is non-blocking from pinned memory: it must still land before a kernel queued after it reads it,
    # even while a long kernel queued before it is running.
    big = torch.randn(4096, 4096, device="cuda")
    x = torch.randint(0, 50_000, (16, 513))
    torch.cuda.synchronize()
    busy = big @ big                                     # queued first: the copy is ordered after it
    y = to_device(x, "cuda")
    assert y.is_cuda and torch.equal(y.cpu(), x)
    assert to_device(y, "cuda") is y
    del busy
