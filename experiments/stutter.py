"""Why a Memory Mosaic's continuations repeat the word before ("to to"): measured on trained runs.

  python -m experiments.stutter RUN_MOSAIC RUN_GPT --out docs/figures/stutter [--windows 64] [--samples 3]

For every run (a Memory Mosaic or a GPT2 folder of ``mosaic-train --task lm``), on random windows of its
own validation text (the split its training held out) and on the 24 prompts of the paper's Table 1:

1. How often the model predicts the token it has just read. Teacher-forced: the share of positions where
   the argmax is the current token, and the mean probability given to it, beside the share of positions
   where the text does repeat its token. Generated: the share of adjacent words (as
   ``experiments.repeat_rate`` counts them) and of adjacent tokens that are equal, greedy and sampled
   (temperature 1, ``--samples`` seeds per prompt), cached and uncached decoding.
2. Which part of the model pushes the current token. The final residual stream is the sum of the
   embedding and every block's two outputs (C-mem and P-mem, or attention and MLP), so the logits are,
   exactly, a sum of one term per part once the final LayerNorm's per-position scale is held fixed:
   ``logits = s W_e (gamma * (h - mean h) / sigma + beta)`` with ``h = sum_c h_c``. Each part's term for
   the current token, centred over the vocabulary (a shift common to every token changes nothing), is its
   "direct push" toward repeating.
3. For a Memory Mosaic, the suspect mechanism, tested by intervention. Its C-mem value at position j
   peeks one token ahead (it mixes x_j and x_{j+1}), so the value of the most recent key j = t-1 carries
   the current token x_t; the leaky-average keys make k_t most similar to k_{t-1}, so that key gets the
   largest weight. Measured: the weight on key t-1 (mean over rows and heads, beside the uniform 1/t),
   then the model run with every C-mem reading keys j <= t-2 only (the band attention's ``delay=2``): its
   loss, its repeat statistics and its generations. A mechanism that causes the stutter removes it when
   cut; the loss says what else the cut costs.
4. Whether a repeat feeds itself. Greedy repeats split into loops that start (a token repeated after a
   different one) and loops that go on (a token repeated after it was already repeated); the word repeat
   rate is about the start rate times the loops' mean length. Teacher-forced, the same split: contexts cut
   from the validation windows and followed by k = 0..3 extra copies of their last token, the probability
   of that token once more and each part's direct push toward it, for every model and, for a Memory
   Mosaic, under the cut of 3 too. A C-mem that has stored "a follows a" retrieves it again (the peek-ahead
   value of the copy's key holds the copy): a push that grows with k is that feedback.

Writes ``stutter.json``, ``push.png`` (the direct push per part, all positions against the positions
where the model predicts a repeat) and ``feedback.png`` (point 4's probability against k) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from mosaic_kernels import reference as reference_ops
from mosaic_model.data import text
from mosaic_model.evaluation.prompts import EOT, decode_tokens, default_prompts
from mosaic_model.models.gpt import GPT
from mosaic_model.models.memory import merge_heads
from mosaic_model.training.checkpoint import load_model, read_checkpoint
from mosaic_model.training.config import TrainConfig
from mosaic_model.training.tasks import LMTrainingTask

from .repeat_rate import repeat_rate


def validation_windows(ckpt: dict, num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` random windows (x, y) of the run's block size from the validation text its training held out."""
    known = {f.name for f in fields(TrainConfig)}  # the saved args also hold run facts (world_size, ...)
    cfg = TrainConfig(**{k: v for k, v in ckpt["args"].items() if k in known})
    task = LMTrainingTask(cfg, progress=False)
    return task.val_corpus.random_windows(np.random.default_rng(seed), num, cfg.block_size)


