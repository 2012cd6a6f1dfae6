"""Memory Mosaics v2 (docs/MODEL.md 8): the three-level memory block on the band attention and the gated scan.

Shapes: x is (B, T, d); per-head tensors are (B, H, T, hs) with hs = d / H; per-row bandwidths (H, T) or
(B, H, T). One block:

    x = x + c_proj([short(LN(x)), long(LN(x))])       two associative memories, heads concatenated
    x = x + SwiGLU(LN(x))                             the persistent memory

Each associative memory has its own keys, values and bandwidth and reads

    y_t = sum_{lo_t <= j <= hi_t} softmax_j(beta(n_t) <k_t, k_j>) v_j

with unit keys k (the gated scan, L2-normalised), v1's peek-ahead values v, and n_t the number of keys of
row t: short-term lo_t = t - window, hi_t = t - 1 (n_t = min(t, window)); long-term lo_t = 0,
hi_t = t - m (n_t = max(t - m + 1, 0)), m drawn per sequence in training. A row that sees no key reads 0.

Every head is independent in every op, so a block runs its two memories as one memory of 2H heads (the
short-term memory's H, then the long-term memory's H): one launch per op instead of two, the band of each
head read from a (B, 2H, 2) table of (window, delay) (``mosaic_kernels.attention.band_table``'s form), and
the attention's heads-last output is already the concatenation c_proj reads. ``AssociativeMemory.forward``
is one memory alone (probes, tests: the block's output is both memories' concatenated).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mosaic_kernels import reference as reference_ops
from mosaic_kernels.attention import row_bandwidth
from mosaic_kernels.attention.reference import row_bandwidth as reference_row_bandwidth
from mosaic_kernels.leaky_average import stable_gate_and_decay
from mosaic_kernels.leaky_average.reference import stable_gate_and_decay as reference_stable_gate_and_decay

from .config import MosaicV2Config
from .generation import GenerateMixin, head_and_loss, is_static
from .memory import PeekAheadValueExtractor, exp10, layout_for, merge_heads, ops_for, peek_ahead_values, read_row, split_heads

# Adjacent output groups narrower than this many columns are gathered into one matrix before the backward's
# products (a copy of a few bytes a token): a product of a handful of columns re-reads and re-writes the whole
# (tokens, d) input gradient, and a weight gradient a few rows tall is a split-K product of its own.
NARROW_GROUP = 128


class _SplitLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias).split(sizes, -1)`` whose backward never gathers the outputs' gradients.

    Autograd's split gathers the pieces' gradients into one (tokens, N) buffer (one full read and write of
    them) for the product's backward. Here the input gradient is the sum of one product per group,
    dx = sum_g dy_g W_g (accumulated in place, in the gradients' dtype: one rounding per group), and each
    group's weight gradient dW_g = dy_g^T x is written into its rows of dW; adjacent groups narrower than
    NARROW_GROUP columns are gathered first (a few bytes a token) and count as one group both ways. Under
    autocast x, weight and bias are cast as ``F.linear`` casts them, once. A group whose output gets no
    gradient counts as zeros."""

    @staticmethod
    def forward(ctx, x, weight, bias, sizes):
        device = x.device.type
        if torch.is_autocast_enabled(device):  # the casts autocast's F.linear makes, kept for the backward
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        ctx.save_for_backward(x, weight)
        ctx.sizes, ctx.has_bias = tuple(sizes), bias is not None
        return tuple(F.linear(x, weight, bias).split(ctx.sizes, dim=-1))

    @staticmethod
    @once_differentiable  # its products write in place: a second derivative raises instead of going wrong
    def backward(ctx, *grads):
        x, weight = ctx.saved_tensors
        ends = [sum(ctx.sizes[:i + 1]) for i in range(len(ctx.sizes))]
        spans = [(end - n, end, g.reshape(-1, n)) for n, end, g in zip(ctx.sizes, ends, grads) if g is not None]
        products = _gathered(spans)  # one product each way per group, the narrow ones gathered
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.zeros_like(x) if not products else None
            for lo, hi, g in products:
                dx = g @ weight[lo:hi] if dx is None else dx.view(-1, x.shape[-1]).addmm_(g, weight[lo:hi])
            dx = dx.view(x.shape)
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.shape[-1])
            dw = weight.new_zeros(weight.shape) if len(spans) < len(ctx.sizes) else torch.empty_like(weight)
            for lo, hi, g in products:
                torch.mm(g.t(), x2, out=dw[lo:hi])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = weight.new_zeros(weight.shape[0])
            for lo, hi, g in spans:
                db[lo:hi] = g.sum(0)
        return dx, dw, db, None


