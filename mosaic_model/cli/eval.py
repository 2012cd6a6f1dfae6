"""``mosaic-eval``: evaluate language models trained by ``mosaic-train --task lm``.

Subcommands (each takes one or more run folders, or checkpoint files, of language-model runs; a run of
the in-context task is evaluated by mosaic-train itself, whose final line is its test metrics):
  loss          mean token loss of a checkpoint on a corpus (consecutive windows): JSON
  per-position  mean token loss at each position 0..T-1 of document-aligned windows: JSON + PNG
  attention     the last query row's attention averaged over sequences, per layer and head: JSON + PNG
  long-context  per-position loss and last-row attention at a longer context than training: JSON + PNG
  generate      continuations of prompts (default: the 24 of Eldan & Li, the paper's Table 1): JSON + markdown
Run ``mosaic-eval SUBCOMMAND --help`` for the options.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..data import text
from ..data.text import DOC_SPLITS, GPT2_VOCAB, DataError, Source, load_corpus
from ..evaluation import attention_rows, continue_prompts, corpus_loss, default_prompts, position_losses
from ..evaluation.plots import plot_attention, plot_lines
from ..training.checkpoint import CheckpointError, load_model
from .common import DefaultsHelpFormatter, require_at_least_one


def _label(run: str, ckpt: dict) -> str:
    c = ckpt["model_config"]
    return f"{ckpt['model_type']} L{c['n_layer']} d{c['n_embd']} ({Path(run).name})"


def _corpus(a):
    return load_corpus(a.data, doc_split=a.doc_split, cache_dir=a.cache_dir, tokenizer_dir=a.tokenizer_dir,
                       progress=not a.quiet)


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
        r = results[run] = position_losses(model, corpus, T, a.batch_size, a.device, a.dtype_t, a.max_docs,
                                           a.full_length)
        loss, count = np.asarray(r["loss"]), np.asarray(r["documents"])
        curves[_label(run, ckpt)] = loss
        early = float(np.nanmean(loss[: min(50, T)]))
        late = float(np.nanmean(loss[min(100, T - 1):])) if T > 100 else float("nan")
        print(f"{_label(run, ckpt)}: mean loss {float(np.sum(loss * count) / np.sum(count)):.4f}; "
              f"positions 0-49 {early:.4f}, 100+ {late:.4f}; {int(count[0])} documents")
    return results, curves


def _cmd_per_position(a, runs):
    results, curves = _per_position(a, runs, long=False)
    plot_lines(curves, "position in document", "mean token loss", f"loss by position on {Path(a.data).name}",
               a.out.with_suffix(".png"))
    return results


def _attention(a, runs, T_of):
    corpus = _corpus(a)
    results = {}
    for run, (model, ckpt) in runs.items():
        r = attention_rows(model, corpus, T_of(ckpt), a.num_seqs, a.batch_size, a.seed, a.device, a.dtype_t)
        T, att = r["block_size"], r["attention"]
        results[run] = {"model_type": ckpt["model_type"], "block_size": T, "attention": att.tolist()}
        stem = a.out.with_suffix("")
        png = stem.parent / f"{stem.name}_{ckpt['model_type']}_{Path(run).name}.png"
        plot_attention(att, f"{_label(run, ckpt)}: last row (query {T - 1}), mean of {a.num_seqs} windows", png)
        print(f"{_label(run, ckpt)}: attention of the last row over {att.shape[-1]} positions -> {png}")
    return results


def _cmd_attention(a, runs):
    return _attention(a, runs, lambda ckpt: a.block_size or ckpt["model_config"]["block_size"])


def _cmd_long_context(a, runs):
    results, curves = _per_position(a, runs, long=True)
    T_train = max(r["trained_block_size"] for r in results.values())
    plot_lines(curves, "position in document", "mean token loss", f"trained at {T_train}, run longer",
               a.out.with_suffix(".png"), vline=T_train)
    att = _attention(a, runs, lambda ckpt: a.block_size or 3 * ckpt["model_config"]["block_size"])
    return {"loss_by_position": results, "attention": att}


def read_prompts(path: str) -> list[str]:
    """The prompts of a ``--prompts`` file: a JSON list of non-empty strings (DataError naming the file
    and what was expected otherwise)."""
    try:
        prompts = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--prompts {path}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"--prompts {path}: not JSON ({e.msg} at line {e.lineno}); expected a list of strings") from None
    if not isinstance(prompts, list) or not all(isinstance(x, str) and x.strip() for x in prompts):
        raise DataError(f"--prompts {path}: expected a JSON list of non-empty strings, got {json.dumps(prompts)[:80]}")
    if not prompts:
        raise DataError(f"--prompts {path}: the list is empty; give at least one prompt")
    return prompts


def _cmd_generate(a, runs):
    enc = text.gpt2_encoding(a.tokenizer_dir)
    prompts = (a.prompt or []) + (read_prompts(a.prompts) if a.prompts else [])
    prompts = prompts or default_prompts()
    settings = (f"temperature {a.temperature}, top_k {a.top_k}, at most {a.max_new_tokens} new tokens, "
                f"stop at <|endoftext|>, seed {a.seed}, cached decoding")
    print(f"decoding: {settings}", file=sys.stderr)
    lines = [f"# Continuations of the {len(prompts)} prompts", "", f"Decoding: {settings}.", ""]
    results = {}
    for run, (model, ckpt) in runs.items():
        outs = continue_prompts(model, enc, prompts, a.max_new_tokens, a.temperature, a.top_k, a.seed, a.device,
                                a.dtype_t)
        lines += [f"## {_label(run, ckpt)}", ""]
        lines += [line for i, (prompt, text) in enumerate(zip(prompts, outs), 1)
                  for line in (f"{i}. {prompt} **{text.strip()}**", "")]
        results[run] = outs
    a.out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return {"settings": settings, "prompts": prompts, "continuations": results}


def check_run_kind(command: str, run: str, ckpt: dict) -> None:
    """DataError unless ``ckpt`` is a language-model run (GPT-2's vocabulary), the kind every subcommand
    takes; the message says which runs those are."""
    vocab = ckpt["model_config"]["vocab_size"]
    if vocab < GPT2_VOCAB:
        kind = "an in-context task run" if (ckpt.get("args") or {}).get("task", "icl") == "icl" else "a run"
        raise DataError(f"{run}: {kind} (a vocabulary of {vocab} symbols, not GPT-2's text); {command} takes runs of "
                        f"mosaic-train --task lm (an in-context run's test metrics are mosaic-train's final line)")


def training_text_warning(run: str, ckpt: dict, data: str) -> str | None:
    """A one-line warning when ``data`` is the text ``run`` trained on (its loss is then partly training
    loss), else None."""
    trained_on = (ckpt.get("args") or {}).get("data")
    if not trained_on:
        return None
    same = trained_on == data
    if not same and Source.parse(data).kind == Source.parse(trained_on).kind == "files":
        same = Path(data).resolve() == Path(trained_on).resolve()
    if not same:
        return None
    held = (ckpt.get("args") or {}).get("val_fraction")
    return (f"--data {data} is the text {Path(run).name} trained on: the loss is over its training documents"
            + (f" (all but the {held:g} held out)" if held and not ckpt["args"].get("val_data") else ""))


COMMANDS = {"loss": _cmd_loss, "per-position": _cmd_per_position, "attention": _cmd_attention,
            "long-context": _cmd_long_context, "generate": _cmd_generate}


OUTPUTS = {"loss": ".json", "per-position": ".json and .png", "attention": ".json and a .png per run",
           "long-context": ".json, .png, and an attention .png per run", "generate": ".json and .md"}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mosaic-eval``."""
    p = argparse.ArgumentParser(prog="mosaic-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for name, help_ in (("loss", "mean token loss on a corpus"), ("per-position", "loss at each position"),
                        ("attention", "last-row attention maps"), ("long-context", "run at 3x the training length"),
                        ("generate", "continue prompts")):
        s = sub.add_parser(name, help=help_, description=help_, formatter_class=DefaultsHelpFormatter)
        s.add_argument("runs", nargs="+", help="run folders (their ckpt.pt) or checkpoint files of mosaic-train --task lm")
        if name != "generate":
            s.add_argument("--data", required=True, help="text source (a file, folder, hf:NAME or babistories:DIR)")
            s.add_argument("--doc-split", default="auto", choices=DOC_SPLITS,
                           help=".txt documents: auto (<|endoftext|> if present, else blank lines), eot, blank, line, file")
            s.add_argument("--block-size", type=int, default=None,
                           help="context length (unset: the trained one" + (", times 3)" if name == "long-context" else ")"))
            s.add_argument("--batch-size", type=int, default=16, help="sequences per model call")
            s.add_argument("--cache-dir", default=None, help="token cache (unset: $MOSAIC_CACHE_DIR, else ~/.cache/mosaic)")
        if name in ("attention", "long-context"):
            s.add_argument("--num-seqs", type=int, default=256, help="random windows averaged")
        if name in ("per-position", "long-context"):
            s.add_argument("--max-docs", type=int, default=None, help="at most this many documents (unset: all)")
            s.add_argument("--full-length", action="store_true",
                           help="only documents that reach the last position, so every position averages the same ones")
        if name == "loss":
            s.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens (unset: all)")
        if name == "generate":
            s.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                           help="a prompt (repeat the flag for several); with neither this nor --prompts, the 24 "
                                "prompts of Eldan & Li")
            s.add_argument("--prompts", default=None, metavar="FILE", help="a JSON list of prompts (after any --prompt)")
            s.add_argument("--max-new-tokens", type=int, default=60, help="tokens generated after each prompt at most")
            s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
            s.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (unset: all)")
        s.add_argument("--tokenizer-dir", default=None,
                       help="folder with GPT-2's vocab.bpe and encoder.json (unset: $MOSAIC_TOKENIZER_DIR, else the "
                            "files shipped with the package)")
        s.add_argument("--best", action="store_true", help="use each run's best.pt instead of ckpt.pt")
        s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        s.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                       help="auto = bf16 autocast on CUDA, float32 on CPU")
        s.add_argument("--seed", type=int, default=0,
                       help="seed of the random windows" if name != "generate" else "seed of the sampling (prompt i: seed + i)")
        s.add_argument("--out", default=f"eval-{name}", help=f"output path stem: {OUTPUTS[name]} are written")
        s.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``mosaic-eval``; exit code 2 with a one-line error on bad input."""
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
    if a.out.suffix not in ("", ".json", ".png", ".md"):  # a dot inside the stem (run-lr0.003) is no suffix
        a.out = a.out.with_name(a.out.name + ".json")
    try:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        runs = {}
        for run in a.runs:
            path = Path(run) / "best.pt" if a.best and Path(run).is_dir() else Path(run)
            runs[run] = load_model(path, a.device)
            check_run_kind(a.command, run, runs[run][1])
            warning = training_text_warning(run, runs[run][1], a.data) if getattr(a, "data", None) else None
            if warning:
                print(f"mosaic-eval: warning: {warning}", file=sys.stderr)
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