def parts(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every block output that is added to the residual stream, in order."""
    if isinstance(model, GPT):
        return [(f"{i}.{n}", getattr(b, n)) for i, b in enumerate(model.blocks) for n in ("attn", "mlp")]
    return [(f"{i}.{n}", getattr(b, n)) for i, b in enumerate(model.blocks) for n in ("cmem", "pmem")]


@torch.no_grad()
def forward_with_parts(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """(logits, {part: its (B, T, d) addition to the residual stream, "embedding": the input stream}),
    and, for a Memory Mosaic, "cmem_input.i": the normalised input of block i's C-mem."""
    out, hooks = {}, []
    for name, mod in parts(model):
        hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o)))
        if name.endswith("cmem"):
            hooks.append(mod.register_forward_pre_hook(
                lambda m, i, name=name: out.__setitem__("cmem_input." + name.split(".")[0], i[0])))
    try:
        logits = model(x)[0]
    finally:
        for h in hooks:
            h.remove()
    emb = model.wte(x)
    if isinstance(model, GPT):
        emb = emb + model.wpe(torch.arange(x.shape[1], device=x.device))
    out["embedding"] = emb
    return logits, out


@torch.no_grad()
def direct_push(model: torch.nn.Module, contributions: dict, names: list[str], tokens: torch.Tensor) -> dict:
    """{part: (B, T) centred logit of ``tokens`` that the part writes directly}, with "ln_f bias" for the
    final LayerNorm's bias; the parts sum to the model's centred logit of ``tokens`` (checked)."""
    h = sum(contributions[n] for n in names)
    ln = model.ln_f
    sigma = torch.sqrt(h.var(dim=-1, unbiased=False, keepdim=True) + ln.eps)
    scale = 1.0 / math.sqrt(model.config.n_embd) if getattr(model.config, "logit_scale", False) else 1.0
    W = model.lm_head.weight                                  # (vocab, d)
    w_tok, w_mean = W[tokens], W.mean(dim=0)                  # (B, T, d), (d,)
    push = {}
    for n in names:
        c = contributions[n]
        u = ln.weight * (c - c.mean(dim=-1, keepdim=True)) / sigma * scale
        push[n] = (u * (w_tok - w_mean)).sum(-1)
    if ln.bias is not None:
        push["ln_f bias"] = ((ln.bias * scale) * (w_tok - w_mean)).sum(-1)
    return push


@torch.no_grad()
def latest_key_weight(model: torch.nn.Module, cmem_inputs: list[torch.Tensor]) -> list[float]:
    """Per C-mem: the mean attention weight on key t-1 over rows t >= 1 and heads (the strict mask's
    softmax of k_t . k_j, j < t, recomputed from the block's keys)."""
    weights = []
    for block, x in zip(model.blocks, cmem_inputs):
        k = block.cmem.key(x).double()                      # (B, H, T, hs)
        T = k.shape[2]
        scores = k @ k.transpose(-1, -2)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=k.device).tril(-1), float("-inf"))
        att = torch.softmax(scores[:, :, 1:], dim=-1)        # rows 1..T-1
        weights.append(float(att.diagonal(offset=0, dim1=-2, dim2=-1).mean()))  # row t, key t-1
    return weights


@contextmanager
def cmem_reading_from(model: torch.nn.Module, delay: int):
    """Every C-mem of a Memory Mosaic reads keys j <= t - ``delay`` only (the reference band attention),
    for uncached forwards; the trained model has delay 1 (the strict causal mask)."""
    for block in model.blocks:
        mem = block.cmem

        def forward(x: torch.Tensor, scalars=None, mem=mem) -> torch.Tensor:  # scalars: as ContextMemory.forward
            decay, bandwidth, scale = mem.head_scalars() if scalars is None else scalars
            y = reference_ops.mosaic_attention(mem.key(x, decay=decay, bandwidth=bandwidth), mem.value(x, scale=scale),
                                               delay=delay)
            return mem.c_proj(merge_heads(y))
        mem.forward = forward  # an instance attribute shadows the class's method until deleted
    try:
        yield model
    finally:
        for block in model.blocks:
            del block.cmem.forward


