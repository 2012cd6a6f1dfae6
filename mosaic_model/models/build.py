"""Models by name: what a checkpoint's ``model_type`` and ``model_config`` rebuild."""
from __future__ import annotations

import torch

from .config import GPTConfig, LlamaConfig, MosaicConfig, MosaicV2Config
from .gpt import GPT
from .llama import Llama
from .mosaic import MemoryMosaic
from .mosaic_v2 import MemoryMosaicV2

MODEL_CLASSES = {"mosaic": (MemoryMosaic, MosaicConfig), "gpt": (GPT, GPTConfig),
                 "mosaic-v2": (MemoryMosaicV2, MosaicV2Config), "llama": (Llama, LlamaConfig)}
MODEL_CHOICES = tuple(MODEL_CLASSES)


def model_type_of(model: torch.nn.Module) -> str:
    """The name of ``model``'s class in :data:`MODEL_CLASSES` ("mosaic", "gpt", "mosaic-v2" or "llama")."""
    for name, (cls, _) in MODEL_CLASSES.items():
        if isinstance(model, cls):
            return name
    raise ValueError(f"not a model of this package: {type(model).__name__}")


def config_class(model_type: str) -> type:
    """The config dataclass of ``model_type``; ValueError naming the choices otherwise."""
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"model_type must be one of {MODEL_CHOICES}, got {model_type!r}")
    return MODEL_CLASSES[model_type][1]


def build_model(model_type: str, config: dict, **overrides) -> torch.nn.Module:
    """A fresh model of ``model_type`` from a config dict, with field overrides."""
    cfg = config_class(model_type)(**{**config, **overrides})
    return MODEL_CLASSES[model_type][0](cfg)
