"""``mosaic-train``: train a Memory Mosaic or the GPT2 baseline on the in-context task or on text.

Examples:
  mosaic-train                                              # embedded in-context task, CPU, ~2 min
  mosaic-train --task lm --data stories.txt --block-size 256 --steps 2000 --device cuda
  mosaic-train --task lm --data hf:roneneldan/TinyStories --preset paper --n-layer 4 --steps 5000
  mosaic-train --out-dir runs/icl --resume                  # continue (or extend with a larger --steps)
  torchrun --nproc_per_node 2 -m mosaic_model.train --device cuda    # several GPUs (DDP)

Each optimizer step sees batch_size x grad_accum x processes sequences; every micro-step of every
process draws its own fresh batch, so a large global batch can be reproduced on fewer GPUs.

Schedule: linear warm-up from 0 over --warmup steps, then a cosine from --lr down to
--lr x --min-lr-ratio at step --steps. The learning rate is a function of (step, --steps): a run
extended with --resume --steps N follows, from the step it stopped at, the schedule of an N-step run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, load_model, model_type_of, read_checkpoint
from .checkpoint import build_model as checkpoint_build_model
from .config import KERNEL_CHOICES, PMEM_KERNEL_CHOICES, REFERENCE_OP_CHOICES
from .data.text import DOC_SPLITS, DataError
from .runtime import require_at_least_one
from .step import CudaGraphStep, make_capturable, optimizer_step, set_lr
from .tasks import make_task

# The recipe of the paper's language-modelling runs (BabiStories, 12 layers, batch 512 x 512 tokens,
# 80,000 steps: Library/scripts/train_babistories.sh). Explicit flags override every field, so
# ``--preset paper --n-layer 4 --steps 4000 --grad-accum 4`` is the same recipe scaled down.
PRESETS = {
    "paper": dict(task="lm", n_layer=12, n_head=12, n_embd=768, block_size=512, dropout=0.05, lr=5e-3,
                  min_lr_ratio=1e-4 / 5e-3, warmup=2000, steps=80000, weight_decay=0.1, beta1=0.9, beta2=0.95,
                  grad_clip=1.0, batch_size=32, grad_accum=16, eval_every=2000, eval_batches=10,
                  eval_batch_size=32),
    # RegBench's in-context language learning (seq_icl's ICLL recipe): the Memory Mosaic of 2 layers,
    # d=128, 8 heads, P=448 with C-mem attention and P-mem dropout 0.05 (lib-naive), or --model gpt, the
    # transformer of the same depth and width; 200 epochs of AdamW on every parameter, fp32, the test
    # metrics from the weights of best validation loss.
    "regbench": dict(task="icl", n_layer=2, n_head=8, n_embd=128, pmem_size=448, dropout=0.05, attn_dropout=0.05,
                     kernels="fused", max_string_len=49, num_train=100, num_test=1000, lr=5e-4,
                     weight_decay=0.1, decay_all=True, beta1=0.9, beta2=0.999, batch_size=32, epochs=200,
                     schedule="regbench", min_lr_ratio=0.1, grad_clip=1.0, dtype="float32", final_from="best",
                     eval_every=None),
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows every default."""


