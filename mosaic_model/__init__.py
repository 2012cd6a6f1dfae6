"""mosaic_model: the Memory Mosaic language model, its GPT2 baseline, data, training and evaluation.

Layers, each importing only those below it: ``runtime`` (devices, precision); ``models`` and ``data``;
``evaluation``; ``training``; ``cli`` (the ``mosaic-train`` and ``mosaic-eval`` command lines, which
nothing imports). docs/ARCHITECTURE.md draws them.
"""
from .models import GPT, GPTConfig, MemoryMosaic, MosaicConfig
from .training import TrainConfig, load_model, preset, train

__all__ = ["MemoryMosaic", "MosaicConfig", "GPT", "GPTConfig", "TrainConfig", "preset", "train", "load_model"]