def _gathered(spans: list) -> list:
    """``spans`` ((lo, hi, dy (tokens, hi - lo)) of the groups that have a gradient, in column order) with each
    run of adjacent narrow groups (fewer than NARROW_GROUP columns) gathered into one: one product each."""
    out = []
    for lo, hi, g in spans:
        prev = out[-1] if out else None
        if prev is not None and prev[1] == lo and hi - lo < NARROW_GROUP and prev[1] - prev[0] < NARROW_GROUP:
            out[-1] = (prev[0], hi, torch.cat([prev[2], g], dim=1))
        else:
            out.append((lo, hi, g))
    return out


def linear_split(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 sizes: list[int]) -> list[torch.Tensor]:
    """``list(F.linear(x, weight, bias).split(sizes, -1))``: the same product and outputs (views of it), with a
    backward that sums one product per output group instead of gathering their gradients (:class:`_SplitLinear`).
    x (..., d), weight (sum(sizes), d), bias (sum(sizes),) or None."""
    if sum(sizes) != weight.shape[0]:
        raise ValueError(f"sizes must sum to weight's {weight.shape[0]} rows, got {list(sizes)}")
    return list(_SplitLinear.apply(x, weight, bias, list(sizes)))


def project_groups(x: torch.Tensor, groups: list[list[nn.Linear]]) -> list[torch.Tensor]:
    """Every layer of ``groups`` applied to x as one matrix product: the layers' weights (and biases) stacked,
    the output split back into one strided view per group, a group's layers side by side
    (``torch.cat([lin(x) for lin in group], -1)`` without the copy). Every output element is the same dot
    product as the layer's own; one GEMM launch instead of one per layer and, under autocast, one cast of x.
    Backward (:func:`linear_split`): one product per group for the input gradient, summed in place, and the
    weight gradient written per group, with no gathering of the groups' output gradients."""
    flat = [lin for group in groups for lin in group]
    if len(flat) == 1:
        return [flat[0](x)]
    weight = torch.cat([lin.weight for lin in flat])
    bias = None
    if any(lin.bias is not None for lin in flat):
        bias = torch.cat([lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in flat])
    return linear_split(x, weight, bias, [sum(lin.out_features for lin in g) for g in groups])


def project(x: torch.Tensor, linears: list[nn.Linear]) -> list[torch.Tensor]:
    """``[lin(x) for lin in linears]`` as one matrix product (:func:`project_groups`, one layer a group)."""
    return project_groups(x, [[lin] for lin in linears])


