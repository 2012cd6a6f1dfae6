"""Checkpoints: the weights with what rebuilds their model (``model_type``, ``model_config``), and for
``ckpt.pt`` the optimizer and every random generator's state, so that a resumed run continues bit for
bit where it stopped."""
from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch

from ..models.build import build_model, model_type_of
from .config import TrainConfig


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not one of this package's; the message names the file."""


def read_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict:
    """torch.load a checkpoint of this package (a ``.pt`` file, or a run folder's ``ckpt.pt``), or
    raise CheckpointError naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or foreign file raises many kinds of errors
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    missing = [k for k in ("model", "model_type", "model_config", "step") if not (isinstance(ckpt, dict) and k in ckpt)]
    if missing:
        raise CheckpointError(f"{path}: not a mosaic checkpoint (missing {', '.join(missing)})")
    return ckpt


def load_model(path: str | Path, device: torch.device | str = "cpu", **overrides) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on ``device``, checkpoint dict) from a run folder or a ``.pt`` file.

    ``overrides`` replace config fields, e.g. ``block_size`` to run a Memory Mosaic longer than it was
    trained (its parameters do not depend on the block size) or ``kernels="reference"``.
    """
    ckpt = read_checkpoint(path)
    if ckpt["model_type"] == "gpt" and "block_size" in overrides:
        raise CheckpointError(f"{path}: a GPT's learned positions fix its block size ({ckpt['model_config']['block_size']})")
    model = build_model(ckpt["model_type"], ckpt["model_config"], **overrides)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit the saved configuration ({str(e)[:160]})") from None
    return model.to(device).eval(), ckpt


def best_weights_problem(out: Path, best: float, best_step: int) -> str | None:
    """Why ``out/best.pt`` is not the weights of the best validation loss so far (``best``, at step
    ``best_step``), or None when it is. A run resumed from a ``ckpt.pt`` copied without its ``best.pt``
    (a folder carried between machines) has lost those weights: its final metrics with
    ``final_from="best"`` would silently come from others. best.pt keeps the loss it was saved for."""
    path = Path(out) / "best.pt"
    if not path.is_file():
        return f"{path} is missing, but the best validation loss so far ({best:.4f}) was at step {best_step}"
    saved = read_checkpoint(path)
    if saved.get("best_val_loss") != best:
        return (f"{path} holds step {saved['step']} (validation loss {saved.get('best_val_loss', math.nan):.4f}), "
                f"but the best so far ({best:.4f}) was at step {best_step}")
    return None


def rng_state() -> dict:
    """The state of every random generator a run draws from (torch, CUDA, NumPy, Python)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch (every device), NumPy and Python's generators."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


# Config fields a resumed run must share with its checkpoint: they fix the model, the data and the batches.
RUN_KEYS = ("task", "model", "n_layer", "n_head", "n_embd", "pmem_size", "dropout", "attn_dropout", "kernels", "reference_ops",
            "num_train", "num_test", "max_string_len", "task_seed", "iid", "data", "val_data", "val_fraction", "split_seed",
            "doc_split", "block_size", "batch_size", "grad_accum", "world_size", "seed")
# What checkpoints written before a field existed meant by its absence.
_ABSENT = {"grad_accum": 1, "world_size": 1, "task": "icl", "doc_split": "auto", "reference_ops": ()}
_UNUSED = {"icl": ("data", "val_data", "val_fraction", "split_seed", "doc_split", "block_size"),
           "lm": ("num_train", "num_test", "max_string_len", "task_seed", "iid")}


def _comparable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value  # lists from older checkpoints' argparse


class Checkpoints:
    """The checkpoints of one run folder: ``ckpt.pt`` (weights, optimizer, random state: what
    ``resume`` continues from) and ``best.pt`` (the weights of best validation loss, alone: a third of
    the bytes, as AdamW keeps two moments a weight). Only the main process writes; every write goes to
    a temporary name first, so a checkpoint is never half-written."""

    def __init__(self, out: Path, config: TrainConfig, world: int, writes: bool):
        self.out, self.config, self.world, self.writes = out, config, world, writes
        self.path = out / "ckpt.pt"

    def resume_state(self) -> dict:
        """The checkpoint to continue from, after checking it was made with the same model, data and
        batches (CheckpointError naming the fields otherwise) and is not past ``config.steps``."""
        ckpt = read_checkpoint(self.path)
        saved, now = ckpt["args"], {**self.config.to_dict(), "world_size": self.world}
        diff = [k for k in RUN_KEYS if k not in _UNUSED[self.config.task] and (k in saved or k in _ABSENT)
                and _comparable(saved.get(k, _ABSENT.get(k))) != _comparable(now.get(k))]
        if diff:
            raise CheckpointError(f"--resume: {self.path} was made with other {', '.join(diff)} "
                                  f"({', '.join(f'{k}={saved.get(k)!r}' for k in diff)})")
        if self.config.steps < ckpt["step"]:
            raise CheckpointError(f"--resume: {self.path} is at step {ckpt['step']}, past --steps {self.config.steps}")
        return ckpt

    @staticmethod
    def restore(ckpt: dict, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, float]:
        """Load the weights, the optimizer and the random state of ``ckpt``; returns (step, best val loss)."""
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        return ckpt["step"], ckpt.get("best_val_loss", math.inf)

    def save(self, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, best: float,
             best_weights: bool = False, **extra: object) -> None:
        """``ckpt.pt`` at ``step`` (with ``extra`` entries such as the final metrics), or, with
        ``best_weights``, ``best.pt`` (weights only)."""
        if not self.writes:
            return
        path = self.out / "best.pt" if best_weights else self.path
        state = {"model": model.state_dict(), "step": step, "args": {**self.config.to_dict(), "world_size": self.world},
                 "model_type": model_type_of(model), "model_config": model.config.to_dict(), "best_val_loss": best, **extra}
        if not best_weights:
            state.update(optimizer=opt.state_dict(), rng=rng_state())
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
