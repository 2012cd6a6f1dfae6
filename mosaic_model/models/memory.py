"""The Memory Mosaic's memory units: contextual memory (C-mem) and persistent memory (P-mem).

Shapes: x is (B, T, d); per-head tensors are (B, H, T, hs) with hs = d / H. Parameter names and
initial values follow the Library (docs/MODEL.md sections 1 and 2).
"""
from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import mosaic_kernels
from mosaic_kernels import reference as reference_ops

from .config import MosaicConfig
from .generation import is_static, write_at


def ops_for(config: MosaicConfig, op: str) -> ModuleType:
    """The module whose ``op`` (``mosaic_attention``, ``leaky_average``, ``peek_ahead_value``) the model
    runs: the references for ``kernels="reference"`` and for the ops in ``config.reference_ops``."""
    return reference_ops if config.kernels == "reference" or op in config.reference_ops else mosaic_kernels


def layout_for(config: MosaicConfig, op: str, heads_last: bool = True) -> dict:
    """Keyword arguments of a fused op's output layout: heads-last (B, H, T, hs) views of (B, T, H, hs)
    memory, the layout of a head-split projection, so that merging the heads before c_proj and folding
    the batch into the P-mem's query rows are views, not copies. The references take no layout option."""
    return {} if ops_for(config, op) is reference_ops else {"heads_last": heads_last}


def cast_once_for_autocast(x: torch.Tensor) -> torch.Tensor:
    """x in the autocast dtype when autocast is on, so that several projections of x share one cast:
    autocast caches the casts of parameters only and would cast x once for each projection (in eager
    mode a copy of x and, backward, a float32 copy and sum of each projection's input gradient)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return x.to(torch.get_autocast_dtype(device))
    return x


def exp10(p: torch.Tensor) -> torch.Tensor:
    """``exp(10 p)``: the Library's parameterisation of every per-head log-scale (the factor 10 raises
    those scalars' effective learning rate; docs/MODEL.md 1.2-2)."""
    return torch.exp(10.0 * p)


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, d) -> (B, H, T, hs) as a strided view (no copy)."""
    B, T, d = x.shape
    return x.view(B, T, n_head, d // n_head).transpose(1, 2)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(B, H, T, hs) -> (B, T, d)."""
    B, H, T, hs = y.shape
    return y.transpose(1, 2).reshape(B, T, H * hs)


