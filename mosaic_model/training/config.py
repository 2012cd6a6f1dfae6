"""The training configuration: typed sections whose fields carry their default and help text once.

``TrainConfig`` is flat (``config.n_layer``, ``dataclasses.replace(config, lr=1e-3)``) and made of one
dataclass per section (:class:`ModelArgs`, :class:`TaskArgs`, :class:`TextArgs`, :class:`OptimArgs`,
:class:`RunArgs`), from which ``mosaic-train``'s argument parser is built (``mosaic_model.cli.train``):
each field is a flag ``--field-name`` in its section's group, with its default and help from here.
Presets are data (``training/presets/``). :meth:`TrainConfig.resolved` is the one validation: it
fills the derived fields (the steps of an epoch count, ``auto`` device and dtype), checks every
field, and hands the model fields to the model's own config, whose checks are the only ones of them.
"""
from __future__ import annotations

import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace

from ..data.text import DOC_SPLITS
from ..models.build import MODEL_CHOICES, config_class
from ..models.config import KERNEL_CHOICES, PMEM_KERNEL_CHOICES, REFERENCE_OP_CHOICES, ConfigError, check_at_least_one
from ..runtime import DTYPE_CHOICES, resolve_device, resolve_dtype

TASK_CHOICES = ("icl", "lm")
SCHEDULE_CHOICES = ("cosine", "regbench")
FINAL_FROM_CHOICES = ("last", "best")


def arg(default: object, help: str, *, choices: tuple | None = None, type: type | None = None,
        nargs: str | None = None, metavar: str | None = None) -> object:
    """A config field with its command-line help. ``type`` is the parser's (needed where the default is
    None); booleans become switches that are off by default; ``nargs`` makes a tuple field a list flag."""
    return field(default=default, metadata={"help": help, "choices": choices, "type": type, "nargs": nargs,
                                            "metavar": metavar})


@dataclass
class ModelArgs:
    """model"""

    model: str = arg("mosaic", "Memory Mosaic, the GPT2 baseline, Memory Mosaics v2 (mosaic-v2: its own defaults for "
                               "window and delays, docs/MODEL.md 8) or its llama-style baseline (llama, docs/MODEL.md 9)",
                     choices=MODEL_CHOICES)
    n_layer: int = arg(2, "blocks")
    n_head: int = arg(4, "heads per block")
    n_embd: int = arg(64, "width d")
    pmem_size: int | None = arg(None, "P-mem slots per head (unset: 3.5 x n_embd)", type=int)
    dropout: float = arg(0.05, "residual dropout (and P-mem slot dropout for the Memory Mosaic)")
    attn_dropout: float = arg(0.0, "Memory Mosaic C-mem attention dropout (lib-naive). GPT2 drops attention "
                                   "weights at --dropout, so for it this is 0 or --dropout")
    kernels: str = arg("fused", "fused Triton ops or the PyTorch references", choices=KERNEL_CHOICES)
    reference_ops: tuple = arg((), "with --kernels fused, these C-mem ops run their PyTorch reference "
                                   f"({', '.join(REFERENCE_OP_CHOICES)}): which kernel's rounding a run feels",
                               choices=REFERENCE_OP_CHOICES, nargs="+", metavar="OP")
    pmem_kernel: str = arg("sdpa", "P-mem retrieval with --kernels fused: our Triton kernel or SDPA",
                           choices=PMEM_KERNEL_CHOICES)
    output_layer: str = arg("library", "mosaic: the Library's output layer (logits / sqrt(d), tied embedding N(0, 1/sqrt(d))) "
                                       "or GPT2's (no scale, N(0, 0.02)), which starts fast under a long warm-up",
                            choices=("library", "gpt2"))
    window: int = arg(256, "mosaic-v2: the short-term memory's window h (keys t-h .. t-1)")
    delay_min: int = arg(64, "mosaic-v2: the long-term memory's smallest delay m in training (keys 0 .. t-m)")
    delay_max: int = arg(256, "mosaic-v2: its largest delay in training (delay_min = delay_max: a fixed delay)")
    delay_eval: int = arg(64, "mosaic-v2: its delay in evaluation and generation")
    fixed_bandwidth: bool = arg(False, "mosaic-v2: one learned bandwidth per head instead of beta(n) (an ablation)")
    ungated_keys: bool = arg(False, "mosaic-v2: v1's keys, one constant decay per head and no gate (an ablation)")


