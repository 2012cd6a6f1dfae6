"""Evaluation: the in-context task's metrics, and ``mosaic-eval`` for language models.

``mosaic-eval`` subcommands (each takes one or more run folders, or checkpoint files):
  loss          mean token loss of a checkpoint on a corpus (consecutive windows)
  per-position  mean token loss at each position 0..T-1 of document-aligned windows (JSON + PNG)
  attention     the last query row's attention averaged over sequences, per layer and head (JSON + PNG)
  long-context  per-position loss and last-row attention at a longer context than training (JSON + PNG)
  generate      continuations of the 24 prompts of Eldan & Li (the paper's Table 1), as markdown
Run ``mosaic-eval SUBCOMMAND --help`` for the options.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.regbench import ICLSplit, icl_metrics
from .data.text import DataError, TokenCorpus
from .lm import IGNORE_INDEX
from .runtime import autocast_for, require_at_least_one


@torch.no_grad()
def evaluate_icl(model: torch.nn.Module, split: ICLSplit, batch_size: int, device: torch.device | str,
                 dtype: torch.dtype = torch.float32,
                 max_batches: int | None = None) -> dict:
    """Loss, validity accuracy, L1 and TVD over an in-context split, in fixed order.

    Per-batch means are averaged with weights equal to the batch's number of sequences, as
    seq_icl's Lightning logging does.
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    totals: dict[str, float] = {}
    weight = 0
    try:
        for n, start in enumerate(range(0, len(split), batch_size)):
            if max_batches is not None and n >= max_batches:
                break
            idx = list(range(start, min(start + batch_size, len(split))))
            x, y, _ = split.batch(idx, device)
            with autocast_for(device, dtype):
                logits, loss = model(x, y)
            m = icl_metrics(logits, y, split.legal(idx, device))
            m["loss"] = float(loss)
            for key in ("loss", "accuracy", "l1", "tvd", "chance_accuracy"):
                totals[key] = totals.get(key, 0.0) + m[key] * len(idx)
            weight += len(idx)
    finally:
        model.train(was_training)
    return {k: v / max(weight, 1) for k, v in totals.items()}