class LeakyKeyExtractor(nn.Module):
    """k_t = s_h^power * normalize(sum_{s<=t} exp(-beta_h (t-s)) W_k x_s), per head.

    ``beta_h = 10 |leaky_beta_h|`` (init linspace(0.5, 5, H) / 10) and
    ``s_h = exp(min(10 key_scale_h, key_scale_max))`` (init key_scale = 0.1, so s = e).
    The P-mem squares the scale (power 2) because its slots carry none.
    """

    def __init__(self, config: MosaicConfig, power: int):
        super().__init__()
        H, d = config.n_head, config.n_embd
        self.config, self.power = config, power
        self.W_k = nn.Linear(d, d, bias=config.bias)
        self.leaky_beta = nn.Parameter(torch.linspace(0.5, 5.0, H) / 10)
        self.key_scale = nn.Parameter(torch.full((H,), 0.1))

    @staticmethod
    def decay_of(leaky_beta: torch.Tensor) -> torch.Tensor:
        """lambda = exp(-beta), beta = 10 |leaky_beta|, elementwise (any shape: one unit's (H,) or a stack)."""
        return exp10(-leaky_beta.abs())

    def decay(self) -> torch.Tensor:
        """lambda_h = exp(-beta_h), beta_h = 10 |leaky_beta_h|, (H,)."""
        return self.decay_of(self.leaky_beta)

    @staticmethod
    def bandwidth_of(key_scale: torch.Tensor, power: int, key_scale_max: float) -> torch.Tensor:
        """s^power = exp(power min(10 key_scale, key_scale_max)), elementwise (any shape); zero gradient above
        the clamp. The power multiplies the exponent (exp(p a) = exp(a)^p): power 1 launches nothing for it, where
        ``** 1`` launched a copy."""
        log_s = torch.clamp(10.0 * key_scale, max=key_scale_max)
        return torch.exp(log_s if power == 1 else power * log_s)

    def bandwidth(self) -> torch.Tensor:
        """s_h^power with s_h = exp(min(10 key_scale_h, key_scale_max)), (H,); zero gradient above the clamp."""
        return self.bandwidth_of(self.key_scale, self.power, self.config.key_scale_max)

    def step(self, x_t: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One position of :meth:`forward` for cached decoding: x_t (B, d) -> (k_t (B, H, hs), new state).

        The state is the un-normalised leaky sum ``y_t = W_k x_t + decay * y_{t-1}`` in float32, so a
        new key costs O(1) instead of a scan over the prefix."""
        H = self.config.n_head
        y = self.W_k(x_t).float().view(x_t.shape[0], H, -1)
        if state is not None:
            y = y + self.decay().view(1, H, 1) * state
        k = F.normalize(y, dim=-1, eps=self.config.norm_eps) * self.bandwidth().view(1, H, 1)
        return k, y

    def forward(self, x: torch.Tensor, heads_last: bool = True, decay: torch.Tensor | None = None,
                bandwidth: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d) -> keys (B, H, T, hs): the leaky average of W_k x over time, L2-normalised, times the
        bandwidth; ``heads_last``: a view of (B, T, H, hs) memory where the op allows it. ``decay`` and
        ``bandwidth``: :meth:`decay` and :meth:`bandwidth` when the caller computed them (:func:`head_scalars`)."""
        raw = split_heads(self.W_k(x), self.config.n_head)  # strided (B, H, T, hs)
        return ops_for(self.config, "leaky_average").leaky_average(
            raw, self.decay() if decay is None else decay, normalize=True,
            scale=self.bandwidth() if bandwidth is None else bandwidth, eps=self.config.norm_eps,
            **layout_for(self.config, "leaky_average", heads_last))


class PeekAheadValueExtractor(nn.Module):
    """v_t = exp(10 r_h) * normalize((1 - c_h) W_v x_{t+1} + c_h W_v x_t), with W_v x_T := 0.

    ``c`` is initialised uniform(0, 1) and left unconstrained; ``r`` starts at -0.05 (factor e^-0.5).
    The fused path reads the projection once and writes attention-ready values (one kernel each way).
    """

    def __init__(self, config: MosaicConfig):
        super().__init__()
        H, d = config.n_head, config.n_embd
        self.config = config
        self.W_v = nn.Linear(d, d, bias=config.bias)
        self.mix = nn.Parameter(torch.rand(H))
        self.value_scale = nn.Parameter(torch.full((H,), -0.05))

    def scale(self) -> torch.Tensor:
        """The per-head value scale exp(10 r), (H,)."""
        return exp10(self.value_scale)

    def forward(self, x: torch.Tensor, projected: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d) -> values (B, H, T, hs). ``projected``: ``W_v x`` (B, T, d, any strides) when the caller
        computed it (Memory Mosaics v2 runs several projections of x as one product); ``scale``: :meth:`scale`
        when the caller computed it (:func:`head_scalars`)."""
        raw = split_heads(self.W_v(x) if projected is None else projected, self.config.n_head)  # strided (B, H, T, hs)
        return peek_ahead_values(self.config, raw, self.mix, self.scale() if scale is None else scale)

    def completed(self, u_prev: torch.Tensor, u_t: torch.Tensor) -> torch.Tensor:
        """For cached decoding: v_{t-1} (B, H, hs) from u_{t-1} = W_v x_{t-1} and u_t = W_v x_t (both in the
        decoding dtype, float32 or float64): row 0 of the value op over the pair."""
        pair = torch.stack([u_prev, u_t], dim=2)
        return reference_ops.peek_ahead_value(pair, self.mix.to(u_t.dtype), scale=self.scale().to(u_t.dtype),
                                              eps=self.config.norm_eps)[:, :, 0]


def peek_ahead_values(config: MosaicConfig, raw: torch.Tensor, mix: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The values ``s_h normalize((1 - c_h) u_{t+1} + c_h u_t)`` of heads-split projections ``raw``
    (B, H, T, hs) with one mix c and one scale s = exp(10 r) per head (each (H,); ``scale`` is s, from
    :meth:`PeekAheadValueExtractor.scale` or a stack of them), on the config's ops, in raw's dtype.
    (Memory Mosaics v2 passes both memories' heads at once.)"""
    if config.kernels == "reference":
        # The official code mixes in the activations' dtype (bf16 under autocast).
        mix, scale = mix.to(raw.dtype), scale.to(raw.dtype)
    v = ops_for(config, "peek_ahead_value").peek_ahead_value(raw, mix, scale=scale, eps=config.norm_eps)
    return v.to(raw.dtype)  # autocast runs the reference's norm in fp32: cast back


def read_row(k_t: torch.Tensor, K: torch.Tensor, V: torch.Tensor, readable: torch.Tensor | None = None) -> torch.Tensor:
    """For cached decoding: one attention row per head, ``softmax_j(k_t . K_j) V_j`` over the rows ``readable``
    (all if None), with logits in the keys' dtype (float32 at least: autocast off, as the fused kernel keeps
    them). A masked row gets a finite fill, so that an empty one (position 0 of a static cache) stays
    finite, not NaN; the caller zeroes it."""
    with torch.autocast(k_t.device.type, enabled=False):
        scores = torch.einsum("bhd,bhjd->bhj", k_t, K)
        if readable is not None:
            scores = scores.masked_fill(~readable, -1e30)
        return torch.einsum("bhj,bhjd->bhd", torch.softmax(scores, dim=-1), V)


def summed(outputs: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of the P-mem's slot-memory retrievals, the first taken as it is: starting from ``0.0`` launched a
    full-size addition in eager mode for every P-mem, the usual single slot memory included."""
    return functools.reduce(operator.add, outputs)


class HeadScalars(NamedTuple):
    """The per-head scalars a memory unit's ops take, each (H,), computed from its parameters."""

    decay: torch.Tensor  # the key scan's lambda_h
    bandwidth: torch.Tensor  # the keys' scale s_h^power
    scale: torch.Tensor  # the C-mem's value scale exp(10 r_h), or the P-mem's output multiplier


def head_scalars(cmems: Sequence[ContextMemory],
                 pmems: Sequence[PersistentMemory]) -> tuple[list[HeadScalars], list[HeadScalars]]:
    """Every unit's :meth:`~ContextMemory.head_scalars` at once: each map applied once to the stack of the
    units' (H,) parameters, the rows handed back by one ``unbind`` (whose backward is one stack). Computed by each
    unit, a block's scalars launched about 50 small kernels (forward and backward), about 600 of the 1,869 of an
    eager 12-layer step; stacked, about 50 in all (``benchmarks.tools.count_launches``). The maps are the
    units' own (``decay_of``, ``bandwidth_of``, ``multiplier_of``, ``exp10``), elementwise, so each row is what the
    unit computes alone (on a GPU one kernel computes every element alike; on a CPU, ATen's loops take exp from a
    vector library in whole vectors and from libm in the tail, so a row may differ from the unit's own by an ulp)."""
    def rows(f, params: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return f(torch.stack(params)).unbind(0) if params else ()

    def bandwidths(units) -> tuple[torch.Tensor, ...]:  # a C-mem's keys have power 1, a P-mem's 2: one per stack
        return rows(lambda q: LeakyKeyExtractor.bandwidth_of(q, units[0].key.power, units[0].config.key_scale_max),
                    [m.key.key_scale for m in units])

    n = len(cmems)
    decays = rows(LeakyKeyExtractor.decay_of, [m.key.leaky_beta for m in (*cmems, *pmems)])
    c_scale = rows(exp10, [m.value.value_scale for m in cmems])
    p_scale = rows(lambda q: PersistentMemory.multiplier_of(q, pmems[0].config.pmem_count), [m.out_scale for m in pmems])
    return ([HeadScalars(*r) for r in zip(decays[:n], bandwidths(cmems), c_scale)],
            [HeadScalars(*r) for r in zip(decays[n:], bandwidths(pmems), p_scale)])


class ContextMemory(nn.Module):
    """C-mem: ``y_t = sum_{s<t} softmax_s(k_t . k_s) v_s``, ``y_0 = 0``, then c_proj and dropout.

    The mask is strict (s < t, the diagonal excluded) because v_s reads x_{s+1}: with the diagonal,
    position t would see the token it predicts (docs/MODEL.md 1.4)."""

    def __init__(self, config: MosaicConfig):
        super().__init__()
        self.config = config
        self.key = LeakyKeyExtractor(config, power=1)
        self.value = PeekAheadValueExtractor(config)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def head_scalars(self) -> HeadScalars:
        """The key scan's decay and bandwidth and the value scale, each (H,), from this unit's parameters."""
        return HeadScalars(self.key.decay(), self.key.bandwidth(), self.value.scale())

    def forward(self, x: torch.Tensor, scalars: HeadScalars | None = None) -> torch.Tensor:
        """(B, T, d) -> (B, T, d): strictly causal attention of the keys on themselves over the peek-ahead
        values, then the output projection. ``scalars``: :meth:`head_scalars` when the caller computed them
        (:func:`head_scalars` for many units at once)."""
        if self.config.kernels != "reference":  # the reference keeps the official code's two casts
            x = cast_once_for_autocast(x)
        decay, bandwidth, scale = self.head_scalars() if scalars is None else scalars
        k, v = self.key(x, decay=decay, bandwidth=bandwidth), self.value(x, scale=scale)
        p = self.config.attn_dropout if self.training else 0.0
        y = ops_for(self.config, "mosaic_attention").mosaic_attention(
            k, v, dropout_p=p, **layout_for(self.config, "mosaic_attention"))
        return self.resid_dropout(self.c_proj(merge_heads(y)))

    def step(self, x_t: torch.Tensor, cache: dict) -> torch.Tensor:
        """One position of :meth:`forward` (eval mode) for cached decoding: x_t (B, d) -> (B, d).

        ``cache`` holds the key scan's state, the previous value projection ``u_{t-1} = W_v x_{t-1}``,
        and the keys k_0..k_{t-1} and values v_0..v_{t-2}. The value v_{t-1} needs x_t (it peeks one
        step ahead), so it is completed here, just before the query k_t reads v_0..v_{t-1}."""
        B, H = x_t.shape[0], self.config.n_head
        if is_static(cache):
            return self._step_static(x_t, cache)
        k_t, cache["key"] = self.key.step(x_t, cache.get("key"))
        u_t = self.value.W_v(x_t).float().view(B, H, -1)
        if "u_prev" in cache:
            v_prev = self.value.completed(cache["u_prev"], u_t)
            cache["V"] = torch.cat([cache["V"], v_prev[:, :, None]], dim=2) if "V" in cache else v_prev[:, :, None]
        cache["u_prev"] = u_t
        if "K" in cache:  # strictly causal: k_t reads the keys and values of positions j < t
            y = read_row(k_t, cache["K"], cache["V"])
            cache["K"] = torch.cat([cache["K"], k_t[:, :, None]], dim=2)
        else:  # position 0 has no key to read: y_0 = 0
            y = torch.zeros_like(k_t)
            cache["K"] = k_t[:, :, None]
        return self.c_proj(y.reshape(B, -1).to(x_t.dtype))

    def _step_static(self, x_t: torch.Tensor, cache: dict) -> torch.Tensor:
        """:meth:`step` on a static cache (``lm.static_cache``): the same arithmetic on buffers of the
        block's length, so every position launches the same kernels on the same memory. At position p
        the key k_p is written at row p, the completed value v_{p-1} at row p - 1, and the query reads
        rows j < p (the rest masked); at p = 0 there is nothing to read and y_0 = 0."""
        B, H = x_t.shape[0], self.config.n_head
        pos, length = cache["pos"], cache["block_size"]
        state = cache.get("key")
        if state is None:  # first token: a zero state gives the same key as no state (y = W_k x_0)
            state = cache["key"] = x_t.new_zeros(B, H, self.config.head_size, dtype=torch.float32)
            cache["u_prev"] = torch.zeros_like(state)
        k_t, new_state = self.key.step(x_t, state)
        state.copy_(new_state)
        u_t = self.value.W_v(x_t).float().view(B, H, -1)
        v_prev = self.value.completed(cache["u_prev"], u_t)  # at p = 0 a dummy, overwritten at p = 1
        cache["V"] = write_at(cache.get("V"), v_prev, (pos - 1).clamp(min=0), length)
        cache["u_prev"].copy_(u_t)
        cache["K"] = write_at(cache.get("K"), k_t, pos, length)
        readable = torch.arange(length, device=pos.device) < pos  # strictly causal: rows j < p
        return self.c_proj((read_row(k_t, cache["K"], cache["V"], readable) * (pos > 0)).reshape(B, -1).to(x_t.dtype))



# The SDPA retrieval folds the batch into the query rows unless the heads times the slots are fewer than these
# (float64, the CPU's reference dtype, always folds). Flash and cuDNN take half precision only, so float32 runs
# SDPA's memory-efficient kernel, whose backward parallelises over (batch, head, 64-slot block): folded, the
# RegBench preset's 8 heads x 448 slots make 56 programs for 132 SMs. fwd+bwd, dropout 0.05, H100, torch 2.11
# (2026-12-06): float32 folded / batch kept, at H x P = 896, 3,584 (two shapes), 6,144, 7,168, 8,064, 8,192,
# 10,752, 14,336 (two) and 32,256: 7.7x, 2.8x, 2.4x, 1.8x, 1.5x, 1.4x, 1.4x, 1.3x, 1.05x, 1.13x and 0.94x (a second
# run, bench_pmem_layout, within a few percent). In bf16 the first run had keeping the batch
# 0.45x to 2.0x as fast with no rule; the second and third (2026-12-06 and 12-07, bench_pmem_layout) both had it
# faster at every shape below 14,336 head-slots (1.10x-5.83x) and the fold faster from 14,336 on (0.87x-0.98x):
# two of three runs, agreeing in every cell, set the half-precision line between 10,752 and 14,336 (fp16 follows bf16
# unmeasured: SDPA offers it the same kernels) (BENCHMARKS.md "The SDPA retrieval in float32").
FOLD_FLOAT32_FROM_HEAD_SLOTS = 16_384
FOLD_HALF_FROM_HEAD_SLOTS = 12_288


def sdpa_folds_batch(n_head: int, pmem_size: int, dtype: torch.dtype) -> bool:
    """Whether the SDPA retrieval folds the batch into the query rows at these heads, slots and activation
    dtype (else it keeps the batch and expands the slots to it): FOLD_FLOAT32_FROM_HEAD_SLOTS's rule for float32,
    FOLD_HALF_FROM_HEAD_SLOTS's for bf16 and fp16, always for float64."""
    line = {torch.float32: FOLD_FLOAT32_FROM_HEAD_SLOTS, torch.bfloat16: FOLD_HALF_FROM_HEAD_SLOTS,
            torch.float16: FOLD_HALF_FROM_HEAD_SLOTS}.get(dtype)
    return line is None or n_head * pmem_size >= line


class PersistentMemory(nn.Module):
    """P-mem: ``y_t = exp(10 r_h) / m * sum_i sum_j softmax_j(k_t . K_i[h, j]) V_i[h, j]`` over learned
    slots shared by the batch (in place of the MLP; docs/MODEL.md 2), then c_proj and dropout.

    The retrieval backend is read from the config at every call (so that ``MemoryMosaic.set_kernels``
    switches it with the C-mem ops): the official formulation (``kernels = "reference"``), our Triton
    kernel (``pmem_kernel = "triton"``) or SDPA on the shared slots (``"sdpa"``).
    Each takes the keys, the dropout rate and the per-head multiplier ``exp(10 r_h) / m`` and returns
    the scaled retrieval."""

    def __init__(self, config: MosaicConfig):
        super().__init__()
        H, hs = config.n_head, config.head_size
        self.config = config
        self.key = LeakyKeyExtractor(config, power=2)
        shape = (config.pmem_count, H, config.pmem_size, hs)
        self.M_k = nn.Parameter(torch.randn(shape) / math.sqrt(hs))
        self.M_v = nn.Parameter(torch.randn(shape) / math.sqrt(hs))
        self.out_scale = nn.Parameter(torch.full((H,), -0.05))
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    @property
    def backend(self) -> str:
        """"official", "triton" or "sdpa", from the config as it is now."""
        if self.config.kernels == "reference":
            return "official"
        return "triton" if self.config.pmem_kernel == "triton" else "sdpa"

    def head_scalars(self) -> HeadScalars:
        """The key scan's decay and bandwidth and the output multiplier, each (H,), from this unit's parameters."""
        return HeadScalars(self.key.decay(), self.key.bandwidth(), self.multiplier())

    def forward(self, x: torch.Tensor, scalars: HeadScalars | None = None) -> torch.Tensor:
        """(B, T, d) -> (B, T, d): each position's key retrieves from the learned slots (scaled by the
        per-head multiplier), then the output projection. ``scalars``: :meth:`head_scalars` when the caller
        computed them (:func:`head_scalars` for many units at once)."""
        # Heads-last keys make the SDPA path's batch fold a view; the Triton retrieval reads its
        # queries through their strides and measured slower on heads-last keys, so it gets contiguous ones.
        backend = self.backend  # derived from the config once per call
        decay, bandwidth, c = self.head_scalars() if scalars is None else scalars
        k = self.key(x, heads_last=backend != "triton", decay=decay, bandwidth=bandwidth)  # (B, H, T, hs)
        p = self.config.ic_dropout if self.training else 0.0
        if backend == "official":
            y = self._official(k, p, c)
        elif backend == "triton":
            y = self._triton(k, p, c)
        else:
            y = self._sdpa(k, p, c)
        return self.resid_dropout(self.c_proj(merge_heads(y)))

    @staticmethod
    def multiplier_of(out_scale: torch.Tensor, pmem_count: int) -> torch.Tensor:
        """exp(10 out_scale) / pmem_count, elementwise (any shape: one unit's (H,) or a stack)."""
        return exp10(out_scale) / pmem_count

    def multiplier(self) -> torch.Tensor:
        """The per-head output multiplier exp(10 out_scale) / pmem_count, (H,)."""
        return self.multiplier_of(self.out_scale, self.config.pmem_count)

    def step(self, x_t: torch.Tensor, cache: dict) -> torch.Tensor:
        """One position of :meth:`forward` (eval mode) for cached decoding: x_t (B, d) -> (B, d); only
        the key scan's state is cached (the slots are the same for every position). A static cache
        (``lm.static_cache``) keeps that state in one buffer, updated in place."""
        B, H = x_t.shape[0], self.config.n_head
        k, state = self.key.step(x_t, cache.get("key"))
        if is_static(cache) and "key" in cache:
            cache["key"].copy_(state)
        else:
            cache["key"] = state

        def retrieval(i: int) -> torch.Tensor:
            p = torch.softmax(torch.einsum("bhd,hpd->bhp", k, self.M_k[i].float()), dim=-1)
            return torch.einsum("bhp,hpd->bhd", p, self.M_v[i].float())
        with torch.autocast(x_t.device.type, enabled=False):  # float32 scores, as in the forward's kernels
            y = summed(retrieval(i) for i in range(self.config.pmem_count))
        y = y * self.multiplier().float().view(1, H, 1)
        return self.c_proj(y.reshape(B, -1).to(x_t.dtype))

    def _triton(self, k: torch.Tensor, p: float, c: torch.Tensor) -> torch.Tensor:
        """One mosaic_kernels.persistent_memory call per slot memory: reads the keys in place, sums the
        slot gradients over the batch in registers, applies ``c`` and writes (B, T, H, hs) memory."""
        return summed(mosaic_kernels.persistent_memory(k, self.M_k[i].to(k.dtype), self.M_v[i].to(k.dtype), out_scale=c,
                                                       dropout_p=p) for i in range(self.config.pmem_count))

    def _official(self, k: torch.Tensor, p: float, c: torch.Tensor) -> torch.Tensor:
        """The Library's retrieval: slots expanded to the batch, one SDPA call per slot memory, and the
        multiplier applied to the output in the activations' dtype, as the Library does."""
        B = k.shape[0]

        def retrieval(i: int) -> torch.Tensor:
            mk = self.M_k[i].unsqueeze(0).expand(B, -1, -1, -1).to(k.dtype)
            mv = self.M_v[i].unsqueeze(0).expand(B, -1, -1, -1).to(k.dtype)
            return F.scaled_dot_product_attention(k, mk, mv, dropout_p=p, scale=1.0)
        y = summed(retrieval(i) for i in range(self.config.pmem_count))
        return y * c.view(1, -1, 1, 1).to(y.dtype)

    def folds_batch(self, dtype: torch.dtype) -> bool:
        """Whether :meth:`_sdpa` folds the batch into the query rows for activations of ``dtype``
        (:func:`sdpa_folds_batch`)."""
        return sdpa_folds_batch(self.config.n_head, self.config.pmem_size, dtype)

    def _sdpa(self, k: torch.Tensor, p: float, c: torch.Tensor) -> torch.Tensor:
        """SDPA on the shared slots, in one of two layouts of the same rows (:meth:`folds_batch`):
        - the batch folded into the query rows, (1, H, B*T, hs): SDPA runs its flash or cuDNN kernel on one
          slot tensor per head and the slot gradients come out summed (no (B, H, P, hs) expansion). With
          heads-last keys (the fused path) the fold is a view; SDPA's cuDNN and flash kernels return the
          output, and the gradient of q, in q's layout, so merging the heads is a view too;
        - the batch kept, (B, H, T, hs) against the slots expanded to the batch (a view): for float32 with
          few (head, slot) pairs, where the fold starves SDPA's backward of programs.

        The output is linear in the slot values, so the per-head multiplier ``c`` ((H,)) scales the
        (H, P, hs) values instead of the (B, H, T, hs) output (two fewer full passes each way in eager
        mode)."""
        B, H, T, hs = k.shape
        fold = self.folds_batch(k.dtype)
        q, rows = (k.transpose(0, 1).reshape(1, H, B * T, hs), 1) if fold else (k, B)
        c = c.view(1, H, 1, 1)

        def retrieval(i: int) -> torch.Tensor:
            mk = self.M_k[i].unsqueeze(0).to(k.dtype).expand(rows, -1, -1, -1)
            mv = (self.M_v[i].unsqueeze(0) * c).to(k.dtype).expand(rows, -1, -1, -1)
            return F.scaled_dot_product_attention(q, mk, mv, dropout_p=p, scale=1.0)
        y = summed(retrieval(i) for i in range(self.config.pmem_count))
        return y.view(H, B, T, hs).transpose(0, 1) if fold else y