@torch.no_grad()
def teacher_forced(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> dict:
    """Loss, share of positions whose argmax is the current token, and mean probability given to it."""
    loss = top_repeat = p_repeat = 0.0
    n = 0
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        logits = model(xb)[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        loss += float(-logp.gather(-1, yb[..., None]).sum())
        top_repeat += float((logits.argmax(-1) == xb).sum())
        p_repeat += float(logp.gather(-1, xb[..., None]).exp().sum())
        n += xb.numel()
    return {"loss": loss / n, "argmax_is_current": top_repeat / n, "p_current": p_repeat / n}


@torch.no_grad()
def generations(model: torch.nn.Module, enc: object, prompts: list[str], max_new: int, temperature: float,
                seed: int, use_cache: bool) -> list[list[int]]:
    """The new tokens of one continuation per prompt (stopping at end of text), prompt i seeded seed + i."""
    outs = []
    device = next(model.parameters()).device
    for i, prompt in enumerate(prompts, 1):
        idx = torch.tensor([enc.encode_ordinary(prompt)], device=device)
        g = torch.Generator(device=device).manual_seed(seed + i)
        out = model.generate(idx, max_new, temperature=temperature, stop_token=EOT, generator=g, use_cache=use_cache)
        outs.append([t for t in out[0, idx.shape[1]:].tolist() if t != EOT])
    return outs


def repeat_stats(enc: object, outs: list[list[int]]) -> dict:
    """Word and token repeat rates of continuations (adjacent equal pairs over adjacent pairs)."""
    words, pairs = repeat_rate([decode_tokens(enc, o) for o in outs])
    tok_rep = sum(a == b for o in outs for a, b in zip(o, o[1:]))
    tok_pairs = sum(max(len(o) - 1, 0) for o in outs)
    return {"word_repeat": words / max(pairs, 1), "word_pairs": pairs,
            "token_repeat": tok_rep / max(tok_pairs, 1), "token_pairs": tok_pairs}


def loop_stats(outs: list[list[int]]) -> dict:
    """Adjacent equal tokens of continuations split into loops that start (the pair's first token differs
    from the one before it, or is the continuation's first) and loops that go on (it repeats the one before)."""
    start = start_pairs = go_on = go_on_pairs = 0
    for o in outs:
        for n in range(len(o) - 1):
            if n > 0 and o[n] == o[n - 1]:
                go_on_pairs += 1
                go_on += o[n + 1] == o[n]
            else:
                start_pairs += 1
                start += o[n + 1] == o[n]
    return {"start": start / max(start_pairs, 1), "start_pairs": start_pairs,
            "go_on": go_on / max(go_on_pairs, 1), "go_on_pairs": go_on_pairs}


FEEDBACK_COPIES = (0, 1, 2, 3)


@torch.no_grad()
def repeat_feedback(model: torch.nn.Module, x: torch.Tensor, batch: int) -> dict:
    """{k: the mean probability of the context's last token once more, the share of contexts where it is the
    argmax, and each part's mean direct push toward it}, for contexts of 1/4, 1/2 and 3/4 of the windows
    ``x`` (N, T) and of T - 3 tokens, each followed by k extra copies of its last token (k in
    ``FEEDBACK_COPIES``); read at the last position."""
    T = x.shape[1]
    lengths = sorted({max(T // 4, 1), max(T // 2, 1), max(3 * T // 4, 1), max(T - max(FEEDBACK_COPIES), 1)})
    names = ["embedding"] + [n for n, _ in parts(model)]
    result = {}
    for k in FEEDBACK_COPIES:
        p = top = 0.0
        push = dict.fromkeys(names, 0.0)
        n = 0
        for length in lengths:
            for i in range(0, len(x), batch):
                context = x[i:i + batch, :length]
                current = context[:, -1:]                                      # (b, 1)
                logits, contrib = forward_with_parts(model, torch.cat([context, current.expand(-1, k)], dim=1))
                last = torch.log_softmax(logits[:, -1].double(), dim=-1)       # (b, vocab)
                p += float(last.gather(-1, current).exp().sum())
                top += float((last.argmax(-1, keepdim=True) == current).sum())
                at_last = {name: c[:, -1:] for name, c in contrib.items()}
                for name, v in direct_push(model, at_last, names, current).items():
                    push[name] = push.get(name, 0.0) + float(v.sum())
                n += len(context)
        result[k] = {"p_current": p / n, "argmax_is_current": top / n, "push": {m: v / n for m, v in push.items()},
                     "contexts": n}
    return result


def decoding_study(model: torch.nn.Module, enc: object, a: argparse.Namespace, cached: bool) -> dict:
    """Repeat statistics of greedy and sampled continuations of the prompts, and the greedy texts."""
    prompts = default_prompts()
    greedy = generations(model, enc, prompts, a.max_new_tokens, 0.0, 0, cached)
    sampled = [t for s in range(a.samples) for t in
               generations(model, enc, prompts, a.max_new_tokens, 1.0, 1000 * (s + 1), cached)]
    return {"greedy": repeat_stats(enc, greedy), "sampled": repeat_stats(enc, sampled),
            "greedy_loops": loop_stats(greedy), "sampled_loops": loop_stats(sampled),
            "greedy_tokens": greedy, "greedy_text": [decode_tokens(enc, o) for o in greedy]}


def study(run: str, a: argparse.Namespace, enc: object) -> dict:
    """Every measurement of the module docstring for one run."""
    # Built on the reference ops (read_checkpoint first, since a GPT's config has no kernels field).
    kernels = {} if read_checkpoint(run)["model_type"] == "gpt" else {"kernels": "reference"}
    model, ckpt = load_model(run, a.device, **kernels)
    x, y = (t.to(a.device) for t in validation_windows(ckpt, a.windows, a.seed))
    r = {"run": run, "model_type": ckpt["model_type"], "step": ckpt["step"], "windows": a.windows,
         "block_size": x.shape[1], "text_repeats": float((y == x).double().mean())}
    r["teacher_forced"] = teacher_forced(model, x, y, a.batch)
    logits, contrib = forward_with_parts(model, x[: a.batch])
    names = ["embedding"] + [n for n, _ in parts(model)]
    push = direct_push(model, contrib, names, x[: a.batch])
    total = sum(push.values())
    centred = logits.gather(-1, x[: a.batch, :, None])[..., 0] - logits.mean(-1)
    r["push_reconstruction_error"] = float((total - centred).abs().max())
    stutters = logits.argmax(-1) == x[: a.batch]
    r["push_all_positions"] = {n: float(p.mean()) for n, p in push.items()}
    r["push_where_argmax_is_current"] = {n: float(p[stutters].mean()) if stutters.any() else None
                                         for n, p in push.items()}
    r["positions_where_argmax_is_current"] = int(stutters.sum())
    r["decoding_cached"] = decoding_study(model, enc, a, cached=True)
    r["decoding_uncached"] = decoding_study(model, enc, a, cached=False)
    r["cached_equals_uncached_greedy"] = r["decoding_cached"]["greedy_tokens"] == r["decoding_uncached"]["greedy_tokens"]
    r["feedback"] = repeat_feedback(model, x, a.batch)
    if ckpt["model_type"] == "mosaic":
        n = len(model.blocks)
        r["latest_key_weight"] = latest_key_weight(model, [contrib[f"cmem_input.{i}"] for i in range(n)])
        T = x.shape[1]
        r["uniform_weight_mean"] = float(np.mean(1.0 / np.arange(1, T)))
        with cmem_reading_from(model, delay=2):
            r["without_latest_key"] = {"teacher_forced": teacher_forced(model, x, y, a.batch),
                                       "decoding": decoding_study(model, enc, a, cached=False),
                                       "feedback": repeat_feedback(model, x, a.batch)}
    return r


def plot(results: list[dict], out: Path) -> None:
    """push.png: each part's direct push toward the current token, all positions and stutter positions;
    feedback.png: the probability of the last token once more after k extra copies of it, per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.8), squeeze=False)
    for ax, r in zip(axes[0], results):
        names = list(r["push_all_positions"])
        xs = np.arange(len(names))
        ax.bar(xs - 0.2, [r["push_all_positions"][n] for n in names], 0.4, label="all positions")
        ax.bar(xs + 0.2, [r["push_where_argmax_is_current"][n] or 0.0 for n in names], 0.4,
               label=f"argmax = current token ({r['positions_where_argmax_is_current']})")
        ax.set_xticks(xs, names, rotation=45, ha="right")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel("centred logit of the current token")
        ax.set_title(f"{r['model_type']} ({Path(r['run']).name})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "push.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in results:
        label = f"{r['model_type']} ({Path(r['run']).name})"
        curves = [(label, r["feedback"])]
        if "without_latest_key" in r:
            curves.append((label + ", keys j <= t-2", r["without_latest_key"]["feedback"]))
        for name, fb in curves:
            ks = sorted(fb, key=int)
            ax.plot([int(k) for k in ks], [fb[k]["p_current"] for k in ks], marker="o",
                    ls="--" if name.endswith("t-2") else "-", label=name)
    ax.set(xlabel="extra copies k of the context's last token", ylabel="p(that token once more)", yscale="log",
           xticks=list(FEEDBACK_COPIES))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "feedback.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the study on every run folder and write stutter.json, push.png and feedback.png."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders of mosaic-train --task lm (a Memory Mosaic, a GPT2)")
    p.add_argument("--out", type=Path, default=Path("runs/stutter"))
    p.add_argument("--windows", type=int, default=64, help="validation windows of the run's block size")
    p.add_argument("--batch", type=int, default=16, help="windows per forward")
    p.add_argument("--samples", type=int, default=3, help="sampled continuations per prompt (temperature 1)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--seed", type=int, default=0, help="seed of the validation windows")
    p.add_argument("--device", default="cpu", help="where the models run (float32, reference ops): cpu or cuda")
    a = p.parse_args(argv)
    for name in ("windows", "batch", "samples", "max_new_tokens"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(a, name)}")
    for run in a.runs:
        if not Path(run).exists():
            p.error(f"runs: {run} does not exist")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device: expected cpu (this machine has no CUDA device), got {a.device}")
    torch.manual_seed(0)
    enc = text.gpt2_encoding()
    results = [study(run, a, enc) for run in a.runs]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "stutter.json").write_text(json.dumps(results, indent=1))  # the feedback's keys k become strings
    plot(results, a.out)
    for r in results:
        tf, dc = r["teacher_forced"], r["decoding_cached"]
        line = (f"{r['model_type']:7s} {Path(r['run']).name}: text repeats {r['text_repeats']:.4f}; argmax = current "
                f"{tf['argmax_is_current']:.4f}, p(current) {tf['p_current']:.4f}, loss {tf['loss']:.3f}; word repeats "
                f"greedy {dc['greedy']['word_repeat']:.3f} sampled {dc['sampled']['word_repeat']:.3f}")
        print(line)
        if "without_latest_key" in r:
            w = r["without_latest_key"]
            print(f"        without key t-1: argmax = current {w['teacher_forced']['argmax_is_current']:.4f}, "
                  f"p(current) {w['teacher_forced']['p_current']:.4f}, loss {w['teacher_forced']['loss']:.3f}; word "
                  f"repeats greedy {w['decoding']['greedy']['word_repeat']:.3f} sampled "
                  f"{w['decoding']['sampled']['word_repeat']:.3f}; weight on key t-1 {r['latest_key_weight']}")
        for name, fb in [("", r["feedback"])] + ([(" (keys j <= t-2)", r["without_latest_key"]["feedback"])]
                                                  if "without_latest_key" in r else []):
            print(f"        p(last token once more) after k = 0..3 extra copies{name}: "
                  + " ".join(f"{fb[k]['p_current']:.3f}" for k in FEEDBACK_COPIES))
        loops = dc["greedy_loops"]
        print(f"        greedy loops: start {loops['start']:.3f} of {loops['start_pairs']} pairs, go on "
              f"{loops['go_on']:.3f} of {loops['go_on_pairs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