class GatedKeyExtractor(nn.Module):
    """Unit keys ``k_t = normalize(kbar_t)``, ``kbar_t = g_t W_k x_t + lambda_t kbar_{t-1}`` per head.

    ``g_t = exp(W_g x_t)`` (W_g starts at 0: every gate 1) and ``lambda_t = exp(-|W_l x_t + b_l|)`` with
    b_l starting at v1's per-head rates linspace(0.5, 5, H) and W_l small, so the decays start near
    v1's. The gates' logarithms go to the scan through ``stable_gate_and_decay`` (no overflow however
    large W_g x grows). With ``gated_keys=False``: v1's keys, ``lambda_h = exp(-|b_l|)`` constant, no gate.
    """

    def __init__(self, config: MosaicV2Config):
        super().__init__()
        H, d = config.n_head, config.n_embd
        self.config = config
        self.W_k = nn.Linear(d, d, bias=config.bias)
        self.rate_bias = nn.Parameter(torch.linspace(0.5, 5.0, H))
        if config.gated_keys:
            self.W_g = nn.Linear(d, H, bias=False)
            self.W_l = nn.Linear(d, H, bias=False)
            nn.init.zeros_(self.W_g.weight)
            nn.init.normal_(self.W_l.weight, 0.0, 0.1 / math.sqrt(d))

    def projections(self) -> list[nn.Linear]:
        """The layers that read x: W_k, then W_g and W_l with gated keys."""
        return [self.W_k, self.W_g, self.W_l] if self.config.gated_keys else [self.W_k]

    def forward(self, x: torch.Tensor, projected: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, T, d) -> unit keys (B, H, T, hs). ``projected``: the outputs of :meth:`projections` on x when the
        caller computed them (``W_k x`` (B, T, d) and, with gated keys, ``W_g x`` and ``W_l x`` (B, T, H); any
        strides); otherwise computed here, as one product."""
        wk_x, *logits = project(x, self.projections()) if projected is None else projected
        return gated_keys(self.config, split_heads(wk_x, self.config.n_head), self.rate_bias, *logits)

    def _logs(self, wg_x: torch.Tensor, wl_x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(log g, log lambda), each (..., H), from ``W_g x`` and ``W_l x``: ``W_g x`` and ``-|W_l x + b_l|``
        in ``dtype`` (the expressions :meth:`forward` hands ``stable_gate_and_decay``)."""
        return wg_x.to(dtype), -(wl_x.to(dtype) + self.rate_bias).abs()

    def step(self, x_t: torch.Tensor, cache: dict, projected: list[torch.Tensor] | None = None) -> torch.Tensor:
        """One position of :meth:`forward` for cached decoding: x_t (B, d) -> the unit key (B, H, hs) in float32
        (float64 for a float64 model). ``projected``: the outputs of :meth:`projections` on x_t, as in forward.

        The cache holds the scan's state as ``kbar = exp(M) s`` (s and M in that dtype): the same running
        log-scale M_t = max(M_{t-1} + log lambda_t, log g_t) as ``stable_gate_and_decay``, so no gate overflows."""
        B, H = x_t.shape[0], self.config.n_head
        acc = torch.promote_types(x_t.dtype, torch.float32)  # float32, or float64 for a float64 model
        wk_x, *logits = project(x_t, self.projections()) if projected is None else projected
        raw = wk_x.to(acc).view(B, H, -1)
        if not self.config.gated_keys:
            s = raw if "s" not in cache else raw + torch.exp(-self.rate_bias.abs()).view(1, H, 1) * cache["s"]
        else:
            log_gate, log_decay = self._logs(*logits, acc)        # (B, H) each
            if "s" not in cache:
                s, peak = raw, log_gate
            else:
                peak = torch.maximum(cache["M"] + log_decay, log_gate)
                s = (torch.exp(log_gate - peak)[..., None] * raw
                     + torch.exp(cache["M"] + log_decay - peak)[..., None] * cache["s"])
            cache["M"] = peak
        cache["s"] = s
        return F.normalize(s, dim=-1, eps=self.config.norm_eps)


def gated_keys(config: MosaicV2Config, raw: torch.Tensor, rate_bias: torch.Tensor, wg_x: torch.Tensor | None = None,
               wl_x: torch.Tensor | None = None) -> torch.Tensor:
    """Unit keys (B, H, T, hs) of heads-split projections ``raw`` = W_k x (B, H, T, hs, any strides): the
    scan with gates exp(W_g x) and decays exp(-|W_l x + b_l|) (``wg_x``, ``wl_x`` (B, T, H); ``rate_bias`` b_l
    (H,)), or without gated keys v1's constant decays exp(-|b_l|). H may be both memories' heads at once."""
    ops = ops_for(config, "leaky_average")
    layout = layout_for(config, "leaky_average")
    if not config.gated_keys:
        return ops.leaky_average(raw, torch.exp(-rate_bias.abs()), normalize=True, eps=config.norm_eps, **layout)
    # log g = W_g x and log lambda = -|W_l x + b_l|, the latter formed inside the gate kernel (rate_bias):
    # W_g x and W_l x go in as autocast's bf16 products (the kernel reads any float dtype exactly). The reference
    # path takes the gates' PyTorch reference with the scan's.
    gates = reference_stable_gate_and_decay if ops is reference_ops else stable_gate_and_decay
    gate, decay = gates(wg_x.transpose(1, 2), wl_x.transpose(1, 2), rate_bias=rate_bias)  # (B, H, T) each
    return ops.leaky_average(raw, decay, gate=gate, normalize=True, eps=config.norm_eps, **layout)