@dataclass
class TaskArgs:
    """in-context task (--task icl)"""

    num_train: int = arg(2000, "training languages (one sequence each)")
    num_test: int = arg(200, "held-out languages (half test, half val)")
    max_string_len: int = arg(19, "RegBench uses 49")
    task_seed: int = arg(0, "seed of the generated languages")
    iid: bool = arg(False, "test and val sequences are new sequences of the training languages (paper Table 4)")


@dataclass
class TextArgs:
    """text (--task lm)"""

    data: str | None = arg(None, "training text: a file or folder (.txt/.jsonl/.json, optionally .gz/.xz), "
                                 "hf:NAME[:SPLIT[:COLUMN]] or babistories:DIR[:SPLIT]", type=str)
    val_data: str | None = arg(None, "validation text (same forms; unset: --val-fraction of --data)", type=str)
    val_fraction: float = arg(0.05, "documents of --data held out for validation")
    split_seed: int = arg(0, "seed of the document split")
    doc_split: str = arg("auto", ".txt documents: auto (<|endoftext|> if present, else blank lines), eot, blank, "
                                 "line, file", choices=DOC_SPLITS)
    block_size: int = arg(256, "context length T")
    tokenizer_dir: str | None = arg(None, "folder with GPT-2's vocab.bpe and encoder.json (unset: "
                                          "$MOSAIC_TOKENIZER_DIR, else the files shipped with the package)", type=str)
    cache_dir: str | None = arg(None, "token cache (unset: $MOSAIC_CACHE_DIR, else ~/.cache/mosaic)", type=str)
    eval_batches: int | None = arg(None, "batches of random windows per split and evaluation (unset: as many "
                                         "as cover the tokens trained between two evaluations, 1 to 20)", type=int)


@dataclass
class OptimArgs:
    """optimisation"""

    steps: int = arg(150, "optimizer steps")
    epochs: int | None = arg(None, "--task icl: train this many epochs of the training languages instead of --steps "
                                   "(warm-up: the first tenth; evaluations: every epoch unless --eval-every is given)",
                             type=int)
    step_cap: int | None = arg(None, "with --epochs: at most this many steps; the schedule is shrunk to fit, same shape",
                               type=int)
    schedule: str = arg("cosine", "cosine: linear warm-up from 0, then cosine to the floor at --steps; regbench: timm's "
                                  "CosineLRScheduler as seq_icl sets it (warm-up from 1e-6, cosine measured from step 0)",
                        choices=SCHEDULE_CHOICES)
    batch_size: int = arg(32, "sequences per micro-step per process")
    grad_accum: int = arg(1, "micro-steps per optimizer step")
    lr: float = arg(3e-3, "peak learning rate")
    min_lr_ratio: float = arg(0.1, "cosine floor, as a fraction of --lr")
    warmup: int = arg(30, "linear warm-up steps")
    weight_decay: float = arg(0.1, "AdamW weight decay")
    decay_all: bool = arg(False, "decay every parameter (seq_icl's ICLL recipe) instead of the Library groups")
    beta1: float = arg(0.9, "AdamW beta1, in [0, 1)")
    beta2: float = arg(0.99, "AdamW beta2, in [0, 1)")
    grad_clip: float = arg(1.0, "global gradient-norm clip; 0 disables")
    loss_chunk: int | None = arg(None, "positions whose logits the training loss makes at a time, recomputed in the "
                                       "backward, so that the (batch, block, vocab) logits never exist whole; 0 = all "
                                       "at once (unset: all at once on CUDA, chunks of 128 MiB of logits on the CPU)",
                                 type=int)


