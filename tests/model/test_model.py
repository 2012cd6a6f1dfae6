"""Memory Mosaic and GPT2 models: sizes, causality, fused/reference parity, generation, config errors."""
from __future__ import annotations

import pytest
import torch

from mosaic_kernels._common import interpreter_enabled
from mosaic_model import GPT, GPTConfig, MemoryMosaic, MosaicConfig
from tests import tolerances
from tests.conftest import rel_err

# The fused path runs the Triton kernels on the CPU only through the interpreter.
needs_interpreter = pytest.mark.skipif(not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 on CPU")


def tiny_mosaic(**kw) -> MemoryMosaic:
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=40, vocab_size=20, dropout=0.0, kernels="reference")
    cfg.update(kw)
    return MemoryMosaic(MosaicConfig(**cfg))


def test_parameter_counts_match_gpt2_small():
    """docs/MODEL.md 3: 12 layers, d=768, 12 heads, vocab 50304, no bias."""
    with torch.device("meta"):
        mm = MemoryMosaic(MosaicConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, bias=False))
        gpt = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, bias=False))
    assert mm.num_params() == 123_588_336
    assert gpt.num_params() == 123_980_544
    assert abs(mm.num_params() / gpt.num_params() - 1) < 0.01


def test_library_init_statistics():
    torch.manual_seed(0)
    m = MemoryMosaic(MosaicConfig(n_layer=4, n_head=4, n_embd=256, vocab_size=4096))
    assert m.lm_head.weight is m.wte.weight
    assert abs(m.wte.weight.std().item() - 256 ** -0.5) < 0.002  # tied weight ends at N(0, 1/sqrt(d))
    assert abs(m.blocks[0].cmem.c_proj.weight.std().item() - 256 ** -0.5 / 2) < 0.002  # / sqrt(L)
    assert abs(m.blocks[0].pmem.M_k.std().item() - 64 ** -0.5) < 0.002
    key = m.blocks[0].cmem.key
    assert torch.allclose(key.decay(), torch.exp(-torch.linspace(0.5, 5.0, 4)))
    assert torch.allclose(key.bandwidth(), torch.full((4,), torch.e))
    assert torch.allclose(m.blocks[0].pmem.key.bandwidth(), torch.full((4,), torch.e ** 2))


def test_key_scale_clamp_has_zero_gradient_above_bound():
    m = tiny_mosaic()
    key = m.blocks[0].cmem.key
    with torch.no_grad():
        key.key_scale.fill_(0.6)  # 10 * 0.6 = 6 > 5
    key.bandwidth().sum().backward()
    assert torch.all(key.key_scale.grad == 0)
    assert torch.allclose(key.bandwidth(), torch.full((2,), torch.e ** 5))


def test_head_scalars_of_every_unit_at_once_match_each_units_own(monkeypatch):
    """The model's one pass over every block's per-head parameters (memory.head_scalars) gives each unit's own
    decay, bandwidth and scale, and their gradients, a clamped key scale (zero gradient) included; and the model
    runs it once per forward, not once per unit."""
    from mosaic_model.models import memory

    torch.manual_seed(0)
    m = tiny_mosaic(n_layer=3, n_head=4)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("leaky_beta", "key_scale", "value_scale", "out_scale")):
                p.add_(0.1 * torch.randn_like(p))
        m.blocks[1].pmem.key.key_scale[0] = 0.6  # 10 * 0.6 above the clamp (5)
    cmems, pmems = [b.cmem for b in m.blocks], [b.pmem for b in m.blocks]
    stacked = [s for group in memory.head_scalars(cmems, pmems) for s in group]
    own = [u.head_scalars() for u in (*cmems, *pmems)]
    weights = [torch.randn(3, 4) for _ in own]
    grads = []
    for scalars in (stacked, own):
        m.zero_grad(set_to_none=True)
        sum((torch.stack(list(s)) * w).sum() for s, w in zip(scalars, weights)).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    for a, b in zip(stacked, own):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=tolerances.ELEMENTWISE_MAP, atol=0)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 6 * 3  # per block: two decays, two key scales, two scales
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=tolerances.ELEMENTWISE_MAP, atol=0)
    assert grads[0]["blocks.1.pmem.key.key_scale"][0] == 0

    calls = []
    decay_of = memory.LeakyKeyExtractor.decay_of
    monkeypatch.setattr(memory.LeakyKeyExtractor, "decay_of", staticmethod(lambda q: calls.append(q.shape) or decay_of(q)))
    m(torch.randint(0, 20, (2, 9)))
    assert calls == [(6, 4)]  # one stack of the 3 C-mems' and 3 P-mems' decays