class Bandwidth(nn.Module):
    """The softmax's inverse temperature per head: ``beta(n) = beta1 n^alpha + beta0`` of the keys a row
    sees (adaptive), or one learned constant per head. beta0 = softplus(.), beta1 = softplus(.) and
    alpha = sigmoid(.) keep beta0 >= 0, beta1 > 0, 0 < alpha < 1. Initialised at alpha = 1/2, beta0 = 1 and
    beta1 = (e^2 - 1) / 16, so beta(256) = e^2, v1's initial bandwidth (keys of norm e, logits e^2 cos)."""

    def __init__(self, config: MosaicV2Config):
        super().__init__()
        H = config.n_head
        self.config, self.adaptive = config, config.adaptive_bandwidth
        inv_softplus = lambda y: math.log(math.expm1(y))  # noqa: E731
        if self.adaptive:
            self.beta0 = nn.Parameter(torch.full((H,), inv_softplus(1.0)))
            self.beta1 = nn.Parameter(torch.full((H,), inv_softplus((math.e ** 2 - 1) / 16)))
            self.alpha = nn.Parameter(torch.zeros(H))
        else:
            self.log_beta = nn.Parameter(torch.full((H,), 2.0))

    def forward(self, T: int, band: dict) -> torch.Tensor:
        """The bandwidths of the rows of a band (``mosaic_attention``'s window and delay): (H, T), or (B, H, T)
        for one delay per sequence, float32; an (H,) tensor when fixed (:func:`bandwidths`)."""
        return bandwidths(self.config, self.params(), T, band)

    def params(self) -> tuple[torch.Tensor, ...]:
        """The unconstrained parameters :func:`bandwidths` reads: (beta0, beta1, alpha), or (log_beta,) when fixed."""
        return (self.beta0, self.beta1, self.alpha) if self.adaptive else (self.log_beta,)

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(beta0, beta1, alpha), each (H,), from their unconstrained parameters (the map :meth:`forward`'s op
        applies with ``unconstrained=True``)."""
        return F.softplus(self.beta0), F.softplus(self.beta1), torch.sigmoid(self.alpha)

    def of_count(self, n: int) -> torch.Tensor:
        """The bandwidth (H,) of a row that sees n keys (cached decoding): the formula of :meth:`forward`."""
        if not self.adaptive:
            return self.log_beta.exp()
        b0, b1, a = self.coefficients()
        return b1 * float(n) ** a * (n > 0) + b0


def bandwidths(config: MosaicV2Config, params: tuple[torch.Tensor, ...], T: int,
               band: dict | torch.Tensor) -> torch.Tensor:
    """The rows' bandwidths of a band (``mosaic_attention``'s window and delay as a dict, or a (B, H, 2) band
    table) from a :class:`Bandwidth`'s parameters (each (H,); H may be both memories' heads at once): (H, T),
    or (B, H, T) for delays per sequence or a table, float32; ``exp(log_beta)`` (H,) when fixed. Adaptive: one
    fused launch each way (``mosaic_kernels.attention.row_bandwidth``, which applies the softplus and sigmoid
    of :meth:`Bandwidth.coefficients` in its kernels), the attention's reference on the reference ops."""
    if not config.adaptive_bandwidth:
        return params[0].exp()
    if isinstance(band, torch.Tensor):
        band = {"band": band}
    fused = ops_for(config, "mosaic_attention") is not reference_ops
    return (row_bandwidth if fused else reference_row_bandwidth)(*params, T, unconstrained=True, **band)


