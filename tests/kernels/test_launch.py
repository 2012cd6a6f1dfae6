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


# ---- direct launches: the compiled kernel launched again without Triton's binding, for the same key ----

def _jit_function():
    """A real JITFunction (whatever TRITON_INTERPRET says: the direct path only takes JITFunctions)."""
    from triton.runtime.jit import JITFunction

    def kernel(X, n, flag, BLOCK: "tl.constexpr", MODE: "tl.constexpr" = "a"):  # noqa: F821 (never compiled)
        pass

    return JITFunction(kernel)


class _FakeCompiled:
    """Stands for Triton's CompiledKernel: records each direct launch (grid, every argument, stream)."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        # Triton's CompiledKernel launcher reads grid[0], grid[1] and grid[2]: a shorter grid fails there.
        return lambda *args, stream=None: self.launches.append(((grid[0], grid[1], grid[2]), args, stream))


@pytest.fixture
def direct_launches(monkeypatch):
    """A fake driver (device 0, stream 77) and a kernel whose Triton path returns a fake compiled kernel."""
    monkeypatch.setattr(_triton_common, "DIRECT_LAUNCH", True)
    monkeypatch.setattr(_triton_common, "_COMPILED", {})
    monkeypatch.setattr(_triton_common, "_RUNTIME", [lambda: 0, lambda device: 77])
    kernel, compiled, triton_path = _jit_function(), _FakeCompiled(), []

    def run(*args, grid, warmup, **meta):
        triton_path.append((grid, args, meta))
        return compiled
    monkeypatch.setattr(kernel, "run", run)
    return kernel, compiled, triton_path


def test_same_key_launches_the_compiled_kernel_directly(direct_launches):
    kernel, compiled, triton_path = direct_launches
    x = torch.zeros(64)
    launch(kernel, (4,), x, 3, True, BLOCK=16, num_warps=4)
    assert len(triton_path) == 1 and not compiled.launches
    launch(kernel, (2, 5), x, 3, True, BLOCK=16, num_warps=4)
    # every parameter in signature order, the constexprs and defaults after the positional ones
    assert compiled.launches == [((2, 5, 1), (x, 3, True, 16, "a"), 77)]  # the grid padded to three sizes
    assert len(triton_path) == 1


def test_any_change_of_specialisation_goes_through_triton(direct_launches):
    kernel, compiled, triton_path = direct_launches
    x = torch.zeros(64)
    launch(kernel, (1,), x, 32, True, BLOCK=16)
    for args, meta in (((x[1:], 32, True), dict(BLOCK=16)),          # address 4 bytes off: alignment differs
                       ((x.half(), 32, True), dict(BLOCK=16)),       # dtype
                       ((x, 33, True), dict(BLOCK=16)),              # an integer's value (divisibility)
                       ((x, 32, False), dict(BLOCK=16)),             # a bool's value
                       ((x, 32, True), dict(BLOCK=32)),              # a constexpr
                       ((x, 32, True), dict(BLOCK=16, MODE="b"))):   # a constexpr left at its default before
        n = len(triton_path)
        launch(kernel, (1,), *args, **meta)
        assert len(triton_path) == n + 1, (args, meta)
    assert not compiled.launches


def test_launch_key_tells_meta_names_apart():
    x = torch.zeros(4)
    k = _jit_function()
    assert _triton_common.launch_key(k, 0, (x,), dict(A=1, B=2)) != _triton_common.launch_key(k, 0, (x,), dict(B=1, A=2))
    assert _triton_common.launch_key(k, 0, (x, 1.5), {}) == _triton_common.launch_key(k, 0, (x, 2.5), {})  # fp32, any value
    assert _triton_common.launch_key(k, 0, (x,), {}) != _triton_common.launch_key(k, 1, (x,), {})  # the device


def test_switched_off_or_stubbed_the_triton_path_runs(direct_launches, monkeypatch):
    kernel, compiled, triton_path = direct_launches
    x = torch.zeros(64)
    launch(kernel, (1,), x, 3, True, BLOCK=16)
    monkeypatch.setattr(_triton_common, "DIRECT_LAUNCH", False)
    launch(kernel, (1,), x, 3, True, BLOCK=16)
    assert len(triton_path) == 2 and not compiled.launches
    monkeypatch.setattr(_triton_common, "DIRECT_LAUNCH", True)
    monkeypatch.setattr(_triton_common, "_COMPILED", {})
    monkeypatch.setattr(kernel, "run", lambda *a, **k: None)  # a stubbed launcher returns nothing: nothing cached
    launch(kernel, (1,), x, 3, True, BLOCK=16)
    assert _triton_common._COMPILED == {}


@pytest.mark.gpu
def test_gpu_direct_launches_give_triton_paths_results_bitwise(monkeypatch):
    """Every op's forward and backward, once through Triton's launch and twice more through the direct one
    (the second call hits the cache): the same bits, so the direct path hands the compiled kernels the
    arguments Triton's path would."""
    import mosaic_kernels as mk

    g = torch.Generator(device="cuda").manual_seed(0)
    B, H, T, D = 2, 3, 200, 64

    def rand(*shape):
        return torch.randn(*shape, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()

    k, v, keys, vals = rand(B, H, T, D), rand(B, H, T, D), rand(H, 40, D), rand(H, 40, D)
    decay = torch.full((H,), 0.9, device="cuda", requires_grad=True)
    scale = torch.full((H,), 2.0, device="cuda", requires_grad=True)
    inputs = (k, v, keys, vals, decay, scale)

    def step():
        out = (mk.mosaic_attention(k * 0.2, v, window=50, delay=torch.tensor([3, 9], device="cuda"))
               + mk.mosaic_attention(k * 0.2, v, scale)
               + mk.leaky_average(k, decay, normalize=True, scale=scale)
               + mk.peek_ahead_value(v, decay, scale=scale)
               + mk.persistent_memory(k * 0.2, keys, vals, out_scale=scale))
        return (out, *torch.autograd.grad(out.float().square().sum(), inputs))

    monkeypatch.setattr(_triton_common, "DIRECT_LAUNCH", False)
    through_triton = step()
    monkeypatch.setattr(_triton_common, "DIRECT_LAUNCH", True)
    monkeypatch.setattr(_triton_common, "_COMPILED", {})
    first, second = step(), step()
    assert len(_triton_common._COMPILED) >= 10  # the direct path was taken (a key per distinct launch)
    for a, b, c in zip(through_triton, first, second):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.gpu
def test_gpu_direct_launches_inside_a_cuda_graph_replay_the_eager_results(monkeypatch):
    """`mosaic-train --cuda-graph` captures a step whose launches hit the direct cache (filled by the eager
    warm-up steps): the captured launches must go to the capture's stream, and a replay on new inputs must
    give what an eager call gives on them, bitwise."""
    import mosaic_kernels as mk

    monkeypatch.setattr(_triton_common, "DIRECT_LAUNCH", True)
    g = torch.Generator(device="cuda").manual_seed(1)
    B, H, T, D = 2, 3, 300, 64
    k = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    v = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    decay = torch.full((H,), 0.9, device="cuda", requires_grad=True)

    def step():
        out = mk.mosaic_attention(k * 0.2, v) + mk.leaky_average(k, decay, normalize=True)
        return (out, *torch.autograd.grad(out.float().square().sum(), (k, v, decay)))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graphs asks
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    assert _triton_common._COMPILED  # the capture below launches from the cache
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():  # new inputs in the captured buffers
        k.copy_(torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=g))
        v.copy_(torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=g))
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, step()):
        assert torch.equal(a, b)
