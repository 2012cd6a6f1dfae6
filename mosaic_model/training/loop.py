"""The training loop: ``train(config)``, readable top to bottom.

Each optimizer step sees ``batch_size x grad_accum x processes`` sequences; every micro-step of every
process draws its own fresh batch, a pure function of (seed, step, micro-step, rank), so a resumed run
sees the batches the uninterrupted one would and a large global batch can be reproduced on fewer GPUs.
The learning rate is a function of (step, ``steps``) (``optim.lr_at``).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..models.build import build_model
from ..models.config import ConfigError
from .checkpoint import CheckpointError, Checkpoints, best_weights_problem, load_model, seed_everything
from .config import TrainConfig
from .distributed import init_distributed, wait_for_all
from .optim import lr_at, make_optimizer
from .run_log import RunLog
from .step import make_step, set_lr
from .tasks import make_task


def train(config: TrainConfig) -> dict:
    """Train as ``config`` says (after :meth:`TrainConfig.resolved`); returns the final metrics, or {}
    when the run stops early (``max_steps_this_run``, ``time_limit``) with a checkpoint to resume from.
    Raises ConfigError for a bad field, CheckpointError for a bad resume, DataError for bad text."""
    cfg = config.resolved()
    out = prepare_run_folder(cfg)
    rank, world, device_name = init_distributed(cfg.device)
    main = rank == 0
    say = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if main else (lambda *a, **k: None)
    for warning in cfg.warnings():
        say(f"warning: {warning}")
    ckpts = Checkpoints(out, cfg, world, writes=main)
    resumed = ckpts.resume_state() if cfg.resume else None
    if resumed is not None and resumed.get("finished") and resumed.get("early_stop"):
        say(f"{out}: this run ended at step {resumed['step']}, its validation loss no better for "
            f"{resumed['early_stop']} evaluations (--patience); nothing to do")
        wait_for_all(world)
        return resumed.get("final", {})
    if resumed is not None and resumed.get("finished") and resumed["step"] == cfg.steps:
        say(f"{out}: this run already finished at step {cfg.steps}; nothing to do (larger --steps extends it)")
        wait_for_all(world)
        return resumed.get("final", {})

    device, dtype = torch.device(device_name), getattr(torch, cfg.dtype)
    seed_everything(cfg.seed)
    task = make_task(cfg, progress=main and not cfg.quiet, world=world)
    model = build_model(cfg.model, cfg.model_config(task.block_size, task.vocab_size)).to(device)
    if world > 1:
        torch.manual_seed(cfg.seed + rank)  # distinct dropout masks per rank (the weights are broadcast)
    opt = make_optimizer(model, cfg, device)
    start, best = Checkpoints.restore(resumed, model, opt) if resumed else (0, math.inf)
    best_step = resumed.get("best_step", start) if resumed else 0  # --patience counts from here
    if resumed:
        say(f"resumed from {ckpts.path} at step {start}")
        if cfg.final_from == "best" and main and math.isfinite(best) and (why := best_weights_problem(out, best, best_step)):
            say(f"warning: {why}: unless a later evaluation does better, the final metrics have no best weights to "
                "come from and the run ends with an error (copy best.pt with ckpt.pt to resume a run elsewhere)")
    log = RunLog(out, fresh=resumed is None, writes=main)
    step_fn = make_step(model, opt, cfg, device, dtype, world, start, task.fixed_shape)
    say(describe(cfg, model, task, world, device_name))
    log.config(cfg.to_dict())
    log.provenance(start)

    stop = cfg.steps if cfg.max_steps_this_run is None else min(cfg.steps, start + cfg.max_steps_this_run)
    deadline = None if cfg.time_limit is None else time.perf_counter() + cfg.time_limit
    bar = tqdm(total=cfg.steps, initial=start, desc="training", unit="step", disable=cfg.quiet or not main,
               dynamic_ncols=True)
    model.train()
    early_stop = None  # --patience: the evaluations without a better validation loss when the run ended
    tokens, t_last = 0, time.perf_counter()
    t_start = t_last  # elapsed_s: wall time of this call's loop, evaluations included (where a slow run's time went)
    for step in range(start, stop):
        lr = lr_at(step, cfg)
        set_lr(opt, lr)
        draws = ((step * cfg.grad_accum + micro) * world + rank for micro in range(cfg.grad_accum))
        batches = [task.batch(draw, cfg.batch_size, device) for draw in draws]
        tokens += sum(x.numel() for x, _ in batches) * world
        loss, grad_norm = step_fn(batches)
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            loss_v, tps = float(loss), tokens / (time.perf_counter() - t_last)  # rank 0's mean over its micro-steps
            tokens, t_last = 0, time.perf_counter()
            log.record({"step": step + 1, "split": "train", "loss": loss_v, "lr": lr, "grad_norm": float(grad_norm),
                        "tokens_per_s": tps, "elapsed_s": round(t_last - t_start, 3)})
            bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False)
        if main and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            best, best_step = validate_and_save(step + 1, cfg, task, model, opt, ckpts, log, best, best_step, bar,
                                                device, dtype)
            t_last = time.perf_counter()  # the evaluation's time is not training throughput
            stale = (step + 1 - best_step) // cfg.eval_every
            if cfg.patience is not None and stale >= cfg.patience and step + 1 < cfg.steps:
                early_stop, stop = stale, step + 1
                say(f"step {stop}: no better validation loss for {stale} evaluations (best {best:.4f} at step "
                    f"{best_step}): the run ends here (--patience {cfg.patience})")
                break
        if deadline is not None and time.perf_counter() > deadline and step + 1 < stop:
            stop = step + 1  # at least one step per call, so a time-sliced run always advances
            break
    bar.close()

    if (stop < cfg.steps and early_stop is None) or not main:
        ckpts.save(stop, model, opt, best, best_step=best_step)
        log.close()
        wait_for_all(world)
        if stop < cfg.steps:
            say(f"stopped at step {stop} of {cfg.steps}; continue with: mosaic-train ... --resume --out-dir {out}")
        return {}
    final = final_metrics(cfg, model, task, out, device, dtype, last_step=stop, best=best, best_step=best_step)
    log.record({"step": stop, "split": "test" if task.kind == "icl" else "final", **final,
                **({"early_stop": early_stop} if early_stop is not None else {})})
    ckpts.save(stop, model, opt, best, finished=True, final=final, best_step=best_step, early_stop=early_stop)
    log.close()
    wait_for_all(world)
    print(f"{task.final_title}: {task.final_summary(final)}")
    say(f"outputs in {out}/: metrics.jsonl (every log and evaluation), ckpt.pt (last), best.pt (best val loss), "
        "config.json (the settings), provenance.jsonl (commit and versions)")
    return final


def validate_and_save(step: int, cfg: TrainConfig, task: object, model: torch.nn.Module, opt: torch.optim.Optimizer,
                      ckpts: Checkpoints, log: RunLog, best: float, best_step: int, bar: tqdm, device: torch.device,
                      dtype: torch.dtype) -> tuple[float, int]:
    """The evaluation after ``step``: validation metrics logged (and shown), best.pt when the loss is the
    best so far, ckpt.pt at the checkpoint steps; returns the best validation loss and its step (kept in ckpt.pt:
    --patience counts from it after a resume)."""
    m = task.validate(model, device, dtype)
    log.record({"step": step, "split": "val", **m})
    if not cfg.quiet:
        bar.write(f"step {step}: {task.summary(m)}", file=sys.stderr)
    if m["loss"] < best:
        best, best_step = m["loss"], step
        if not cfg.no_best:
            ckpts.save(step, model, opt, best, best_weights=True)
    if cfg.save_every is None or step % cfg.save_every == 0:
        ckpts.save(step, model, opt, best, best_step=best_step)
    return best, best_step


# What a run writes into its folder; --overwrite removes them, so that nothing of the old run is left.
RUN_FILES = ("ckpt.pt", "best.pt", "metrics.jsonl", "provenance.jsonl", "config.json")


def prepare_run_folder(cfg: TrainConfig) -> Path:
    """The run folder, made if needed. With ``resume`` it must hold a checkpoint; otherwise it must be
    writable and hold no run (a ckpt.pt or a metrics.jsonl), unless ``overwrite`` says to delete that
    run's files first. ConfigError naming the field otherwise."""
    out = Path(cfg.out_dir)
    if cfg.resume:
        if not (out / "ckpt.pt").is_file():
            raise ConfigError("resume", f"found no run to resume in {out} (no ckpt.pt there); leave out --resume to start one")
        return out
    if any((out / f).is_file() for f in ("ckpt.pt", "metrics.jsonl")):
        if not cfg.overwrite:
            raise ConfigError("out_dir", f"{out} already holds a run: --resume continues it, --overwrite replaces it")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{id(cfg)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError("out_dir", f"{out} is not a writable folder ({e.strerror or e})") from None
    return out


def describe(cfg: TrainConfig, model: torch.nn.Module, task: object, world: int, device: str) -> str:
    """One line: the model, its size, the task and how a step is made."""
    n_params = sum(p.numel() for p in model.parameters())
    kernels = cfg.kernels + "".join(f", {op} on the reference" for op in cfg.reference_ops) if cfg.model == "mosaic" else "-"
    return (f"{cfg.model}: {n_params:,} parameters, {cfg.n_layer} layers, d={cfg.n_embd}, heads={cfg.n_head}, "
            f"kernels={kernels} | {task.describe()} | device {device}, {cfg.dtype} | "
            f"{cfg.batch_size} x {cfg.grad_accum} micro-steps x {world} processes per step")


def final_metrics(cfg: TrainConfig, model: torch.nn.Module, task: object, out: Path, device: torch.device,
                  dtype: torch.dtype, last_step: int, best: float = math.inf, best_step: int = 0) -> dict:
    """The task's final metrics of the last weights (those of ``last_step``: ``cfg.steps``, or earlier when
    --patience ended the run), or with ``final_from="best"`` of a copy built from best.pt (so the model, and the
    ckpt.pt saved after, stay the last weights: what a resume continues). With no evaluation before the end
    (``best`` infinite) there is no best.pt and the last weights are scored; a best.pt that is not the weights of
    ``best`` (lost in a resume) raises CheckpointError instead of scoring other weights."""
    scored, weights_from, weights_step = model, "last", last_step
    if cfg.final_from == "best" and math.isfinite(best) and (why := best_weights_problem(out, best, best_step)):
        raise CheckpointError(f"--final-from best: {why}; the weights of best validation loss are gone, so this "
                              "run's final metrics cannot be computed (train it again, or --final-from last)")
    if cfg.final_from == "best" and (out / "best.pt").is_file():
        scored, best_ckpt = load_model(out / "best.pt", device)
        weights_from, weights_step = "best", best_ckpt["step"]
    return {**task.final(scored, device, dtype), "weights_from": weights_from, "weights_step": weights_step}