class AssociativeMemory(nn.Module):
    """One band of the past: keys, values, bandwidth and the band attention (no output projection)."""

    def __init__(self, config: MosaicV2Config, long_term: bool):
        super().__init__()
        self.config, self.long_term = config, long_term
        self.key = GatedKeyExtractor(config)
        self.value = PeekAheadValueExtractor(config)
        self.bandwidth = Bandwidth(config)

    def band(self, delay: int | torch.Tensor) -> dict:
        """The attention's band arguments: the last ``window`` keys (short-term), or every key up to t - delay
        (long-term; delay an int or one per sequence)."""
        return {"window": self.config.window, "delay": 1} if not self.long_term else {"delay": delay}

    def row_band(self, t: int, delay: int) -> tuple[int, int]:
        """(lo, hi): the keys lo <= j <= hi that row t reads (none when hi < lo): t - window .. t - 1 for the
        short-term memory, 0 .. t - delay for the long-term one."""
        return (max(t - self.config.window, 0), t - 1) if not self.long_term else (0, t - delay)

    def projections(self) -> list[nn.Linear]:
        """The layers that read x, keys' first, then W_v: a block runs both memories' as one product."""
        return [*self.key.projections(), self.value.W_v]

    def forward(self, x: torch.Tensor, delay: int | torch.Tensor,
                projected: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, T, d) -> (B, H, T, hs). ``projected``: the outputs of :meth:`projections` on x, when the caller
        computed them (otherwise computed here, as one product)."""
        projected = project(x, self.projections()) if projected is None else projected
        k, v = self.key(x, projected[:-1]), self.value(x, projected[-1])
        band = self.band(delay)
        scale = self.bandwidth(x.shape[1], band)
        return ops_for(self.config, "mosaic_attention").mosaic_attention(
            k, v, scale, **band, **layout_for(self.config, "mosaic_attention"))

    def step(self, x_t: torch.Tensor, cache: dict, pos: int,
             projected: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Row ``pos`` of :meth:`forward` in eval mode (delay ``delay_eval``): x_t (B, d) -> (B, H, hs).
        ``projected``: the outputs of :meth:`projections` on x_t, as in forward.

        The cache keeps keys and completed values from position ``cache["start"]`` on: the value v_{pos-1}
        needs x_pos (it peeks one step ahead), so it is completed here, before row pos reads. The
        short-term memory keeps only the last ``window`` positions (its cache is bounded); the long-term
        memory keeps them all and reads those up to pos - delay_eval."""
        c, val = self.config, self.value
        B, H = x_t.shape[0], c.n_head
        projected = project(x_t, self.projections()) if projected is None else projected
        k = self.key.step(x_t, cache.setdefault("key", {}), projected[:-1])
        u = projected[-1].to(k.dtype).view(B, H, -1)
        if "u_prev" in cache:
            v_prev = val.completed(cache["u_prev"], u)
            cache["V"] = torch.cat([cache["V"], v_prev[:, :, None]], dim=2) if "V" in cache else v_prev[:, :, None]
        cache["u_prev"] = u
        lo, hi = self.row_band(pos, c.delay_eval)
        y = torch.zeros_like(k)
        if hi >= lo:
            start = cache["start"]
            keys, vals = cache["K"][:, :, lo - start:hi + 1 - start], cache["V"][:, :, lo - start:hi + 1 - start]
            beta = self.bandwidth.of_count(hi - lo + 1).reshape(1, H, 1)
            y = read_row(k * beta, keys, vals)
        cache["K"] = torch.cat([cache["K"], k[:, :, None]], dim=2) if "K" in cache else k[:, :, None]
        cache.setdefault("start", pos)
        if not self.long_term and cache["K"].shape[2] > c.window:   # keys and values older than the window go
            cache["K"], cache["V"] = cache["K"][:, :, -c.window:], cache["V"][:, :, -(c.window - 1):]
            cache["start"] = pos + 1 - c.window
        return y


