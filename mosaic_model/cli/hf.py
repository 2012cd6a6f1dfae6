"""``mosaic-hf``: a ``mosaic-train`` run as a Hugging Face folder, and back.

  mosaic-hf export runs/mine hf/mine [--best]    # config.json, model.safetensors, the tokenizer, mosaic_run.json
  mosaic-hf import hf/mine runs/mine-back        # a run folder with ckpt.pt (for mosaic-eval; weights only)

The folder loads with ``AutoModelForCausalLM.from_pretrained`` after ``import mosaic_model.hf``, and in
lm-evaluation-harness through ``mosaic-lm-eval``. Needs ``pip install -e ".[hf]"``.
"""
from __future__ import annotations

import argparse
import sys

from ..training.checkpoint import CheckpointError
from .common import fail


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mosaic-hf``."""
    p = argparse.ArgumentParser(prog="mosaic-hf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    e = sub.add_parser("export", help="a run folder (or .pt file) to a Hugging Face folder")
    e.add_argument("run", help="a mosaic-train run folder (its ckpt.pt) or a checkpoint file")
    e.add_argument("out", help="the Hugging Face folder to write")
    e.add_argument("--best", action="store_true", help="export the run's best.pt (best validation loss) instead of ckpt.pt")
    i = sub.add_parser("import", help="a Hugging Face folder of these models to a run folder")
    i.add_argument("folder", help="a folder written by mosaic-hf export (or save_pretrained of these models)")
    i.add_argument("out", help="the run folder to write (ckpt.pt)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``mosaic-hf``; exit code 2 with a one-line error on bad input."""
    a = build_parser().parse_args(argv)
    try:
        from ..hf import from_hf_folder, to_hf_folder
    except ImportError as e:
        fail("mosaic-hf", f"needs transformers and safetensors: pip install -e \".[hf]\" ({e})")
    try:
        if a.command == "export":
            out = to_hf_folder(a.run, a.out, best=a.best)
        else:
            out = from_hf_folder(a.folder, a.out)
    except CheckpointError as e:
        fail("mosaic-hf", str(e))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