@pytest.mark.parametrize("model_fn", [tiny_mosaic, lambda: GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32,
                                                                          block_size=40, vocab_size=20))],
                         ids=["mosaic", "gpt"])
def test_forward_shapes_and_loss(model_fn):
    m = model_fn()
    idx = torch.randint(0, 20, (3, 25))
    logits, loss = m(idx)
    assert logits.shape == (3, 25, 20) and loss is None
    targets = idx.clone()
    targets[:, :5] = -100
    _, loss = m(idx, targets)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


@pytest.mark.parametrize("kernels", ["reference", "fused"])
def test_causality_despite_peek_ahead_values(kernels):
    """Logits at t depend on tokens <= t only, although the value at t reads x_{t+1}."""
    if kernels == "fused" and not interpreter_enabled():
        pytest.skip("the fused path on CPU is the reference unless TRITON_INTERPRET=1")
    torch.manual_seed(1)
    m = tiny_mosaic(kernels=kernels).eval()
    idx = torch.randint(0, 20, (2, 30))
    base, _ = m(idx)
    for t in (0, 7, 28):
        changed = idx.clone()
        changed[:, t + 1:] = torch.randint(0, 20, changed[:, t + 1:].shape)
        out, _ = m(changed)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1])
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])


def test_first_position_gets_nothing_from_context_memory():
    m = tiny_mosaic().eval()
    x = torch.randn(2, 10, 32)
    y = m.blocks[0].cmem(x)
    assert torch.all(y[:, 0] == 0)  # bias off: c_proj(0) = 0


@needs_interpreter
@pytest.mark.parametrize("pmem_kernel", ["sdpa", "triton"])
def test_fused_and_reference_paths_agree(pmem_kernel):
    torch.manual_seed(2)
    m = tiny_mosaic(pmem_kernel=pmem_kernel)
    idx = torch.randint(0, 20, (2, 21))
    results = {}
    for kernels in ("reference", "fused"):
        m.set_kernels(kernels)
        m.zero_grad()
        logits, loss = m(idx, idx)
        loss.backward()
        results[kernels] = (logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()})
    (l_ref, loss_ref, g_ref), (l_f, loss_f, g_f) = results["reference"], results["fused"]
    # float32 logits through two layers of float32 ops; the loss is a mean of ~40 of them; a parameter
    # gradient chains every op's backward (tolerances.FP32_CHAINED).
    assert rel_err(l_f, l_ref) < tolerances.FP32
    assert abs(float(loss_f - loss_ref)) < tolerances.FP32 * float(loss_ref)
    for name in g_ref:
        assert rel_err(g_f[name], g_ref[name]) < tolerances.FP32_CHAINED, name


@needs_interpreter
def test_call_plans_give_the_same_training_step(monkeypatch):
    """A fused model's training step (attention dropout on, two steps so that the second call of each layer's ops
    runs through their cached plans) gives the same loss and gradients bitwise with the call plans on
    (the default: the attention's, the key scan's and the value's) and off: the same launches, the same dropout seeds."""
    import importlib

    from mosaic_kernels import _common

    caches = [importlib.import_module(f"mosaic_kernels.{name}")._PLANS for name in ("attention", "leaky_average", "peek_ahead")]
    idx = torch.randint(0, 20, (2, 21), generator=torch.Generator().manual_seed(4))
    runs = []
    for plans in (False, True):
        monkeypatch.setattr(_common, "CALL_PLANS", plans)
        for cache in caches:
            cache.clear()
        torch.manual_seed(2)
        m = tiny_mosaic(kernels="fused", attn_dropout=0.2)
        steps = []
        for _ in range(2):
            m.zero_grad()
            _, loss = m(idx, idx)
            loss.backward()
            steps.append((loss.detach(), [p.grad.clone() for p in m.parameters()]))
        runs.append(steps)
        assert all(bool(cache) == plans for cache in caches)
    for (loss_a, grads_a), (loss_b, grads_b) in zip(*runs):
        assert torch.equal(loss_a, loss_b)
        assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


