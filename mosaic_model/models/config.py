"""Configurations of the Memory Mosaic language model and its GPT2 baseline."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from mosaic_kernels.registry import MODEL_REFERENCE_OPS

KERNEL_CHOICES = ("fused", "reference")
PMEM_KERNEL_CHOICES = ("triton", "sdpa")
REFERENCE_OP_CHOICES = MODEL_REFERENCE_OPS  # the C-mem ops of the op registry


class ConfigError(ValueError):
    """A configuration field with a value it cannot take: ``field`` names it, the message says what was
    expected (``str(e)`` is ``"<field> <what>"``; the command lines print the field as its flag)."""

    def __init__(self, field: str, what: str):
        super().__init__(f"{field} {what}")
        self.field, self.what = field, what


def check_at_least_one(config: object, names: tuple[str, ...]) -> None:
    """ConfigError for the first of ``names`` (integer fields of ``config``) that is below 1."""
    for name in names:
        value = getattr(config, name)
        if value < 1:
            raise ConfigError(name, f"must be >= 1, got {value}")


def check_probability(name: str, value: float) -> None:
    """ConfigError unless ``value`` is a dropout probability in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(name, f"must be in [0, 1), got {value}")


def check_heads(n_embd: int, n_head: int) -> None:
    """ConfigError unless the width splits into whole heads."""
    if n_embd % n_head:
        raise ConfigError("n_embd", f"({n_embd}) must be divisible by n_head ({n_head})")


def check_kernels(kernels: str, reference_ops: tuple) -> tuple:
    """ConfigError unless ``kernels`` is a kernel choice and ``reference_ops`` names C-mem ops; returns them as a tuple."""
    if kernels not in KERNEL_CHOICES:
        raise ConfigError("kernels", f"must be one of {KERNEL_CHOICES}, got {kernels!r}")
    bad = [op for op in reference_ops if op not in REFERENCE_OP_CHOICES]
    if bad:
        raise ConfigError("reference_ops", f"must be among {REFERENCE_OP_CHOICES}, got {bad}")
    return tuple(reference_ops)


def swiglu_hidden(n_embd: int, mlp_hidden: int | None) -> int:
    """The SwiGLU hidden width: ``mlp_hidden``, or 8/3 n_embd rounded up to a multiple of 64 when None."""
    if mlp_hidden is not None and mlp_hidden < 1:
        raise ConfigError("mlp_hidden", f"must be >= 1 (or None for 8/3 n_embd), got {mlp_hidden}")
    return mlp_hidden if mlp_hidden is not None else -(-8 * n_embd // 3 // 64) * 64


class ConfigFields:
    """What every model config offers: the dimensions per head and the fields as a plain dict."""

    @property
    def head_size(self) -> int:
        """Dimensions per head."""
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        """The fields as a plain dict (what checkpoints store)."""
        return asdict(self)


@dataclass
class MosaicConfig(ConfigFields):
    """Memory Mosaic hyper-parameters; defaults are the Library's GPT2-small match (docs/MODEL.md 3).

    Choices where the official versions differ (docs/MODEL.md 5) are fields:
      attn_dropout: C-mem attention-probability dropout. 0 follows Library eft (the BabiStories runs);
        Library regular and nano apply dropout there. Both kernel paths implement it (the fused one
        regenerates its mask in the backward; the two paths draw different masks).
      key_scale_max: clamp of ``10 * q`` in the key bandwidth ``exp(min(10 q, key_scale_max))``
        (Library: 5, zero gradient above).
      norm_eps: lower bound of the key/value L2 norms (the Library has none and can give NaN).
      logit_scale: multiply logits by ``1/sqrt(n_embd)`` (Library) or not (nano).
      embed_std: None for the Library's tied embedding, N(0, 1/sqrt(n_embd)); a number for N(0, embed_std).
        ``logit_scale=False, embed_std=0.02`` is GPT2's output layer, which removes the Library model's
        slow start under a long warm-up (REPRODUCTION.md, "The paper's width").
      kernels: "fused" runs mosaic_kernels' public ops (Triton on CUDA, the reference on CPU);
        "reference" always runs the PyTorch references.
      reference_ops: with kernels="fused", the C-mem ops (of REFERENCE_OP_CHOICES) that run their
        PyTorch reference instead of the kernel, the others staying fused: which kernel's rounding
        matters to a whole run, one op at a time (the official code's bf16 casts stay with
        kernels="reference" only).
      pmem_kernel: with kernels="fused", the P-mem retrieval runs mosaic_kernels.persistent_memory
        ("triton") or SDPA on the shared slots ("sdpa", the default: the faster of the two in the compiled
        training step, BENCHMARKS.md "Persistent memory"; the batch folded into the query rows, or kept in
        float32 with few heads x slots: PersistentMemory.folds_batch).
    """

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 512
    vocab_size: int = 50304
    dropout: float = 0.05  # residual dropout after each c_proj (the Library's hd_dropout)
    ic_dropout: float | None = None  # P-mem slot-probability dropout; None = same as dropout
    attn_dropout: float = 0.0
    bias: bool = False
    pmem_size: int | None = None  # None = 3.5 * n_embd (2688 at 768), the parameter-parity size
    pmem_count: int = 1
    key_scale_max: float = 5.0
    norm_eps: float = 1e-12
    logit_scale: bool = True
    embed_std: float | None = None
    kernels: str = "fused"
    pmem_kernel: str = "sdpa"
    reference_ops: tuple = ()

    def __post_init__(self):
        check_at_least_one(self, ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "pmem_count"))
        check_heads(self.n_embd, self.n_head)
        self.reference_ops = check_kernels(self.kernels, self.reference_ops)
        if self.pmem_kernel not in PMEM_KERNEL_CHOICES:
            raise ConfigError("pmem_kernel", f"must be one of {PMEM_KERNEL_CHOICES}, got {self.pmem_kernel!r}")
        if self.reference_ops and self.kernels != "fused":
            raise ConfigError("reference_ops", f"picks ops of the fused path; kernels={self.kernels!r} runs every op "
                                               "on the reference")
        check_probability("dropout", self.dropout)
        check_probability("attn_dropout", self.attn_dropout)
        if self.ic_dropout is not None:
            check_probability("ic_dropout", self.ic_dropout)
        if self.embed_std is not None and not self.embed_std > 0:
            raise ConfigError("embed_std", f"must be > 0 (or None for the Library's 1/sqrt(n_embd)), got {self.embed_std}")
        if self.pmem_size is not None and self.pmem_size < 1:
            raise ConfigError("pmem_size", f"must be >= 1 (or None for 3.5 x n_embd), got {self.pmem_size}")
        if self.pmem_size is None:
            self.pmem_size = int(3.5 * self.n_embd)
        if self.ic_dropout is None:
            self.ic_dropout = self.dropout


