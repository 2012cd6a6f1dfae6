"""Triton kernels shared by the ops: the softmax backward's row term, and the dropout mask generators
of the two softmax ops (attention over positions, persistent memory over slots); and ``launch``, the
launch with a fallback for GPUs of less shared memory than the tiles were tuned on.

Dropout: a probability of (b, h, row t, column j) survives when a 16-bit uniform is >= THRESHOLD
(= round(p * 2^16)). Two generators, both functions of (seed, b, h, t, j) only, so a forward and its
backward kernels regenerate the same mask whatever their tiles, and nothing is stored:
- the attention's: Philox4x32 keyed by (seed + b*H + h), counter t * GROUPS + j // 8 with
  GROUPS = ceil(columns / 8): one call gives 4 x 32 bits = 8 uniforms for 8 neighbouring columns;
- the persistent memory's: one multiply-xorshift hash per probability of counter t * columns + j,
  keyed by a hash of (seed + b*H + h) (_hash_uniforms).
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources
from triton.runtime.jit import JITFunction

from ._common import cdiv

# (kernel, device, its tuned launch settings) -> the pipeline depth that fits that device's shared memory,
# for the configs that did not fit as tuned. Empty on the H200 the tables were measured on.
_FITTED_STAGES: dict = {}


def _fit_key(kernel, meta: dict) -> tuple:
    device = torch.cuda.current_device() if torch.cuda.is_available() else -1  # Triton launches on the current one
    return kernel, device, tuple(sorted(meta.items()))


# Direct launches. ``kernel[grid](*args)`` spends most of its host time choosing the compiled variant that
# the arguments select: it binds every argument to its parameter, specialises each (dtype, 16-byte alignment,
# divisibility by 16 of integers), builds a cache key that includes the printed launch options, and reads
# Triton's runtime settings. Our launches repeat a handful of argument sets per training step, so ``launch``
# remembers the compiled kernel per (kernel, device, launch settings, arguments) and launches it directly the
# next time the same key comes. The key holds every integer's exact value and every tensor's dtype and address
# modulo 16: at least as fine as Triton's specialisation, so a hit can only select the variant Triton's own
# path would select. What is skipped: the binding, the key, and Triton's check that the kernel's globals did
# not change since it was compiled (ours are module constants), and the options Triton reads from its settings
# at each launch (TRITON_DEBUG set after the first launch takes effect on new keys only). The launch itself is
# the compiled kernel's own (``compiled[grid](*args, stream=...)``), so launch hooks (the profilers') still
# run. On by default since 2026-12-07: its GPU test (tests/kernels/test_launch.py: every op's results bitwise
# against Triton's path) and every kernel test through it (615 passed, 1 declared xfail, none failed; H100, torch
# 2.11, Triton 3.6) passed, and it takes 17-46% off each op's eager fwd+bwd host time (BENCHMARKS.md "Direct
# launch of the compiled kernels"). Triton 3.9's compiled-kernel launcher takes the same arguments (every
# parameter in signature order). MOSAIC_DIRECT_LAUNCH=0, or DIRECT_LAUNCH = False, turns it off. The
# interpreter (TRITON_INTERPRET=1) never takes it: its kernels are not JITFunctions.
DIRECT_LAUNCH = os.environ.get("MOSAIC_DIRECT_LAUNCH", "1") != "0"
_COMPILED: dict = {}
_COMPILED_MAX = 4096  # cached generation sees a new T each token: forget everything past this many keys
_SIGNATURES: dict = {}  # kernel -> (parameter names, their defaults)
_RUNTIME: list = []  # [get_current_device, get_current_stream] once a direct launch ran


def launch_key(kernel, device: int, args: tuple, meta: dict) -> tuple:
    """The direct-launch cache key of ``kernel[grid](*args, **meta)`` on CUDA device ``device``: integers
    by value, tensors by (dtype, address mod 16), other arguments (floats, bools, None) by type and, for
    bools and None, value; the launch settings with their names, in the caller's order."""
    return (id(kernel), device, tuple(meta.items()),  # kernels are module globals: their ids stay theirs
            tuple(a if type(a) is int else (a.dtype, a.data_ptr() % 16) if isinstance(a, torch.Tensor)
                  else (float,) if type(a) is float else (type(a), a) for a in args))