@dataclass
class RunArgs:
    """run"""

    device: str = arg("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = arg("auto", "auto = bf16 autocast on CUDA, float32 on CPU", choices=DTYPE_CHOICES)
    compile: bool = arg(False, "torch.compile the model for training")
    cuda_graph: bool = arg(False, "record each optimizer step once as a CUDA graph and replay it (small models, whose "
                                  "steps are bound by the host). Same arithmetic; other dropout masks of the same law; "
                                  "in-context batches padded to the block size, which the causal models ignore "
                                  "(mosaic_model/training/step.py)")
    seed: int = arg(1337, "seed of weights, batches and dropout")
    eval_every: int | None = arg(50, "steps between evaluations (and checkpoints)", type=int)
    final_from: str = arg("last", "the final (test) metrics from the last weights or those of best validation loss "
                          "(best.pt; a resumed run needs its run's best.pt, or it ends with an error)",
                          choices=FINAL_FROM_CHOICES)
    save_every: int | None = arg(None, "steps between checkpoints (unset: at every evaluation); one is always "
                                       "written when the run stops or ends. Many runs sharing one disk can wait more "
                                       "on it than they train", type=int)
    no_best: bool = arg(False, "do not keep best.pt (the weights of best val loss)")
    patience: int | None = arg(None, "end the run once the validation loss has not improved for this many "
                                     "evaluations in a row (--eval-every steps each): it finishes there as at --steps, "
                                     "final metrics included; unset: train every step", type=int)
    eval_batch_size: int = arg(50, "sequences per evaluation batch")
    log_every: int = arg(10, "steps between training-loss log lines")
    out_dir: str = arg("runs/icl", "run folder: metrics.jsonl, ckpt.pt, best.pt")
    resume: bool = arg(False, "continue the run in --out-dir from its checkpoint (a larger --steps extends it)")
    overwrite: bool = arg(False, "replace the run in --out-dir (its checkpoints, metrics, config and provenance are "
                                 "deleted first); without it or --resume, a folder holding a run is an error")
    max_steps_this_run: int | None = arg(None, "stop after this many steps, with a checkpoint to --resume from "
                                               "(time-sliced jobs)", type=int)
    time_limit: float | None = arg(None, "stop after this many seconds of training, with a checkpoint to --resume "
                                         "from (one process)", type=float)
    quiet: bool = arg(False, "no progress bar")


SECTIONS = (ModelArgs, TaskArgs, TextArgs, OptimArgs, RunArgs)


@dataclass
class TrainConfig(RunArgs, OptimArgs, TextArgs, TaskArgs, ModelArgs):
    """Everything ``train`` needs: what to train on (``task`` and its section), the model, the
    optimisation and the run. Defaults are ``mosaic-train``'s (the embedded in-context task on the
    CPU); :func:`mosaic_model.training.preset` starts from a recipe."""

    task: str = arg("icl", "icl: the embedded in-context language task; lm: language modelling on --data",
                    choices=TASK_CHOICES)

    def __post_init__(self):
        self.reference_ops = tuple(self.reference_ops)  # a list from JSON or argparse

    def model_config(self, block_size: int, vocab_size: int) -> dict:
        """The fields of the model's own config (``MosaicConfig``, ``GPTConfig``, ``MosaicV2Config`` or
        ``LlamaConfig``) for this run."""
        config = dict(n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd, block_size=block_size,
                      vocab_size=vocab_size, dropout=self.dropout, bias=False)
        if self.model == "mosaic":
            config.update(pmem_size=self.pmem_size, kernels=self.kernels, pmem_kernel=self.pmem_kernel,
                          reference_ops=tuple(self.reference_ops), attn_dropout=self.attn_dropout)
            if self.output_layer == "gpt2":
                config.update(logit_scale=False, embed_std=0.02)
        elif self.model == "mosaic-v2":
            config.update(kernels=self.kernels, reference_ops=tuple(self.reference_ops), window=self.window,
                          delay_min=self.delay_min, delay_max=self.delay_max, delay_eval=self.delay_eval,
                          adaptive_bandwidth=not self.fixed_bandwidth, gated_keys=not self.ungated_keys)
        return config

    def resolved(self) -> TrainConfig:
        """A copy with the derived fields filled in, after checking every field (ConfigError names the
        first bad one). With ``epochs`` the steps are that many epochs of ``num_train`` (capped by
        ``step_cap``), the warm-up their first tenth and, unless given, an evaluation every epoch;
        ``auto`` device and dtype become the machine's. Resolving twice gives the same config."""
        c = replace(self)
        if c.task not in TASK_CHOICES:
            raise ConfigError("task", f"must be one of {TASK_CHOICES}, got {c.task!r}")
        if c.epochs is not None:
            if c.task != "icl":
                raise ConfigError("epochs", "is for --task icl (a text corpus is sampled in random windows: use --steps)")
            check_at_least_one(c, ("epochs", "num_train", "batch_size"))
            if c.step_cap is not None and c.step_cap < 1:
                raise ConfigError("step_cap", f"must be >= 1, got {c.step_cap}")
            per_epoch, c.steps = epoch_steps(c.num_train, c.batch_size, c.epochs, c.step_cap)
            c.warmup = c.steps // 10  # seq_icl: 20 of 200 epochs
            if c.eval_every is None:
                c.eval_every = min(per_epoch, c.steps)
        elif c.step_cap is not None:
            raise ConfigError("step_cap", "goes with --epochs")
        if c.eval_every is None:
            raise ConfigError("eval_every", "must be given (the preset evaluates every epoch: add --epochs)")
        _check_model(c)
        _check_optimisation(c)
        _check_data(c)
        _check_run(c)
        return c

    def warnings(self) -> list[str]:
        """What is legal but surely not what was meant, one line each (the trainer prints them)."""
        out = []
        if self.warmup >= self.steps:
            out.append(f"--warmup {self.warmup} is not shorter than the run (--steps {self.steps}): the learning rate "
                       f"never reaches --lr {self.lr:g}")
        if self.patience is not None and self.final_from == "last":
            out.append(f"--patience {self.patience} with --final-from last: a run it ends is scored on its last weights, "
                       f"{self.patience} evaluations past its best (--final-from best scores the best)")
        return out

    def to_dict(self) -> dict:
        """The fields as a plain dict (what checkpoints store)."""
        return asdict(self)


def epoch_steps(num_train: int, batch_size: int, epochs: int, step_cap: int | None) -> tuple[int, int]:
    """(steps per epoch, steps of the run) of an in-context run counted in epochs over ``num_train``
    sequences; the last batch of an epoch may be short, and ``step_cap`` (None: none) bounds the run."""
    per_epoch = -(-num_train // batch_size)
    steps = epochs * per_epoch
    return per_epoch, steps if step_cap is None else min(steps, step_cap)


# Flags that one model alone reads: set on another model, they are an error, not silently ignored.
MODEL_ONLY_FIELDS = {"output_layer": ("mosaic", "a Memory Mosaic"),
                     **{name: ("mosaic-v2", "a Memory Mosaics v2") for name in
                        ("window", "delay_min", "delay_max", "delay_eval", "fixed_bandwidth", "ungated_keys")}}


def _check_model(c: TrainConfig) -> None:
    if c.model not in MODEL_CHOICES:
        raise ConfigError("model", f"must be one of {MODEL_CHOICES}, got {c.model!r}")
    if c.model == "gpt" and c.attn_dropout not in (0.0, c.dropout):
        raise ConfigError("attn_dropout", f"GPT2's attention dropout is --dropout ({c.dropout}), got {c.attn_dropout}")
    if c.reference_ops and (c.kernels != "fused" or c.model != "mosaic"):
        raise ConfigError("reference_ops", "picks ops of a Memory Mosaic's fused path (--model mosaic --kernels fused), "
                                           f"got --model {c.model} --kernels {c.kernels}")
    for name, (model, label) in MODEL_ONLY_FIELDS.items():
        if c.model != model and getattr(c, name) != field_default(name):
            raise ConfigError(name, f"is {label} setting (--model {model}), got --model {c.model}")
    # Every other model field is the model config's to check: built once here with a stand-in vocabulary.
    config_class(c.model)(**c.model_config(block_size=c.block_size, vocab_size=1))


def _check_optimisation(c: TrainConfig) -> None:
    check_at_least_one(c, ("steps", "batch_size", "grad_accum"))
    if not (c.lr > 0 and math.isfinite(c.lr)):
        raise ConfigError("lr", f"must be a positive number, got {c.lr}")
    if not 0 <= c.min_lr_ratio <= 1:
        raise ConfigError("min_lr_ratio", f"must be in [0, 1], got {c.min_lr_ratio}")
    if c.warmup < 0:
        raise ConfigError("warmup", f"must be >= 0, got {c.warmup}")
    if not c.weight_decay >= 0:
        raise ConfigError("weight_decay", f"must be >= 0, got {c.weight_decay}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(c, name) < 1:
            raise ConfigError(name, f"must be in [0, 1), got {getattr(c, name)}")
    if not (c.grad_clip >= 0 and math.isfinite(c.grad_clip)):
        raise ConfigError("grad_clip", f"must be a positive norm, or 0 to disable clipping, got {c.grad_clip}")
    if c.loss_chunk is not None and c.loss_chunk < 0:
        raise ConfigError("loss_chunk", f"must be >= 0 (0: all at once), got {c.loss_chunk}")
    if c.schedule not in SCHEDULE_CHOICES:
        raise ConfigError("schedule", f"must be one of {SCHEDULE_CHOICES}, got {c.schedule!r}")


def _check_data(c: TrainConfig) -> None:
    check_at_least_one(c, ("num_train", "max_string_len", "block_size"))
    if c.eval_batches is not None and c.eval_batches < 1:
        raise ConfigError("eval_batches", f"must be >= 1, got {c.eval_batches}")
    if c.num_test < 2:
        raise ConfigError("num_test", f"must be >= 2, got {c.num_test}")
    if c.doc_split not in DOC_SPLITS:
        raise ConfigError("doc_split", f"must be one of {DOC_SPLITS}, got {c.doc_split!r}")
    if c.task == "lm":
        if not c.data:
            raise ConfigError("task", "lm needs --data (a text file, a folder, hf:NAME or babistories:DIR)")
        if not c.val_data and not 0 < c.val_fraction < 1:
            raise ConfigError("val_fraction", f"must be in (0, 1), got {c.val_fraction}")
    elif c.data or c.val_data:
        raise ConfigError("data", "and --val-data are for --task lm; the in-context task is generated")


def _check_run(c: TrainConfig) -> None:
    check_at_least_one(c, ("eval_every", "eval_batch_size", "log_every"))
    for name in ("max_steps_this_run", "save_every", "patience"):
        if getattr(c, name) is not None and getattr(c, name) < 1:
            raise ConfigError(name, f"must be >= 1, got {getattr(c, name)}")
    if c.final_from not in FINAL_FROM_CHOICES:
        raise ConfigError("final_from", f"must be one of {FINAL_FROM_CHOICES}, got {c.final_from!r}")
    if c.final_from == "best" and c.no_best:
        raise ConfigError("final_from", "best needs best.pt: leave out --no-best")
    if c.resume and c.overwrite:
        raise ConfigError("overwrite", "and --resume exclude each other: continue the run or replace it")
    if c.time_limit is not None and not c.time_limit > 0:
        raise ConfigError("time_limit", f"must be a positive number of seconds, got {c.time_limit}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if c.cuda_graph and (c.compile or world > 1):
        raise ConfigError("cuda_graph", "runs one process without --compile")
    if c.patience is not None and world > 1:
        raise ConfigError("patience", "works with one process (only the main process evaluates)")
    if c.time_limit is not None and world > 1:
        raise ConfigError("time_limit", "works with one process (ranks could stop at different steps); "
                                        "use --max-steps-this-run")
    for name, resolve in (("device", lambda: resolve_device(c.device)), ("dtype", lambda: resolve_dtype(c.dtype, c.device))):
        try:
            setattr(c, name, resolve())
        except ValueError as e:
            raise ConfigError(name, str(e)) from None
    if c.cuda_graph and not c.device.startswith("cuda"):
        raise ConfigError("cuda_graph", f"needs a CUDA device, got --device {c.device}")


def field_default(name: str) -> object:
    """The default of the TrainConfig field ``name``."""
    f = {f.name: f for f in fields(TrainConfig)}[name]
    return f.default if f.default is not MISSING else f.default_factory()