@pytest.mark.parametrize("pmem_kernel, fused_backend", [("sdpa", "sdpa"), ("triton", "triton")])
def test_set_kernels_switches_the_persistent_memory_too(pmem_kernel, fused_backend):
    # The P-mem backend once was fixed when the block was built, so set_kernels("reference") left the
    # P-mem on the fused path while the C-mem ops moved.
    m = tiny_mosaic(pmem_kernel=pmem_kernel, kernels="fused")
    backends = lambda: {b.pmem.backend for b in m.blocks}  # noqa: E731
    assert backends() == {fused_backend}
    m.set_kernels("reference")
    assert backends() == {"official"}
    m.set_kernels("fused")
    assert backends() == {fused_backend}


def test_sdpa_persistent_memory_keeps_the_batch_with_few_head_slots_except_float64():
    from mosaic_model.models.memory import FOLD_FLOAT32_FROM_HEAD_SLOTS, FOLD_HALF_FROM_HEAD_SLOTS
    pmem = tiny_mosaic(kernels="fused").blocks[0].pmem  # 2 heads x 112 slots (3.5 x n_embd)
    few = pmem.config.n_head * pmem.config.pmem_size
    assert few < min(FOLD_FLOAT32_FROM_HEAD_SLOTS, FOLD_HALF_FROM_HEAD_SLOTS)
    assert not any(pmem.folds_batch(d) for d in (torch.float32, torch.bfloat16, torch.float16))
    assert pmem.folds_batch(torch.float64)
    # 16 heads x 832 slots = 13,312 head-slots: between the two lines, so only half precision folds
    mid = tiny_mosaic(kernels="fused", n_head=16, n_embd=256, pmem_size=832).blocks[0].pmem
    assert mid.folds_batch(torch.bfloat16) and mid.folds_batch(torch.float16) and not mid.folds_batch(torch.float32)
    big = tiny_mosaic(kernels="fused", n_head=16, n_embd=256, pmem_size=1024).blocks[0].pmem  # 16,384 head-slots
    assert all(big.folds_batch(d) for d in (torch.float32, torch.bfloat16, torch.float64))


@pytest.mark.parametrize("T", [1, 7])
def test_sdpa_persistent_memory_layouts_agree(T, monkeypatch):
    # The two layouts of _sdpa compute the same rows; in float64 (SDPA's math backend on the CPU) they agree to
    # rounding: each output is a softmax-weighted sum over at most P = 112 slots, each slot gradient a sum over
    # B*T rows, so 1e-12 leaves three orders of magnitude above float64's 2^-52 (about 2e-16) times those sums.
    from mosaic_model.models.memory import PersistentMemory
    torch.manual_seed(0)
    pmem = tiny_mosaic(kernels="fused").blocks[0].pmem.double()
    k = torch.randn(3, 2, T, 16, dtype=torch.float64, requires_grad=True)
    c = pmem.multiplier().detach().double().requires_grad_()
    results = {}
    for fold in (True, False):
        monkeypatch.setattr(PersistentMemory, "folds_batch", lambda self, dtype, _f=fold: _f)
        y = pmem._sdpa(k, 0.0, c)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(),
                                    (k, c, pmem.M_k, pmem.M_v))
        results[fold] = (y.detach(), grads)
    (y_f, g_f), (y_b, g_b) = results[True], results[False]
    assert y_f.shape == y_b.shape == (3, 2, T, 16)
    assert rel_err(y_b, y_f) < 1e-12
    for a, b in zip(g_b, g_f):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("op", ["leaky_average", "peek_ahead_value", "mosaic_attention"])
def test_reference_ops_run_the_named_op_on_its_reference_and_the_others_fused(op, monkeypatch):
    import mosaic_model.models.memory as memory

    calls = []
    for module, path in ((memory.reference_ops, "reference"), (memory.mosaic_kernels, "fused")):
        for name in ("leaky_average", "peek_ahead_value", "mosaic_attention"):
            def spy(*args, _f=getattr(module, name), _key=(name, path), **kw):
                calls.append(_key)
                return _f(*args, **kw)
            monkeypatch.setattr(module, name, spy)
    m = tiny_mosaic(kernels="fused", reference_ops=(op,))
    _, loss = m(torch.randint(0, 20, (2, 9)), torch.randint(0, 20, (2, 9)))
    assert torch.isfinite(loss)
    # Per layer: two key scans (C-mem and P-mem), one value, one attention.
    per_layer = {"leaky_average": 2, "peek_ahead_value": 1, "mosaic_attention": 1}
    for name, n in per_layer.items():
        path = "reference" if name == op else "fused"
        assert calls.count((name, path)) == 2 * n, (name, calls)
        assert calls.count((name, "fused" if path == "reference" else "reference")) == 0, (name, calls)


