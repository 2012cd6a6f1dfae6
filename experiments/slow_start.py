"""Why the Memory Mosaic starts slowly on the paper's recipe: measured, arm against arm, from step 0.

  python -m experiments.slow_start --data TEXT --out docs/figures/slow_start [--steps 60]

On the paper's recipe (``--preset paper``: 12 layers, d=768, AdamW to 5e-3 over 2,000 warm-up steps) the
Memory Mosaic's loss stays near ln(vocabulary) for its first hundreds of steps while GPT2's falls at once.
Three arms train on the same batches from the same initialisation seed with the trainer's optimizer and
schedule (its parameter groups, bias-corrected AdamW, clipping at grad_clip):
  gpt              GPT2 (logits = LN(x) W_e^T, W_e ~ N(0, 0.02))
  mosaic           the Memory Mosaic as the official Library code builds it: logits = LN(x) W_e^T / sqrt(d),
                   the tied W_e ~ N(0, 1/sqrt(d))
  mosaic-unscaled  the same model and weights without the 1/sqrt(d) logit scale (MosaicConfig.logit_scale=False)
  mosaic-gpt-head  no logit scale and GPT2's embedding init N(0, 0.02): GPT2's output layer on the Mosaic's blocks
                   (``mosaic-train --output-layer gpt2``)
Recorded: at initialisation, the residual stream's RMS after each block and the logits' standard deviation;
at every step, the training loss, the learning rate, the gradient norm and the logits' standard deviation
on the step's batch. The arms differ in the model only, so a gap that the unscaled arm closes is the
logit scale's.

Why the scale matters to a warm-up: Adam moves each weight by about the learning rate a step, whatever
the gradient's size. A logit is a sum over d coordinates of LN(x) times the head, so after weight moves of
total size S (the summed learning rates) a logit can move by about S * sum_i |LN(x)_i| ~ 0.8 d S, or
0.8 sqrt(d) S with the 1/sqrt(d) scale: sqrt(768) = 28 times less. Under a linear warm-up the summed
learning rate grows with the square of the step, so the scaled model needs about sqrt(28) = 5.3 times
more steps to move its logits as far.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from mosaic_model.cli.common import require_at_least_one
from mosaic_model.models.build import build_model
from mosaic_model.training import preset
from mosaic_model.training.optim import lr_at, make_optimizer
from mosaic_model.training.tasks import make_task

ARMS = ("gpt", "mosaic", "mosaic-unscaled", "mosaic-gpt-head")


def residual_rms(model: torch.nn.Module, x: torch.Tensor) -> list[float]:
    """RMS of the residual stream after the embedding and after each block (dropout off)."""
    captured = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: captured.append(float(out.float().pow(2).mean().sqrt())))
             for b in model.blocks]
    embed = model.wte(x).detach().float().pow(2).mean().sqrt()
    model.eval()
    with torch.no_grad():
        model(x)
    model.train()
    for h in hooks:
        h.remove()
    return [float(embed)] + captured


def run_arm(arm: str, a: argparse.Namespace) -> dict:
    """Train one arm for ``a.steps`` steps; returns its records."""
    model_type = "gpt" if arm == "gpt" else "mosaic"
    cfg = preset("paper", model=model_type, data=a.data, n_layer=a.depth, n_embd=a.width, n_head=a.width // 64,
                 block_size=a.block_size, batch_size=a.batch_size, grad_accum=1, steps=a.total_steps,
                 device="cpu", quiet=True, seed=a.seed, kernels="reference",
                 **({"output_layer": "gpt2"} if arm == "mosaic-gpt-head" else {}))   # mosaic-train --output-layer gpt2
    task = make_task(cfg, progress=False)
    torch.manual_seed(cfg.seed)
    unscaled = {"logit_scale": False} if arm == "mosaic-unscaled" else {}
    model = build_model(model_type, cfg.model_config(task.block_size, task.vocab_size), **unscaled)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    x0, _ = task.batch(0, cfg.batch_size, "cpu")
    record = {"arm": arm, "residual_rms_at_init": residual_rms(model, x0), "steps": []}
    from tqdm.auto import tqdm

    for step in tqdm(range(a.steps), desc=arm, disable=a.quiet):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = task.batch(step, cfg.batch_size, "cpu")
        logits, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        record["steps"].append({"step": step, "lr": lr, "loss": float(loss.detach()), "grad_norm": float(grad_norm),
                                "logit_std": float(logits.detach().float().std())})
    record["logit_std_at_init"] = record["steps"][0]["logit_std"]
    record["cumulative_lr"] = sum(s["lr"] for s in record["steps"])
    return record


def main(argv: list[str] | None = None) -> int:
    """Train every arm, write results.json and loss.png."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="training text (file or folder), tokenised as mosaic-train does")
    p.add_argument("--out", default="runs/slow_start")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--width", type=int, default=768, help="d (heads of 64 dimensions)")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=60, help="steps trained (of the paper's schedule)")
    p.add_argument("--total-steps", type=int, default=80000, help="the schedule's length (the paper's 80,000)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    require_at_least_one(p, a, ("depth", "width", "block_size", "batch_size", "steps", "total_steps"))
    if a.width % 64:
        p.error(f"--width must be a multiple of 64 (heads of 64 dimensions), got {a.width}")
    if a.steps > a.total_steps:
        p.error(f"--steps ({a.steps}) must be at most --total-steps ({a.total_steps})")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {"config": {k: v for k, v in vars(a).items() if k != "quiet"}, "ln_vocab": math.log(50257),
               "arms": [run_arm(arm, a) for arm in a.arms]}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    for r in results["arms"]:
        s = r["steps"]
        print(f"{r['arm']}: logit std at init {r['logit_std_at_init']:.4f}; loss {s[0]['loss']:.3f} at step 0, "
              f"{s[-1]['loss']:.3f} at step {s[-1]['step']} (summed lr {r['cumulative_lr']:.2e}); "
              f"residual RMS {r['residual_rms_at_init'][0]:.3f} -> {r['residual_rms_at_init'][-1]:.3f}")
    _plot(results, out / "loss.png")
    return 0


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_std) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results["arms"]:
        steps = [s["step"] for s in r["steps"]]
        ax_loss.plot(steps, [s["loss"] for s in r["steps"]], label=r["arm"])
        ax_std.plot(steps, [s["logit_std"] for s in r["steps"]], label=r["arm"])
    ax_loss.axhline(results["ln_vocab"], color="grey", ls=":", label="ln(vocabulary)")
    ax_loss.set(xlabel="training step (paper schedule: warm-up to 5e-3 over 2,000 steps)", ylabel="training loss",
                title="the first steps of the paper's recipe")
    ax_std.set(xlabel="training step", ylabel="standard deviation of the logits", yscale="log",
               title="how far the logits have moved")
    for ax in (ax_loss, ax_std):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