@dataclass
class GPTConfig(ConfigFields):
    """GPT2 baseline as the paper used it (docs/MODEL.md 4): learned positions, tanh GELU, SDPA."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 512
    vocab_size: int = 50304
    dropout: float = 0.05
    bias: bool = False

    def __post_init__(self):
        check_at_least_one(self, ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"))
        check_heads(self.n_embd, self.n_head)
        check_probability("dropout", self.dropout)


@dataclass
class MosaicV2Config(ConfigFields):
    """Memory Mosaics v2 ("Memory Mosaics at scale", Zhang and Bottou, 2025) as docs/MODEL.md 8 states it.

    Per block: a short-term memory (keys t - window .. t - 1), a long-term memory (keys 0 .. t - m, m drawn
    per sequence from [delay_min, delay_max] in training, delay_eval otherwise), each with n_head heads,
    concatenated and mixed by one projection; then a SwiGLU feed-forward layer (the persistent memory).
    No position encoding. The paper's unknowns are fields, with the defaults MODEL.md names:
      gated_keys: keys from the gated time-varying scan ``kbar_t = g_t W_k x_t + lambda_t kbar_{t-1}``
        with per-head ``g_t = exp(W_g x_t)`` and ``lambda_t = exp(-|W_l x_t + b_l|)``; False gives v1's
        keys (one constant decay per head, no gate): the ablation of the gate.
      adaptive_bandwidth: the row's bandwidth ``beta(n) = beta1 n^alpha + beta0`` per head, n the number
        of keys the row sees; False gives one learned bandwidth per head (v1's): the ablation.
      mlp_hidden: SwiGLU hidden width (None: 8/3 n_embd rounded up to a multiple of 64).
    """

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50304
    dropout: float = 0.0
    bias: bool = False
    window: int = 256
    delay_min: int = 64
    delay_max: int = 256
    delay_eval: int = 64
    gated_keys: bool = True
    adaptive_bandwidth: bool = True
    mlp_hidden: int | None = None
    norm_eps: float = 1e-12
    kernels: str = "fused"
    reference_ops: tuple = ()

    def __post_init__(self):
        check_at_least_one(self, ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "window", "delay_min",
                                  "delay_eval"))
        check_heads(self.n_embd, self.n_head)
        check_probability("dropout", self.dropout)
        if self.delay_max < self.delay_min:
            raise ConfigError("delay_max", f"({self.delay_max}) must be >= delay_min ({self.delay_min})")
        self.reference_ops = check_kernels(self.kernels, self.reference_ops)
        self.mlp_hidden = swiglu_hidden(self.n_embd, self.mlp_hidden)


@dataclass
class LlamaConfig(ConfigFields):
    """The llama-style baseline of Memory Mosaics v2 (docs/MODEL.md 9): RMSNorm, rotary positions, SDPA,
    SwiGLU, no biases, tied head."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50304
    dropout: float = 0.0
    bias: bool = False
    mlp_hidden: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self):
        check_at_least_one(self, ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"))
        check_heads(self.n_embd, self.n_head)
        check_probability("dropout", self.dropout)
        if self.bias:
            raise ConfigError("bias", "must be False: the llama-style baseline has no biases")
        if (self.n_embd // self.n_head) % 2:
            raise ConfigError("n_head", f"must leave an even head size for rotary pairs, got {self.n_embd // self.n_head}")
        if self.rope_theta <= 1:
            raise ConfigError("rope_theta", f"must be > 1, got {self.rope_theta}")
        self.mlp_hidden = swiglu_hidden(self.n_embd, self.mlp_hidden)