def _tail_args(kernel, n_args: int, meta: dict) -> tuple | None:
    """The values of the parameters after the first ``n_args`` in signature order (``meta`` by name, or
    the default): with the positional arguments, every parameter's value, which is what Triton's own launch
    hands the compiled kernel (the constexprs too; its launcher skips them). None when one has no value."""
    if kernel not in _SIGNATURES:
        params = inspect.signature(kernel.fn).parameters
        _SIGNATURES[kernel] = (tuple(params), {n: p.default for n, p in params.items()
                                               if p.default is not inspect.Parameter.empty})
    names, defaults = _SIGNATURES[kernel]
    tail = []
    for name in names[n_args:]:
        if name in meta:
            tail.append(meta[name])
        elif name in defaults:
            tail.append(defaults[name])
        else:
            return None
    return tuple(tail)


def _direct_runtime() -> list:
    """[get_current_device, get_current_stream] of Triton's active driver: the device and stream its own
    launch would use."""
    if not _RUNTIME:
        drv = triton.runtime.driver.active
        _RUNTIME.extend((drv.get_current_device, drv.get_current_stream))
    return _RUNTIME


def launch(kernel, grid: tuple, *args, **meta) -> None:
    """``kernel[grid](*args, **meta)``, the compiled kernel launched directly when the same arguments came
    before (see DIRECT_LAUNCH above), and retried with one pipeline stage fewer (down to 1) while Triton
    reports that the config needs more shared memory than this GPU has.

    The tile tables were tuned on an H200 (227 KiB of shared memory a block); a GPU with less, or a
    variant whose extra tiles push a config over (the attention forward with dropout at D=128 and long
    T needed 240 KiB at 3 stages), would otherwise fail. ``num_stages`` only sets how many loop
    iterations' loads are in flight: the tiles and the order of every sum stay those of the tuned
    config, so the results do not change with it (tests/kernels/test_launch.py checks this bitwise on
    the GPU). The depth that fit is remembered per kernel, device and config, so the failing compile
    happens once; Triton raises before anything is enqueued, so a failed try has no effect."""
    direct = DIRECT_LAUNCH and type(kernel) is JITFunction
    if direct:
        get_device, get_stream = _direct_runtime()
        device = get_device()
        dkey = launch_key(kernel, device, args, meta)
        hit = _COMPILED.get(dkey)
        if hit is not None:  # (the compiled kernel, the values of the parameters after ``args``)
            # A compiled kernel's launcher reads all three grid sizes (Triton's path pads them itself).
            hit[0][(*grid, 1, 1)[:3]](*args, *hit[1], stream=get_stream(device))
            return
    key = None
    if _FITTED_STAGES:
        key = _fit_key(kernel, meta)
        if key in _FITTED_STAGES:
            meta = {**meta, "num_stages": _FITTED_STAGES[key]}
    while True:
        try:
            compiled = kernel[grid](*args, **meta)
            # Triton returns the compiled kernel it launched (None when a test stubs the launch out).
            tail = _tail_args(kernel, len(args), meta) if direct and compiled is not None else None
            if tail is not None:
                if len(_COMPILED) >= _COMPILED_MAX:
                    _COMPILED.clear()
                _COMPILED[dkey] = (compiled, tail)
            return
        except OutOfResources as e:
            stages = meta.get("num_stages", 3)  # Triton's default depth
            if e.name != "shared memory" or stages <= 1:
                raise
            if key is None:
                key = _fit_key(kernel, meta)
            meta = {**meta, "num_stages": stages - 1}
            _FITTED_STAGES[key] = stages - 1


@triton.jit
def row_dot(y_base, dy, rows, offs_d, syt, syd, m2):
    """<y_t, dy_t> (rows,) float32 for a loaded (rows, D) tile dy and the same rows of y (one head's base pointer,
    strides syt, syd; m2 the tile's mask): the softmax backward's row term. 16-bit products are exact in float32.
    Used by row_delta's kernel and inside the attention's backward kernels (attention.function.DELTA_IN_KERNEL)."""
    y = tl.load(y_base + rows[:, None] * syt + offs_d[None, :] * syd, mask=m2, other=0.0)
    return tl.sum(y.to(tl.float32) * dy.to(tl.float32), 1)