def _token_losses(model, x: torch.Tensor, y: torch.Tensor, device, dtype) -> torch.Tensor:
    """Per-token cross-entropy (B, T) in float32; 0 where y is IGNORE_INDEX."""
    with autocast_for(device, dtype):
        logits, _ = model(x.to(device))
    return F.cross_entropy(logits.float().transpose(1, 2), y.to(device), ignore_index=IGNORE_INDEX, reduction="none")


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, corpus: TokenCorpus, block_size: int, batches: int, batch_size: int,
                  device: torch.device | str, dtype: torch.dtype = torch.float32,
                  seed: int = 0) -> float:
    """Mean token loss over ``batches`` batches of random windows drawn with ``seed`` (the same windows at
    every call, so that successive estimates during training are comparable)."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    total = 0.0
    try:
        for _ in range(batches):
            x, y = corpus.random_windows(rng, batch_size, block_size)
            total += float(_token_losses(model, x, y, device, dtype).mean())
    finally:
        model.train(was_training)
    return total / batches


@torch.no_grad()
def corpus_loss(model: torch.nn.Module, corpus: TokenCorpus, block_size: int, batch_size: int, device: torch.device | str,
                dtype: torch.dtype = torch.float32,
                max_tokens: int | None = None) -> dict:
    """Mean token loss over consecutive non-overlapping windows covering the corpus (or its first
    ``max_tokens`` tokens): every token is predicted once, from up to ``block_size`` tokens of context."""
    n = len(corpus) - 1 if max_tokens is None else min(max_tokens, len(corpus) - 1)
    starts = list(range(0, n - block_size + 1, block_size))
    if not starts:
        corpus.check_window(block_size)
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        rows = np.stack([corpus.tokens[s:s + block_size + 1] for s in starts[i:i + batch_size]]).astype(np.int64)
        t = torch.from_numpy(rows)
        losses = _token_losses(model, t[:, :-1], t[:, 1:], device, dtype)
        total += float(losses.sum())
        count += losses.numel()
    return {"loss": total / count, "tokens": count}


@torch.no_grad()
def loss_by_position(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device | str,
                     dtype: torch.dtype = torch.float32,
                     window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean loss, number of documents) at each position over document-aligned rows (x, y).

    With ``window`` (a GPT run past its trained length), a position p is predicted from the ``window``
    tokens ending at p: rows are scored in windows that advance by window // 2, each position once.
    """
    T = x.shape[1]
    sums, counts = torch.zeros(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        if window is None or window >= T:
            losses = _token_losses(model, xb, yb, device, dtype).cpu()
        else:
            losses = _sliding_losses(model, xb, yb, window, device, dtype)
        valid = (yb != IGNORE_INDEX).double()
        sums += (losses.double() * valid).sum(0)
        counts += valid.sum(0)
    return (sums / counts.clamp_min(1)).numpy(), counts.numpy()


def _sliding_losses(model, x, y, window: int, device, dtype) -> torch.Tensor:
    T, stride = x.shape[1], max(1, window // 2)
    out = torch.zeros(x.shape, dtype=torch.float32)
    scored_to = 0
    start = 0
    while scored_to < T:
        end = min(start + window, T)
        losses = _token_losses(model, x[:, start:end], y[:, start:end], device, dtype).cpu()
        out[:, scored_to:end] = losses[:, scored_to - start:]
        scored_to = end
        start = min(start + stride, max(T - window, 0)) if end < T else start
    return out


@torch.no_grad()
def mean_last_row_attention(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device | str,
                            dtype: torch.dtype = torch.float32) -> np.ndarray:
    """(layers, heads, n) last-row attention averaged over the rows of ``x`` (see ``probes``)."""
    from .probes import last_row_attention

    total = None
    for i in range(0, len(x), batch_size):
        with autocast_for(device, dtype):
            rows = last_row_attention(model, x[i:i + batch_size].to(device))
        batch = torch.stack([r.sum(0) for r in rows]).double().cpu()
        total = batch if total is None else total + batch
    return (total / len(x)).numpy()


# --------------------------------------------------------------------------- mosaic-eval

def _plot_lines(curves: dict, xlabel: str, ylabel: str, title: str, path: Path, logy: bool = False,
                vline: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, ys in curves.items():
        ax.plot(np.arange(len(ys)), ys, label=label, lw=1.3)
    if vline is not None:
        ax.axvline(vline, color="grey", ls="--", lw=1, label="training length")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_attention(att: np.ndarray, title: str, path: Path) -> None:
    """Heat map, one row per (layer, head), of the last row's attention over positions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, H, n = att.shape
    fig, ax = plt.subplots(figsize=(8, 0.35 * L * H + 1.4))
    im = ax.imshow(att.reshape(L * H, n), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(L * H), [f"L{l} H{h}" for l in range(L) for h in range(H)], fontsize=6)
    ax.set(xlabel="key position", title=title)
    fig.colorbar(im, ax=ax, label="attention weight")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label(run: str, ckpt: dict) -> str:
    c = ckpt["model_config"]
    return f"{ckpt['model_type']} L{c['n_layer']} d{c['n_embd']} ({Path(run).name})"


def _corpus(a):
    from .data.text import load_corpus

    return load_corpus(a.data, doc_split=a.doc_split, cache_dir=a.cache_dir, tokenizer_dir=a.tokenizer_dir,
                       progress=not a.quiet)


def _allow_context(model, ckpt: dict, T: int) -> None:
    """Let a Memory Mosaic run T tokens (its parameters do not depend on the block size); a GPT keeps
    its trained length, which its learned positions fix."""
    if ckpt["model_type"] == "mosaic" and T > model.config.block_size:
        model.config.block_size = T


def _cmd_loss(a, runs):
    corpus = _corpus(a)
    results = {}
    for run, (model, ckpt) in runs.items():
        T = a.block_size or ckpt["model_config"]["block_size"]
        results[run] = corpus_loss(model, corpus, T, a.batch_size, a.device, a.dtype_t, a.max_tokens)
        print(f"{_label(run, ckpt)}: loss {results[run]['loss']:.4f} over {results[run]['tokens']:,} tokens of {a.data}")
    return results


def _per_position(a, runs, long: bool):
    corpus = _corpus(a)
    results, curves = {}, {}
    for run, (model, ckpt) in runs.items():
        T_train = ckpt["model_config"]["block_size"]
        T = a.block_size or (3 * T_train if long else T_train)
        window = T_train if ckpt["model_type"] == "gpt" and T > T_train else None
        _allow_context(model, ckpt, T)
        x, y = corpus.document_windows(T, a.max_docs, full_length=a.full_length)
        if not len(x):
            raise DataError(f"{a.data}: no document has {T + 1} tokens or more (drop --full-length or lower --block-size)")
        loss, count = loss_by_position(model, x, y, a.batch_size, a.device, a.dtype_t, window=window)
        results[run] = {"loss": loss.tolist(), "documents": count.tolist(), "block_size": T,
                        "trained_block_size": T_train, "gpt_sliding_window": window, "full_length": a.full_length}
        curves[_label(run, ckpt)] = loss
        early = float(np.nanmean(loss[: min(50, T)]))
        late = float(np.nanmean(loss[min(100, T - 1):])) if T > 100 else float("nan")
        print(f"{_label(run, ckpt)}: mean loss {float(np.sum(loss * count) / np.sum(count)):.4f}; "
              f"positions 0-49 {early:.4f}, 100+ {late:.4f}; {int(count[0])} documents")
    return results, curves


def _cmd_per_position(a, runs):
    results, curves = _per_position(a, runs, long=False)
    _plot_lines(curves, "position in document", "mean token loss", f"loss by position on {Path(a.data).name}",
                a.out.with_suffix(".png"))
    return results


def _attention(a, runs, T_of):
    corpus = _corpus(a)
    results = {}
    for run, (model, ckpt) in runs.items():
        T = T_of(ckpt)
        _allow_context(model, ckpt, T)
        if ckpt["model_type"] == "gpt" and T > ckpt["model_config"]["block_size"]:
            T = ckpt["model_config"]["block_size"]  # learned positions stop at the trained length
        x, _ = corpus.random_windows(np.random.default_rng(a.seed), a.num_seqs, T)
        att = mean_last_row_attention(model, x, a.batch_size, a.device, a.dtype_t)
        results[run] = {"model_type": ckpt["model_type"], "block_size": T, "attention": att.tolist()}
        stem = a.out.with_suffix("")
        png = stem.parent / f"{stem.name}_{ckpt['model_type']}_{Path(run).name}.png"
        _plot_attention(att, f"{_label(run, ckpt)}: last row (query {T - 1}), mean of {a.num_seqs} windows", png)
        print(f"{_label(run, ckpt)}: attention of the last row over {att.shape[-1]} positions -> {png}")
    return results


def _cmd_attention(a, runs):
    return _attention(a, runs, lambda ckpt: a.block_size or ckpt["model_config"]["block_size"])


def _cmd_long_context(a, runs):
    results, curves = _per_position(a, runs, long=True)
    T_train = max(r["trained_block_size"] for r in results.values())
    _plot_lines(curves, "position in document", "mean token loss", f"trained at {T_train}, run longer",
                a.out.with_suffix(".png"), vline=T_train)
    att = _attention(a, runs, lambda ckpt: a.block_size or 3 * ckpt["model_config"]["block_size"])
    return {"loss_by_position": results, "attention": att}


def _cmd_generate(a, runs):
    from .data.text import gpt2_encoding

    enc = gpt2_encoding(a.tokenizer_dir)
    prompts = json.loads(Path(a.prompts).read_text(encoding="utf-8")) if a.prompts else default_prompts()
    settings = (f"temperature {a.temperature}, top_k {a.top_k}, at most {a.max_new_tokens} new tokens, "
                f"stop at <|endoftext|>, seed {a.seed}, cached decoding")
    print(f"decoding: {settings}", file=sys.stderr)
    lines = [f"# Continuations of the {len(prompts)} prompts", "", f"Decoding: {settings}.", ""]
    results = {}
    for run, (model, ckpt) in runs.items():
        lines += [f"## {_label(run, ckpt)}", ""]
        outs = []
        for i, prompt in enumerate(prompts, 1):
            g = torch.Generator(device=a.device).manual_seed(a.seed + i)
            idx = torch.tensor([enc.encode_ordinary(prompt)], device=a.device)
            with autocast_for(a.device, a.dtype_t):
                out = model.generate(idx, a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                                     stop_token=50256, generator=g)
            text = _decode(enc, [t for t in out[0, idx.shape[1]:].tolist() if t != 50256])
            outs.append(text)
            lines += [f"{i}. {prompt} **{text.strip()}**", ""]
        results[run] = outs
    a.out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return {"settings": settings, "prompts": prompts, "continuations": results}


def _decode(enc, ids: list[int]) -> str:
    """Text of the token ids; ids the encoding does not know (the padded vocabulary's last 47) are dropped."""
    parts = []
    for t in ids:
        try:
            parts.append(enc.decode_single_token_bytes(t))
        except KeyError:
            continue
    return b"".join(parts).decode("utf-8", errors="replace")


def default_prompts() -> list[str]:
    """The 24 prompts of Eldan & Li (2023), which the paper's Table 1 continues."""
    return json.loads((Path(__file__).parent / "assets" / "prompts_eldan_li.json").read_text(encoding="utf-8"))


COMMANDS = {"loss": _cmd_loss, "per-position": _cmd_per_position, "attention": _cmd_attention,
            "long-context": _cmd_long_context, "generate": _cmd_generate}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mosaic-eval``."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="mosaic-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for name, help_ in (("loss", "mean token loss on a corpus"), ("per-position", "loss at each position"),
                        ("attention", "last-row attention maps"), ("long-context", "run at 3x the training length"),
                        ("generate", "continue the 24 prompts")):
        s = sub.add_parser(name, help=help_, formatter_class=fmt)
        s.add_argument("runs", nargs="+", help="run folders (their ckpt.pt) or checkpoint files")
        if name != "generate":
            s.add_argument("--data", required=True, help="text source (a file, folder, hf:NAME or babistories:DIR)")
            s.add_argument("--doc-split", default="auto", help="how .txt files are cut into documents")
            s.add_argument("--block-size", type=int, default=None,
                           help="context length (default: the trained one; 3x it for long-context)")
            s.add_argument("--batch-size", type=int, default=16)
            s.add_argument("--cache-dir", default=None)
        if name in ("attention", "long-context"):
            s.add_argument("--num-seqs", type=int, default=256, help="random windows averaged")
        if name in ("per-position", "long-context"):
            s.add_argument("--max-docs", type=int, default=None, help="at most this many documents")
            s.add_argument("--full-length", action="store_true",
                           help="only documents that reach the last position, so every position averages the same ones")
        if name == "loss":
            s.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens")
        if name == "generate":
            s.add_argument("--prompts", default=None, help="a JSON list of prompts (default: the 24 of Eldan & Li)")
            s.add_argument("--max-new-tokens", type=int, default=60)
            s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
            s.add_argument("--top-k", type=int, default=None)
        s.add_argument("--tokenizer-dir", default=None, help="GPT-2 BPE files for offline use ($MOSAIC_TOKENIZER_DIR)")
        s.add_argument("--best", action="store_true", help="use each run's best.pt instead of ckpt.pt")
        s.add_argument("--device", default="auto")
        s.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--out", default=f"eval-{name}", help="output path stem (.json, .png, .md are added)")
        s.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``mosaic-eval``; exit code 2 with a one-line error on bad input."""
    from .checkpoint import CheckpointError, load_model

    p = build_parser()
    a = p.parse_args(argv)
    require_at_least_one(p, a, ("block_size", "batch_size", "num_seqs", "max_docs", "max_tokens", "max_new_tokens", "top_k"))
    if getattr(a, "temperature", 0) < 0:
        p.error(f"--temperature must be >= 0, got {a.temperature}")
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda was asked for but no CUDA device is available")
    a.dtype_t = torch.bfloat16 if a.dtype == "bfloat16" or (a.dtype == "auto" and a.device.startswith("cuda")) else torch.float32
    a.out = Path(a.out)
    try:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        runs = {}
        for run in a.runs:
            path = Path(run) / "best.pt" if a.best and Path(run).is_dir() else Path(run)
            runs[run] = load_model(path, a.device)
        results = COMMANDS[a.command](a, runs)
    except (CheckpointError, DataError) as e:
        print(f"mosaic-eval: error: {e}", file=sys.stderr)
        return 2
    record = {"command": a.command, "runs": a.runs, **({"data": a.data} if hasattr(a, "data") else {}), "results": results}
    a.out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=float), encoding="utf-8")
    print(f"wrote {a.out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
