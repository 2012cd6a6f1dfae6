"""Memory Mosaics v2: the model's memories against plain float64 loops, causality, the delay's draw, extreme gates."""
from __future__ import annotations

import math

import pytest
import torch

from mosaic_kernels._common import interpreter_enabled
from mosaic_model.models.config import ConfigError, MosaicV2Config
from mosaic_model.models.mosaic_v2 import AssociativeMemory, MemoryMosaicV2
from tests import tolerances
from tests.conftest import rel_err

SMALL = dict(n_layer=2, n_head=2, n_embd=16, vocab_size=40, window=4, delay_min=2, delay_max=5, delay_eval=3,
             kernels="reference")


@torch.no_grad()
def loop_memory(mem: AssociativeMemory, x: torch.Tensor, delay: int) -> torch.Tensor:
    """The memory's output (B, H, T, hs) written as the maths reads, one row at a time, in float64."""
    c = mem.config
    B, T, d = x.shape
    H, hs = c.n_head, c.head_size
    key, val = mem.key, mem.value
    W_k, W_v = key.W_k.weight.double(), val.W_v.weight.double()
    out = torch.zeros(B, H, T, hs, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            rows = slice(h * hs, (h + 1) * hs)
            kbar, keys, vals = torch.zeros(hs, dtype=torch.float64), [], []
            for t in range(T):
                xt = x[b, t].double()
                if c.gated_keys:
                    g = math.exp(float(key.W_g.weight[h].double() @ xt))
                    lam = math.exp(-abs(float(key.W_l.weight[h].double() @ xt + key.rate_bias[h].double())))
                else:
                    g, lam = 1.0, math.exp(-abs(float(key.rate_bias[h])))
                kbar = g * (W_k[rows] @ xt) + lam * kbar
                keys.append(kbar / kbar.norm())
            for t in range(T):
                nxt = W_v[rows] @ x[b, t + 1].double() if t + 1 < T else torch.zeros(hs, dtype=torch.float64)
                mix = float(val.mix[h])
                u = (1 - mix) * nxt + mix * (W_v[rows] @ x[b, t].double())
                vals.append(math.exp(10 * float(val.value_scale[h])) * u / u.norm())
            bw = mem.bandwidth
            for t in range(T):
                lo, hi = (t - c.window, t - 1) if not mem.long_term else (0, t - delay)
                seen = [j for j in range(max(lo, 0), hi + 1)]
                if not seen:
                    continue
                n = len(seen)
                if c.adaptive_bandwidth:
                    b0 = math.log1p(math.exp(float(bw.beta0[h])))
                    b1 = math.log1p(math.exp(float(bw.beta1[h])))
                    a = 1 / (1 + math.exp(-float(bw.alpha[h])))
                    beta = b1 * n ** a + b0
                else:
                    beta = math.exp(float(bw.log_beta[h]))
                logits = torch.stack([beta * (keys[t] @ keys[j]) for j in seen])
                w = torch.softmax(logits, 0)
                out[b, h, t] = sum(wj * vals[j] for wj, j in zip(w, seen))
    return out


@pytest.mark.parametrize("long_term", [False, True], ids=["short", "long"])
@pytest.mark.parametrize("gated,adaptive", [(True, True), (False, False)], ids=["v2", "v1-keys-fixed-bandwidth"])
def test_memory_matches_a_plain_loop(long_term, gated, adaptive):
    torch.manual_seed(0)
    cfg = MosaicV2Config(**SMALL, gated_keys=gated, adaptive_bandwidth=adaptive)
    mem = AssociativeMemory(cfg, long_term=long_term).double()
    with torch.no_grad():  # gates and decays away from their initial values, so that both matter
        if gated:
            mem.key.W_g.weight.normal_(0, 0.5)
            mem.key.W_l.weight.normal_(0, 0.5)
        if adaptive:
            mem.bandwidth.alpha.fill_(0.7)
    x = torch.randn(2, 11, cfg.n_embd, dtype=torch.float64)
    got = mem(x, 3)
    # float64 on both sides; the model scans with float32 gates and decays (stable_gate_and_decay rounds
    # its exponentials to float32: relative 6e-8 per factor, compounding over at most T = 11 steps), so
    # keys and weights agree to ~1e-6 relative; outputs are O(e^-0.5) in size.
    torch.testing.assert_close(got, loop_memory(mem, x, 3), atol=1e-5, rtol=1e-5)


def test_per_sequence_delays_equal_one_call_per_sequence():
    torch.manual_seed(1)
    mem = AssociativeMemory(MosaicV2Config(**SMALL), long_term=True).double()
    x = torch.randn(3, 12, 16, dtype=torch.float64)
    delays = torch.tensor([2, 5, 3])
    together = mem(x, delays)
    for b in range(3):
        torch.testing.assert_close(together[b:b + 1], mem(x[b:b + 1], int(delays[b])), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kernels", ["reference", "fused"])
@pytest.mark.parametrize("gated,adaptive", [(True, True), (False, False)], ids=["v2", "v1-keys-fixed-bandwidth"])
def test_block_reads_both_memories_as_one_of_2h_heads(kernels, gated, adaptive):
    """The block runs its two memories as one memory of 2H heads (one launch per op): its output is the
    short-term memory's heads then the long-term memory's, each as the memory alone computes it (float64,
    per-sequence delays; on the fused ops under the interpreter, float32 against each memory's own fused
    call: the same per-head arithmetic, to float32 rounding, FP32)."""
    if kernels == "fused" and not interpreter_enabled():
        pytest.skip("needs TRITON_INTERPRET=1 on CPU for the fused ops")
    from mosaic_model.models.mosaic_v2 import MosaicV2Block, band_table_of

    torch.manual_seed(9)
    cfg = MosaicV2Config(**{**SMALL, "kernels": kernels}, gated_keys=gated, adaptive_bandwidth=adaptive)
    dtype = torch.float64 if kernels == "reference" else torch.float32
    block = MosaicV2Block(cfg).to(dtype)
    with torch.no_grad():
        for mem in (block.short, block.long):
            if gated:
                mem.key.W_g.weight.normal_(0, 0.5)
                mem.key.W_l.weight.normal_(0, 0.5)
            if adaptive:
                mem.bandwidth.alpha.uniform_(-1, 1)
    h = torch.randn(3, 13, cfg.n_embd, dtype=dtype)
    delays = torch.tensor([2, 5, 3])
    both = block.read_memories(h, band_table_of(cfg, 3, 13, delays, h.device))
    apart = torch.cat([block.short(h, delays), block.long(h, delays)], dim=1)
    if kernels == "reference":
        torch.testing.assert_close(both, apart, atol=1e-12, rtol=0)
    else:
        assert rel_err(both, apart) <= tolerances.FP32


def test_the_model_is_causal_and_runs_past_its_block_size():
    torch.manual_seed(2)
    model = MemoryMosaicV2(MosaicV2Config(**SMALL, block_size=8)).double().eval()
    idx = torch.randint(0, 40, (2, 24))  # three times the block size: no position encoding to run out of
    changed = idx.clone()
    changed[:, 15] = (changed[:, 15] + 1) % 40
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :15], b[:, :15], atol=0, rtol=0)  # positions before 15 never read it
    assert (a[:, 15:] - b[:, 15:]).abs().amax() > 1e-6