class SwiGLU(nn.Module):
    """The persistent memory: ``W_2 (silu(W_1 x) * W_3 x)``, then dropout."""

    def __init__(self, config: MosaicV2Config):
        super().__init__()
        d, h = config.n_embd, config.mlp_hidden
        self.w1 = nn.Linear(d, h, bias=config.bias)
        self.w3 = nn.Linear(d, h, bias=config.bias)
        self.c_proj = nn.Linear(h, d, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, T, d): ``c_proj(silu(w1 x) * w3 x)``, w1 and w3 as one product."""
        gate, up = project(x, [self.w1, self.w3])
        return self.dropout(self.c_proj(F.silu(gate) * up))


def band_table_of(config: MosaicV2Config, B: int, T: int, delay: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """The (B, 2H, 2) int32 table of (window, delay) of a block's 2H heads: the short-term memory's H heads see
    the last ``window`` keys (delay 1), the long-term memory's every key up to t - delay (window T: none), with
    ``delay`` an int or one per sequence ((B,) integer tensor). Four small writes on the device, no host copy."""
    H = config.n_head
    table = torch.empty((B, 2 * H, 2), dtype=torch.int32, device=device)
    table[:, :H, 0] = config.window
    table[:, :H, 1] = 1
    table[:, H:, 0] = T
    # An int delay past T sees nothing, as T itself does: clamped, it fits the table's int32.
    table[:, H:, 1] = delay[:, None] if isinstance(delay, torch.Tensor) else min(delay, T)
    return table


class MosaicV2Block(nn.Module):
    """Pre-LN block: x + c_proj([short, long](LN(x))), then + SwiGLU(LN(x))."""

    def __init__(self, config: MosaicV2Config):
        super().__init__()
        self.config = config
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.short = AssociativeMemory(config, long_term=False)
        self.long = AssociativeMemory(config, long_term=True)
        self.c_proj = nn.Linear(2 * config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.pmem = SwiGLU(config)

    def memory_inputs(self, h: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Both memories' input projections of h (keys, gates, decays, values) as one matrix product,
        split into the short-term memory's list and the long-term memory's (each its ``projections()``)."""
        n_short = len(self.short.projections())
        projected = project(h, self.short.projections() + self.long.projections())
        return projected[:n_short], projected[n_short:]

    def read_memories(self, h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Both memories on h (B, T, d) as one memory of 2H heads: (B, 2H, T, hs), the short-term memory's heads
        first (heads-last on the fused ops, so that merging the heads is a view). ``table``: the (B, 2H, 2)
        (window, delay) of every sequence and head (:func:`band_table_of`). Every op is per head,
        so each head's output is its memory's alone (``AssociativeMemory.forward``); the two memories'
        per-head parameters are concatenated (one launch), each projection is one product whose columns put
        the two memories' heads side by side."""
        c, short, long = self.config, self.short, self.long
        layers = [[short.key.W_k, long.key.W_k], [short.value.W_v, long.value.W_v]]
        if c.gated_keys:
            layers += [[short.key.W_g, long.key.W_g], [short.key.W_l, long.key.W_l]]
        wk_x, wv_x, *logits = project_groups(h, layers)
        # Every per-head parameter of the 2H heads in one concatenation (its backward only slices): rows of
        # a (n, 2H) view, each row one parameter, the short-term memory's H values then the long-term one's.
        per_head = [lambda m: m.key.rate_bias, lambda m: m.value.mix, lambda m: m.value.value_scale]
        n_bw = len(short.bandwidth.params())
        per_head += [lambda m, i=i: m.bandwidth.params()[i] for i in range(n_bw)]
        rows = torch.cat([f(m) for f in per_head for m in (short, long)]).view(len(per_head), 2 * c.n_head)
        rate_bias, mix, value_scale, *bandwidth = rows.unbind(0)
        k = gated_keys(c, split_heads(wk_x, 2 * c.n_head), rate_bias, *logits)
        v = peek_ahead_values(c, split_heads(wv_x, 2 * c.n_head), mix, exp10(value_scale))
        # The adaptive bandwidth goes in as its three (2H,) rows of unconstrained parameters: the attention computes
        # beta(n_t) per row in its forward kernel (no launch of its own), the same formula as bandwidths() applies.
        read = (dict(bandwidth=rows[-n_bw:], unconstrained=True) if c.adaptive_bandwidth
                else dict(scale=bandwidths(c, tuple(bandwidth), h.shape[1], table)))
        return ops_for(c, "mosaic_attention").mosaic_attention(k, v, band=table, **read,
                                                             **layout_for(c, "mosaic_attention"))

    def forward(self, x: torch.Tensor, delay: int | torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d) -> (B, T, d). ``table``: both memories' bands (:func:`band_table_of`), built
        here from ``delay`` when not given."""
        if table is None:
            table = band_table_of(self.config, x.shape[0], x.shape[1], delay, x.device)
        h = self.ln_1(x)
        x = x + self.resid_dropout(self.c_proj(merge_heads(self.read_memories(h, table))))
        return x + self.pmem(self.ln_2(x))

    def step(self, x_t: torch.Tensor, cache: dict, pos: int) -> torch.Tensor:
        """Row ``pos`` of :meth:`forward` in eval mode, reading and updating ``cache``: (B, d) -> (B, d)."""
        h = self.ln_1(x_t)
        short_in, long_in = self.memory_inputs(h)
        y = torch.cat([self.short.step(h, cache.setdefault("short", {}), pos, short_in).flatten(1),
                       self.long.step(h, cache.setdefault("long", {}), pos, long_in).flatten(1)], dim=-1)
        x_t = x_t + self.c_proj(y.to(x_t.dtype))
        return x_t + self.pmem(self.ln_2(x_t))


class MemoryMosaicV2(GenerateMixin, nn.Module):
    """Memory Mosaics v2 LM: token embedding (no position encoding), blocks, final LN, tied head.

    ``model(idx, targets=None, delay=None) -> (logits, loss)``. The long-term memory's delay: ``delay``
    when given (an int, or one per sequence as a (B,) integer tensor), else one drawn per sequence
    uniformly from [delay_min, delay_max] in training mode and ``delay_eval`` in eval mode.
    Linear layers start at N(0, 0.02) and the projections into the residual stream (``c_proj``) at
    N(0, 0.02 / sqrt(2 n_layer)), GPT2's scheme (docs/MODEL.md 8).
    """

    def __init__(self, config: MosaicV2Config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(MosaicV2Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, mod in self.named_modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)) and not name.endswith(("W_g", "W_l")):
                std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith("c_proj") else 0.02
                nn.init.normal_(mod.weight, 0.0, std)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)

    def delays(self, B: int, device: torch.device) -> int | torch.Tensor:
        """The long-term memory's delay for a batch of B sequences in the current mode."""
        c = self.config
        if not self.training:
            return c.delay_eval
        # int32: the dtype the attention and bandwidth kernels read (no cast per layer).
        return torch.randint(c.delay_min, c.delay_max + 1, (B,), device=device, dtype=torch.int32)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                delay: int | torch.Tensor | None = None, loss_chunk: int | None = None) -> tuple:
        """(logits (B, T, vocab), loss or None); ``delay``: the long-term memory's (default: drawn per sequence in
        training, fixed at evaluation); ``loss_chunk=R`` with targets: the loss R positions at a time
        (``chunked_lm_loss``), logits None, as the Memory Mosaic's."""
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        if delay is None:
            delay = self.delays(idx.shape[0], idx.device)
        x = self.wte(idx)
        table = band_table_of(self.config, idx.shape[0], idx.shape[1], delay, idx.device)  # one for every block
        for block in self.blocks:
            x = block(x, delay, table)
        return head_and_loss(x, self._head, targets, loss_chunk)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and the tied head: (..., d) -> (..., vocab)."""
        return self.lm_head(self.ln_f(x))

    def decode_step(self, tokens: torch.Tensor, cache: dict, logits: bool = True) -> torch.Tensor | None:
        """Next-token logits (B, vocab) after feeding ``tokens`` (B,) at the next position of ``cache`` (a
        dict that starts empty), in eval mode: per memory, O(1) key updates and one attention row over
        its band; the short-term caches hold ``window`` positions, the long-term ones grow. ``logits=False``
        updates the cache only and returns None."""
        if is_static(cache):
            raise ValueError("mosaic-v2 has no static decoding cache: generate without cuda_graph")
        pos = cache.get("length", 0)
        x = self.wte(tokens)
        for i, block in enumerate(self.blocks):
            x = block.step(x, cache.setdefault(i, {}), pos)
        cache["length"] = pos + 1
        return self._head(x) if logits else None

    def num_params(self) -> int:
        """Number of parameters, counting the tied embedding once."""
        return sum(p.numel() for p in self.parameters())
