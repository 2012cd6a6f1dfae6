"""``mosaic-train``: train a Memory Mosaic or the GPT2 baseline on the in-context task or on text.

Examples:
  mosaic-train                                              # embedded in-context task, CPU, about a minute
  mosaic-train --task lm --data stories.txt --block-size 256 --steps 2000 --device cuda
  mosaic-train --task lm --data hf:roneneldan/TinyStories --preset paper --n-layer 4 --steps 5000
  mosaic-train --out-dir runs/icl --resume                  # continue (or extend with a larger --steps)
  torchrun --nproc_per_node 2 -m mosaic_model.cli.train --device cuda    # several GPUs (DDP)

Each optimizer step sees batch_size x grad_accum x processes sequences; every micro-step of every
process draws its own fresh batch, so a large global batch can be reproduced on fewer GPUs.

Schedule: linear warm-up from 0 over --warmup steps, then a cosine from --lr down to
--lr x --min-lr-ratio at step --steps. The learning rate is a function of (step, --steps): a run
extended with --resume --steps N follows, from the step it stopped at, the schedule of an N-step run.

Every flag is a field of mosaic_model.training.TrainConfig; from Python, train(TrainConfig(...)).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..data.text import DataError
from ..models.config import ConfigError
from ..training import PRESETS, SECTIONS, TrainConfig
from ..training.checkpoint import CheckpointError
from ..training.distributed import close_distributed
from ..training.loop import train
from ..training.presets import preset_fields
from .common import DefaultsHelpFormatter, config_error_line, fail, flag


def _add_field(group: argparse._ArgumentGroup, f: dataclasses.Field) -> None:
    md = f.metadata
    if isinstance(f.default, bool):
        group.add_argument(flag(f.name), action="store_true", help=md["help"])
    elif md["nargs"]:
        group.add_argument(flag(f.name), nargs=md["nargs"], choices=md["choices"], default=list(f.default),
                           metavar=md["metavar"], help=md["help"])
    else:
        group.add_argument(flag(f.name), type=md["type"] or type(f.default), choices=md["choices"], default=f.default,
                           metavar=md["metavar"], help=md["help"])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mosaic-train``: a flag per TrainConfig field, grouped by section, with the
    field's default and help."""
    p = argparse.ArgumentParser(prog="mosaic-train", description=__doc__, formatter_class=DefaultsHelpFormatter)
    own = {f.name: f for f in dataclasses.fields(TrainConfig)}
    _add_field(p, own["task"])
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="start from a recipe (paper: the paper's BabiStories recipe; regbench: RegBench's in-context "
                        "learning); flags override it")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a JSON object of TrainConfig fields (as a run folder's config.json holds), over the preset; "
                        "flags override it")
    for section in SECTIONS:
        group = p.add_argument_group(section.__doc__)
        for f in dataclasses.fields(section):
            _add_field(group, own[f.name])
    return p


def _config_file(parser: argparse.ArgumentParser, path: str) -> dict:
    """The fields of a ``--config`` file; a usage error (exit 2) naming the file when it is not a JSON
    object of TrainConfig fields."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        parser.error(f"--config {path}: not a readable JSON file ({e})")
    if not isinstance(values, dict) or set(values) - known:
        what = sorted(set(values) - known) if isinstance(values, dict) else type(values).__name__
        parser.error(f"--config {path}: expected a JSON object of TrainConfig fields, got {what}")
    return values


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The resolved TrainConfig of ``mosaic-train``'s arguments (a preset first supplies the defaults);
    a bad value exits with code 2 and one line naming its flag."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.preset:
        parser.set_defaults(**preset_fields(first.preset))
    if first.config:
        parser.set_defaults(**_config_file(parser, first.config))
    a = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if a.epochs is not None and any(x == "--steps" or x.startswith("--steps=") for x in given):
        parser.error("--steps is set by --epochs (the regbench preset sets --epochs): cap it with --step-cap")
    values = {f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**values).resolved()
    except ConfigError as e:
        fail("mosaic-train", config_error_line(e))  # one line: the usage is for unknown flags


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``mosaic-train``; returns 0, or exits with code 2 after a one-line error."""
    config = parse_args(argv)
    try:
        train(config)
    except ConfigError as e:
        fail("mosaic-train", config_error_line(e))
    except (CheckpointError, DataError) as e:
        fail("mosaic-train", str(e))
    finally:
        close_distributed()  # after train() has returned and freed its DDP wrapper
    return 0


if __name__ == "__main__":
    sys.exit(main())