def test_reference_ops_rejects_unknown_ops_and_the_reference_path():
    with pytest.raises(ValueError, match="reference_ops must be among"):
        MosaicConfig(kernels="fused", reference_ops=("softmax",))
    with pytest.raises(ValueError, match="picks ops of the fused path"):
        MosaicConfig(kernels="reference", reference_ops=("mosaic_attention",))


def test_generate_greedy_topk_and_stop_token():
    torch.manual_seed(3)
    m = tiny_mosaic().eval()
    prompt = torch.randint(0, 20, (2, 5))
    a = m.generate(prompt, 6, temperature=0)
    b = m.generate(prompt, 6, temperature=0)
    assert a.shape == (2, 11) and torch.equal(a, b) and torch.equal(a[:, :5], prompt)
    g = torch.Generator().manual_seed(0)
    s = m.generate(prompt, 6, top_k=1, generator=g)
    assert torch.equal(s, a)  # top-1 sampling is greedy
    first = int(a[0, 5])
    stopped = m.generate(prompt, 6, temperature=0, stop_token=first)
    assert torch.all(stopped[0, 5:] == first)  # a stopped sequence keeps emitting the stop token
    long_prompt = torch.randint(0, 20, (1, 60))  # longer than block_size: the context is cropped
    assert m.generate(long_prompt, 2, temperature=0).shape == (1, 62)
    with pytest.raises(ValueError, match="top_k"):
        m.generate(prompt, 1, top_k=0)


