"""Checkpoints that rebuild their model: ``model_type`` and ``model_config`` travel with the weights."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import GPTConfig, MosaicConfig
from .gpt import GPT
from .model import MemoryMosaic

MODEL_CLASSES = {"mosaic": (MemoryMosaic, MosaicConfig), "gpt": (GPT, GPTConfig)}


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not one of this package's; the message names the file."""


def model_type_of(model: torch.nn.Module) -> str:
    """"mosaic" or "gpt"."""
    for name, (cls, _) in MODEL_CLASSES.items():
        if isinstance(model, cls):
            return name
    raise ValueError(f"not a model of this package: {type(model).__name__}")


def build_model(model_type: str, config: dict, **overrides) -> torch.nn.Module:
    """A fresh model of ``model_type`` ("mosaic" or "gpt") from a config dict, with field overrides."""
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"model_type must be one of {tuple(MODEL_CLASSES)}, got {model_type!r}")
    cls, cfg_cls = MODEL_CLASSES[model_type]
    return cls(cfg_cls(**{**config, **overrides}))


def read_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict:
    """torch.load a checkpoint of this package, or raise CheckpointError naming the file."""
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
    model = build_model(ckpt["model_type"], ckpt["model_config"], **overrides)
    state = ckpt["model"]
    if ckpt["model_type"] == "gpt" and "block_size" in overrides:
        raise CheckpointError(f"{path}: a GPT's learned positions fix its block size ({ckpt['model_config']['block_size']})")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit the saved configuration ({str(e)[:160]})") from None
    return model.to(device).eval(), ckpt