def test_a_delay_past_the_context_empties_the_long_term_memory():
    """delay >= T (the new-knowledge study's ablation passes 10**9; the band table holds int32) reads no
    long-term key: the same logits as delay T, and different from the model's own delay."""
    torch.manual_seed(10)
    model = MemoryMosaicV2(MosaicV2Config(**SMALL)).double().eval()
    idx = torch.randint(0, 40, (2, 12))
    none = model(idx, delay=12)[0]
    assert torch.equal(model(idx, delay=10**12)[0], none)
    assert (model(idx)[0] - none).abs().amax() > 1e-6


def test_delays_drawn_in_training_fixed_in_eval():
    model = MemoryMosaicV2(MosaicV2Config(**SMALL))
    torch.manual_seed(3)
    drawn = torch.cat([model.delays(64, torch.device("cpu")) for _ in range(20)])
    assert drawn.min() == 2 and drawn.max() == 5  # every value of [delay_min, delay_max] reachable
    assert model.eval().delays(4, torch.device("cpu")) == 3


def test_extreme_gates_stay_finite():
    torch.manual_seed(4)
    model = MemoryMosaicV2(MosaicV2Config(**SMALL))
    with torch.no_grad():
        for block in model.blocks:
            for mem in (block.short, block.long):
                mem.key.W_g.weight.normal_(0, 200.0)  # log-gates of several hundred: exp() overflows float32
    idx = torch.randint(0, 40, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("field,value", [("delay_max", 1), ("window", 0), ("n_head", 3), ("kernels", "x"),
                                         ("mlp_hidden", 0), ("dropout", 1.0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError) as e:
        MosaicV2Config(**{**SMALL, field: value})
    assert e.value.field in (field, "n_embd")


@pytest.mark.parametrize("gated,adaptive", [(True, True), (False, False)], ids=["v2", "v1-keys-fixed-bandwidth"])
def test_cached_decoding_gives_the_forward_logits_with_a_bounded_window_cache(gated, adaptive):
    torch.manual_seed(5)
    model = MemoryMosaicV2(MosaicV2Config(**SMALL, gated_keys=gated, adaptive_bandwidth=adaptive)).double().eval()
    with torch.no_grad():
        for block in model.blocks:
            for mem in (block.short, block.long):
                if gated:
                    mem.key.W_g.weight.normal_(0, 0.5)
                    mem.key.W_l.weight.normal_(0, 0.5)
    idx = torch.randint(0, 40, (2, 14))
    cache = {}
    with torch.no_grad():
        rows = torch.stack([model.decode_step(idx[:, t], cache) for t in range(14)], dim=1)
    # float64 both ways; the forward's scan takes float32 gates and decays from stable_gate_and_decay
    # (relative 6e-8 per factor), the decoding step float64 ones: logits of size O(1) agree to ~1e-8.
    torch.testing.assert_close(rows, model(idx)[0], atol=1e-6, rtol=1e-6)
    window = SMALL["window"]
    assert cache[0]["short"]["K"].shape[2] == window and cache[0]["short"]["V"].shape[2] == window - 1
    assert cache[0]["long"]["K"].shape[2] == 14  # the long-term memory keeps every key


def test_generate_gives_the_uncached_tokens():
    torch.manual_seed(6)
    model = MemoryMosaicV2(MosaicV2Config(**SMALL, block_size=32))
    prompt = torch.randint(0, 40, (2, 5))
    cached = model.generate(prompt, 8, temperature=0)
    assert torch.equal(cached, model.generate(prompt, 8, temperature=0, use_cache=False))
    assert cached.shape == (2, 13) and torch.equal(cached[:, :5], prompt)


@pytest.mark.skipif(not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 on CPU (else both paths run the references)")
def test_fused_and_reference_paths_agree():
    torch.manual_seed(7)
    model = MemoryMosaicV2(MosaicV2Config(**{**SMALL, "kernels": "fused"}))
    with torch.no_grad():  # gates and decays away from their initial values
        for block in model.blocks:
            for mem in (block.short, block.long):
                mem.key.W_g.weight.normal_(0, 0.5)
                mem.key.W_l.weight.normal_(0, 0.5)
    idx = torch.randint(0, 40, (2, 21))
    delays = torch.tensor([2, 5])
    results = {}
    for kernels in ("reference", "fused"):
        model.config.kernels = kernels
        model.zero_grad()
        logits, loss = model(idx, idx, delay=delays)
        loss.backward()
        results[kernels] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (l_ref, g_ref), (l_f, g_f) = results["reference"], results["fused"]
    # float32 ops chained through two blocks as in v1's test (tests/tolerances.py FP32, FP32_CHAINED).
    assert rel_err(l_f, l_ref) < tolerances.FP32
    for name in g_ref:
        assert rel_err(g_f[name], g_ref[name]) < tolerances.FP32_CHAINED, name


@pytest.mark.skipif(not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 on CPU (else no path launches Triton)")
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_reference_path_launches_no_triton_kernel(version, monkeypatch):
    """kernels="reference" runs PyTorch references only, the gates of v2's keys included (they went through the
    fused gate kernel on every path until 2026-12-07): under the interpreter, where the fused path launches
    Triton kernels on the CPU, a forward and backward of the reference path launch none."""
    from triton.runtime.interpreter import InterpretedFunction

    from mosaic_model.models.config import MosaicConfig
    from mosaic_model.models.mosaic import MemoryMosaic

    def refuse(*args, **kwargs):
        raise AssertionError("a Triton kernel was launched on the reference path")

    torch.manual_seed(3)
    if version == "v2":
        model = MemoryMosaicV2(MosaicV2Config(**{**SMALL, "kernels": "reference"}))
        kwargs = {"delay": torch.tensor([2, 5])}
    else:
        model = MemoryMosaic(MosaicConfig(n_layer=2, n_head=2, n_embd=16, block_size=24, vocab_size=40,
                                          kernels="reference"))
        kwargs = {}
    idx = torch.randint(0, 40, (2, 21))
    monkeypatch.setattr(InterpretedFunction, "run", refuse)
    _, loss = model(idx, idx, **kwargs)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_compiles_as_one_graph():
    """torch.compile(fullgraph=True) of the whole model (the band attention and the gated scan are custom ops,
    stable_gate_and_decay plain tensor code) gives the eager logits; float32 on both sides, so the
    compiler's fusions leave only rounding (tolerances.FP32)."""
    torch.manual_seed(8)
    model = MemoryMosaicV2(MosaicV2Config(**{**SMALL, "n_layer": 1})).eval()
    idx = torch.randint(0, 40, (2, 12))
    compiled = torch.compile(model, fullgraph=True)
    assert rel_err(compiled(idx)[0], model(idx)[0]) < tolerances.FP32


def test_compiled_training_step_gives_the_eager_gradients():
    """The compiled training step (forward and backward through torch.compile(fullgraph=True): the projections'
    autograd Function whose backward sums one product per output group, the custom ops) gives the eager loss and
    gradients. float32, one block: the compiler's fusions and its order of the gradient products leave
    rounding only, a few chained products deep (tolerances.FP32_CHAINED)."""
    torch.manual_seed(8)
    model = MemoryMosaicV2(MosaicV2Config(**{**SMALL, "n_layer": 1}))
    idx = torch.randint(0, 40, (2, 12))
    delay = torch.tensor([2, 3], dtype=torch.int32)
    compiled = torch.compile(model, fullgraph=True)
    results = []
    for m in (compiled, model):
        model.zero_grad(set_to_none=True)
        _, loss = m(idx, idx, delay=delay)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_c, grads_c), (loss_e, grads_e) = results
    assert rel_err(loss_c, loss_e) < tolerances.FP32
    for name, g in grads_e.items():
        assert rel_err(grads_c[name], g) < tolerances.FP32_CHAINED, name


@pytest.mark.gpu
@pytest.mark.parametrize("T", [256, 2048])
def test_gpu_fused_matches_reference(T):
    """On the GPU, the fused v2 model (Triton band attention and gated scan, both memories as one call of 2H
    heads) against its reference path: float32 to tolerances.FP32 / FP32_CHAINED as on the CPU, and under bf16
    autocast to the LOW_PRECISION steps of v1's GPU test (both paths round activations to bf16 at different
    places). T = 2048 takes the attention's long-row plan (two-kernel backward) at head size 32."""
    torch.manual_seed(9)
    model = MemoryMosaicV2(MosaicV2Config(n_layer=2, n_head=4, n_embd=128, vocab_size=64, window=48, delay_min=16,
                                          delay_max=64, delay_eval=16)).cuda()
    idx = torch.randint(0, 64, (4, T), device="cuda")
    delays = torch.tensor([16, 40, 64, 23], device="cuda")
    for autocast, (tol, tol_grad) in ((False, (tolerances.FP32, tolerances.FP32_CHAINED)),
                                      (True, (2 * tolerances.LOW_PRECISION, 5 * tolerances.LOW_PRECISION))):
        out = {}
        for kernels in ("reference", "fused"):
            model.config.kernels = kernels
            model.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                logits, loss = model(idx, idx, delay=delays)
            loss.backward()
            out[kernels] = (logits.float(), {n: p.grad.float().clone() for n, p in model.named_parameters()})
        (l_ref, g_ref), (l_f, g_f) = out["reference"], out["fused"]
        assert rel_err(l_f, l_ref) < tol, autocast
        for name in g_ref:
            assert rel_err(g_f[name], g_ref[name]) < tol_grad, (autocast, name)


@pytest.mark.parametrize("biases", [(False, False, False), (True, False, True)], ids=["no-bias", "mixed-bias"])
@pytest.mark.parametrize("unused", [None, 1], ids=["all-used", "one-unused"])
def test_project_is_each_linear_on_its_own(biases, unused):
    """``project`` (the block's projections as one product) gives each layer's own output and the same
    gradients, with and without biases (a layer without one counts as a zero bias), with an output that gets
    no gradient (zeros for its layer), a wide layer and two narrow ones (gathered for the input gradient).
    float64, inputs of size 1: the stacked product sums the same 24 products per output element in an order
    the GEMM may change (24 * 2^-53 * sum |x||w| < 1e-13), and the input gradient sums the same N = 157
    products per element in groups (N 2^-53 sum |dy||w| with sum |dy||w| ~ 0.64 N = 100: < 2e-12 at worst);
    1e-11 leaves room. The backward gathers no output gradients into one buffer (no cat N columns wide)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from mosaic_model.models.mosaic_v2 import project

    class Cats(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.widths = []  # the width of every cat's output

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket is torch.ops.aten.cat:
                self.widths.append(out.shape[-1])
            return out

    g = torch.Generator().manual_seed(0)
    linears = [torch.nn.Linear(24, n, bias=b, dtype=torch.float64) for n, b in zip((130, 3, 24), biases)]
    for lin in linears:
        torch.nn.init.normal_(lin.weight, generator=g)
        if lin.bias is not None:
            torch.nn.init.normal_(lin.bias, generator=g)
    x = torch.randn(2, 5, 24, dtype=torch.float64, generator=g, requires_grad=True)
    fused = project(x, linears)
    for out, lin in zip(fused, linears):
        torch.testing.assert_close(out, lin(x), rtol=1e-11, atol=1e-11)
    used = [i for i in range(len(linears)) if i != unused]
    grads = [torch.randn(fused[i].shape, dtype=torch.float64, generator=g) for i in used]
    params = [x] + [p for lin in linears for p in lin.parameters()]
    want = torch.autograd.grad([linears[i](x) for i in used], params, grads, allow_unused=True)
    with Cats() as cats:
        got = torch.autograd.grad([fused[i] for i in used], params, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, rtol=1e-11, atol=1e-11)
    assert 157 not in cats.widths, cats.widths


def test_project_under_bf16_autocast_matches_the_layers_own():
    """Under bf16 autocast (the training step's), ``project``'s outputs and gradients against each layer's own
    autocast product. The outputs are the same bf16 products (one rounding, u = 2^-8, from float32 sums in
    either order): within 2u, norm-wise. The input gradient sums one bf16 product per group (here 2, the
    narrow pair gathered) in place: each partial rounded once more, u |partial| <= u |dx| in norm for these
    independent groups, so within 2u + 2u (the layers' path rounds its sum once, to u) = 4u = 2^-6.
    The weight gradients are the same dot products rounded once to bf16: 2u."""
    from mosaic_model.models.mosaic_v2 import project

    u = 2.0 ** -8
    g = torch.Generator().manual_seed(1)
    linears = [torch.nn.Linear(64, n, bias=False) for n in (192, 12, 12)]
    for lin in linears:
        torch.nn.init.normal_(lin.weight, generator=g)
    x = torch.randn(4, 32, 64, generator=g, requires_grad=True)
    params = [x] + [lin.weight for lin in linears]
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = project(x, linears)
        alone = [lin(x) for lin in linears]
    grads = [torch.randn(o.shape, generator=g).to(o.dtype) for o in alone]
    for a, b in zip(fused, alone):
        assert a.dtype == b.dtype == torch.bfloat16
        assert rel(a, b) <= 2 * u
    got = torch.autograd.grad(fused, params, grads)
    want = torch.autograd.grad(alone, params, grads)
    assert got[0].dtype == want[0].dtype == torch.float32
    assert rel(got[0], want[0]) <= 4 * u
    for a, b in zip(got[1:], want[1:]):
        assert rel(a, b) <= 2 * u
