"""``mosaic-train``: train a Memory Mosaic or the GPT2 baseline on the embedded in-context task.

Example (CPU, about 3 minutes):  mosaic-train
On a GPU:                         mosaic-train --device cuda
Resume an interrupted run:        mosaic-train --out-dir runs/icl --resume
Several GPUs (DDP):               torchrun --nproc_per_node 2 -m mosaic_model.train --device cuda

Each optimizer step sees batch_size x grad_accum x world_size sequences; every micro-step of every
rank draws its own fresh batch, so a large global batch can be reproduced on fewer GPUs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .config import GPTConfig, MosaicConfig
from .data.regbench import VOCAB_SIZE, ICLTask, ICLTaskConfig
from .evaluate import autocast_for, evaluate_icl
from .gpt import GPT
from .model import MemoryMosaic


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mosaic-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=("mosaic", "gpt"), default="mosaic")
    m.add_argument("--n-layer", type=int, default=2)
    m.add_argument("--n-head", type=int, default=4)
    m.add_argument("--n-embd", type=int, default=64)
    m.add_argument("--pmem-size", type=int, default=None, help="default 3.5 * n_embd")
    m.add_argument("--dropout", type=float, default=0.05)
    m.add_argument("--kernels", choices=("fused", "reference"), default="fused")
    m.add_argument("--pmem-kernel", choices=("triton", "sdpa"), default="sdpa",
                   help="P-mem retrieval with --kernels fused: our Triton kernel or SDPA on folded rows")
    t = p.add_argument_group("task (RegBench-style in-context language learning)")
    t.add_argument("--num-train", type=int, default=2000, help="training languages (one sequence each)")
    t.add_argument("--num-test", type=int, default=200, help="held-out languages (half test, half val)")
    t.add_argument("--max-string-len", type=int, default=19, help="SPEC.md 7.2 uses 49")
    t.add_argument("--task-seed", type=int, default=0)
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=400)
    o.add_argument("--batch-size", type=int, default=32, help="sequences per micro-step per process")
    o.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    o.add_argument("--lr", type=float, default=3e-3)
    o.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor, as a fraction of --lr")
    o.add_argument("--warmup", type=int, default=40)
    o.add_argument("--weight-decay", type=float, default=0.1)
    o.add_argument("--decay-all", action="store_true",
                   help="decay every parameter (seq_icl's ICLL recipe) instead of the Library groups")
    o.add_argument("--beta2", type=float, default=0.99)
    o.add_argument("--grad-clip", type=float, default=1.0)
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto = bf16 autocast on CUDA, float32 on CPU")
    r.add_argument("--seed", type=int, default=1337)
    r.add_argument("--eval-every", type=int, default=100)
    r.add_argument("--eval-batch-size", type=int, default=50)
    r.add_argument("--log-every", type=int, default=10)
    r.add_argument("--out-dir", default="runs/icl")
    r.add_argument("--resume", action="store_true", help="continue from OUT_DIR/ckpt.pt if present")
    r.add_argument("--max-steps-this-run", type=int, default=None,
                   help="stop after this many steps, with a checkpoint to --resume from (time-sliced jobs)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    for name in ("steps", "batch_size", "grad_accum", "n_layer", "n_head", "n_embd", "num_train", "eval_every",
                 "eval_batch_size", "log_every", "max_string_len"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.max_steps_this_run is not None and a.max_steps_this_run < 1:
        p.error(f"--max-steps-this-run must be >= 1, got {a.max_steps_this_run}")
    if a.num_test < 2:
        p.error(f"--num-test must be >= 2, got {a.num_test}")
    if a.n_embd % a.n_head:
        p.error(f"--n-embd ({a.n_embd}) must be divisible by --n-head ({a.n_head})")
    if a.lr <= 0 or not 0 <= a.min_lr_ratio <= 1 or a.warmup < 0 or a.weight_decay < 0:
        p.error("need --lr > 0, 0 <= --min-lr-ratio <= 1, --warmup >= 0, --weight-decay >= 0")
    if not 0 <= a.dropout < 1:
        p.error(f"--dropout must be in [0, 1), got {a.dropout}")
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(a.device)
    except RuntimeError:
        p.error(f"--device must be auto, cpu, cuda or cuda:N, got {a.device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for but no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda, got {a.device!r}")
    if a.dtype == "auto":
        a.dtype = "bfloat16" if dev.type == "cuda" else "float32"
    if a.dtype == "bfloat16" and dev.type != "cuda":
        p.error("--dtype bfloat16 runs as CUDA autocast; on CPU use float32")


def build_model(a: argparse.Namespace, block_size: int):
    common = dict(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, block_size=block_size,
                  vocab_size=VOCAB_SIZE, dropout=a.dropout, bias=False)
    if a.model == "gpt":
        return GPT(GPTConfig(**common))
    return MemoryMosaic(MosaicConfig(**common, pmem_size=a.pmem_size, kernels=a.kernels,
                                     pmem_kernel=getattr(a, "pmem_kernel", "sdpa")))


def param_groups(model, weight_decay: float, decay_all: bool):
    """Library groups (SPEC.md 3.5): decay tensors of dim >= 2 (weights, embedding, slots), not the rest."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_all:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def lr_at(step: int, a: argparse.Namespace) -> float:
    """Linear warm-up from 0, then cosine from --lr to --lr * --min-lr-ratio at the last step."""
    if step < a.warmup:
        return a.lr * step / a.warmup
    span = max(a.steps - a.warmup, 1)
    progress = min((step - a.warmup) / span, 1.0)
    floor = a.lr * a.min_lr_ratio
    return floor + 0.5 * (a.lr - floor) * (1 + math.cos(math.pi * progress))


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Shuffled epochs (last batch may be short); a pure function of the step, so resume is exact."""
    per_epoch = math.ceil(n / batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[i * batch_size:(i + 1) * batch_size].tolist()


class Progress:
    """A one-line progress bar on stderr (a line per update when stderr is not a terminal)."""

    def __init__(self, total: int, start: int, quiet: bool):
        self.total, self.quiet = total, quiet
        self.tty = sys.stderr.isatty()
        self.t0, self.s0 = time.perf_counter(), start

    def update(self, step: int, **fields) -> None:
        if self.quiet:
            return
        done = step + 1
        frac = done / self.total
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done - self.s0, 1) * (self.total - done)
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        info = " ".join(f"{k} {v}" for k, v in fields.items())
        line = f"[{bar}] {done}/{self.total} {info} eta {eta:5.0f}s"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and not self.quiet:
            print(file=sys.stderr)


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


MODEL_KEYS = ("model", "n_layer", "n_head", "n_embd", "pmem_size", "dropout", "num_train", "num_test",
              "max_string_len", "task_seed", "steps", "batch_size", "grad_accum", "world_size", "seed")


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


def train(a: argparse.Namespace) -> dict:
    """Run training as configured by the parsed arguments; returns the final test metrics."""
    rank, world = init_distributed(a)
    a.world_size = world
    main_rank = rank == 0
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    np.random.seed(a.seed)

    task = ICLTask(ICLTaskConfig(num_train=a.num_train, num_test=a.num_test,
                                 max_string_len=a.max_string_len, seed=a.task_seed))
    block = max(task.train.max_len, task.val.max_len, task.test.max_len)
    model = build_model(a, block).to(device)  # same seed on every rank; DDP also broadcasts rank 0's weights
    if world > 1:
        torch.manual_seed(a.seed + rank)  # distinct dropout masks per rank
    opt = torch.optim.AdamW(param_groups(model, a.weight_decay, a.decay_all), lr=a.lr,
                            betas=(0.9, a.beta2), fused=device.type == "cuda")
    start = 0
    ckpt_path = out / "ckpt.pt"
    if a.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        saved = ckpt["args"]
        diff = [k for k in MODEL_KEYS if saved.get(k, 1 if k in ("grad_accum", "world_size") else None) != getattr(a, k)]
        if diff:
            raise SystemExit(f"mosaic-train: --resume: {ckpt_path} was made with other {', '.join(diff)}")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
        _set_rng_state(ckpt["rng"])
        if main_rank:
            print(f"resumed from {ckpt_path} at step {start}", file=sys.stderr)
    elif not a.resume and main_rank:
        (out / "metrics.jsonl").unlink(missing_ok=True)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    n_params = sum(p.numel() for p in model.parameters())
    if not main_rank:  # only rank 0 prints, logs, evaluates and saves
        a.quiet = True
    say = print if main_rank else (lambda *args, **kw: None)
    say(f"{a.model}: {n_params:,} parameters, {a.n_layer} layers, d={a.n_embd}, heads={a.n_head}, "
          f"kernels={getattr(a, 'kernels', '-')} | task: {len(task.train)} train / {len(task.test)} test / "
          f"{len(task.val)} val languages, block {block} | device {device}, {a.dtype} | "
        f"{a.batch_size} x {a.grad_accum} micro-steps x {world} processes per step", file=sys.stderr)
    log = open(out / "metrics.jsonl", "a", encoding="utf-8") if main_rank else None

    def record(entry: dict) -> None:
        if log is not None:
            log.write(json.dumps(entry) + "\n")
            log.flush()

    def save(step: int) -> None:
        if main_rank:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                        "args": vars(a), "rng": _rng_state()}, ckpt_path)

    stop = a.steps if a.max_steps_this_run is None else min(a.steps, start + a.max_steps_this_run)
    progress = Progress(a.steps, start, a.quiet)
    model.train()
    tokens, t_last = 0, time.perf_counter()
    for step in range(start, stop):
        lr = lr_at(step, a)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(a.grad_accum):
            # A fresh batch for every micro-step of every rank: a pure function of (step, micro, rank).
            draw = (step * a.grad_accum + micro) * world + rank
            x, y, _ = task.train.batch(batch_indices(draw, len(task.train), a.batch_size, a.seed), device)
            last = micro == a.grad_accum - 1
            # DDP all-reduces the gradients only on the last micro-step.
            with (net.no_sync() if world > 1 and not last else contextlib.nullcontext()):
                with autocast_for(device, dtype):
                    _, loss = net(x, y)
                (loss / a.grad_accum).backward()
            loss_sum = loss_sum + loss.detach() / a.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += x.numel() * a.grad_accum * world
        if (step + 1) % a.log_every == 0 or step + 1 == a.steps:
            loss_v = float(loss_sum)  # rank 0's mean over its micro-steps
            now = time.perf_counter()
            tps = tokens / (now - t_last)
            tokens, t_last = 0, now
            record({"step": step + 1, "split": "train", "loss": loss_v, "lr": lr,
                    "grad_norm": float(grad_norm), "tokens_per_s": tps})
            progress.update(step, loss=f"{loss_v:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        if main_rank and ((step + 1) % a.eval_every == 0 or step + 1 == a.steps):
            m = evaluate_icl(model, task.val, a.eval_batch_size, device, dtype)
            record({"step": step + 1, "split": "val", **m})
            if not a.quiet:
                progress.close()
                print(f"step {step + 1}: val loss {m['loss']:.4f} accuracy {m['accuracy']:.3f} "
                      f"tvd {m['tvd']:.3f}", file=sys.stderr)
            save(step + 1)
            t_last = time.perf_counter()
    progress.close()
    if stop < a.steps:
        save(stop)
        _finish(log, world)
        say(f"stopped at step {stop} of {a.steps}; continue with --resume --out-dir {out}", file=sys.stderr)
        return {}
    if not main_rank:
        _finish(log, world)
        return {}
    final = evaluate_icl(model, task.test, a.eval_batch_size, device, dtype)
    record({"step": a.steps, "split": "test", **final})
    _finish(log, world)
    print(f"final test (held-out languages): loss {final['loss']:.4f} | in-context accuracy "
          f"{final['accuracy']:.3f} (uniform-guess chance {final['chance_accuracy']:.3f}) | "
          f"L1 {final['l1']:.3f} | TVD {final['tvd']:.3f}")
    return final


def _finish(log, world: int) -> None:
    if log is not None:
        log.close()
    if world > 1:
        torch.distributed.barrier()  # rank 0's final evaluation is done before anyone leaves


def main(argv=None) -> int:
    """Console entry point of ``mosaic-train``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    train(args)
    # The process group goes only after train() has returned and freed its DDP wrapper: destroying
    # it under a live DDP object aborted a gloo process at exit in CI.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