@pytest.mark.parametrize("kw,match", [
    (dict(n_embd=30, n_head=4), "divisible"),
    (dict(kernels="cuda"), "kernels must be one of"),
    (dict(pmem_kernel="flash"), "pmem_kernel must be one of"),
    (dict(attn_dropout=1.0), r"attn_dropout must be in \[0, 1\)"),
    (dict(n_layer=0), "n_layer must be >= 1"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        MosaicConfig(**kw)


@pytest.mark.parametrize("kernels", ["reference", "fused"])
def test_attention_dropout_only_in_training(kernels):
    m = tiny_mosaic(attn_dropout=0.5, kernels=kernels)
    idx = torch.randint(0, 20, (2, 12))
    m.eval()
    a, _ = m(idx)
    b, _ = m(idx)
    assert torch.equal(a, b)
    m.train()
    c, _ = m(idx)
    assert not torch.equal(a, c)


def test_sequence_longer_than_block_size_is_an_error():
    with pytest.raises(ValueError, match="exceeds block_size"):
        tiny_mosaic()(torch.zeros(1, 41, dtype=torch.long))


def _gpu_mosaic(pmem_kernel: str) -> MemoryMosaic:
    """The 2-layer CUDA model of the GPU parity and compile tests (no dropout)."""
    return MemoryMosaic(MosaicConfig(n_layer=2, n_head=4, n_embd=128, block_size=256, vocab_size=64,
                                     dropout=0.0, pmem_kernel=pmem_kernel)).cuda()


@pytest.mark.gpu
@pytest.mark.parametrize("pmem_kernel", ["sdpa", "triton"])
def test_gpu_fused_matches_reference_under_bf16_autocast(pmem_kernel):
    """Same weights and batch on the H200: fused and reference logits, loss and gradients agree."""
    torch.manual_seed(4)
    m = _gpu_mosaic(pmem_kernel)
    idx = torch.randint(0, 64, (4, 256), device="cuda")
    out = {}
    for kernels in ("reference", "fused"):
        m.set_kernels(kernels)
        m.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, loss = m(idx, idx)
        loss.backward()
        out[kernels] = (logits.float(), loss.detach(), {n: p.grad.float().clone() for n, p in m.named_parameters()})
    (lr, sr, gr), (lf, sf, gf) = out["reference"], out["fused"]
    # Under bf16 autocast both paths round their activations to bf16 at different places (the fused
    # ops keep float32 inside a kernel, the references round between ops): logits differ by about two
    # LOW_PRECISION steps per layer, and a gradient, a product of ~5 such roundings per layer, by five.
    assert rel_err(lf, lr) < 2 * tolerances.LOW_PRECISION
    assert abs(float(sf - sr)) < tolerances.LOW_PRECISION
    for name in gr:
        assert rel_err(gf[name], gr[name]) < 5 * tolerances.LOW_PRECISION, name


def _compiled_matches_eager(model, idx, backend):
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)  # fullgraph: a break is an error
    out = []
    for fn in (model, compiled):
        model.zero_grad()
        logits, loss = fn(idx, idx)
        loss.backward()
        out.append((logits.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters()}))
    (le, ge), (lc, gc) = out
    return float((lc - le).norm() / le.norm()), max(
        float((gc[n] - ge[n]).norm() / ge[n].norm().clamp_min(1e-12)) for n in ge)


@needs_interpreter
@pytest.mark.parametrize("pmem_kernel", ["sdpa", "triton"])
def test_compile_fullgraph_through_the_fused_ops(pmem_kernel):
    """torch.compile(model, fullgraph=True) traces the custom ops without a graph break (aot_eager on CPU)."""
    torch.manual_seed(5)
    m = tiny_mosaic(kernels="fused", pmem_kernel=pmem_kernel)
    m.eval()  # no dropout, so eager and compiled see the same function
    logit_err, grad_err = _compiled_matches_eager(m, torch.randint(0, 20, (2, 21)), "aot_eager")
    assert logit_err < tolerances.FP32 and grad_err < tolerances.FP32_CHAINED


@pytest.mark.gpu
@pytest.mark.parametrize("pmem_kernel", ["sdpa", "triton"])
def test_gpu_compile_fullgraph_inductor(pmem_kernel):
    """On the GPU with inductor: no graph break, same logits and gradients as eager under bf16 autocast."""
    torch.manual_seed(6)
    m = _gpu_mosaic(pmem_kernel)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logit_err, grad_err = _compiled_matches_eager(m, torch.randint(0, 64, (4, 256), device="cuda"), "inductor")
    assert logit_err < 2e-2 and grad_err < 5e-2


def _layout_probe(m: MemoryMosaic, idx: torch.Tensor) -> dict:
    """One forward and backward of m, recording whether each block's c_proj inputs and the P-mem's
    SDPA queries are views (no copy made them) and whether the key and value projections' output
    gradients are."""
    import mosaic_model.models.memory as memory

    seen = {"cmem_merge": [], "pmem_merge": [], "pmem_fold": [], "split_grad": []}
    hooks = []
    for block in m.blocks:
        hooks.append(block.cmem.c_proj.register_forward_pre_hook(
            lambda mod, args: seen["cmem_merge"].append(args[0]._is_view())))
        hooks.append(block.pmem.c_proj.register_forward_pre_hook(
            lambda mod, args: seen["pmem_merge"].append(args[0]._is_view())))
        for proj in (block.cmem.key.W_k, block.pmem.key.W_k, block.cmem.value.W_v):
            # The gradient reaching the projection's output: a view of what the op's backward wrote
            # when it wrote dx in the head split's layout, a copy otherwise.
            hooks.append(proj.register_full_backward_hook(
                lambda mod, gin, gout: seen["split_grad"].append(gout[0]._is_view())))
    sdpa = memory.F.scaled_dot_product_attention

    def probe(q, *args, **kw):
        seen["pmem_fold"].append(q._is_view())
        return sdpa(q, *args, **kw)

    memory.F.scaled_dot_product_attention = probe
    try:
        _, loss = m(idx, idx)
        loss.backward()
    finally:
        memory.F.scaled_dot_product_attention = sdpa
        for h in hooks:
            h.remove()
    return seen


@needs_interpreter
def test_fused_model_merges_and_folds_heads_without_copies():
    """Heads-last outputs: the C-mem's head merge, the P-mem's batch fold and the head splits'
    backwards are views in the fused model (copies in the reference one, which has no layout option)."""
    torch.manual_seed(0)
    idx = torch.randint(0, 20, (2, 24))
    fused = _layout_probe(tiny_mosaic(kernels="fused"), idx)
    assert all(fused["cmem_merge"]) and all(fused["pmem_fold"]) and len(fused["pmem_fold"]) == 2
    assert all(fused["split_grad"]) and len(fused["split_grad"]) == 6
    reference = _layout_probe(tiny_mosaic(kernels="reference"), idx)  # the probe sees copies
    assert not any(reference["cmem_merge"]) and not any(reference["pmem_fold"]) and not any(reference["split_grad"])


@pytest.mark.gpu
def test_gpu_fused_model_has_no_head_copies():
    """On CUDA SDPA returns the P-mem output in the heads-last layout of its folded queries, so the
    P-mem's merge is a view too."""
    torch.manual_seed(0)
    m = _gpu_mosaic("sdpa")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        seen = _layout_probe(m, torch.randint(0, 64, (4, 256), device="cuda"))
    assert all(seen["cmem_merge"]) and all(seen["pmem_merge"]) and all(seen["pmem_fold"]) and all(seen["split_grad"])