@triton.jit
def _row_delta_kernel(Y, DY, DELTA, syb, syh, syt, sdb, sdh, sdt, sdd, H, T, D,
                      BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # delta[b, h, t] = <dy_t, y_t>, the softmax backward's row term. y and dy are (B, H, T, D) with
    # any strides (y's last stride 1); delta is contiguous (B, H, T) float32.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m2 = (rows[:, None] < T) & (offs_d[None, :] < D)
    dy = tl.load(DY + b * sdb + h * sdh + rows[:, None] * sdt + offs_d[None, :] * sdd, mask=m2, other=0.0)
    tl.store(DELTA + pid_bh * T + rows, row_dot(Y + b * syb + h * syh, dy, rows, offs_d, syt, 1, m2), mask=rows < T)


def row_delta(y: torch.Tensor, dy: torch.Tensor, block_m: int, block_d: int, empty: Callable) -> torch.Tensor:
    """delta = rowsum(y * dy) as (B, H, T) float32, for (B, H, T, D) views y (last stride 1) and dy."""
    B, H, T, D = y.shape
    delta = empty((B, H, T), device=y.device, dtype=torch.float32)
    launch(_row_delta_kernel, (cdiv(T, block_m), B * H),
           y, dy, delta, *y.stride()[:3], *dy.stride(), H, T, D, BLOCK_M=block_m, BLOCK_D=block_d)
    return delta


UNIFORM_BITS = 16  # dropout compares a 16-bit uniform with round(p * 2^16)
# Philox4x32 with 7 rounds is the fewest that pass TestU01's BigCrush (Salmon et al., SC'11);
# Triton's default is 10. The generator runs once per 8 probabilities in each kernel that needs them.
PHILOX_ROUNDS = tl.constexpr(7)


@triton.jit
def _keep_tile(seed, rows, col0, GROUPS, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, THRESHOLD: tl.constexpr):
    """(BLOCK_R, BLOCK_C) keep mask for rows ``rows`` and columns [col0, col0 + BLOCK_C); col0 is a
    multiple of 8 and GROUPS the Philox calls per row."""
    groups = col0 // 8 + tl.arange(0, BLOCK_C // 8)
    counter = rows[:, None] * GROUPS + groups[None, :]                     # (R, C/8)
    r0, r1, r2, r3 = tl.randint4x(seed, counter, PHILOX_ROUNDS)           # 4 x (R, C/8) uint32
    u = tl.join(tl.join(tl.join(r0 & 0xFFFF, r0 >> 16), tl.join(r1 & 0xFFFF, r1 >> 16)),
                tl.join(tl.join(r2 & 0xFFFF, r2 >> 16), tl.join(r3 & 0xFFFF, r3 >> 16)))
    u = tl.reshape(u, (BLOCK_R, BLOCK_C))                                  # 8 uniforms per group
    return u >= THRESHOLD


# The persistent memory's slot-dropout generator: one hash per probability, computed in the score tile's
# own layout. Philox gives 8 uniforms a call but they must be interleaved into the tile (tl.join +
# reshape), which costs layout conversions through shared memory in every tile; the hash has none
# (BENCHMARKS.md "Persistent memory" has the generators' A/B).
HASH_MULTIPLIER = tl.constexpr(0x61C88647)  # odd (2^32 / golden ratio, negated): spreads the counter


@triton.jit
def _hash32(x):
    """A bijection of uint32 with strong avalanche: two xorshift-multiply rounds and a final xorshift,
    the constants of C. Wellons' "lowbias32" (hash-prospector). Used once per (b, h) stream for its key."""
    x ^= x >> 16
    x *= 0x21F0AAAD
    x ^= x >> 15
    x *= 0x735A2D97
    x ^= x >> 15
    return x


@triton.jit
def _hash_key(seed):
    """The 32-bit key of one (b, h) stream from its int64 seed (seed + b*H + h): both halves mixed, so
    neighbouring heads and seeds get unrelated keys."""
    lo = (seed & 0xFFFFFFFF).to(tl.uint32)
    hi = (seed >> 32).to(tl.uint32)
    return _hash32(lo ^ _hash32(hi + 0x2545F491))


@triton.jit
def _hash_terms(rows, cols, COLUMNS):
    """The two parts of the counter (t * COLUMNS + j) * M for rows t and columns j, as uint32 vectors to
    broadcast and add. The counter is a bijection of (t, j) for t * COLUMNS + j < 2^32, so the mask does
    not depend on tiles; the odd multiplier M spreads neighbouring counters over all 32 bits."""
    return rows.to(tl.uint32) * (COLUMNS.to(tl.uint32) * HASH_MULTIPLIER), cols.to(tl.uint32) * HASH_MULTIPLIER


@triton.jit
def _hash_uniforms(key, row_terms, col_terms):
    """16-bit uniforms of broadcastable counter parts (from _hash_terms): x = (counter ^ key) * A,
    x ^= x >> 16, x *= B, top 16 bits. Seven integer operations a probability: each of the top bits of
    the last product depends on every bit of x. The mask's keep rate, uniformity and independence
    between neighbouring slots, rows, heads and seeds are tested (tests/kernels/test_dropout_hash.py)."""
    x = ((row_terms + col_terms) ^ key) * 0x21F0AAAD
    x ^= x >> 16
    x *= 0x735A2D97
    return x >> 16


@triton.jit
def _keep_tile_hash(key, rows, cols, COLUMNS, THRESHOLD: tl.constexpr):
    """(len(rows), len(cols)) keep mask of the hash generator for rows t and columns j (COLUMNS per row)."""
    row_terms, col_terms = _hash_terms(rows, cols, COLUMNS)
    return _hash_uniforms(key, row_terms[:, None], col_terms[None, :]) >= THRESHOLD


@triton.jit
def _keep_tile_hash_transposed(key, rows, cols, COLUMNS, THRESHOLD: tl.constexpr):
    """_keep_tile_hash's mask as (len(cols), len(rows)), built in place (no transpose of a tile)."""
    row_terms, col_terms = _hash_terms(rows, cols, COLUMNS)
    return _hash_uniforms(key, col_terms[:, None], row_terms[None, :]) >= THRESHOLD


@triton.jit
def _keep_mask_kernel(KEEP, SEED, H, T, P, GROUPS, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
                      THRESHOLD: tl.constexpr, RNG: tl.constexpr):
    # The mask the kernels use, written out as (B, H, T, P) int8 (tests only).
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    seed = tl.load(SEED) + pid_bh
    if RNG == "hash":
        key = _hash_key(seed)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    for col0 in range(0, P, BLOCK_P):
        cols = col0 + tl.arange(0, BLOCK_P)
        if RNG == "hash":
            keep = _keep_tile_hash(key, rows, cols, P, THRESHOLD)
        else:
            keep = _keep_tile(seed, rows, col0, GROUPS, BLOCK_T, BLOCK_P, THRESHOLD)
        ptr = KEEP + (pid_bh * T + rows[:, None]) * P + cols[None, :]
        tl.store(ptr, keep.to(tl.int8), mask=(rows[:, None] < T) & (cols[None, :] < P))


def dropout_threshold(dropout_p: float) -> int:
    """The integer threshold of a 16-bit uniform below which a probability is dropped."""
    return int(round(dropout_p * (1 << UNIFORM_BITS)))


def keep_scale(threshold: int) -> float:
    """1 / (1 - p) for the p the threshold really gives (p rounded to a multiple of 2^-16)."""
    return 1.0 / (1.0 - threshold / (1 << UNIFORM_BITS))


def philox_groups(columns: int) -> int:
    """Philox calls per row: one per 8 columns (the counter of row t, column j is t * groups + j // 8)."""
    return cdiv(columns, 8)


def draw_seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A fresh dropout seed (Philox's for the attention, the hash key's source for the persistent
    memory), an int64 tensor of one element on ``device``, from ``generator`` (or the global generator
    of that device)."""
    return torch.randint(0, 1 << 62, (1,), device=device, dtype=torch.int64, generator=generator)


def dropout_keep_mask(seed: torch.Tensor, B: int, H: int, T: int, P: int, dropout_p: float,
                      rng: str = "philox") -> torch.Tensor:
    """The (B, H, T, P) bool mask of kept probabilities that the kernels use for ``seed`` (an int64
    tensor of one element on the kernels' device), over T rows and P columns (slots for the
    persistent memory; P = T positions for the attention), from generator ``rng``: "philox" (the
    attention's) or "hash" (the persistent memory's). For tests and inspection."""
    if rng not in ("philox", "hash"):
        raise ValueError(f"rng must be 'philox' or 'hash', got {rng!r}")
    keep = torch.empty((B, H, T, P), device=seed.device, dtype=torch.int8)
    bt = 16
    _keep_mask_kernel[(cdiv(T, bt), B * H)](
        keep, seed, H, T, P, philox_groups(P), BLOCK_T=bt, BLOCK_P=64, THRESHOLD=dropout_threshold(dropout_p),
        RNG=rng)
    return keep.bool()