class CLIError(Exception):
    """A one-line error for the user; ``main`` prints it and exits with code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mosaic-train``."""
    p = argparse.ArgumentParser(prog="mosaic-train", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--task", choices=("icl", "lm"), default="icl",
                   help="icl: the embedded in-context language task; lm: language modelling on --data")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="start from a recipe (paper: the paper's BabiStories recipe); flags override it")
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=("mosaic", "gpt"), default="mosaic", help="Memory Mosaic or the GPT2 baseline")
    m.add_argument("--n-layer", type=int, default=2, help="blocks")
    m.add_argument("--n-head", type=int, default=4, help="heads per block")
    m.add_argument("--n-embd", type=int, default=64, help="width d")
    m.add_argument("--pmem-size", type=int, default=None, help="P-mem slots per head; None = 3.5 x n_embd")
    m.add_argument("--dropout", type=float, default=0.05, help="residual dropout (and P-mem slot dropout for the Memory Mosaic)")
    m.add_argument("--attn-dropout", type=float, default=0.0,
                   help="Memory Mosaic C-mem attention dropout (lib-naive). "
                        "GPT2 drops attention weights at --dropout, so for it this is 0 or --dropout")
    m.add_argument("--kernels", choices=KERNEL_CHOICES, default="fused",
                   help="fused Triton ops or the PyTorch references")
    m.add_argument("--reference-ops", nargs="+", choices=REFERENCE_OP_CHOICES, default=[], metavar="OP",
                   help=f"with --kernels fused, these C-mem ops run their PyTorch reference "
                        f"({', '.join(REFERENCE_OP_CHOICES)}): which kernel's rounding a run feels")
    m.add_argument("--pmem-kernel", choices=PMEM_KERNEL_CHOICES, default="sdpa",
                   help="P-mem retrieval with --kernels fused: our Triton kernel or SDPA on folded rows")
    t = p.add_argument_group("in-context task (--task icl)")
    t.add_argument("--num-train", type=int, default=2000, help="training languages (one sequence each)")
    t.add_argument("--num-test", type=int, default=200, help="held-out languages (half test, half val)")
    t.add_argument("--max-string-len", type=int, default=19, help="RegBench uses 49")
    t.add_argument("--task-seed", type=int, default=0, help="seed of the generated languages")
    t.add_argument("--iid", action="store_true",
                   help="test and val sequences are new sequences of the training languages (paper Table 4)")
    d = p.add_argument_group("text (--task lm)")
    d.add_argument("--data", default=None,
                   help="training text: a file or folder (.txt/.jsonl/.json, optionally .gz/.xz), "
                        "hf:NAME[:SPLIT[:COLUMN]] or babistories:DIR[:SPLIT]")
    d.add_argument("--val-data", default=None, help="validation text (same forms); default: --val-fraction of --data")
    d.add_argument("--val-fraction", type=float, default=0.05, help="documents of --data held out for validation")
    d.add_argument("--split-seed", type=int, default=0, help="seed of the document split")
    d.add_argument("--doc-split", choices=DOC_SPLITS, default="auto",
                   help=".txt documents: auto (<|endoftext|> if present, else blank lines), eot, blank, line, file")
    d.add_argument("--block-size", type=int, default=256, help="context length T")
    d.add_argument("--tokenizer-dir", default=None,
                   help="folder with GPT-2's vocab.bpe and encoder.json for offline use ($MOSAIC_TOKENIZER_DIR)")
    d.add_argument("--cache-dir", default=None, help="token cache ($MOSAIC_CACHE_DIR, else ~/.cache/mosaic)")
    d.add_argument("--eval-batches", type=int, default=20, help="batches of random windows per loss estimate")
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=150, help="optimizer steps")
    o.add_argument("--epochs", type=int, default=None,
                   help="--task icl: train this many epochs of the training languages instead of --steps "
                        "(warm-up: the first tenth; evaluations: every epoch unless --eval-every is given)")
    o.add_argument("--step-cap", type=int, default=None,
                   help="with --epochs: at most this many steps; the schedule is shrunk to fit, same shape")
    o.add_argument("--schedule", choices=("cosine", "regbench"), default="cosine",
                   help="cosine: linear warm-up from 0, then cosine to the floor at --steps; regbench: timm's "
                        "CosineLRScheduler as seq_icl sets it (warm-up from 1e-6, cosine measured from step 0)")
    o.add_argument("--batch-size", type=int, default=32, help="sequences per micro-step per process")
    o.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    o.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    o.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor, as a fraction of --lr")
    o.add_argument("--warmup", type=int, default=30, help="linear warm-up steps")
    o.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    o.add_argument("--decay-all", action="store_true",
                   help="decay every parameter (seq_icl's ICLL recipe) instead of the Library groups")
    o.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1, in [0, 1)")
    o.add_argument("--beta2", type=float, default=0.99, help="AdamW beta2, in [0, 1)")
    o.add_argument("--grad-clip", type=float, default=1.0, help="global gradient-norm clip; 0 disables")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto = bf16 autocast on CUDA, float32 on CPU")
    r.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    r.add_argument("--cuda-graph", action="store_true",
                   help="record each optimizer step once as a CUDA graph and replay it (small models, whose steps "
                        "are bound by the host). Same arithmetic; other dropout masks of the same law; in-context "
                        "batches padded to the block size, which the causal models ignore (mosaic_model/step.py)")
    r.add_argument("--seed", type=int, default=1337, help="seed of weights, batches and dropout")
    r.add_argument("--eval-every", type=int, default=50, help="steps between evaluations (and checkpoints)")
    r.add_argument("--final-from", choices=("last", "best"), default="last",
                   help="the final (test) metrics from the last weights or those of best validation loss")
    r.add_argument("--save-every", type=int, default=None,
                   help="steps between checkpoints (default: at every evaluation); one is always written when "
                        "the run stops or ends. Many runs sharing one disk can wait more on it than they train")
    r.add_argument("--no-best", action="store_true", help="do not keep best.pt (the weights of best val loss)")
    r.add_argument("--eval-batch-size", type=int, default=50, help="sequences per evaluation batch")
    r.add_argument("--log-every", type=int, default=10, help="steps between training-loss log lines")
    r.add_argument("--out-dir", default="runs/icl", help="run folder: metrics.jsonl, ckpt.pt, best.pt")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from its checkpoint (a larger --steps extends it)")
    r.add_argument("--max-steps-this-run", type=int, default=None,
                   help="stop after this many steps, with a checkpoint to --resume from (time-sliced jobs)")
    r.add_argument("--time-limit", type=float, default=None,
                   help="stop after this many seconds of training, with a checkpoint to --resume from (one process)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    for action in p._actions:  # flags are shown with their defaults; a switch's default is off
        if action.help is None:
            action.help = " "
    return p


def provenance() -> dict:
    """The git commit of the code (with a flag for uncommitted changes), the torch and Triton versions,
    the device and the time: a run's results are only comparable with runs of the same code."""
    import datetime
    import subprocess

    root = Path(__file__).resolve().parent.parent
    info = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        git = lambda *args: subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,  # noqa: E731
                                           timeout=10, check=True).stdout.strip()
        info["commit"] = git("rev-parse", "HEAD")
        info["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None  # not a git checkout (an installed package), or no git
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check ``mosaic-train`` arguments (a preset first supplies the defaults)."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.preset:
        parser.set_defaults(**PRESETS[first.preset])
    a = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if a.epochs is not None and any(x == "--steps" or x.startswith("--steps=") for x in given):
        parser.error("--steps is set by --epochs (the regbench preset sets --epochs): cap it with --step-cap")
    _check_args(parser, a)
    return a


def epoch_steps(num_train: int, batch_size: int, epochs: int, step_cap: int | None) -> tuple[int, int]:
    """(steps per epoch, steps of the run) of an in-context run counted in epochs over ``num_train``
    sequences; the last batch of an epoch may be short, and ``step_cap`` (None: none) bounds the run."""
    per_epoch = -(-num_train // batch_size)
    steps = epochs * per_epoch
    return per_epoch, steps if step_cap is None else min(steps, step_cap)


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.epochs is not None:
        if a.task != "icl":
            p.error("--epochs is for --task icl (a text corpus is sampled in random windows: use --steps)")
        if a.epochs < 1 or a.num_train < 1 or a.batch_size < 1:
            p.error(f"--epochs, --num-train and --batch-size must be >= 1, got {a.epochs}, {a.num_train}, {a.batch_size}")
        if a.step_cap is not None and a.step_cap < 1:
            p.error(f"--step-cap must be >= 1, got {a.step_cap}")
        per_epoch, a.steps = epoch_steps(a.num_train, a.batch_size, a.epochs, a.step_cap)
        a.warmup = a.steps // 10  # seq_icl: 20 of 200 epochs
        if a.eval_every is None:
            a.eval_every = min(per_epoch, a.steps)
    elif a.step_cap is not None:
        p.error("--step-cap goes with --epochs")
    if a.eval_every is None:
        p.error("--eval-every must be given (the preset evaluates every epoch: add --epochs)")
    if a.final_from == "best" and a.no_best:
        p.error("--final-from best needs best.pt: leave out --no-best")
    if not 0 <= a.attn_dropout < 1:
        p.error(f"--attn-dropout must be in [0, 1), got {a.attn_dropout}")
    if a.reference_ops and (a.kernels != "fused" or a.model != "mosaic"):
        p.error(f"--reference-ops picks ops of a Memory Mosaic's fused path (--model mosaic --kernels fused), "
                f"got --model {a.model} --kernels {a.kernels}")
    if a.model == "gpt" and a.attn_dropout not in (0.0, a.dropout):
        p.error(f"--attn-dropout: GPT2's attention dropout is --dropout ({a.dropout}), got {a.attn_dropout}")
    require_at_least_one(p, a, ("steps", "batch_size", "grad_accum", "n_layer", "n_head", "n_embd", "num_train",
                                "eval_every", "eval_batch_size", "log_every", "max_string_len", "block_size", "eval_batches"))
    if a.time_limit is not None and not a.time_limit > 0:
        p.error(f"--time-limit must be a positive number of seconds, got {a.time_limit}")
    if a.cuda_graph and (a.compile or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        p.error("--cuda-graph runs one process without --compile")
    if a.time_limit is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        p.error("--time-limit works with one process (ranks could stop at different steps); use --max-steps-this-run")
    require_at_least_one(p, a, ("max_steps_this_run", "pmem_size", "save_every"))
    if a.num_test < 2:
        p.error(f"--num-test must be >= 2, got {a.num_test}")
    if a.n_embd % a.n_head:
        p.error(f"--n-embd ({a.n_embd}) must be divisible by --n-head ({a.n_head})")
    if not (a.lr > 0 and math.isfinite(a.lr)):
        p.error(f"--lr must be a positive number, got {a.lr}")
    if not 0 <= a.min_lr_ratio <= 1:
        p.error(f"--min-lr-ratio must be in [0, 1], got {a.min_lr_ratio}")
    if a.warmup < 0:
        p.error(f"--warmup must be >= 0, got {a.warmup}")
    if not a.weight_decay >= 0:
        p.error(f"--weight-decay must be >= 0, got {a.weight_decay}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(a, name) < 1:
            p.error(f"--{name} must be in [0, 1), got {getattr(a, name)}")
    if not (a.grad_clip >= 0 and math.isfinite(a.grad_clip)):
        p.error(f"--grad-clip must be a positive norm, or 0 to disable clipping, got {a.grad_clip}")
    if not 0 <= a.dropout < 1:
        p.error(f"--dropout must be in [0, 1), got {a.dropout}")
    if a.task == "lm":
        if not a.data:
            p.error("--task lm needs --data (a text file, a folder, hf:NAME or babistories:DIR)")
        if not a.val_data and not 0 < a.val_fraction < 1:
            p.error(f"--val-fraction must be in (0, 1), got {a.val_fraction}")
    elif a.data or a.val_data:
        p.error("--data and --val-data are for --task lm; the in-context task is generated")
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(a.device)
    except RuntimeError:
        p.error(f"--device must be auto, cpu, cuda or cuda:N, got {a.device!r}")
    if dev.type not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda, got {a.device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for but no CUDA device is available")
    if a.cuda_graph and dev.type != "cuda":
        p.error(f"--cuda-graph needs a CUDA device, got --device {a.device}")
    if a.dtype == "auto":
        a.dtype = "bfloat16" if dev.type == "cuda" else "float32"
    if a.dtype == "bfloat16" and dev.type != "cuda":
        p.error("--dtype bfloat16 runs as CUDA autocast; on CPU use float32")
    out = Path(a.out_dir)
    if a.resume:
        if not (out / "ckpt.pt").is_file():
            p.error(f"--resume: no run to resume in {out} (no ckpt.pt there); leave out --resume to start one")
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            p.error(f"--out-dir {out} is not a writable folder ({e.strerror or e})")


def build_model(a: argparse.Namespace, block_size: int, vocab_size: int) -> torch.nn.Module:
    """The model that the arguments describe."""
    config = dict(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, block_size=block_size,
                  vocab_size=vocab_size, dropout=a.dropout, bias=False)
    if a.model == "mosaic":
        config.update(pmem_size=a.pmem_size, kernels=a.kernels, pmem_kernel=a.pmem_kernel, reference_ops=a.reference_ops,
                      attn_dropout=a.attn_dropout)
    return checkpoint_build_model(a.model, config)


def param_groups(model: torch.nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """Library groups: decay tensors of dim >= 2 (weights, embedding, slots), not the rest."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_all:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def lr_at(step: int, a: argparse.Namespace) -> float:
    """Linear warm-up from 0, then cosine from --lr to --lr * --min-lr-ratio at step --steps.

    ``--schedule regbench`` is timm's CosineLRScheduler as seq_icl configures it: warm-up from 1e-6 to
    --lr over --warmup steps, then ``floor + (lr - floor)(1 + cos(pi step / steps)) / 2``, the cosine
    measured from step 0 (warmup_prefix False), so it starts below --lr when the warm-up ends."""
    floor = a.lr * a.min_lr_ratio
    if a.schedule == "regbench":
        if step < a.warmup:
            return 1e-6 + step * (a.lr - 1e-6) / a.warmup
        return floor + 0.5 * (a.lr - floor) * (1 + math.cos(math.pi * min(step / a.steps, 1.0)))
    if step < a.warmup:
        return a.lr * step / a.warmup
    span = max(a.steps - a.warmup, 1)
    progress = min((step - a.warmup) / span, 1.0)
    return floor + 0.5 * (a.lr - floor) * (1 + math.cos(math.pi * progress))


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Arguments a resumed run must share with its checkpoint: they fix the model, the data and the batches.
RUN_KEYS = ("task", "model", "n_layer", "n_head", "n_embd", "pmem_size", "dropout", "attn_dropout", "kernels", "reference_ops",
            "num_train", "num_test", "max_string_len", "task_seed", "iid", "data", "val_data", "val_fraction", "split_seed",
            "doc_split", "block_size", "batch_size", "grad_accum", "world_size", "seed")


def init_distributed(a: argparse.Namespace) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun with several processes.

    CUDA ranks use NCCL on ``cuda:LOCAL_RANK``; CPU ranks use gloo (how the tests run it).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.device(a.device).type == "cuda":
        a.device = f"cuda:{local}"
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if a.device.startswith("cuda") else "gloo")
    return rank, world


def _resume_state(a: argparse.Namespace, ckpt_path: Path) -> dict:
    ckpt = read_checkpoint(ckpt_path)
    saved = ckpt["args"]
    defaults = {"grad_accum": 1, "world_size": 1, "task": "icl", "doc_split": "auto", "reference_ops": []}
    unused = {"icl": ("data", "val_data", "val_fraction", "split_seed", "doc_split", "block_size"),
              "lm": ("num_train", "num_test", "max_string_len", "task_seed", "iid")}[a.task]
    diff = [k for k in RUN_KEYS if k not in unused and (k in saved or k in defaults)
            and saved.get(k, defaults.get(k)) != getattr(a, k, None)]
    if diff:
        raise CLIError(f"--resume: {ckpt_path} was made with other {', '.join(diff)} "
                       f"({', '.join(f'{k}={saved.get(k)!r}' for k in diff)})")
    if a.steps < ckpt["step"]:
        raise CLIError(f"--resume: {ckpt_path} is at step {ckpt['step']}, past --steps {a.steps}")
    return ckpt


def train(a: argparse.Namespace) -> dict:
    """Run training as configured by the parsed arguments; returns the final metrics ({} if stopped early)."""
    rank, world = init_distributed(a)
    a.world_size = world
    main_rank = rank == 0
    out = Path(a.out_dir)
    ckpt_path, metrics_path = out / "ckpt.pt", out / "metrics.jsonl"
    ckpt = _resume_state(a, ckpt_path) if a.resume else None
    say = print if main_rank else (lambda *args, **kw: None)
    if ckpt is not None and ckpt.get("finished") and ckpt["step"] == a.steps:
        say(f"{out}: this run already finished at step {a.steps}; nothing to do (larger --steps extends it)",
            file=sys.stderr)
        _finish(None, world)
        return ckpt.get("final", {})
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    np.random.seed(a.seed)

    task = make_task(a, progress=main_rank and not a.quiet)
    model = build_model(a, task.block_size, task.vocab_size).to(device)  # same seed everywhere; DDP broadcasts too
    if world > 1:
        torch.manual_seed(a.seed + rank)  # distinct dropout masks per rank
    opt = torch.optim.AdamW(param_groups(model, a.weight_decay, a.decay_all), lr=a.lr,
                            betas=(a.beta1, a.beta2), fused=device.type == "cuda")
    start, best = 0, math.inf
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, best = ckpt["step"], ckpt.get("best_val_loss", math.inf)
        _set_rng_state(ckpt["rng"])
        say(f"resumed from {ckpt_path} at step {start}", file=sys.stderr)
    elif main_rank:
        metrics_path.unlink(missing_ok=True)
    net = torch.compile(model) if a.compile else model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    params = list(model.parameters())

    def step_on(batches, autocast_cache: bool = True):
        return optimizer_step(net, params, opt, batches, a.grad_accum, a.grad_clip, device, dtype, world,
                              autocast_cache=autocast_cache)

    graphed = None
    if a.cuda_graph:
        make_capturable(opt, lr_at(start, a))
        graphed = CudaGraphStep(lambda batches: step_on(batches, autocast_cache=False), opt)

    n_params = sum(p.numel() for p in model.parameters())
    if not main_rank:  # only rank 0 prints, logs, evaluates and saves
        a.quiet = True
    kernels = a.kernels + "".join(f", {op} on the reference" for op in a.reference_ops) if a.model == "mosaic" else "-"
    say(f"{a.model}: {n_params:,} parameters, {a.n_layer} layers, d={a.n_embd}, heads={a.n_head}, "
        f"kernels={kernels} | {task.describe()} | device {device}, {a.dtype} | "
        f"{a.batch_size} x {a.grad_accum} micro-steps x {world} processes per step", file=sys.stderr)
    log = open(metrics_path, "a", encoding="utf-8") if main_rank else None
    if main_rank:  # one line per start or resume: which code and versions produced the run
        with open(out / "provenance.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"start_step": start, **provenance()}) + "\n")

    def record(entry: dict) -> None:
        if log is not None:
            log.write(json.dumps(entry) + "\n")
            log.flush()

    def save(step: int, path: Path = ckpt_path, weights_only: bool = False, **extra) -> None:
        # best.pt holds the weights alone (a third of the bytes: AdamW keeps two moments a weight); only
        # ckpt.pt is resumed from. Small runs evaluate often, and their saves can outlast their steps.
        if main_rank:
            tmp = path.with_suffix(".tmp")
            state = {"model": model.state_dict(), "step": step, "args": vars(a), "model_type": model_type_of(model),
                     "model_config": model.config.to_dict(), "best_val_loss": best, **extra}
            if not weights_only:
                state.update(optimizer=opt.state_dict(), rng=_rng_state())
            torch.save(state, tmp)
            os.replace(tmp, path)  # never a half-written checkpoint

    stop = a.steps if a.max_steps_this_run is None else min(a.steps, start + a.max_steps_this_run)
    from tqdm.auto import tqdm

    bar = tqdm(total=a.steps, initial=start, desc="training", unit="step", disable=a.quiet, dynamic_ncols=True)
    model.train()
    tokens, t_last = 0, time.perf_counter()
    deadline = None if a.time_limit is None else time.perf_counter() + a.time_limit
    for step in range(start, stop):
        lr = lr_at(step, a)
        set_lr(opt, lr)
        # A fresh batch for every micro-step of every rank: a pure function of (step, micro, rank).
        batches = [task.batch((step * a.grad_accum + micro) * world + rank, a.batch_size, device)
                   for micro in range(a.grad_accum)]
        tokens += sum(x.numel() for x, _ in batches) * world
        if graphed is not None:
            loss_sum, grad_norm = graphed([task.fixed_shape(x, y) for x, y in batches])
        else:
            loss_sum, grad_norm = step_on(batches)
            opt.zero_grad(set_to_none=True)
        bar.update(1)
        if (step + 1) % a.log_every == 0 or step + 1 == a.steps:
            loss_v = float(loss_sum)  # rank 0's mean over its micro-steps
            now = time.perf_counter()
            tps = tokens / (now - t_last)
            tokens, t_last = 0, now
            record({"step": step + 1, "split": "train", "loss": loss_v, "lr": lr,
                    "grad_norm": float(grad_norm), "tokens_per_s": tps})
            bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False)
        if main_rank and ((step + 1) % a.eval_every == 0 or step + 1 == a.steps):
            m = task.validate(model, device, dtype)
            record({"step": step + 1, "split": "val", **m})
            if not a.quiet:
                bar.write(f"step {step + 1}: {task.summary(m)}", file=sys.stderr)
            if m["loss"] < best:
                best = m["loss"]
                if not a.no_best:
                    save(step + 1, out / "best.pt", weights_only=True)
            if a.save_every is None or (step + 1) % a.save_every == 0:
                save(step + 1)
            t_last = time.perf_counter()
        if deadline is not None and time.perf_counter() > deadline and step + 1 < stop:
            stop = step + 1  # at least one step per call, so a time-sliced run always advances
            break
    bar.close()
    if stop < a.steps:
        save(stop)
        _finish(log, world)
        say(f"stopped at step {stop} of {a.steps}; continue with: mosaic-train ... --resume --out-dir {out}",
            file=sys.stderr)
        return {}
    if not main_rank:
        _finish(log, world)
        return {}
    # The test metrics of --final-from best come from a copy built from best.pt, so that the model, and
    # the final ckpt.pt saved below, stay the last weights (what --resume --steps N continues from).
    scored, weights_from, weights_step = model, "last", a.steps
    if a.final_from == "best" and (out / "best.pt").is_file():
        scored, best_ckpt = load_model(out / "best.pt", device)
        weights_from, weights_step = "best", best_ckpt["step"]
    final = task.final(scored, device, dtype)
    final = {**final, "weights_from": weights_from, "weights_step": weights_step}
    record({"step": a.steps, "split": "test" if task.kind == "icl" else "final", **final})
    save(a.steps, finished=True, final=final)
    _finish(log, world)
    print(f"{task.final_title}: {task.summary(final)}")
    print(f"outputs in {out}/: metrics.jsonl (every log and evaluation), ckpt.pt (last), best.pt (best val loss), "
          f"provenance.jsonl (commit and versions)",
          file=sys.stderr)
    return final


def _finish(log, world: int) -> None:
    if log is not None:
        log.close()
    if world > 1:
        torch.distributed.barrier()  # rank 0's final evaluation is done before anyone leaves


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``mosaic-train``; returns 0, or 2 after a one-line error."""
    a = parse_args(argv)
    try:
        train(a)
    except (CLIError, CheckpointError, DataError) as e:
        print(f"mosaic-train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        # The process group goes only after train() has returned and freed its DDP wrapper: destroying
        # it under a live DDP object aborted a gloo process at exit in CI.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
